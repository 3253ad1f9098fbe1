"""Accuracy on ill-conditioned Jacobians, against float64 references.

Task gradient norms span 1e-3 to 1e3 (Gramian condition numbers near 1e12,
beyond float32), for 2 to 32 tasks with random and with conflicting
directions. Every rule's float32 direction, eager and compiled, must be
within cosine 0.9999 of the float64 solution of its defining problem
(`float64_references.py`, solved independently).
"""

import numpy as np
import pytest

from keras_mtl import aggregators
from keras_mtl.src import backend
from tests.aggregators import float64_references as ref
from tests.helpers import BACKEND
from tests.helpers import to_numpy

RULES = {
    "sum": (aggregators.Sum, ref.total),
    "mean": (aggregators.Mean, ref.mean),
    "mgda": (aggregators.MGDA, ref.mgda),
    "upgrad": (aggregators.UPGrad, ref.upgrad),
    "dualproj": (aggregators.DualProj, ref.dualproj),
    "imtl_g": (aggregators.IMTLG, ref.imtl_g),
    "config": (aggregators.ConFIG, ref.config),
    "aligned_mtl": (aggregators.AlignedMTL, ref.aligned_mtl),
    "cagrad": (aggregators.CAGrad, ref.cagrad),
    "cagrad_c0.9": (lambda: aggregators.CAGrad(c=0.9),
                    lambda j: ref.cagrad(j, c=0.9)),
    "nash_mtl": (lambda: aggregators.NashMTL(max_norm=None), ref.nash_mtl),
    "fairgrad": (aggregators.FairGrad, ref.fairgrad),
    "fairgrad_alpha2": (lambda: aggregators.FairGrad(alpha=2.0),
                        lambda j: ref.fairgrad(j, alpha=2.0)),
    "pcgrad": (lambda: aggregators.PCGrad(shuffle=False),
               ref.pcgrad_in_order),
    "pcd": (aggregators.PCD, ref.pcd),
    "cr_mogm": (aggregators.CRMOGM, ref.mgda),  # First step: the wrapped rule.
    "trimmed_mean": (aggregators.TrimmedMean, ref.trimmed_mean),
}
SIZES = (2, 3, 5, 8, 16, 32)
# JAX runs `ops.while_loop` compiled even eagerly: one mode covers both.
# PyTorch compiles each size in seconds: one compiled size.
MODES = {"jax": {"compiled": (2, 5, 16, 32)},
         "torch": {"eager": SIZES, "compiled": (32,)}}.get(
    BACKEND, {"eager": (2, 5, 16, 32), "compiled": (3, 32)})


def _directions(make, sizes, compiled):
    agg = make()

    def run(jacobian):
        return agg.aggregate(jacobian)[0]

    step = backend.jit(run) if compiled else run
    for num_tasks in sizes:
        for conflicting in (False, True):
            jacobian = ref.graded_jacobian(
                num_tasks, conflicting=conflicting, seed=num_tasks)
            yield (num_tasks, conflicting), jacobian, to_numpy(step(jacobian))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(RULES))
def test_direction_matches_the_float64_solution(name, mode):
    make, reference = RULES[name]
    sizes, compiled = MODES[mode], mode == "compiled"
    worst = []
    if name == "trimmed_mean":
        sizes = tuple(t for t in sizes if t >= 3)
    if name == "pcd" and BACKEND == "tensorflow" and not compiled:
        # Eager TensorFlow runs PCD's coordinate sweeps op by op: T = 32
        # with nearly dependent gradients takes ~500 sweeps (a minute).
        sizes = tuple(t for t in sizes if t <= 16)
    for case, jacobian, direction in _directions(make, sizes, compiled):
        expected = reference(jacobian.astype("float64"))
        assert np.all(np.isfinite(direction)), case
        worst.append((ref.cosine(direction, expected), case))
    cosine, case = min(worst)
    assert cosine >= 0.9999, f"cosine {cosine:.6f} at (T, conflicting)={case}"


def test_cagrad_reference_minimises_the_dual():
    # Checks the reference itself against a general-purpose solver (SLSQP
    # from several starts) on a problem well within its reach.
    from scipy import optimize

    jacobian = ref.graded_jacobian(5, low=-0.5, high=0.5, seed=4)
    jacobian = jacobian.astype("float64")
    best = ref.cagrad_dual_value(
        jacobian, ref.cagrad_dual_weights(jacobian))
    rng = np.random.default_rng(0)
    for start in rng.dirichlet(np.ones(5), size=5):
        found = optimize.minimize(
            lambda w: ref.cagrad_dual_value(jacobian, w), start,
            method="SLSQP", bounds=[(0.0, 1.0)] * 5,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"ftol": 1e-14, "maxiter": 500})
        assert best <= found.fun + 1e-9


