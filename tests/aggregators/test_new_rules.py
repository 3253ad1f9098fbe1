"""Krum, TrimmedMean, CR-MOGM, PBI and COSMOS: definitions and TorchJD's
reference values (`tests/unit/aggregation/test_values.py`, `test_pbi.py`,
`test_cosmos.py`, `test_cr_mogm.py`)."""

import numpy as np
import pytest

from keras_mtl import aggregators
from tests.helpers import to_numpy

J_KRUM = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23.0],
                   [1.0, 2.0, 3.0], [2.0, 0.0, 1.0]], "float32")
J_TRIMMED = np.array([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]],
                     "float32")


def test_krum_reference_values():
    direction, weights, _ = aggregators.Krum(1, 4).aggregate(J_KRUM)
    np.testing.assert_allclose(to_numpy(direction), [1.25, 0.75, 1.5],
                               atol=1e-4)
    np.testing.assert_allclose(to_numpy(weights), [0.25, 0.25, 0, 0.25, 0.25])


def test_krum_scores_match_a_numpy_definition():
    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(7, 4)).astype("float32")
    jacobian[2] *= 50.0
    f, selected = 2, 3
    distances = ((jacobian[:, None] - jacobian[None]) ** 2).sum(-1)
    scores = np.sort(distances, axis=1)[:, 1:7 - f - 1].sum(1)
    expected = np.zeros(7)
    expected[np.argsort(scores)[:selected]] = 1.0 / selected
    _, weights, _ = aggregators.Krum(f, selected).aggregate(jacobian)
    np.testing.assert_allclose(to_numpy(weights), expected)


def test_trimmed_mean_reference_values():
    direction = aggregators.TrimmedMean(trim_number=1)(J_TRIMMED)
    np.testing.assert_allclose(to_numpy(direction), [1.5, 2.5])


@pytest.mark.parametrize("agg, tasks", [
    (aggregators.Krum(n_byzantine=1), 3),
    (aggregators.Krum(n_selected=4), 3),
    (aggregators.TrimmedMean(trim_number=2), 4),
])
def test_too_few_tasks_are_refused(agg, tasks):
    with pytest.raises(ValueError, match="num_tasks"):
        agg(np.ones((tasks, 2), "float32"))


@pytest.mark.parametrize("make", [
    lambda: aggregators.Krum(n_byzantine=-1),
    lambda: aggregators.Krum(n_selected=0),
    lambda: aggregators.TrimmedMean(trim_number=-1),
    lambda: aggregators.CRMOGM(alpha=1.5),
    lambda: aggregators.CRMOGM("uncertainty_weighting"),
    lambda: aggregators.CRMOGM("moco"),
    lambda: aggregators.PBI(theta=-1.0),
    lambda: aggregators.PBI(preference=[1.0, -1.0]),
    lambda: aggregators.COSMOS(cosine_weight=-1.0),
    lambda: aggregators.COSMOS(preference=[]),
])
def test_bad_arguments_are_refused(make):
    with pytest.raises(ValueError, match="Received"):
        make()


def test_cr_mogm_averages_the_wrapped_weights():
    rng = np.random.default_rng(1)
    agg = aggregators.CRMOGM("mgda", alpha=0.8)
    mgda = aggregators.MGDA()
    state, expected = None, None
    for _ in range(3):
        jacobian = rng.normal(size=(3, 5)).astype("float32")
        fresh = to_numpy(mgda.aggregate(jacobian)[1])
        expected = fresh if expected is None else 0.8 * expected + 0.2 * fresh
        direction, weights, state = agg.aggregate(jacobian, state=state)
        np.testing.assert_allclose(to_numpy(weights), expected, atol=1e-5)
        np.testing.assert_allclose(to_numpy(direction), expected @ jacobian,
                                   atol=1e-4)
    assert "inner_solver_gap" in state and agg.diagnostics[0] == (
        "inner_solver_gap")


def test_cr_mogm_round_trips_with_its_wrapped_rule():
    agg = aggregators.CRMOGM(aggregators.CAGrad(c=0.3), alpha=0.7)
    again = aggregators.deserialize(aggregators.serialize(agg))
    assert isinstance(again.weighting, aggregators.CAGrad)
    assert again.weighting.c == 0.3 and again.alpha == 0.7


def _pbi(losses, theta, preference, point):
    p = np.asarray(preference, "float64")
    p = p / np.linalg.norm(p)
    e = np.asarray(losses, "float64") - point
    d1 = e @ p
    return d1 + theta * np.sqrt(np.sum((e - d1 * p) ** 2) + 1e-12)


def _cosmos(losses, weight, r):
    losses, r = np.asarray(losses, "float64"), np.asarray(r, "float64")
    return r @ losses - weight * (r @ losses) / (
        np.linalg.norm(r) * np.linalg.norm(losses))


