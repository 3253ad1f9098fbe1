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
# keras_mtl runs PyTorch eagerly.
MODES = {"jax": {"compiled": (2, 5, 16, 32)}, "torch": {"eager": SIZES}}.get(
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


def test_krum_selects_as_the_float64_definition():
    # A discrete choice: compared on well-separated scores, where float32
    # distances cannot reorder them.
    for num_tasks in (4, 8, 16):
        jacobian = ref.graded_jacobian(num_tasks, seed=num_tasks)
        direction = to_numpy(aggregators.Krum(1, 2)(jacobian))
        np.testing.assert_allclose(
            direction, ref.krum(jacobian.astype("float64")), rtol=1e-5,
            atol=1e-6 * np.abs(jacobian).max())
