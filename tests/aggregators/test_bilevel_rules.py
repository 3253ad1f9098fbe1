"""Auto-Lambda and MOML: the hypergradient of one virtual step, on a
quadratic problem, against the float64 recurrences of LibMTL's procedure
(tests/aggregators/float64_references.py)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mtl
from keras_mtl.src.models.probe import Probe
from tests.aggregators import float64_references as ref
from tests.helpers import BACKEND
from tests.helpers import to_numpy


def _quadratic(num_tasks, num_params=7, scale=1.0, seed=0):
    """Row losses `1/2 (theta - c_r)^T A_r (theta - c_r)` (2T rows, T per
    half), in float64 (NumPy) and as a `Probe` (keras.ops, float32)."""
    rng = np.random.default_rng(seed)
    rows = 2 * num_tasks
    factors = rng.normal(size=(rows, num_params, num_params))
    curvature = factors @ factors.transpose(0, 2, 1) / num_params
    curvature *= np.logspace(0, np.log10(scale), rows)[:, None, None]
    centres = rng.normal(size=(rows, num_params))
    theta = rng.normal(size=num_params)

    def losses(t):
        d = t - centres
        return 0.5 * np.einsum("rp,rpq,rq->r", d, curvature, d)

    def gradient(t, c):
        return c @ np.einsum("rpq,rq->rp", curvature, t - centres)

    a = ops.convert_to_tensor(curvature, "float32")
    cs = ops.convert_to_tensor(centres, "float32")

    def evaluate(values, cotangents, half):
        rows = slice(half * num_tasks, (half + 1) * num_tasks)
        d = values[0][None] - cs[rows]
        slopes = ops.einsum("rpq,rq->rp", a[rows], d)
        losses_ = 0.5 * ops.sum(d * slopes, axis=1)
        grads = None if cotangents is None else [cotangents @ slopes]
        return losses_, grads

    variable = keras.Variable(theta.astype("float32"))
    probe = Probe(num_tasks, [variable], evaluate, 0.3)
    return probe, losses, gradient, theta


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_auto_lambda_hypergradient(num_tasks, scale):
    probe, losses, gradient, theta = _quadratic(num_tasks, scale=scale)
    alpha = np.linspace(-0.5, 0.5, num_tasks)
    agg = keras_mtl.aggregators.AutoLambda()
    got, _ = agg.hypergradient(probe, ops.softmax(alpha.astype("float32")))
    expected = ref.auto_lambda_hypergradient(losses, gradient, theta, alpha,
                                             0.3)
    # A central difference of float32 losses: ~1e-3 relative.
    np.testing.assert_allclose(to_numpy(got), expected, rtol=2e-2,
                               atol=2e-3 * np.abs(expected).max())


def test_auto_lambda_primary_tasks_and_inner_lr():
    probe, losses, gradient, theta = _quadratic(3)
    alpha = np.zeros(3)
    agg = keras_mtl.aggregators.AutoLambda(inner_lr=0.05, primary=[0, 2])
    got, _ = agg.hypergradient(probe, ops.softmax(alpha.astype("float32")))
    expected = ref.auto_lambda_hypergradient(
        losses, gradient, theta, alpha, 0.05, outer=np.array([1.0, 0, 1.0]))
    np.testing.assert_allclose(to_numpy(got), expected, rtol=2e-2,
                               atol=2e-3 * np.abs(expected).max())
    with pytest.raises(ValueError, match="primary"):
        agg.initial_state(2)


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_moml_hypergradient(num_tasks, scale):
    probe, _, gradient, theta = _quadratic(num_tasks, scale=scale, seed=1)
    alpha = np.linspace(0.3, -0.3, num_tasks)
    agg = keras_mtl.aggregators.MOML()
    got, logged = agg.hypergradient(probe,
                                    ops.softmax(alpha.astype("float32")))
    expected = ref.moml_hypergradient(gradient, theta, alpha, 0.1)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-3,
                               atol=1e-4 * np.abs(expected).max() + 1e-7)
    assert float(to_numpy(logged["gap"])) < 1e-5


@pytest.mark.parametrize("name", ["auto_lambda", "moml"])
def test_meta_updates_take_adam_steps(name):
    probe, losses, gradient, theta = _quadratic(3, seed=2)
    agg = keras_mtl.aggregators.get(name)
    state = agg.initial_state(3)
    alpha, m, v, step = np.full(3, 1.0 / 3.0), 0.0, 0.0, 0
    for _ in range(3):
        state = agg.meta_update(probe, state)
        if name == "auto_lambda":
            g = ref.auto_lambda_hypergradient(losses, gradient, theta, alpha,
                                              0.3)
        else:
            g = ref.moml_hypergradient(gradient, theta, alpha, 0.1)
        alpha, m, v, step = ref.adam(alpha, g, m, v, step, 1e-3)
    np.testing.assert_allclose(to_numpy(state["alpha"]), alpha, atol=2e-5)
    assert float(to_numpy(state["step"])) == 3.0
    weights, _ = agg.compute_weights(3, None, None, state)
    np.testing.assert_allclose(to_numpy(weights), ref.softmax(alpha),
                               atol=1e-6)


@pytest.mark.parametrize("name", ["auto_lambda", "moml"])
def test_zero_outer_gradient_keeps_weights(name):
    # Every loss at its minimum: the hypergradient is 0, not NaN.
    num_tasks = 2

    def evaluate(values, cotangents, half):
        rows = ops.zeros((num_tasks,))
        grads = None if cotangents is None else [
            ops.zeros((cotangents.shape[0], 3))]
        return rows, grads

    probe = Probe(num_tasks, [keras.Variable(np.zeros(3, "float32"))],
                  evaluate, 0.1)
    agg = keras_mtl.aggregators.get(name)
    state = agg.meta_update(probe, agg.initial_state(num_tasks))
    np.testing.assert_allclose(to_numpy(state["alpha"]), [0.5, 0.5])


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="inner_lr"):
        keras_mtl.aggregators.AutoLambda(inner_lr=0.0)
    with pytest.raises(ValueError, match="primary"):
        keras_mtl.aggregators.AutoLambda(primary=[-1])
    with pytest.raises(ValueError, match="learning_rate"):
        keras_mtl.aggregators.MOML(learning_rate=-1.0)
    with pytest.raises(ValueError, match="inner_lr"):
        keras_mtl.aggregators.MOML(inner_lr=0.0)


def _forum_case(num_tasks, scale, seed):
    rng = np.random.default_rng(seed)
    jacobian = rng.normal(size=(2 * num_tasks, 11))
    jacobian *= np.logspace(-np.log10(scale), np.log10(scale),
                            2 * num_tasks)[rng.permutation(2 * num_tasks),
                                           None]
    decrease = rng.normal(size=num_tasks) * scale
    alpha = rng.normal(size=num_tasks) * 0.3
    return jacobian, decrease, alpha


# Three random problems per size on PyTorch; one on JAX and TensorFlow,
# where each eager call of the solver loops compiles (CI time).
SEEDS = [0, 1, 2] if BACKEND == "torch" else [0]


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("seed", SEEDS)
def test_forum_step_matches_the_original_programme(num_tasks, scale, seed):
    jacobian, decrease, alpha = _forum_case(num_tasks, scale, seed)
    agg = keras_mtl.aggregators.FORUM()
    state = {**agg.initial_state(num_tasks),
             "alpha": ops.convert_to_tensor(alpha, "float32"),
             "inner_decrease": ops.convert_to_tensor(decrease, "float32"),
             "epoch": ops.convert_to_tensor(1.0)}
    lambdas = np.random.default_rng(seed).dirichlet(np.ones(num_tasks))
    state["lambdas"] = ops.convert_to_tensor(lambdas, "float32")
    direction, _, new = agg.aggregate(jacobian.astype("float32"), None,
                                      state)
    expected, alpha_gradient, expected_lambdas = ref.forum(
        jacobian, decrease, alpha, epoch=1, lambdas=lambdas)
    assert ref.cosine(to_numpy(direction), expected) > 0.9999
    np.testing.assert_allclose(to_numpy(direction), expected, rtol=2e-3,
                               atol=2e-3 * np.linalg.norm(expected))
    np.testing.assert_allclose(to_numpy(new["lambdas"]), expected_lambdas,
                               atol=2e-4)
    step, *_ = ref.adam(alpha, alpha_gradient, 0.0, 0.0, 0, 1e-3)
    np.testing.assert_allclose(to_numpy(new["alpha"]), step, atol=2e-6)
    assert float(to_numpy(new["solver_gap"])) < 1e-4


def test_forum_inner_steps_measure_the_inner_decrease():
    probe, losses, gradient, theta = _quadratic(3, seed=3)
    agg = keras_mtl.aggregators.FORUM(inner_lr=0.05, inner_steps=4)
    state = agg.meta_update(probe, agg.initial_state(3))
    w = np.full(3, 1.0 / 3.0)
    point = theta
    for _ in range(4):
        point = point - 0.05 * gradient(point, np.r_[w, np.zeros(3)])
    expected = losses(theta)[:3] - losses(point)[:3]
    np.testing.assert_allclose(to_numpy(state["inner_decrease"]), expected,
                               rtol=1e-4, atol=1e-5)
