"""Published reference values (TorchJD's `test_values.py`, J_base)."""

import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy

J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], "float32")

CASES = [
    (keras_mtl.aggregators.Sum(), [2.0, 2.0, 2.0], [1.0, 1.0]),
    (keras_mtl.aggregators.Mean(), [1.0, 1.0, 1.0], [0.5, 0.5]),
    (keras_mtl.aggregators.MGDA(), [0.0, 1.0, 1.0], [0.6, 0.4]),
    (
        keras_mtl.aggregators.PCGrad(),
        [0.5848, 3.8012, 3.8012],
        [2.2222, 1.5789],
    ),
    (keras_mtl.aggregators.Constant([1.0, 0.5]), [-1.0, 1.5, 1.5], [1.0, 0.5]),
    # Bilevel rules before their first virtual step: softmax of equal
    # logits (LibMTL's start).
    (keras_mtl.aggregators.AutoLambda(), [1.0, 1.0, 1.0], [0.5, 0.5]),
    (keras_mtl.aggregators.MOML(), [1.0, 1.0, 1.0], [0.5, 0.5]),
]


@pytest.mark.parametrize(
    "aggregator, direction, weights", CASES, ids=lambda c: repr(c)[:30]
)
def test_reference_values(aggregator, direction, weights):
    got_direction, got_weights, _ = aggregator.aggregate(J_BASE)
    np.testing.assert_allclose(to_numpy(got_direction), direction, atol=1e-4)
    np.testing.assert_allclose(to_numpy(got_weights), weights, atol=1e-4)
    np.testing.assert_allclose(
        to_numpy(aggregator(J_BASE)), direction, atol=1e-4
    )


MORE_CASES = [
    # TorchJD test_values.py and the aggregation module docstring.
    (keras_mtl.aggregators.UPGrad(), [0.2929, 1.9004, 1.9004]),
    (keras_mtl.aggregators.IMTLG(), [0.0767, 1.0, 1.0]),
    (keras_mtl.aggregators.CAGrad(c=0.5, rescale=0), [0.1835, 1.2041, 1.2041]),
    # LibMTL's default rescale divides by 1 + c^2.
    (keras_mtl.aggregators.CAGrad(c=0.5), [0.1468, 0.9633, 0.9633]),
    (keras_mtl.aggregators.AlignedMTL(), [0.2133, 0.9673, 0.9673]),
    (keras_mtl.aggregators.ConFIG(), [0.1588, 2.0706, 2.0706]),
    (keras_mtl.aggregators.DualProj(), [0.5563, 1.1109, 1.1109]),
    # TorchJD's NashMTL stops after 20 convex programmes; the exact fixed
    # point (float64 root finder, max_norm 1) agrees to 1e-4 here.
    (keras_mtl.aggregators.NashMTL(), [0.0542, 0.7061, 0.7061]),
]


def _float64_cases():
    # Rules TorchJD lacks: expected directions from the float64 solutions
    # of their defining problems (tests/aggregators/float64_references.py).
    from tests.aggregators import float64_references as ref

    jacobian = J_BASE.astype("float64")
    return [
        (keras_mtl.aggregators.FairGrad(alpha=1.0), ref.fairgrad(jacobian)),
        (keras_mtl.aggregators.FairGrad(alpha=2.0),
         ref.fairgrad(jacobian, alpha=2.0)),
        (keras_mtl.aggregators.CAGrad(c=0.9, rescale=0),
         ref.cagrad(jacobian, c=0.9)),
        (keras_mtl.aggregators.PCGrad(shuffle=False),
         ref.pcgrad_in_order(jacobian)),
    ]


@pytest.mark.parametrize("aggregator, direction", _float64_cases(),
                         ids=lambda c: repr(c)[:40])
def test_float64_reference_values(aggregator, direction):
    np.testing.assert_allclose(
        to_numpy(aggregator(J_BASE)), direction, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("aggregator, direction", MORE_CASES,
                         ids=lambda c: repr(c)[:40])
def test_more_reference_values(aggregator, direction):
    np.testing.assert_allclose(
        to_numpy(aggregator(J_BASE)), direction, atol=2e-4
    )


def _cross_batch_cases():
    # Rules reading two batches, J_BASE in both: `J_1 J_2^T = G`. One step
    # from uniform weights by the float64 recurrences.
    from tests.aggregators import float64_references as ref

    jacobian = J_BASE.astype("float64")
    gramian = jacobian @ jacobian.T
    uniform = np.full(2, 0.5)
    _, sdmgrad = ref.sdmgrad_weights(gramian, uniform)
    return [
        (keras_mtl.aggregators.MoDo(num_batches=2),
         ref.modo_weights(gramian, uniform) @ jacobian),
        (keras_mtl.aggregators.SDMGrad(num_batches=2), sdmgrad @ jacobian),
        # Before any virtual step (no inner decrease), FORUM's programme on
        # the unit outer gradients and g_q = the mean inner gradient.
        (keras_mtl.aggregators.FORUM(),
         ref.forum(np.tile(jacobian, (2, 1)), np.zeros(2), np.zeros(2))[0]),
    ]


@pytest.mark.parametrize("aggregator, direction", _cross_batch_cases(),
                         ids=lambda c: repr(c)[:40])
def test_cross_batch_reference_values(aggregator, direction):
    np.testing.assert_allclose(
        to_numpy(aggregator(np.tile(J_BASE, (2, 1)))), direction,
        rtol=1e-4, atol=2e-4)
