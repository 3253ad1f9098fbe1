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
    np.testing.assert_allclose(to_numpy(aggregator(J_BASE)), direction, atol=1e-4)
