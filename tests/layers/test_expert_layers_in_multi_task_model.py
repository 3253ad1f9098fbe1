"""MMoE and PLE as the shared part of a MultiTaskModel trained with PCGrad."""

import keras
import numpy as np
import pytest

import keras_mtl


@pytest.mark.parametrize("kind", ["mmoe", "ple"])
def test_trains_with_pcgrad_and_loss_falls(kind):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = {"a": x[:, :1] * 2.0, "b": np.tanh(x[:, 1:2] - x[:, 2:3])}
    inputs = keras.Input((6,))
    if kind == "mmoe":
        layer = keras_mtl.layers.MultiGateMixtureOfExperts(
            num_experts=3, expert_units=8, num_tasks=2)
    else:
        layer = keras_mtl.layers.ProgressiveLayeredExtraction(
            num_tasks=2, num_levels=2, expert_units=8)
    a, b = layer(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs, {"a": keras.layers.Dense(1)(a), "b": keras.layers.Dense(1)(b)})
    model.compile(keras.optimizers.Adam(0.02), loss="mse",
                  aggregator="pcgrad")
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    assert model.shared_variables  # the experts are shared by both tasks
    levels = layer.levels if kind == "ple" else [layer]
    utilization = keras.ops.convert_to_numpy(levels[0].expert_utilization)
    np.testing.assert_allclose(utilization.sum(-1), 1.0, atol=1e-5)