def test_upgrad_reference_is_the_mean_without_conflict():
    jacobian = np.abs(ref.graded_jacobian(4, seed=2)).astype("float64")
    np.testing.assert_allclose(
        ref.upgrad(jacobian), jacobian.mean(axis=0), rtol=1e-9, atol=1e-12)


def test_fair_weights_warm_start_from_the_previous_solution():
    from keras_mtl.src.aggregators.fair_weights_solver import fair_weights

    jacobian = ref.graded_jacobian(8, conflicting=True, seed=5)
    gramian = jacobian @ jacobian.T
    solution, _ = fair_weights(gramian, 1.0, max_iters=50)
    _, cold = fair_weights(gramian, 1.0, max_iters=2)
    _, warm = fair_weights(gramian, 1.0, max_iters=2, initial=solution)
    assert float(to_numpy(warm)) < 1e-4 < float(to_numpy(cold))
    # Unusable starting points fall back to the cold start.
    _, fallback = fair_weights(gramian, 1.0, max_iters=2,
                               initial=np.zeros(8, "float32"))
    np.testing.assert_allclose(to_numpy(fallback), to_numpy(cold))


@pytest.mark.parametrize("num_tasks", [3, 8, 16])
def test_min_norm_warm_start_reaches_the_same_point(num_tasks):
    from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights

    jacobian = ref.graded_jacobian(num_tasks, conflicting=True, seed=7)
    # One task without a gradient: a start with weight on it must not use it.
    jacobian[1] = 0.0
    gramian = jacobian @ jacobian.T
    # The solver leaves zero gradients out (they would make the point 0).
    expected = ref.mgda(np.delete(jacobian, 1, axis=0).astype("float64"))
    solution, _, cold_iterations = min_norm_weights(gramian)
    rng = np.random.default_rng(num_tasks)
    starts = {
        "solution": to_numpy(solution),
        "uniform": np.full(num_tasks, 1.0 / num_tasks),
        "random": rng.dirichlet(np.ones(num_tasks)),
        "vertex of the zero task": np.eye(num_tasks)[1],
        "zeros": np.zeros(num_tasks),
    }
    for label, start in starts.items():
        weights, gap, iterations = min_norm_weights(
            gramian, start=start.astype("float32"))
        direction = to_numpy(weights) @ jacobian.astype("float64")
        assert ref.cosine(direction, expected) >= 0.9999, label
        assert float(to_numpy(gap)) < 1e-5, label
        if label == "solution":
            assert int(to_numpy(iterations)) == 1
        if label in ("zeros", "vertex of the zero task"):
            assert int(to_numpy(iterations)) == int(to_numpy(cold_iterations))


def test_min_norm_warm_start_from_a_neighbouring_problem_compiled():
    # CAGrad's search starts each solve from the last one. On TensorFlow's
    # XLA this start once lost its point (NaN weights) in its second step;
    # the solver now starts again from the vertex.
    from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights

    jacobian = ref.graded_jacobian(32, conflicting=True, seed=32)
    jacobian = jacobian.astype("float64")
    gramian = jacobian @ jacobian.T
    mean = np.full(32, 1.0 / 32)
    linear = gramian @ mean
    mean_norm_sq = mean @ linear
    high = np.log(np.sqrt(np.diag(gramian)).max())

    def shifted(offset):
        shift = np.exp(high + offset) / (0.5 * np.sqrt(mean_norm_sq))
        return (gramian + shift * (linear[:, None] + linear[None, :])
                + shift**2 * mean_norm_sq).astype("float32")

    solve = backend.jit(
        lambda g, start: min_norm_weights(g, start=start)[:2])
    previous, _ = solve(shifted(-10.127), np.zeros(32, "float32"))
    problem = shifted(-8.406)
    cold, _ = solve(problem, np.zeros(32, "float32"))
    warm, gap = solve(problem, to_numpy(previous))
    assert np.all(np.isfinite(to_numpy(warm)))
    assert float(to_numpy(gap)) < 1e-5
    np.testing.assert_allclose(to_numpy(warm), to_numpy(cold), atol=1e-5)


