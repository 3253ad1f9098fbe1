"""Scaled parallel adapters (`config="parallel"`) in keras-hub encoders."""

import keras
import numpy as np
import pytest

from keras_mtl.src.transfer import backbone_walk
from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def adapter_numpy(adapter, x):
    """`s (relu(x W_dn + b_dn) W_up + b_up)` in float64."""
    down, down_bias, up, up_bias = [numpy(w) for w in adapter.weights]
    hidden = np.maximum(x @ down + down_bias, 0.0)
    return adapter.scaling * (hidden @ up + up_bias)


def call(layer, *args, **kwargs):
    return numpy(layer(*args, **kwargs))


@pytest.mark.parametrize("normalize_first", [False, True])
def test_feedforward_adapter_adds_to_the_block_output(normalize_first):
    model = encoder_stack(normalize_first=normalize_first, num_layers=1)
    transfer.add_adapters(model, "a", config="parallel")
    randomize(adapter_variables(model, "a"), seed=1)
    x = stack_inputs()
    encoder = backbone_walk.transformer_encoders(model)[0]
    adapter = wrappers(model)[0][2].adapters["a"]

    def sub(slot):
        layer = backbone_walk.sublayer(encoder, slot)
        return getattr(layer, "layer", layer)

    attention = sub("_self_attention_layer")
    attention_norm = sub("_self_attention_layer_norm")
    ffn_norm = sub("_feedforward_layer_norm")
    inter = sub(backbone_walk.FEEDFORWARD_INPUT)
    out = sub(backbone_walk.FEEDFORWARD_OUTPUT)
    # The encoder's sub-layers, called one by one (inference: no dropout).
    h = call(attention_norm, x) if normalize_first else x
    x1 = x + call(attention, query=h, value=h)
    if not normalize_first:
        x1 = call(attention_norm, x1)
    f_in = call(ffn_norm, x1) if normalize_first else x1
    f = call(out, call(inter, f_in)) + adapter_numpy(adapter, f_in)
    want = x1 + f
    if not normalize_first:
        want = call(ffn_norm, want)
    np.testing.assert_allclose(call(model, x), want, atol=2e-5)


def test_attention_adapter_reads_the_attention_input():
    model = encoder_stack(num_layers=1)
    config = transfer.ParallelConfig(sublayers=["attention"],
                                     reduction_factor=4, scaling=2.0)
    transfer.add_adapters(model, "a", config=config)
    randomize(adapter_variables(model, "a"), seed=2)
    x = stack_inputs()
    encoder = backbone_walk.transformer_encoders(model)[0]
    adapter = wrappers(model)[0][2].adapters["a"]
    attention = backbone_walk.sublayer(encoder, "_self_attention_layer")
    norm = backbone_walk.sublayer(encoder, "_self_attention_layer_norm")
    # The wrapped query projection is unchanged; only the sum moves.
    transfer.set_active_adapter(model, None)
    plain = call(attention, query=x, value=x)
    transfer.set_active_adapter(model, "a")
    x1 = call(norm, x + plain + adapter_numpy(adapter, x))
    inter = backbone_walk.sublayer(encoder, backbone_walk.FEEDFORWARD_INPUT)
    out = backbone_walk.sublayer(encoder, backbone_walk.FEEDFORWARD_OUTPUT)
    ffn_norm = backbone_walk.sublayer(encoder, "_feedforward_layer_norm")
    want = call(ffn_norm, x1 + call(out, call(inter, x1)))
    np.testing.assert_allclose(call(model, x), want, atol=2e-5)


def test_unchanged_at_initialisation_and_round_trips():
    backbone = tiny_bert()
    inputs = bert_inputs()
    before = sequence_output(backbone, inputs)
    config = transfer.ParallelConfig(sublayers=["attention", "feedforward"])
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)
    assert {id(v) for v in backbone.trainable_weights} == {
        id(v) for v in adapter_variables(backbone, "a")}
    # Two sites per layer, 2 d m + m + d each (d = 16, m = 8).
    assert transfer.count_transfer_parameters(backbone) == 2 * 2 * 280
    randomize(adapter_variables(backbone, "a"), seed=3)
    want = sequence_output(backbone, inputs)
    assert np.abs(want - before).max() > 1e-3
    transfer.set_active_adapter(backbone, None)
    np.testing.assert_allclose(sequence_output(backbone, inputs), before,
                               atol=1e-6)
    transfer.set_active_adapter(backbone, "a")


def test_save_load_and_refusals(tmp_path):
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], config="parallel")
    randomize(adapter_variables(backbone, "a"), seed=4)
    inputs = bert_inputs()
    want = sequence_output(backbone, inputs)
    path = tmp_path / "a.adapter.npz"
    transfer.save_adapter(backbone, "a", path)
    fresh = tiny_bert()
    transfer.load_adapter(fresh, "x", path)
    np.testing.assert_allclose(sequence_output(fresh, inputs), want,
                               atol=1e-5)
    with pytest.raises(ValueError, match="ParallelAdapter"):
        transfer.merge_adapter(transfer.add_adapters(tiny_bert(), "a",
                                                     config="parallel"), "a")
    houlsby = transfer.add_adapters(tiny_bert(), "a", config="houlsby")
    before = snapshot(houlsby.weights)
    with pytest.raises(ValueError, match="same kind"):
        transfer.add_adapters(houlsby, "b", config="parallel")
    for got, value in zip(snapshot(houlsby.weights), before):
        np.testing.assert_array_equal(got, value)
    with pytest.raises(ValueError, match="`sublayers`"):
        transfer.ParallelConfig(sublayers=["ffn"])
    with pytest.raises(ValueError, match="`scaling`"):
        transfer.ParallelConfig(scaling="4")


def test_roberta_base_parameter_count():
    """`ParBnConfig` on RoBERTa-base: 12 (2 d m + m + d), d = 768, m = 384."""
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=10, num_layers=1, num_heads=12, hidden_dim=768,
        intermediate_dim=4, max_sequence_length=4)
    transfer.add_adapters(backbone, "t", config="parallel")
    assert 12 * transfer.count_transfer_parameters(backbone) == 7_091_712


def test_fit_trains_only_the_active_parallel_adapters():
    backbone = tiny_bert(dropout=0.0)
    config = transfer.ParallelConfig(sublayers=["attention", "feedforward"])
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    transfer.set_active_adapter(backbone, "b")
    features = backbone(backbone.input)["pooled_output"]
    model = keras.Model(backbone.input, keras.layers.Dense(1)(features))
    model.compile(keras.optimizers.SGD(0.5), loss="mse")
    trained = {id(v) for v in adapter_variables(backbone, "b")}
    before = {id(v): numpy(v) for v in backbone.weights}
    history = model.fit(bert_inputs(), np.ones((4, 1), "float32"), epochs=2,
                        verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = {id(v) for v in backbone.weights
               if not np.array_equal(numpy(v), before[id(v)])}
    assert changed and changed <= trained
