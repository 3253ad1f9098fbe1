import keras
import numpy as np
import pytest

from tests.transfer.builders import adapter_variables
from tests.transfer.builders import bert_inputs
from tests.transfer.builders import classifier
from tests.transfer.builders import encoder_stack
from tests.transfer.builders import ids
from tests.transfer.builders import keras_hub
from tests.transfer.builders import randomize
from tests.transfer.builders import sequence_output
from tests.transfer.builders import snapshot
from tests.transfer.builders import stack_inputs
from tests.transfer.builders import tiny_bert
from tests.transfer.builders import transfer
from tests.transfer.builders import wrappers


@pytest.mark.parametrize("config", ["pfeiffer", "houlsby"])
def test_bert_outputs_unchanged_at_initialisation(config):
    backbone = tiny_bert()
    inputs = bert_inputs()
    expected = sequence_output(backbone, inputs)
    pooled = keras.ops.convert_to_numpy(backbone(inputs)["pooled_output"])
    transfer.add_adapters(backbone, ["a", "b"], config=config)
    np.testing.assert_allclose(
        sequence_output(backbone, inputs), expected, atol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(inputs)["pooled_output"]),
        pooled,
        atol=1e-6,
    )
    # The adapters are on the path: non-zero up-projections change outputs.
    randomize(adapter_variables(backbone, "a"))
    changed = sequence_output(backbone, inputs)
    assert np.abs(changed - expected).max() > 1e-3


@pytest.mark.parametrize("normalize_first", [False, True])
def test_hand_built_encoder_stack(normalize_first):
    model = encoder_stack(normalize_first=normalize_first)
    inputs = stack_inputs()
    expected = sequence_output(model, inputs)
    transfer.add_adapters(model, "task", reduction_factor=4)
    np.testing.assert_allclose(sequence_output(model, inputs), expected,
                               atol=1e-6)
    found = wrappers(model)
    position = "_feedforward_dropout" if normalize_first else (
        "_feedforward_layer_norm"
    )
    assert [(i, p) for i, p, _ in found] == [(0, position), (1, position)]
    randomize(adapter_variables(model, "task"))
    assert np.abs(sequence_output(model, inputs) - expected).max() > 1e-3


def test_pfeiffer_computes_layer_norm_of_residual_plus_adapter():
    """One post-LN encoder: out = LN(s + A(LN(s))), with the same LN."""
    model = encoder_stack(num_layers=1)
    encoder = model.layers[1]
    inputs = stack_inputs()
    transfer.add_adapters(model, "task", reduction_factor=4)
    randomize(adapter_variables(model, "task"))
    wrapper = encoder._feedforward_layer_norm
    norm = wrapper.layer
    # s, recomputed with the encoder's own sub-layers (dropout inactive).
    x = keras.ops.convert_to_tensor(inputs)
    attended = encoder._self_attention_layer_norm(
        x + encoder._self_attention_layer(x, x)
    )
    s = attended + encoder._feedforward_output_dense(
        encoder._feedforward_intermediate_dense(attended)
    )
    h = norm(s)
    down, down_bias, up, up_bias = [
        keras.ops.convert_to_numpy(w) for w in wrapper.adapters["task"].weights
    ]
    h_np = keras.ops.convert_to_numpy(h)
    delta = np.maximum(h_np @ down + down_bias, 0.0) @ up + up_bias
    s_np = keras.ops.convert_to_numpy(s)
    expected = keras.ops.convert_to_numpy(norm(s_np + delta))
    np.testing.assert_allclose(sequence_output(model, inputs), expected,
                               atol=1e-5)


def test_backbone_is_frozen_and_only_the_first_task_trains():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    assert ids(backbone.trainable_weights) == ids(
        adapter_variables(backbone, "a")
    )
    # 2 layers x (16*4 + 4 + 4*16 + 16)
    assert transfer.count_transfer_parameters(backbone) == 2 * 148
    assert transfer.count_transfer_parameters(backbone, "b") == 2 * 148


