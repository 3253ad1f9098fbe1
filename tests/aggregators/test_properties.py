"""Defining properties of MGDA and PCGrad, checked on random Jacobians."""

import hypothesis.strategies as st
import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings

import keras_mtl
from keras_mtl.src import backend
from tests.helpers import DEGENERATE_CASES
from tests.helpers import degenerate_jacobian
from tests.helpers import to_numpy

# The same keras.ops maths on every backend: 25 examples on PyTorch (the
# fastest eagerly), 8 on JAX and TensorFlow (CI time).
SETTINGS = settings(
    max_examples=25 if keras.config.backend() == "torch" else 8,
    deadline=None, derandomize=True)


def _compiled(aggregator):
    # One compilation per Jacobian shape: JAX compiles a solver's loops on
    # every eager call (elsewhere eager calls are cheaper than compiling).
    step = lambda jacobian: aggregator.aggregate(jacobian)  # noqa: E731
    return backend.jit(step) if keras.config.backend() == "jax" else step


MGDA_STEP = _compiled(keras_mtl.aggregators.MGDA())
CAGRAD_STEP = _compiled(keras_mtl.aggregators.CAGrad())
CAGRAD_ONE_ITERATION = _compiled(keras_mtl.aggregators.CAGrad(max_iters=1))


@st.composite
def jacobians(draw, max_tasks=6, max_params=8):
    num_tasks = draw(st.integers(2, max_tasks))
    num_params = draw(st.integers(1, max_params))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 2, size=(num_tasks, 1))
    return (rng.normal(size=(num_tasks, num_params)) * scales).astype("float32")


def _min_norm_reference(jacobian, iterations=20000):
    """Projected-gradient solution of min ||w^T J|| on the simplex, in NumPy."""
    gramian = jacobian.astype("float64") @ jacobian.T.astype("float64")
    gramian /= np.trace(gramian)
    w = np.full(len(gramian), 1.0 / len(gramian))
    step = 1.0 / max(np.linalg.eigvalsh(gramian)[-1], 1e-12)
    for _ in range(iterations):
        v = w - step * gramian @ w
        # Euclidean projection onto the simplex.
        u = np.sort(v)[::-1]
        css = np.cumsum(u) - 1.0
        rho = np.nonzero(u - css / np.arange(1, len(u) + 1) > 0)[0][-1]
        w = np.maximum(v - css[rho] / (rho + 1.0), 0.0)
    return w @ jacobian


@SETTINGS
@given(jacobians())
def test_mgda_is_the_min_norm_point_of_the_convex_hull(jacobian):
    direction, weights, state = MGDA_STEP(jacobian)
    direction, weights = to_numpy(direction), to_numpy(weights)
    assert np.all(weights >= -1e-6) and abs(weights.sum() - 1.0) < 1e-5
    reference = _min_norm_reference(jacobian)
    scale = np.abs(jacobian).max()
    assert np.linalg.norm(direction) <= np.linalg.norm(reference) + 2e-3 * scale
    # KKT / Frank-Wolfe optimality: <g_i, d> >= ||d||^2 for every task.
    products = jacobian @ direction
    assert np.all(products >= direction @ direction - 2e-3 * scale**2)
    assert float(to_numpy(state["solver_gap"])) < 1e-3


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8, 12])
def test_mgda_solver_is_exact_within_a_few_iterations_per_task(num_tasks):
    # Wolfe's algorithm: one iteration per task added or dropped. Frank-Wolfe
    # would take 20 to 50 on these problems and stop short of the optimum.
    rng = np.random.default_rng(num_tasks)
    shared = rng.normal(size=(1, 40))
    jacobian = (rng.normal(size=(num_tasks, 40)) + shared).astype("float32")
    direction, weights, state = keras_mtl.aggregators.MGDA().aggregate(jacobian)
    assert float(to_numpy(state["solver_iterations"])) <= 2 * num_tasks
    assert float(to_numpy(state["solver_gap"])) < 1e-5
    reference = _min_norm_reference(jacobian, iterations=50000)
    np.testing.assert_allclose(
        to_numpy(direction), reference, atol=1e-4 * np.abs(jacobian).max()
    )


@SETTINGS
@given(jacobians(max_tasks=2))
def test_pcgrad_removes_the_conflicting_component(jacobian):
    agg = keras_mtl.aggregators.PCGrad()
    direction = to_numpy(agg(jacobian))
    g1, g2 = jacobian.astype("float64")
    if g1 @ g2 < 0:
        p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
        p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
        # Each projected gradient is orthogonal to the other task's.
        expected = p1 + p2
    else:
        expected = g1 + g2
    np.testing.assert_allclose(
        direction, expected, rtol=1e-3, atol=1e-3 * np.abs(jacobian).max()
    )


