"""Mixed precision: per-task losses, Jacobians and solvers in float32, and
loss scaling that is right for per-task gradients.

With `"mixed_float16"`, Keras wraps the optimizer in a
`LossScaleOptimizer`: each task loss is differentiated times the scale, the
Jacobian is unscaled in float32 before the aggregation, and the optimizer
receives the aggregate times the scale (it unscales it again). An overflow
skips the step: weights, optimizer and aggregator state stay as they were,
and the scale halves.
"""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy


@pytest.fixture
def policy():
    """Sets a global dtype policy for the test, then restores float32."""
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def one_step(aggregator, mode, policy_name, set_policy, lr=0.1):
    """Weights before and after one SGD step, and the model."""
    set_policy(policy_name)
    model = mtl_model(seed=2)
    model.compile(keras.optimizers.SGD(lr), loss=LOSSES,
                  aggregator=aggregator, gradient_mode=mode,
                  features="features")
    x, y = make_data(32)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model


FLOAT32_STEPS = {}


def weights(model):
    return [to_numpy(v).astype("float64") for v in model.trainable_variables]


@pytest.mark.parametrize("aggregator,mode", [
    ("mgda", "parameters"), ("pcgrad", "features"),
    ("uncertainty_weighting", "parameters"),
    # The scale-dependent Nash-MTL: its Gramian must be unscaled by the
    # square of the loss scale.
    ("nash_mtl", "gramian"),
])
@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_one_mixed_precision_step_equals_float32_step(
        aggregator, mode, name, policy):
    """The update of one step matches float32 to the precision of the
    forward pass: gradients that reach the optimizer scaled wrongly (e.g.
    divided by the loss scale and never multiplied by it) change the weights
    by a factor of the scale, and fail."""
    start = mtl_model(seed=2)
    before = weights(start)
    key = (str(aggregator), mode)
    if key not in FLOAT32_STEPS:  # Shared by both mixed policies.
        FLOAT32_STEPS[key] = weights(one_step(aggregator, mode, "float32",
                                              policy))
    reference = FLOAT32_STEPS[key]
    mixed = one_step(aggregator, mode, name, policy)
    assert mixed.trainable_variables[0].dtype == "float32"
    scaled = isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (name == "mixed_float16")
    # bfloat16 keeps 8 bits of mantissa: about 1 % per operation.
    tolerance = 1e-1 if name == "mixed_bfloat16" else 5e-3
    for b, r, m in zip(before, reference, weights(mixed)):
        expected, got = r - b, m - b
        scale = max(np.abs(expected).max(), 1e-3)
        assert np.abs(got - expected).max() <= tolerance * scale, (
            np.abs(got - expected).max(), scale)


def test_overflow_skips_the_step_and_lowers_the_scale(policy):
    policy("mixed_float16")
    model = mtl_model(seed=2)
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, aggregator="gradvac")
    x, y = make_data(32)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # Builds the state.
    optimizer = model.optimizer
    optimizer.dynamic_scale.assign(2.0 ** 100)  # float16 gradients overflow.
    before = weights(model)
    state = {k: to_numpy(v) for k, v in model.balancer.state.items()}
    iterations = int(to_numpy(optimizer.iterations))
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert history.history["skipped_steps"][-1] == 1.0
    for b, a in zip(before, weights(model)):
        np.testing.assert_array_equal(b, a)
    for key, value in state.items():
        np.testing.assert_array_equal(value,
                                      to_numpy(model.balancer.state[key]))
    assert int(to_numpy(optimizer.iterations)) == iterations
    assert float(to_numpy(optimizer.dynamic_scale)) == 2.0 ** 99
    # The next step, at the lowered scale, is applied.
    optimizer.dynamic_scale.assign(2.0 ** 10)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert int(to_numpy(optimizer.iterations)) == iterations + 1


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_tracks_float32(name, policy):
    x, y = make_data(128)
    finals = {}
    for policy_name in ("float32", name):
        policy(policy_name)
        model = mtl_model(seed=4)
        model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                      aggregator="mgda")
        history = model.fit(x, y, batch_size=32, epochs=4, shuffle=False,
                            verbose=0)
        finals[policy_name] = history.history["loss"]
    assert finals[name][-1] < finals[name][0]
    np.testing.assert_allclose(finals[name], finals["float32"], rtol=3e-2)


def test_the_jacobian_reaches_the_solver_in_float32(policy):
    """Under mixed_float16 the aggregator sees float32 input."""
    seen = []

    class Spy(keras_mtl.aggregators.UPGrad):
        def compute_weights(self, num_tasks, gramian, losses, state,
                            seed=None):
            seen.append((keras.backend.standardize_dtype(gramian.dtype),
                         keras.backend.standardize_dtype(losses.dtype)))
            return super().compute_weights(num_tasks, gramian, losses, state,
                                           seed)

    policy("mixed_float16")
    model = mtl_model(seed=2)
    # The dtypes are recorded while the step is traced (or runs eagerly).
    model.compile("sgd", loss=LOSSES, aggregator=Spy(),
                  gradient_mode="features", features="features")
    x, y = make_data(16)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert seen and all(s == ("float32", "float32") for s in seen), seen
