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
]


@pytest.mark.parametrize("aggregator, direction", MORE_CASES,
                         ids=lambda c: repr(c)[:40])
def test_more_reference_values(aggregator, direction):
    np.testing.assert_allclose(
        to_numpy(aggregator(J_BASE)), direction, atol=2e-4
    )