@SETTINGS
@given(jacobians())
def test_pcgrad_projected_gradients_do_not_conflict_with_visited_tasks(
    jacobian,
):
    # With a fixed order, the last task visited by each row is never in
    # conflict with the row's projected gradient.
    agg = keras_mtl.aggregators.PCGrad(shuffle=False)
    num_tasks = len(jacobian)
    gramian = jacobian @ jacobian.T
    for i in range(num_tasks):
        only_i = np.zeros_like(jacobian)
        only_i[i] = jacobian[i]
        # Rebuild row i's projection step by step in NumPy.
        g = jacobian[i].astype("float64")
        for j in range(num_tasks):
            if j != i and g @ jacobian[j] < 0:
                g = g - (g @ jacobian[j]) / gramian[j, j] * jacobian[j]
        last = num_tasks - 1 if i != num_tasks - 1 else num_tasks - 2
        assert g @ jacobian[last] >= -1e-3 * np.abs(gramian).max()
    direction = to_numpy(agg(jacobian))
    assert np.all(np.isfinite(direction))


def test_pcgrad_is_reproducible_with_a_seed_and_random_without():
    import keras

    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(6, 5)).astype("float32")
    agg = keras_mtl.aggregators.PCGrad()
    a = agg.aggregate(jacobian, seed=keras.random.SeedGenerator(3))[1]
    b = agg.aggregate(jacobian, seed=keras.random.SeedGenerator(3))[1]
    np.testing.assert_allclose(to_numpy(a), to_numpy(b))
    gen = keras.random.SeedGenerator(3)
    draws = {tuple(np.round(to_numpy(agg.aggregate(jacobian, seed=gen)[1]), 5))
             for _ in range(8)}
    assert len(draws) > 1


@pytest.mark.parametrize("name", ["sum", "mean", "mgda", "pcgrad"])
@pytest.mark.parametrize("case", DEGENERATE_CASES)
def test_degenerate_inputs_give_finite_results(name, case):
    jacobian, g = degenerate_jacobian(case)
    agg = keras_mtl.aggregators.get(name)
    direction, weights, _ = agg.aggregate(jacobian)
    direction, weights = to_numpy(direction), to_numpy(weights)
    assert np.all(np.isfinite(direction)) and np.all(np.isfinite(weights))
    if name == "mgda":
        # Zero rows are left out, so a lone non-zero task still moves.
        if case == "one_zero_row":
            assert weights[1] == 0.0 and np.linalg.norm(direction) > 0
        if case == "opposite":
            np.testing.assert_allclose(direction, 0.0, atol=1e-5)
        if case in ("identical", "one_task"):
            np.testing.assert_allclose(direction, g[0], rtol=1e-4)
    if name == "pcgrad" and case == "identical":
        np.testing.assert_allclose(direction, 3 * g[0], rtol=1e-4)
    if name == "pcgrad" and case == "opposite":
        np.testing.assert_allclose(direction, 0.0, atol=1e-5)


@SETTINGS
@given(jacobians())
def test_upgrad_and_dualproj_never_conflict(jacobian):
    scale = np.abs(jacobian @ jacobian.T).max()
    for agg in (
        keras_mtl.aggregators.UPGrad(),
        keras_mtl.aggregators.DualProj(),
    ):
        direction = to_numpy(agg(jacobian))
        # The ridge reg_eps=1e-4 on the trace-normalised Gramian allows a
        # violation of that relative order.
        assert np.all(jacobian @ direction >= -2e-3 * scale), type(agg).__name__


@SETTINGS
@given(jacobians())
def test_imtlg_gives_equal_projections_on_unit_gradients(jacobian):
    direction = to_numpy(keras_mtl.aggregators.IMTLG()(jacobian))
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    projections = units @ direction
    rank = np.linalg.matrix_rank(jacobian)
    if rank == len(jacobian) and np.linalg.cond(jacobian @ jacobian.T) < 1e4:
        np.testing.assert_allclose(
            projections, projections.mean(),
            atol=1e-3 * np.abs(projections).max() + 1e-5)


@SETTINGS
@given(jacobians())
def test_config_has_equal_cosine_with_every_task(jacobian):
    direction = to_numpy(keras_mtl.aggregators.ConFIG()(jacobian))
    if np.linalg.cond(jacobian @ jacobian.T) > 1e4:
        return
    cosines = (jacobian @ direction) / (
        np.linalg.norm(jacobian, axis=1) * np.linalg.norm(direction))
    np.testing.assert_allclose(cosines, cosines.mean(), atol=2e-3)
    assert cosines.mean() > 0