def test_pbi_reference_values():
    value = aggregators.PBI(theta=1.0, preference=[1.0, 1.0]).scalarized(
        np.array([2.0, 0.0], "float32"))
    np.testing.assert_allclose(to_numpy(value), 2 * np.sqrt(2), rtol=1e-6)
    value = aggregators.PBI(theta=0.0, preference=[1.0, 1.0]).scalarized(
        np.array([2.0, 0.0], "float32"))
    np.testing.assert_allclose(to_numpy(value), np.sqrt(2), rtol=1e-6)
    shifted = aggregators.PBI(theta=1.0, reference_point=[1.0, 1.0])
    np.testing.assert_allclose(
        to_numpy(shifted.scalarized(np.array([3.0, 1.0], "float32"))),
        2 * np.sqrt(2), rtol=1e-6)


def test_cosmos_reference_values():
    cases = [(1.0, [0.5, 0.5], [1.0, 1.0], 0.0),
             (0.0, [1 / 3] * 3, [1.0, 2.0, 4.0], 7 / 3),
             (0.0, [2.0, 1.0], [3.0, 4.0], 10.0)]
    for weight, r, losses, expected in cases:
        agg = aggregators.COSMOS(cosine_weight=weight, preference=r)
        value = agg.scalarized(np.array(losses, "float32"))
        np.testing.assert_allclose(to_numpy(value), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["pbi", "cosmos"])
def test_scalarisation_weights_are_the_objectives_gradient(name):
    # Central differences of an independent float64 objective.
    losses = np.array([0.7, 1.9, 0.4], "float64")
    if name == "pbi":
        agg = aggregators.PBI(theta=5.0, preference=[1.0, 2.0, 0.5],
                              reference_point=[0.1, 0.0, 0.2])

        def objective(x):
            return _pbi(x, 5.0, [1.0, 2.0, 0.5], [0.1, 0.0, 0.2])
    else:
        agg = aggregators.COSMOS(cosine_weight=2.0, preference=[0.2, 0.5, 0.3])

        def objective(x):
            return _cosmos(x, 2.0, [0.2, 0.5, 0.3])
    jacobian = np.eye(3, dtype="float32")
    _, weights, _ = agg.aggregate(jacobian, losses.astype("float32"))
    step = 1e-6
    numeric = [(objective(losses + step * e) - objective(losses - step * e))
               / (2 * step) for e in np.eye(3)]
    np.testing.assert_allclose(to_numpy(weights), numeric, rtol=1e-4)


def test_cosmos_samples_a_preference_from_the_simplex_each_step():
    agg = aggregators.COSMOS(cosine_weight=0.0)
    losses = np.ones(4, "float32")
    first = to_numpy(agg.aggregate(np.eye(4, dtype="float32"), losses,
                                   seed=1)[1])
    second = to_numpy(agg.aggregate(np.eye(4, dtype="float32"), losses,
                                    seed=2)[1])
    assert np.all(first >= 0) and abs(first.sum() - 1.0) < 1e-5
    assert not np.allclose(first, second)


@pytest.mark.parametrize("jacobian, tau, expected", [
    # TorchJD's test_pcd.py reference values.
    ([[1.0, 0.0], [-3.0, 0.0]], 0.02, [-1.0, 0.0]),
    ([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]], 0.5,
     [1.0, 0.0, 0.0]),
    ([[1.0, 1.0], [0.0, 1.0], [0.0, -2.0]], 0.02, [1.0, 1.0]),
])
def test_pcd_reference_values(jacobian, tau, expected):
    # The first case's direction is 2% of the primary gradient before its
    # rescaling: float32 cancellation limits it to about 1e-4.
    direction = aggregators.PCD(tau=tau)(np.array(jacobian, "float32"))
    np.testing.assert_allclose(to_numpy(direction), expected, atol=5e-4)


def test_pcd_matches_the_two_task_closed_form():
    rng = np.random.default_rng(3)
    for _ in range(5):
        jacobian = rng.normal(size=(2, 6)) * [[1.0], [30.0]]
        units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
        mu = max(0.0, (0.3 - units[0] @ units[1]))
        expected = units[0] + mu * units[1]
        expected *= np.linalg.norm(jacobian[0]) / np.linalg.norm(expected)
        direction = to_numpy(aggregators.PCD(tau=0.3)(
            jacobian.astype("float32")))
        np.testing.assert_allclose(direction, expected, rtol=1e-4,
                                   atol=1e-5)


def test_pcd_qp_against_nnls_with_many_tasks():
    # The dual's solution against SciPy's NNLS on the same box QP.
    from scipy import optimize

    rng = np.random.default_rng(4)
    jacobian = rng.normal(size=(5, 12))
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    tau = 0.2
    # The dual min_{mu >= 0} 1/2 ||u_0 + U^T mu||^2 - tau sum mu_j, written
    # as least squares by completing the square with a Cholesky factor.
    others = units[1:].T
    gram = others.T @ others
    linear = others.T @ units[0] - tau * np.ones(4)
    # 1/2 mu^T gram mu + linear^T mu = 1/2 ||L^T mu + L^-1 linear||^2 + c.
    chol = np.linalg.cholesky(gram)
    mu, _ = optimize.nnls(chol.T, -np.linalg.solve(chol, linear))
    expected = units[0] + mu @ units[1:]
    expected *= np.linalg.norm(jacobian[0]) / np.linalg.norm(expected)
    direction = to_numpy(aggregators.PCD(tau=tau)(jacobian.astype("float32")))
    np.testing.assert_allclose(direction, expected, rtol=1e-4, atol=1e-5)