def test_houlsby_has_two_adapters_per_layer():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, "a", config="houlsby")
    assert [p for _, p, _ in wrappers(backbone)] == [
        "_self_attention_dropout",
        "_feedforward_dropout",
    ] * 2
    # reduction factor 16 on d = 16: bottleneck 1, 2 * 16 + 1 + 16 weights.
    assert transfer.count_transfer_parameters(backbone) == 4 * 49
    config = wrappers(backbone)[0][2].adapters["a"].get_config()
    assert config["activation"] in ("swish", "silu")


def fit_and_check(backbone, task, inputs, targets):
    """Compiles, fits, checks that exactly `task`'s adapter moved."""
    model = classifier(backbone)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    active = adapter_variables(backbone, task)
    frozen = [w for w in backbone.weights if id(w) not in set(ids(active))]
    before_active, before_frozen = snapshot(active), snapshot(frozen)
    model.fit(inputs, targets, batch_size=4, epochs=1, verbose=0)
    for value, before in zip(snapshot(frozen), before_frozen):
        np.testing.assert_array_equal(value, before)
    for value, before in zip(snapshot(active), before_active):
        assert np.abs(value - before).max() > 0


def test_fit_moves_only_the_active_adapter():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a", "b"], reduction_factor=4)
    inputs = bert_inputs(batch=8)
    targets = np.random.default_rng(1).normal(size=(8, 1)).astype("float32")
    transfer.set_active_adapter(backbone, "b")
    fit_and_check(backbone, "b", inputs, targets)
    # Switch, re-compile (Keras fixes trainable variables at compile time).
    transfer.set_active_adapter(backbone, "a")
    fit_and_check(backbone, "a", inputs, targets)


def test_more_tasks_can_be_added_later_and_keep_the_active_one():
    backbone = tiny_bert()
    transfer.add_adapters(backbone, ["a"], reduction_factor=4)
    transfer.set_active_adapter(backbone, "a")
    transfer.add_adapters(backbone, ["b"], reduction_factor=8)
    assert wrappers(backbone)[0][2].active == "a"
    assert ids(backbone.trainable_weights) == ids(
        adapter_variables(backbone, "a")
    )
    assert transfer.count_transfer_parameters(backbone, "b") == 2 * (
        16 * 2 * 2 + 2 + 16
    )


def test_unsupported_backbones():
    inputs = keras.Input((4,))
    dense = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="Unsupported backbone"):
        transfer.add_adapters(dense, ["a"])
    with pytest.raises(ValueError, match="backbone"):
        transfer.add_adapters("bert", ["a"])
    unbuilt = keras_hub.layers.TransformerEncoder(8, 2)
    with pytest.raises(ValueError, match="build the model first"):
        transfer.add_adapters(unbuilt, ["a"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task_names": ["a", "a"]}, "duplicates"),
        ({"task_names": []}, "non-empty list"),
        ({"task_names": ["a/b"]}, "without '/'"),
        ({"task_names": [3]}, "task_names=3"),
        ({"task_names": ["a"], "config": "prefix"}, "config='prefix'"),
        ({"task_names": ["a"], "reduction_factor": 0}, "reduction_factor"),
    ],
)
def test_argument_errors(kwargs, match):
    backbone = encoder_stack(num_layers=1)
    with pytest.raises(ValueError, match=match):
        transfer.add_adapters(backbone, **kwargs)
    assert not wrappers(backbone)


def test_existing_task_or_other_config_is_rejected():
    backbone = encoder_stack(num_layers=1)
    transfer.add_adapters(backbone, ["a"])
    with pytest.raises(ValueError, match=r"already has .* named \['a'\]"):
        transfer.add_adapters(backbone, ["b", "a"])
    with pytest.raises(ValueError, match="same kind of configuration"):
        transfer.add_adapters(backbone, ["c"], config="houlsby")
    assert wrappers(backbone)[0][2].names == ["a"]
