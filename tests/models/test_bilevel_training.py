"""`fit` with the bilevel rules (Auto-Lambda, MOML): one step against the
same procedure run with plain Keras gradients at the virtual parameters and
float64 arithmetic (tests/aggregators/float64_references.py)."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.aggregators import float64_references as ref
from tests.helpers import BACKEND
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import per_task_gradients
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")
LEARNING_RATE = 0.5
_LOSS_OBJECTS = {**LOSSES, "reg": keras.losses.MeanSquaredError()}


class _PlainKeras:
    """Row losses and gradients of the interleaved halves (sample `i` in
    part `i mod 2`) at any flat parameter vector, by plain Keras."""

    def __init__(self, model, x, y):
        self.model = model
        self.variables = model.trainable_variables
        self.parts = [(x[s::2], {t: y[t][s::2] for t in TASKS})
                      for s in range(2)]
        self.theta = self.flatten({v.path: to_numpy(v)
                                   for v in self.variables})

    def flatten(self, by_path):
        return np.concatenate([np.ravel(by_path[v.path]).astype("float64")
                               for v in self.variables])

    def _assign(self, flat):
        start = 0
        for v in self.variables:
            size = int(np.prod(v.shape))
            v.assign(flat[start: start + size].reshape(v.shape)
                     .astype("float32"))
            start += size

    def losses(self, flat):
        self._assign(flat)
        rows = []
        for x, y in self.parts:
            pred = self.model(x)
            rows += [float(to_numpy(_LOSS_OBJECTS[t](y[t], pred[t])))
                     for t in TASKS]
        self._assign(self.theta)
        return np.array(rows)

    def gradient(self, flat, cotangent):
        self._assign(flat)
        total = np.zeros_like(self.theta)
        for s, (x, y) in enumerate(self.parts):
            c = cotangent[3 * s: 3 * s + 3]
            if not np.any(c):
                continue
            grads = per_task_gradients(self.model, x, y, TASKS)
            total += sum(c[i] * self.flatten(grads[t])
                         for i, t in enumerate(TASKS))
        self._assign(self.theta)
        return total


# Eager and compiled on TensorFlow; compiled on JAX (its eager mode is
# traced op by op: slow, and the compiled step is what JAX users run);
# eager on PyTorch. MOML's step runs the same probe as Auto-Lambda's: on
# JAX only Auto-Lambda and FORUM (CI time).
MODES = {"tensorflow": [False, True], "jax": [True]}.get(BACKEND, [False])


@pytest.mark.parametrize("jit_compile", MODES)
@pytest.mark.parametrize("name", ["auto_lambda"] if BACKEND == "jax"
                         else ["auto_lambda", "moml"])
def test_one_bilevel_step_matches_plain_keras(name, jit_compile):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(LEARNING_RATE), loss=LOSSES,
                  aggregator=name, jit_compile=jit_compile)
    plain = _PlainKeras(model, x, y)
    alpha = np.full(3, 1.0 / 3.0)
    if name == "auto_lambda":
        hyper = ref.auto_lambda_hypergradient(
            plain.losses, plain.gradient, plain.theta, alpha, LEARNING_RATE)
    else:
        hyper = ref.moml_hypergradient(plain.gradient, plain.theta, alpha,
                                       0.1)
    alpha, *_ = ref.adam(alpha, hyper, 0.0, 0.0, 0, 1e-3)
    weights = ref.softmax(alpha)
    whole = per_task_gradients(model, x, y, TASKS)
    expected = -LEARNING_RATE * sum(
        w * plain.flatten(whole[t]) for w, t in zip(weights, TASKS))

    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False,
                        verbose=0)
    moved = plain.flatten({v.path: to_numpy(v)
                           for v in model.trainable_variables}) - plain.theta
    np.testing.assert_allclose(to_numpy(model.balancer.state["alpha"]),
                               alpha, atol=2e-6)
    np.testing.assert_allclose(moved, expected, rtol=2e-3, atol=2e-5)
    logged = [history.history[f"{t}_weight"][0] for t in TASKS]
    np.testing.assert_allclose(logged, weights, atol=1e-6)


def test_bilevel_state_resumes_from_a_checkpoint(tmp_path):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                  aggregator=keras_mtl.aggregators.AutoLambda(
                      learning_rate=0.05))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for key in ("alpha", "adam_m", "adam_v", "step"):
        np.testing.assert_allclose(to_numpy(loaded.balancer.state[key]),
                                   to_numpy(model.balancer.state[key]))
    assert float(to_numpy(loaded.balancer.state["step"])) == 4.0
    assert loaded.aggregator.learning_rate == 0.05


TRUNK = ["trunk_1/kernel", "trunk_1/bias", "features/kernel",
         "features/bias"]


@pytest.mark.parametrize("jit_compile", MODES)
def test_one_forum_step_matches_plain_keras(jit_compile):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(LEARNING_RATE), loss=LOSSES,
                  aggregator=keras_mtl.aggregators.FORUM(inner_steps=2),
                  jit_compile=jit_compile)
    plain = _PlainKeras(model, x, y)
    alpha = np.full(3, 1.0 / 3.0)
    inner = np.r_[ref.softmax(alpha), np.zeros(3)]
    theta = plain.theta
    for _ in range(2):
        theta = theta - 0.1 * plain.gradient(theta, inner)
    decrease = plain.losses(plain.theta)[:3] - plain.losses(theta)[:3]
    parts = [per_task_gradients(model, part_x, part_y, TASKS)
             for part_x, part_y in plain.parts]
    jacobian = np.stack([
        np.concatenate([parts[s][t][p].ravel() for p in TRUNK])
        for s in range(2) for t in TASKS])
    direction, alpha_gradient, _ = ref.forum(jacobian, decrease, alpha)
    alpha, *_ = ref.adam(alpha, alpha_gradient, 0.0, 0.0, 0, 1e-3)
    whole = per_task_gradients(model, x, y, TASKS)
    start = {v.path: to_numpy(v) for v in model.trainable_variables}

    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    moved = {v.path: to_numpy(v) - start[v.path]
             for v in model.trainable_variables}
    got = np.concatenate([moved[p].ravel() for p in TRUNK])
    np.testing.assert_allclose(got, -LEARNING_RATE * direction, rtol=2e-3,
                               atol=2e-5)
    # Each head takes its own task's gradient on the whole batch.
    for task in TASKS:
        for name in ("kernel", "bias"):
            path = f"head_{task}/{name}"
            np.testing.assert_allclose(
                moved[path], -LEARNING_RATE * whole[task][path], rtol=2e-3,
                atol=2e-5)
    np.testing.assert_allclose(to_numpy(model.balancer.state["alpha"]),
                               alpha, atol=2e-6)


def test_a_primary_task_out_of_range_is_refused_at_compile():
    model = mtl_model()
    with pytest.raises(ValueError, match="primary"):
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      aggregator=keras_mtl.aggregators.AutoLambda(
                          primary=[3]))
    # Refused before `compile` changed anything: no optimizer was set (the
    # PyTorch backend's model has no `optimizer` attribute before that).
    optimizer = getattr(model, "optimizer", None)
    assert optimizer is None or not optimizer.built
    assert optimizer is None and model.balancer is None


def test_forum_refuses_aggregation_groups_and_features_mode():
    model = mtl_model()
    with pytest.raises(ValueError, match="aggregation_groups"):
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      aggregator="forum", aggregation_groups="layer")
    with pytest.raises(ValueError, match="gradient_mode"):
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      aggregator="forum", gradient_mode="features",
                      features="features")

