"""Compacter: PHM layers with a shared rule, in keras-hub encoders."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers

layers = keras_mtl.layers


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def kernel_numpy(rule, left, right):
    """`sum_i kron(A_i, s_i t_i)` with NumPy's `kron`."""
    return sum(np.kron(rule[i], left[i] @ right[i]) for i in range(len(rule)))


def test_compacter_adapter_matches_its_formula():
    rule = layers.PHMRule(phm_dim=2)
    adapter = layers.CompacterAdapter(rule, reduction_factor=2, phm_rank=2,
                                      activation="relu")
    x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype("float32")
    adapter(x)
    randomize(adapter.weights, seed=1, scale=0.5)
    a = numpy(rule.rule)
    down = kernel_numpy(a, numpy(adapter.down_left), numpy(adapter.down_right))
    up = kernel_numpy(a, numpy(adapter.up_left), numpy(adapter.up_right))
    hidden = np.maximum(x @ down + numpy(adapter.down_bias), 0.0)
    want = hidden @ up + numpy(adapter.up_bias)
    np.testing.assert_allclose(numpy(adapter(x)), want, atol=1e-5)
    got_down, got_up = adapter.kernels()
    np.testing.assert_allclose(numpy(got_down), down, atol=1e-6)
    np.testing.assert_allclose(numpy(got_up), up, atol=1e-6)


def test_rule_is_shared_through_keras_saving(tmp_path):
    rule = layers.PHMRule(phm_dim=2)
    inputs = keras.Input((4, 8))
    first = layers.CompacterAdapter(rule, reduction_factor=2)
    second = layers.CompacterAdapter(rule, reduction_factor=2)
    model = keras.Model(inputs, second(first(inputs)))
    randomize(model.weights, seed=2)
    # 2 x (2 (8 + 4) + 4 + 8) plus the 8 shared rule weights.
    assert model.count_params() == 2 * 36 + 8
    x = np.random.default_rng(3).normal(size=(2, 4, 8)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(numpy(loaded.predict(x, verbose=0)),
                               numpy(model.predict(x, verbose=0)), atol=1e-6)
    rules = {id(layer.rule) for layer in loaded.layers
             if isinstance(layer, layers.CompacterAdapter)}
    assert len(rules) == 1


def test_argument_errors():
    with pytest.raises(ValueError, match="`rule`"):
        layers.CompacterAdapter(rule="shared")
    with pytest.raises(ValueError, match="`phm_rank`"):
        layers.CompacterAdapter(phm_rank=0)
    with pytest.raises(ValueError, match="multiples of phm_dim=4"):
        layers.CompacterAdapter(reduction_factor=4).build((None, 6))
    with pytest.raises(ValueError, match="`placement`"):
        transfer.CompacterConfig("compacter+")


@pytest.mark.parametrize("placement", ["compacter", "compacter++"])
def test_in_a_backbone_one_rule_per_task(placement):
    backbone = tiny_bert()
    inputs = bert_inputs()
    before = sequence_output(backbone, inputs)
    config = transfer.CompacterConfig(placement, reduction_factor=2)
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    # Near zero at initialisation (rules ~ N(0, 1e-4)).
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-4)
    found = wrappers(backbone)
    rules = {t: {id(w.adapters[t].rule) for _, _, w in found}
             for t in ("a", "b")}
    assert len(rules["a"]) == len(rules["b"]) == 1
    assert rules["a"] != rules["b"]
    per_adapter = 2 * (16 + 8) + 8 + 16
    assert transfer.count_transfer_parameters(backbone) == (
        len(found) * per_adapter + 4 ** 3)
    randomize(adapter_variables(backbone, "a"), seed=4)
    assert np.abs(sequence_output(backbone, inputs) - before).max() > 1e-3
    with pytest.raises(ValueError, match="share their PHM rules"):
        transfer.average_adapter(backbone, "ab", ["a", "b"])
    with pytest.raises(ValueError, match="CompacterAdapter"):
        transfer.merge_adapter(transfer.add_adapters(
            tiny_bert(), "a", config=config), "a")


def test_save_and_load_keep_the_shared_rule(tmp_path):
    backbone = tiny_bert()
    config = transfer.CompacterConfig("compacter", reduction_factor=2)
    transfer.add_adapters(backbone, ["a"], config=config)
    randomize(adapter_variables(backbone, "a"), seed=5)
    inputs = bert_inputs()
    want = sequence_output(backbone, inputs)
    path = tmp_path / "a.adapter.npz"
    transfer.save_adapter(backbone, "a", path)
    fresh = tiny_bert()
    transfer.load_adapter(fresh, "t", path)
    np.testing.assert_allclose(sequence_output(fresh, inputs), want,
                               atol=1e-5)
    assert len({id(w.adapters["t"].rule) for _, _, w in wrappers(fresh)}) == 1


def test_roberta_base_parameter_counts():
    """`adapters` defaults on RoBERTa-base (d = 768, L = 12, m = 24, n = 4):
    Compacter 57,088 and Compacter++ 28,576 (with the 64 shared rules; see
    `../shared/reference/peft-methods.md`). One layer (plus the rules), the
    rest times 12."""
    rules = 4 ** 3
    for placement, want in (("compacter", 57_088), ("compacter++", 28_576)):
        backbone = keras_hub.models.RobertaBackbone(
            vocabulary_size=10, num_layers=1, num_heads=12, hidden_dim=768,
            intermediate_dim=4, max_sequence_length=4)
        transfer.add_adapters(backbone, "t", config=placement)
        count = transfer.count_transfer_parameters(backbone)
        assert 12 * (count - rules) + rules == want


def test_sizes_that_do_not_fit_fail_before_the_backbone_changes():
    backbone = tiny_bert()
    before = [v.trainable for v in backbone.weights]
    # d = 16, reduction factor 32: a bottleneck of 1, not a multiple of 4.
    with pytest.raises(ValueError, match="multiples of phm_dim=4"):
        transfer.add_adapters(backbone, "a", config="compacter")
    assert not wrappers(backbone)
    assert [v.trainable for v in backbone.weights] == before
