"""The transfer-parameter counts of the ScaLearn paper, on real backbones."""

import importlib.util
import pathlib

import pytest

from tests.transfer.builders import keras_hub
from tests.transfer.builders import transfer

EXAMPLE = (
    pathlib.Path(__file__).parents[2]
    / "examples"
    / "scalearn_parameter_counts.py"
)


def load_example():
    spec = importlib.util.spec_from_file_location("counts", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roberta_base_counts_of_the_scalearn_paper():
    """RoBERTa-base, 8 sources (Frohmann et al., 2024; AdapterFusion:
    Pfeiffer et al., 2021). The counts depend only on L, d and N, so the
    feed-forward width is cut to keep the build fast."""
    counts = load_example().transfer_parameter_counts(
        num_layers=12, hidden_dim=768, num_heads=12, intermediate_dim=4
    )
    assert counts == {
        "AdapterFusion": 21_252_096,
        "ScaLearn": 73_728,
        "ScaLearnUniform": 96,
        "ScaLearn++": 6_144,
        "ScaLearnUniform++": 8,
        "adapter (one task)": 894_528,
    }


def test_roberta_large_layer_counts():
    """One RoBERTa-large layer (d = 1024): per-layer counts times 24 give
    the paper's large-model figures; the "++" counts do not depend on L."""
    counts = load_example().transfer_parameter_counts(
        num_layers=1, hidden_dim=1024, num_heads=16, intermediate_dim=4
    )
    assert counts["AdapterFusion"] * 24 == 75_546_624
    assert counts["ScaLearn"] * 24 == 196_608
    assert counts["ScaLearnUniform"] * 24 == 192
    assert counts["ScaLearn++"] == 8_192
    assert counts["ScaLearnUniform++"] == 8
    assert counts["adapter (one task)"] * 24 == 3_171_840


@pytest.mark.parametrize("name", ["XLMRobertaBackbone", "DistilBertBackbone"])
def test_other_keras_hub_backbones(name):
    backbone = getattr(keras_hub.models, name)(
        vocabulary_size=10, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=4, max_sequence_length=4,
    )
    transfer.add_adapters(backbone, ["a", "b"])
    transfer.add_combiner(backbone, ["a", "b"], "scalearn_uniform")
    assert transfer.count_transfer_parameters(backbone) == 2 * 2
    assert len(backbone.trainable_weights) == 2
