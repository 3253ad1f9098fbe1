import keras
import numpy as np
import pytest

from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny BERT with two trained-looking adapters; "b" saved alone."""
    backbone = tiny_bert(seed=0)
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    randomize(adapter_variables(backbone, "a"), seed=1)
    randomize(adapter_variables(backbone, "b"), seed=2)
    transfer.set_active_adapter(backbone, "b")
    path = tmp_path_factory.mktemp("adapters") / "b.adapter.npz"
    transfer.save_adapter(backbone, "b", path)
    return backbone, path


def test_round_trip_into_a_freshly_injected_backbone(trained):
    backbone, path = trained
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    # Same backbone weights (same seed), fresh adapters, then the file.
    fresh = tiny_bert(seed=0)
    transfer.add_adapters(fresh, ["b"], reduction_factor=4)
    assert np.abs(sequence_output(fresh, inputs) - expected).max() > 1e-3
    transfer.load_adapter(fresh, "b", path)
    np.testing.assert_allclose(sequence_output(fresh, inputs), expected,
                               atol=1e-5)
    for loaded, saved in zip(
        snapshot(adapter_variables(fresh, "b")),
        snapshot(adapter_variables(backbone, "b")),
    ):
        np.testing.assert_array_equal(loaded, saved)


def test_the_file_holds_one_adapter_only(trained):
    _, path = trained
    with np.load(path) as data:
        sizes = sum(data[k].size for k in data.files if k != "__meta__")
    assert sizes == 2 * 148


def test_loading_adds_a_missing_adapter_under_any_name(trained):
    backbone, path = trained
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    fresh = tiny_bert(seed=0)
    transfer.load_adapter(fresh, "rte", path)
    assert wrappers(fresh)[0][2].names == ["rte"]
    np.testing.assert_allclose(sequence_output(fresh, inputs), expected,
                               atol=1e-5)
    assert [w.trainable for w in fresh.weights].count(True) == 8


def test_wrong_sizes_are_rejected(trained):
    _, path = trained
    wider = encoder_stack(hidden_dim=32)
    with pytest.raises(ValueError, match="hidden size 16.*hidden size 32"):
        transfer.load_adapter(wider, "b", path)
    assert not wrappers(wider)
    deeper = encoder_stack(num_layers=3)
    with pytest.raises(ValueError, match="2 encoder layers.*3 encoder"):
        transfer.load_adapter(deeper, "b", path)
    narrow = transfer.add_adapters(encoder_stack(), ["b"], reduction_factor=8)
    with pytest.raises(ValueError, match=r"bottleneck 4\).*bottleneck 2\)"):
        transfer.load_adapter(narrow, "b", path)
    houlsby = transfer.add_adapters(encoder_stack(), ["b"], config="houlsby")
    with pytest.raises(ValueError, match="'houlsby' adapters"):
        transfer.load_adapter(houlsby, "b", path)
    pre_ln = encoder_stack(normalize_first=True)
    with pytest.raises(ValueError, match="positions"):
        transfer.load_adapter(pre_ln, "b", path)
    assert not wrappers(pre_ln)


def test_save_errors_and_foreign_files(trained, tmp_path):
    backbone, _ = trained
    with pytest.raises(ValueError, match=r"task_name='z'"):
        transfer.save_adapter(backbone, "z", tmp_path / "z.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a keras_mtl adapter file"):
        transfer.load_adapter(encoder_stack(), "b", other)


def test_keras_file_recipe(trained, tmp_path):
    """`.keras` keeps the backbone config only: re-inject, reload weights."""
    backbone, _ = trained
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    path = str(tmp_path / "adapted.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path)
    assert not wrappers(restored)
    transfer.add_adapters(restored, ["a", "b"], reduction_factor=4)
    transfer.set_active_adapter(restored, "b")
    restored.load_weights(path)
    np.testing.assert_allclose(sequence_output(restored, inputs), expected,
                               atol=1e-5)
