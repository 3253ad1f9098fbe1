"""The in-graph simplex QP solver against SLSQP in float64."""

import numpy as np
import pytest
from keras import ops

from keras_mtl.src.aggregators.simplex_qp import simplex_qp
from tests.aggregators import float64_references as ref
from tests.helpers import BACKEND
from tests.helpers import to_numpy


def _tensor(a):
    return None if a is None else ops.convert_to_tensor(
        np.asarray(a, "float32"))


def _solve(quadratic, linear, plane=None):
    w, gap, feasible = simplex_qp(_tensor(quadratic), _tensor(linear),
                                  _tensor(plane))
    return to_numpy(w).astype("float64"), float(to_numpy(gap)), bool(
        to_numpy(feasible))


def _problem(seed):
    rng = np.random.default_rng(seed)
    num = int(rng.integers(2, 9))
    factor = rng.normal(size=(num, int(rng.integers(1, 12))))
    quadratic = factor @ factor.T  # rank-deficient when P < T
    linear = rng.normal(size=num) * [0.0, 0.1, 1.0, 10.0][seed % 4]
    return rng, num, quadratic, linear


# Twelve random problems on PyTorch, four on JAX and TensorFlow (each eager
# call of the solver loop compiles there; CI time).
@pytest.mark.parametrize("seed", range(12 if BACKEND == "torch" else 4))
@pytest.mark.parametrize("with_plane", [False, True])
def test_matches_slsqp(seed, with_plane):
    rng, num, quadratic, linear = _problem(seed)
    plane = None
    if with_plane:
        plane = rng.normal(size=num)
        plane[0], plane[-1] = abs(plane[0]), -abs(plane[-1])  # non-empty
    w, gap, feasible = _solve(quadratic, linear, plane)
    expected, value = ref.simplex_qp(quadratic, linear, plane)
    assert feasible and gap < 1e-5
    assert w.min() >= 0.0 and abs(w.sum() - 1.0) < 1e-5
    if plane is not None:
        assert abs(plane @ w) < 1e-5 * np.abs(plane).max()
    scale = max(np.abs(quadratic).max(), np.abs(linear).max())
    got = 0.5 * w @ quadratic @ w + linear @ w
    assert got <= value + 1e-5 * scale


def test_degenerate_problems():
    # Q = 0: the best vertex of the linear term.
    w, gap, _ = _solve(np.zeros((3, 3)), [0.3, -0.2, 0.1])
    np.testing.assert_allclose(w, [0.0, 1.0, 0.0], atol=1e-6)
    # Identical columns and no linear term: any split is optimal.
    w, gap, _ = _solve(np.ones((3, 3)), np.zeros(3))
    assert abs(w.sum() - 1.0) < 1e-6 and gap < 1e-5
    # The plane misses the simplex (every entry positive).
    _, _, feasible = _solve(np.eye(3), np.zeros(3), [1.0, 2.0, 0.5])
    assert not feasible
    # The plane passes through a vertex only.
    w, _, feasible = _solve(np.eye(3), np.zeros(3), [1.0, 0.0, 2.0])
    assert feasible
    np.testing.assert_allclose(w, [0.0, 1.0, 0.0], atol=1e-6)


def test_non_finite_input_gives_nan():
    w, gap, _ = _solve([[1.0, np.nan], [np.nan, 1.0]], [0.0, 0.0])
    assert np.isnan(w).all() and np.isnan(gap)