def test_cagrad_root_search_warm_starts_from_the_previous_root(monkeypatch):
    # The root search alone: no support is certified.
    from keras import ops

    from keras_mtl.src.aggregators import cagrad
    from keras_mtl.src.aggregators.cagrad import conflict_averse_dual

    def uncertified(norms, *args):
        zeros = ops.zeros_like(norms)
        return zeros, zeros[0], zeros[0] + 1.0, ops.convert_to_tensor(False)

    monkeypatch.setattr(cagrad, "active_set_dual", uncertified)

    solve = _loops(lambda g: conflict_averse_dual(g, 0.5, 30, 1e-4))
    warm_solve = _loops(lambda g, w, root: conflict_averse_dual(
        g, 0.5, 2, 1e-4, start=w, guess=root))
    cold_solve = _loops(lambda g: conflict_averse_dual(g, 0.5, 2, 1e-4))
    cold_residuals = []
    for num_tasks in (3, 8, 16):
        for conflicting in (False, True):
            jacobian = ref.graded_jacobian(
                num_tasks, conflicting=conflicting, seed=11)
            gramian = ops.convert_to_tensor(jacobian @ jacobian.T)
            w, _, _, _, root = solve(gramian)
            warm_w, _, _, warm, _ = warm_solve(gramian, w, root)
            _, _, _, cold, _ = cold_solve(gramian)
            assert float(to_numpy(warm)) <= 1e-4, (num_tasks, conflicting)
            np.testing.assert_allclose(
                to_numpy(warm_w), to_numpy(w), atol=1e-4)
            cold_residuals.append(float(to_numpy(cold)))
    assert max(cold_residuals) > 1e-4  # Two solves do not suffice cold.


def _loops(fn):
    """`fn`, compiled once on JAX, whose eager `ops.while_loop` compiles its
    loop at every call; as it is elsewhere (eager is faster there)."""
    return backend.jit(fn) if BACKEND == "jax" else fn


def _cagrad_parts(jacobian, c):
    """`active_set_dual`'s inputs for a float32 Jacobian."""
    from keras import ops

    from keras_mtl.src.aggregators.gramian_utils import cosine_gramian

    gramian = ops.convert_to_tensor(jacobian @ jacobian.T)
    _, norms, cosines = cosine_gramian(gramian)
    mean = jacobian.mean(axis=0)
    mean_norm = np.float32(np.linalg.norm(mean))
    projections = (jacobian @ mean) / np.linalg.norm(jacobian, axis=1)
    return (norms, cosines, ops.convert_to_tensor(projections),
            ops.convert_to_tensor(mean_norm),
            ops.convert_to_tensor(np.float32(c) * mean_norm))


def test_cagrad_certificate_accepts_only_optimal_points():
    # From random supports, every point `active_set_dual` certifies is the
    # dual's optimum: its direction matches the float64 solution, and its
    # dual value is never above the float64 root search's. Low-rank
    # conflicting Jacobians are Pareto-stationary, where that root search
    # can stop at a worse point (f has a second root near t = 0).
    from keras import ops

    from keras_mtl.src.aggregators.cagrad import active_set_dual

    rng = np.random.default_rng(4)
    certified = 0
    solvers = {}  # One solver per T, compiled on JAX (see `_loops`).
    for case in range(24):
        num_tasks = (2, 3, 5, 8, 16, 32)[case % 6]
        if case % 4 == 3:
            rows = rng.normal(size=(num_tasks, 3)) @ rng.normal(size=(3, 10))
            norms = rng.permutation(np.logspace(-3, 3, num_tasks))
            jacobian = (rows / np.linalg.norm(rows, axis=1, keepdims=True)
                        * norms[:, None]).astype("float32")
        else:
            jacobian = ref.graded_jacobian(
                num_tasks, conflicting=case % 2 == 1, seed=case)
        c = (0.5, 0.9, 0.2)[case % 3]
        support = (rng.random(num_tasks) < 0.5).astype("float32")
        support[rng.integers(num_tasks)] = 1.0
        solve = solvers.setdefault(num_tasks, _loops(
            lambda *args, n=num_tasks: active_set_dual(*args, 1e-4, 2 * n)))
        w, _, gap, ok = solve(*_cagrad_parts(jacobian, c),
                              ops.convert_to_tensor(support))
        if not to_numpy(ok):
            continue
        certified += 1
        assert float(to_numpy(gap)) <= 1e-4
        weights = to_numpy(w).astype("float64")
        exact = jacobian.astype("float64")
        expected = ref.cagrad_dual_weights(exact, c)
        ours = ref.cagrad_dual_value(exact, weights, c)
        theirs = ref.cagrad_dual_value(exact, expected, c)
        scale = np.linalg.norm(exact.mean(axis=0)) ** 2
        assert ours <= theirs + 1e-5 * scale, case
        if theirs <= ours + 1e-5 * scale:  # Both optimal: the same point.
            mean = exact.mean(axis=0)
            combo = weights @ exact
            direction = mean + c * np.linalg.norm(mean) * (
                combo / np.linalg.norm(combo))
            assert ref.cosine(direction, ref.cagrad(exact, c)) >= 0.9999
    assert certified >= 8


