"""The small operations shared by the in-graph solvers."""

import numpy as np
from keras import ops

from keras_mtl.src.aggregators.solver_ops import one_hot
from keras_mtl.src.aggregators.solver_ops import ratio_test
from tests.helpers import to_numpy


def test_one_hot_marks_the_index():
    positions = ops.arange(4)
    np.testing.assert_array_equal(
        to_numpy(
            one_hot(
                ops.argmin(ops.convert_to_tensor([3.0, 1.0, 2.0, 5.0])),
                positions,
            )
        ),
        [0.0, 1.0, 0.0, 0.0],
    )


def test_ratio_test_ignores_weights_that_do_not_decrease():
    # A -0.0 decrease (what negating a 0 gives) must not read as a -inf
    # step: relu(-0.0) is -0.0 on PyTorch and TensorFlow.
    weights = ops.convert_to_tensor([0.5, 0.2, 0.0, 0.3])
    decrease = -ops.convert_to_tensor([0.0, -0.1, 0.0, 0.6])
    ratios = to_numpy(ratio_test(weights, decrease))
    assert (
        np.isposinf(ratios[0])
        and np.isposinf(ratios[2])
        and np.isposinf(ratios[3])
    )
    np.testing.assert_allclose(ratios[1], 2.0, rtol=1e-6)
    assert to_numpy(ops.min(ratio_test(weights, decrease))) == ratios[1]