def test_nash_mtl_reproduces_the_ecos_solution():
    # LibMTL without ECOS silently returns [1, 1] here; with ECOS the
    # official solver gives [2.36, 1.18] (reference notes, section 9).
    gramian = np.array([[1.0, -0.5], [-0.5, 4.0]], "float32")
    agg = keras_mtl.aggregators.NashMTL(max_norm=None)
    weights, state = agg.compute_weights(2, gramian, None, agg.initial_state(2))
    np.testing.assert_allclose(to_numpy(weights), [2.3617, 1.1809], atol=2e-3)
    assert float(to_numpy(state["solver_residual"])) < 1e-4


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 6),
    st.sampled_from([0.5, 1.0, 2.0]),
)
def test_fairgrad_weights_solve_the_fairness_condition(seed, num_tasks, alpha):
    # Gradients with a positive mean direction, so a positive solution exists.
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(1, 6))
    jacobian = (common + 0.5 * rng.normal(size=(num_tasks, 6))) * 10.0 ** (
        rng.uniform(-1, 1, size=(num_tasks, 1)))
    gramian = jacobian @ jacobian.T
    if np.any(np.linalg.solve(gramian + 1e-9 * np.eye(num_tasks),
                              np.ones(num_tasks)) <= 0):
        return
    agg = keras_mtl.aggregators.FairGrad(alpha=alpha)
    weights, state = agg.compute_weights(
        num_tasks, gramian.astype("float32"), None, agg.initial_state(2))
    weights = to_numpy(weights).astype("float64")
    target = weights ** (-1.0 / alpha)
    np.testing.assert_allclose(gramian @ weights, target, rtol=1e-2)
    assert np.all(weights > 0)
    assert float(to_numpy(state["solver_residual"])) < 1e-3


@SETTINGS
@given(jacobians(max_tasks=2))
def test_gradvac_first_step_is_pcgrad(jacobian):
    # With zero target cosines, GradVac's update is PCGrad's projection.
    gradvac = to_numpy(keras_mtl.aggregators.GradVac()(jacobian))
    pcgrad = to_numpy(keras_mtl.aggregators.PCGrad()(jacobian))
    np.testing.assert_allclose(
        gradvac, pcgrad, rtol=1e-3, atol=1e-3 * np.abs(jacobian).max())


def test_gradvac_updates_its_targets():
    jacobian = np.array([[1.0, 0.0], [1.0, 1.0]], "float32")
    agg = keras_mtl.aggregators.GradVac(beta=0.5)
    _, _, state = agg.aggregate(jacobian)
    cos = 1 / np.sqrt(2)
    np.testing.assert_allclose(
        to_numpy(state["targets"]), [[0, 0.5 * cos], [0.5 * cos, 0]], atol=1e-5)


def test_graddrop_keeps_gradients_that_agree_in_sign():
    jacobian = np.array([[1.0, -2.0, 0.5], [3.0, -1.0, 0.25]], "float32")
    agg = keras_mtl.aggregators.GradDrop()
    np.testing.assert_allclose(
        to_numpy(agg(jacobian)), jacobian.sum(0), rtol=1e-6
    )
    # With opposite signs everywhere, one sign survives per coordinate.
    direction = to_numpy(agg(np.array([[1.0, 1.0], [-1.0, -1.0]], "float32")))
    assert set(np.abs(direction).round(5)) == {1.0}


def test_graddrop_leak_blends_the_dropped_and_the_plain_sum():
    jacobian = np.random.default_rng(0).normal(size=(3, 50)).astype("float32")
    dropped, dropped_weights, _ = keras_mtl.aggregators.GradDrop().aggregate(
        jacobian
    )
    assert np.all(to_numpy(dropped_weights) < 1.0)
    full, full_weights, _ = keras_mtl.aggregators.GradDrop(
        leak=1.0
    ).aggregate(jacobian)
    np.testing.assert_allclose(
        to_numpy(full), jacobian.sum(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(to_numpy(full_weights), 1.0, rtol=1e-6)
    # Same seed, same draw: leak 0.25 mixes the two directions linearly.
    mixed, _, _ = keras_mtl.aggregators.GradDrop(leak=0.25).aggregate(jacobian)
    np.testing.assert_allclose(
        to_numpy(mixed), 0.25 * jacobian.sum(0) + 0.75 * to_numpy(dropped),
        rtol=1e-5, atol=1e-5)


# Each example compiles the root search on JAX: fewer there (CI time).
@settings(max_examples=4 if keras.config.backend() == "jax" else 10,
          deadline=None, derandomize=True)
@given(jacobians())
def test_cagrad_reports_a_small_duality_gap(jacobian):
    _, weights, state = CAGRAD_STEP(jacobian)
    gap = float(to_numpy(state["solver_gap"]))
    assert -1e-6 <= gap < 2e-3
    # A one-iteration solve is further from the optimum, and says so.
    _, _, short = CAGRAD_ONE_ITERATION(jacobian)
    assert float(to_numpy(short["solver_gap"])) >= gap - 1e-4