def test_cagrad_warm_start_needs_no_root_search(monkeypatch):
    # On the previous step's support, a nearby problem is solved in closed
    # form: no minimum-norm problem is solved at all (JAX traces both
    # branches of the `cond`, so only the certificate is checked there).
    from keras import ops

    from keras_mtl.src.aggregators import cagrad

    solves = []
    solver = cagrad.min_norm_weights
    monkeypatch.setattr(cagrad, "min_norm_weights",
                        lambda *a, **k: solves.append(1) or solver(*a, **k))
    rng = np.random.default_rng(0)
    agg = aggregators.CAGrad()
    step = _loops(lambda j, s: agg.aggregate(j, state=s))
    certify = _loops(lambda *args: cagrad.active_set_dual(
        *args, agg.tolerance, 1))
    jacobian = ref.graded_jacobian(8, low=-1.0, high=1.0, seed=2)
    state = agg.initial_state(8)
    _, _, state = step(jacobian, state)
    for _ in range(3):
        nearby = jacobian * (1.0 + 1e-3 * rng.normal(size=jacobian.shape))
        nearby = nearby.astype("float32")
        support = ops.cast(state["dual_weights"] > 0.0, "float32")
        _, _, _, certified = certify(*_cagrad_parts(nearby, agg.c), support)
        assert to_numpy(certified)
        solves.clear()
        direction, _, state = step(nearby, state)
        assert not solves or BACKEND == "jax"
        expected = ref.cagrad(nearby.astype("float64"))
        assert ref.cosine(to_numpy(direction), expected) >= 0.9999


@pytest.mark.parametrize("num_tasks", [3, 8, 32])
def test_cagrad_at_pareto_stationary_gradients(num_tasks):
    # One gradient is minus half the sum of the others: 0 is in their hull,
    # and float32 turns the root of the dual's search into a jump.
    rng = np.random.default_rng(1)
    jacobian = rng.normal(size=(num_tasks, 40))
    jacobian[0] = -0.5 * jacobian[1:].sum(axis=0)
    jacobian = jacobian.astype("float32")
    agg = aggregators.CAGrad(rescale=0)
    direction, _, state = agg.aggregate(jacobian)
    expected = ref.cagrad(jacobian.astype("float64"))
    assert ref.cosine(to_numpy(direction), expected) >= 0.9999
    np.testing.assert_allclose(
        np.linalg.norm(to_numpy(direction)), np.linalg.norm(expected),
        rtol=1e-4)
    assert float(to_numpy(state["solver_gap"])) <= agg.tolerance


@pytest.mark.parametrize("name", ["mgda", "cagrad", "cagrad_c0.9"])
def test_warm_started_rules_stay_exact_over_changing_steps(name):
    # The state carries the last solution into the next step; the steps
    # alternate between problems with different active tasks.
    make, reference = RULES[name]
    agg = make()
    state = None
    for step in range(6):
        jacobian = ref.graded_jacobian(
            8, conflicting=step % 2 == 0, seed=step % 3)
        direction, _, state = agg.aggregate(jacobian, state=state)
        expected = reference(jacobian.astype("float64"))
        assert ref.cosine(to_numpy(direction), expected) >= 0.9999, step
    key = "weights" if name == "mgda" else "dual_weights"
    assert np.isclose(to_numpy(state[key]).sum(), 1.0, atol=1e-5)


def test_krum_selects_as_the_float64_definition():
    # A discrete choice: compared on well-separated scores, where float32
    # distances cannot reorder them.
    for num_tasks in (4, 8, 16):
        jacobian = ref.graded_jacobian(num_tasks, seed=num_tasks)
        direction = to_numpy(aggregators.Krum(1, 2)(jacobian))
        np.testing.assert_allclose(
            direction, ref.krum(jacobian.astype("float64")), rtol=1e-5,
            atol=1e-6 * np.abs(jacobian).max())
