import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.expert_test_utils import config_round_trip
from tests.layers.expert_test_utils import round_trip_outputs
from tests.layers.expert_test_utils import to_numpy

keras_hub = pytest.importorskip("keras_hub")

MoAE = keras_mtl.layers.MixtureOfAdapterExperts


def _x(shape=(2, 4, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_defaults_follow_s4d_and_start_at_zero():
    layer = MoAE()
    assert (layer.num_experts, layer.top_k, layer.router) == (
        8, 2, "noisy_top_k")
    assert (layer.capacity_factor, layer.load_balancing_loss_weight) == (
        1.0, 1e-3)
    y = to_numpy(layer(_x(), training=True))
    assert y.shape == (2, 4, 8)
    np.testing.assert_array_equal(y, 0.0)
    kernels = layer.experts.kernels
    assert tuple(kernels[0].shape) == (8, 8, 2)  # hidden = 0.25 * 8
    assert tuple(kernels[1].shape) == (8, 2, 8)
    assert len(layer.losses) == 1


def test_config_and_keras_round_trip(tmp_path):
    clone = config_round_trip(MoAE(num_experts=4, top_k=1, hidden_ratio=0.5,
                                   capacity_factor=None, seed=2))
    assert (clone.hidden_ratio, clone.capacity_factor) == (0.5, None)
    inputs = keras.Input((4, 8))
    model = keras.Model(inputs, MoAE(num_experts=4, up_initializer="ones")(
        inputs))
    before, after, _ = round_trip_outputs(model, _x(), tmp_path)
    assert np.abs(before).max() > 0
    np.testing.assert_allclose(before, after, rtol=1e-6)
    with pytest.raises(ValueError, match="hidden_ratio=0"):
        MoAE(hidden_ratio=0)


def _backbone(num_layers=2):
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=20, num_layers=num_layers, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=4, dropout=0.0)


def _batch():
    rng = np.random.default_rng(0)
    return {
        "token_ids": rng.integers(0, 20, size=(2, 4)).astype("int32"),
        "segment_ids": np.zeros((2, 4), "int32"),
        "padding_mask": np.ones((2, 4), "int32"),
    }


def test_add_adapter_experts_is_identity_at_init_then_changes_outputs():
    backbone, batch = _backbone(), _batch()
    before = to_numpy(backbone(batch)["sequence_output"])
    num_weights = len(backbone.trainable_weights)
    experts = keras_mtl.layers.add_adapter_experts(backbone, num_experts=4)
    assert len(experts) == 1  # last half of 2 layers
    assert experts[0].name == "transformer_layer_1_adapter_experts"
    added = len(experts[0].trainable_weights)
    assert len(backbone.trainable_weights) == num_weights + added
    np.testing.assert_allclose(
        to_numpy(backbone(batch)["sequence_output"]), before, atol=1e-6)
    backbone(batch, training=True)
    assert len(backbone.losses) == 1  # the balancing loss
    up = experts[0].experts.kernels[-1]
    # Random (not constant: LayerNorm removes a constant shift) weights.
    up.assign(np.random.default_rng(1).normal(size=up.shape).astype("float32"))
    changed = to_numpy(backbone(batch)["sequence_output"])
    assert np.abs(changed - before).max() > 1e-3


def test_add_adapter_experts_trains_only_experts_when_frozen():
    backbone, batch = _backbone(), _batch()
    backbone.trainable = False
    experts = keras_mtl.layers.add_adapter_experts(
        backbone, layer_indices=[0, -1], num_experts=2, top_k=1)
    assert len(experts) == 2
    frozen = {v.path: to_numpy(v) for v in backbone.weights
              if not v.trainable}
    model = keras.Model(backbone.input,
                        backbone.output["sequence_output"])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    # Not a constant target: the final LayerNorm fixes each token's mean
    # and variance, which makes the MSE to a constant vector invariant.
    target = _x((2, 4, 8), seed=5)
    losses = model.fit(batch, target, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 1e-3, losses
    for v in backbone.weights:
        if v.path in frozen and "adapter_experts" not in v.path:
            np.testing.assert_array_equal(to_numpy(v), frozen[v.path])


def test_add_adapter_experts_errors():
    backbone = _backbone()
    with pytest.raises(ValueError, match="layer_indices"):
        keras_mtl.layers.add_adapter_experts(backbone, layer_indices=[2])
    keras_mtl.layers.add_adapter_experts(backbone, layer_indices=[0])
    with pytest.raises(ValueError, match="already has adapter experts"):
        keras_mtl.layers.add_adapter_experts(backbone, layer_indices=[0])
    with pytest.raises(ValueError, match="no transformer encoder"):
        keras_mtl.layers.add_adapter_experts(keras.Sequential(
            [keras.Input((2,)), keras.layers.Dense(2)]))
