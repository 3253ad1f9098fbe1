"""MoDo and SDMGrad, the rules that read independent batches: their
recurrences against float64 references and TorchJD's values, and their
part-major Jacobian."""

import keras
import numpy as np
import pytest

from keras_mtl import aggregators
from tests.aggregators import float64_references as ref
from tests.helpers import to_numpy


def _parts(num_tasks, num_batches, seed, scales=None):
    rng = np.random.default_rng(seed)
    parts = rng.normal(size=(num_batches, num_tasks, 12))
    if scales is not None:
        parts = parts * np.asarray(scales)[None, :, None]
    return parts


def _expected_direction(parts, task_weights):
    if len(parts) == 3:
        return task_weights @ parts[2]
    return task_weights @ (parts[0] + parts[1]) / 2.0


def _follow(agg, parts, step, steps, weights_atol, rtol, atol):
    """Runs `agg` for `steps` calls on the part-major Jacobian of `parts`
    against the float64 recurrence `step(cross, weights) -> (new weights,
    applied weights)`, from uniform weights; `atol` is relative to the
    largest entry. Returns the last expected weights, row weights and
    state."""
    num_tasks, width = parts.shape[1:]
    jacobian = parts.reshape(-1, width).astype("float32")
    expected, state = np.full(num_tasks, 1.0 / num_tasks), None
    for _ in range(steps):
        expected, applied = step(parts[0] @ parts[1].T, expected)
        direction, row_weights, state = agg.aggregate(jacobian, state=state)
        np.testing.assert_allclose(to_numpy(state["weights"]), expected,
                                   atol=weights_atol)
        np.testing.assert_allclose(
            to_numpy(direction), _expected_direction(parts, applied),
            rtol=rtol, atol=atol * np.abs(parts).max())
    return expected, row_weights, state


@pytest.mark.parametrize("num_batches", [2, 3])
@pytest.mark.parametrize("scales", [None, [1e-2, 1.0, 1e2, 3.0]])
def test_modo_follows_its_recurrence(num_batches, scales):
    parts = _parts(4, num_batches, seed=1, scales=scales)
    gamma = 0.1 if scales is None else 1e-5
    agg = aggregators.MoDo(gamma=gamma, rho=0.1, num_batches=num_batches)

    def step(cross, weights):
        weights = ref.modo_weights(cross, weights, gamma=gamma)
        return weights, weights

    expected, row_weights, _ = _follow(agg, parts, step, steps=3,
                                       weights_atol=2e-5, rtol=1e-4,
                                       atol=1e-3)
    task_weights = to_numpy(row_weights).reshape(num_batches, 4).sum(0)
    np.testing.assert_allclose(task_weights, expected, atol=2e-5)


def test_modo_uses_the_cross_batch_matrix_not_a_gramian():
    # Orthogonal batches: J_1 J_2^T = 0, so only the regulariser moves the
    # weights (towards uniform), however large each batch's Gramian is.
    first = np.array([[10.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    second = np.array([[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    agg = aggregators.MoDo(num_batches=2)
    _, _, state = agg.aggregate(np.vstack([first, second]).astype("float32"))
    np.testing.assert_allclose(to_numpy(state["weights"]), [0.5, 0.5],
                               atol=1e-6)


def _sdmgrad_weights(agg, cross, state=None):
    """The task weights SDMGrad applies for a given cross matrix: with
    `J_1 = cross`, `J_2 = I` and `J_3 = I`, `J_1 J_2^T = cross`."""
    num = len(cross)
    eye = np.eye(num)
    jacobian = np.vstack([cross, eye, eye]).astype("float32")
    direction, _, state = agg.aggregate(jacobian, state=state)
    return to_numpy(direction), state


def test_sdmgrad_torchjd_values():
    # TorchJD's test_sdmgrad.py, one inner step.
    agg = aggregators.SDMGrad(num_iterations=1)
    weights, state = _sdmgrad_weights(agg, np.diag([1.0, 0.25, 0.0]))
    np.testing.assert_allclose(weights, [1 / 13, 1 / 13, 11 / 13], atol=1e-6)
    weights, _ = _sdmgrad_weights(agg, np.eye(3), state)
    np.testing.assert_allclose(weights, [6 / 13, 6 / 13, 1 / 13], atol=1e-6)
    agg = aggregators.SDMGrad(num_iterations=1, preference=[0.0, 0.0, 1.0])
    weights, _ = _sdmgrad_weights(agg, np.diag([1.0, 0.25, 0.0]))
    np.testing.assert_allclose(weights, [0.0, 0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("num_batches", [2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"lr": 0.05, "momentum": 0.0},
                                    {"preference": [0.1, 0.2, 0.3, 0.4]}])
def test_sdmgrad_follows_its_recurrence(num_batches, kwargs):
    parts = _parts(4, num_batches, seed=2, scales=[1e-2, 1.0, 1e2, 3.0])
    agg = aggregators.SDMGrad(num_batches=num_batches, **kwargs)
    options = {"lr": kwargs.get("lr", 10.0),
               "momentum": kwargs.get("momentum", 0.5),
               "preference": kwargs.get("preference")}

    def step(cross, weights):
        return ref.sdmgrad_weights(cross, weights, **options)

    _, _, state = _follow(agg, parts, step, steps=2, weights_atol=1e-4,
                          rtol=1e-3, atol=1e-4)
    assert np.isfinite(to_numpy(state["solver_residual"]))


@pytest.mark.parametrize("make, message", [
    (lambda: aggregators.MoDo(num_batches=4), "num_batches"),
    (lambda: aggregators.MoDo(gamma=0.0), "gamma"),
    (lambda: aggregators.MoDo(rho=-1.0), "rho"),
    (lambda: aggregators.SDMGrad(momentum=1.0), "momentum"),
    (lambda: aggregators.SDMGrad(lr=-1.0), "lr"),
    (lambda: aggregators.SDMGrad(num_iterations=0), "num_iterations"),
    (lambda: aggregators.SDMGrad(preference=[-1.0, 1.0]), "preference"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_jacobian_without_a_row_per_part_is_refused():
    with pytest.raises(ValueError, match="3 rows per task"):
        aggregators.MoDo().aggregate(np.ones((4, 5), "float32"))
    with pytest.raises(ValueError, match="preference"):
        aggregators.SDMGrad(preference=[1.0, 1.0], num_batches=2).aggregate(
            np.ones((6, 5), "float32"))


@pytest.mark.parametrize("scale", [1.0, 1e6, 1e9])
def test_simplex_projection_of_large_entries(scale):
    from keras_mtl.src.aggregators.solver_ops import project_onto_simplex

    rng = np.random.default_rng(0)
    for v in [rng.normal(size=5) * scale, np.array([3.0, -2.0, 1e-3]) * scale,
              np.full(4, scale)]:
        got = to_numpy(project_onto_simplex(
            keras.ops.convert_to_tensor(v.astype("float32"))))
        np.testing.assert_allclose(got, ref.simplex_projection(v),
                                   atol=1e-6)


def test_sdmgrad_with_a_cross_matrix_of_negative_diagonal():
    # Every `A_ii < 0`: the scale is 0 and `A / 1e-8` is huge; the
    # projection still returns a point of the simplex.
    cross = np.array([[-0.57, 0.12, 0.01], [-0.18, -0.08, 0.03],
                      [0.66, 0.09, -0.10]])
    agg = aggregators.SDMGrad(lr=0.5)
    weights, state = _sdmgrad_weights(agg, cross)
    _, expected = ref.sdmgrad_weights(cross, np.full(3, 1 / 3), lr=0.5)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
