"""GradientReversal and its schedule callback on the current backend."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_mtl
from tests.helpers import to_numpy
from tests.layers.gate_checks import assert_config_round_trip
from tests.layers.gate_checks import assert_keras_file_round_trip
from tests.layers.gate_checks import backend_gradient
from tests.layers.gate_checks import seeded

RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 4)).astype("float32")


def test_forward_is_exactly_the_identity():
    layer = keras_mtl.layers.GradientReversal(strength=2.5)
    np.testing.assert_array_equal(to_numpy(layer(X)), X)
    symbolic = layer(keras.Input((7, 3)))
    assert tuple(symbolic.shape) == (None, 7, 3)


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0, 3.0])
def test_gradient_is_flipped_and_scaled_by_the_strength(strength):
    dense = keras.layers.Dense(3, kernel_initializer=seeded(1))
    layer = keras_mtl.layers.GradientReversal(strength=strength)

    def plain(v):
        return ops.tanh(dense(v)) ** 2

    def reversed_(v):
        return ops.tanh(dense(layer(v))) ** 2

    expected = backend_gradient(plain, X)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(
        backend_gradient(reversed_, X), -strength * expected,
        rtol=1e-6, atol=1e-7,
    )


def test_setting_the_strength_changes_the_next_gradient():
    layer = keras_mtl.layers.GradientReversal()
    layer.build((None, 4))
    variable = layer.strength_variable
    layer.strength = 0.25
    assert layer.strength_variable is variable
    assert layer.strength == 0.25
    grad = backend_gradient(lambda v: 2.0 * layer(v), X)
    np.testing.assert_allclose(grad, np.full_like(X, -0.5))
    assert not variable.trainable
    assert layer.trainable_weights == []


def trunk_and_head_model(strength=1.0):
    x = keras.Input((4,))
    h = keras.layers.Dense(6, activation="tanh", name="trunk",
                           kernel_initializer=seeded(0))(x)
    h = keras_mtl.layers.GradientReversal(strength, name="reversal")(h)
    y = keras.layers.Dense(1, name="head", kernel_initializer=seeded(1))(h)
    return keras.Model(x, y)


def test_strength_used_by_the_compiled_step_follows_the_schedule():
    # A zero strength stops every gradient to the trunk: if the step kept
    # using the initial strength 1.0 (stale state, retracing needed), the
    # trunk would move.
    model = trunk_and_head_model(strength=1.0)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    trunk = [to_numpy(w) for w in model.get_layer("trunk").weights]
    head = [to_numpy(w) for w in model.get_layer("head").weights]
    schedule = keras_mtl.callbacks.GradientReversalSchedule(
        schedule=lambda progress: 0.0
    )
    model.fit(X, np.ones((5, 1)), batch_size=2, epochs=2, verbose=0,
              callbacks=[schedule])
    for before, w in zip(trunk, model.get_layer("trunk").weights):
        np.testing.assert_array_equal(to_numpy(w), before)
    moved = [
        np.abs(to_numpy(w) - b).max()
        for w, b in zip(model.get_layer("head").weights, head)
    ]
    assert max(moved) > 1e-4
    assert model.get_layer("reversal").strength == 0.0


def test_dann_schedule_values_during_fit():
    model = trunk_and_head_model(strength=0.0)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # `self.model` syncs the JAX training state into the variables.
            seen.append(self.model.get_layer("reversal").strength)

    recorder = Recorder()
    schedule = keras_mtl.callbacks.GradientReversalSchedule()
    history = model.fit(X, np.ones((5, 1)), batch_size=2, epochs=2,
                        verbose=0, callbacks=[schedule, recorder])
    total = 2 * 3  # epochs * ceil(5 / 2)
    expected = [2.0 / (1.0 + math.exp(-10.0 * s / total)) - 1.0
                for s in range(total)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-7)
    assert seen[0] == 0.0 and seen[-1] > 0.98
    np.testing.assert_allclose(
        history.history["gradient_reversal_strength"],
        [expected[2], expected[5]], rtol=1e-6,
    )


def test_schedule_targets_named_layers_and_total_steps():
    x = keras.Input((4,))
    a = keras_mtl.layers.GradientReversal(name="a")(x)
    b = keras_mtl.layers.GradientReversal(name="b")(x)
    model = keras.Model(x, keras.layers.Dense(1)(a + b))
    model.compile("sgd", "mse")
    schedule = keras_mtl.callbacks.GradientReversalSchedule(
        schedule=lambda p: 3.0 * p, total_steps=4, layers=["a"]
    )
    model.fit(X, np.ones((5, 1)), batch_size=5, epochs=3, verbose=0,
              callbacks=[schedule])
    assert model.get_layer("a").strength == pytest.approx(1.5)
    assert model.get_layer("b").strength == 1.0
    assert schedule.strength_at(7.0) == 3.0  # progress is clipped to 1


def test_schedule_errors():
    model = trunk_and_head_model()
    with pytest.raises(ValueError, match="schedule=3"):
        keras_mtl.callbacks.GradientReversalSchedule(schedule=3)
    with pytest.raises(ValueError, match="gamma=-1"):
        keras_mtl.callbacks.GradientReversalSchedule(gamma=-1)
    with pytest.raises(ValueError, match="total_steps=0"):
        keras_mtl.callbacks.GradientReversalSchedule(total_steps=0)
    with pytest.raises(ValueError, match="layers="):
        keras_mtl.callbacks.GradientReversalSchedule(layers=[3])
    unknown = keras_mtl.callbacks.GradientReversalSchedule(layers=["nope"])
    unknown.set_model(model)
    unknown.set_params({"epochs": 1, "steps": 2})
    with pytest.raises(ValueError, match="'nope'"):
        unknown.on_train_begin()
    no_steps = keras_mtl.callbacks.GradientReversalSchedule()
    no_steps.set_model(model)
    no_steps.set_params({"epochs": 1, "steps": None})
    with pytest.raises(ValueError, match="steps=None"):
        no_steps.on_train_begin()
    negative = keras_mtl.callbacks.GradientReversalSchedule(
        schedule=lambda p: -1.0
    )
    with pytest.raises(ValueError, match="schedule\\(progress\\)=-1.0"):
        negative.strength_at(0.5)
    plain = keras.Model(model.input, model.get_layer("trunk").output)
    empty = keras_mtl.callbacks.GradientReversalSchedule()
    empty.set_model(plain)
    empty.set_params({"epochs": 1, "steps": 2})
    with pytest.raises(ValueError, match="no GradientReversal layer"):
        empty.on_train_begin()


def test_schedule_config_round_trip():
    schedule = keras_mtl.callbacks.GradientReversalSchedule(
        gamma=5.0, max_strength=0.5, total_steps=10, layers=["a"]
    )
    clone = keras_mtl.callbacks.GradientReversalSchedule.from_config(
        schedule.get_config()
    )
    assert clone.get_config() == schedule.get_config()
    assert clone.strength_at(0.3) == schedule.strength_at(0.3)
    assert schedule.strength_at(0.3) == pytest.approx(
        0.5 * (2 / (1 + math.exp(-1.5)) - 1)
    )


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True])
def test_invalid_strength(bad):
    with pytest.raises(ValueError, match="strength="):
        keras_mtl.layers.GradientReversal(strength=bad)
    layer = keras_mtl.layers.GradientReversal()
    with pytest.raises(ValueError, match="strength="):
        layer.strength = bad


def test_config_and_keras_file_round_trips_keep_the_strength(tmp_path):
    layer = keras_mtl.layers.GradientReversal(strength=0.7)
    assert_config_round_trip(layer, X)
    model = trunk_and_head_model()
    model.get_layer("reversal").strength = 0.3
    loaded = assert_keras_file_round_trip(model, X, tmp_path)
    assert loaded.get_layer("reversal").strength == pytest.approx(0.3)
    assert isinstance(loaded.get_layer("reversal"),
                      keras_mtl.layers.GradientReversal)
