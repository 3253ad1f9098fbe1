"""The helpers shared by several aggregators."""

import numpy as np
import pytest
from keras import ops

from keras_mtl.src.aggregators.adam_step import adam_step
from keras_mtl.src.aggregators.arg_checks import check_choice
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.task_order import visiting_order
from tests.helpers import to_numpy


def test_adam_step_matches_numpy():
    rng = np.random.default_rng(0)
    start = rng.normal(size=4)
    params = ops.convert_to_tensor(start, "float32")
    m = v = ops.zeros((4,))
    step = ops.zeros(())
    p_ref, m_ref, v_ref = start, np.zeros(4), np.zeros(4)
    for t in range(1, 4):
        gradient = rng.normal(size=4)
        params, m, v, step = adam_step(
            params, ops.convert_to_tensor(gradient, "float32"), m, v, step,
            0.1)
        m_ref = 0.9 * m_ref + 0.1 * gradient
        v_ref = 0.999 * v_ref + 0.001 * gradient**2
        p_ref = p_ref - 0.1 * (m_ref / (1 - 0.9**t)) / (
            np.sqrt(v_ref / (1 - 0.999**t)) + 1e-8)
        assert float(to_numpy(step)) == t
    np.testing.assert_allclose(to_numpy(params), p_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(m), m_ref, rtol=1e-5)


@pytest.mark.parametrize("num_tasks", [1, 2, 5])
@pytest.mark.parametrize("shuffle", [True, False])
def test_visiting_order_visits_every_other_task_once(num_tasks, shuffle):
    visits = to_numpy(visiting_order(num_tasks, seed=3, shuffle=shuffle))
    assert visits.shape == (num_tasks, num_tasks - 1, num_tasks)
    order = visits.argmax(axis=-1)
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        assert sorted(order[i]) == others
        if not shuffle:
            assert list(order[i]) == others


def test_visiting_order_is_seeded():
    first = to_numpy(visiting_order(6, seed=4))
    np.testing.assert_array_equal(first, to_numpy(visiting_order(6, seed=4)))


def test_argument_checks_name_the_argument():
    assert check_positive("mu", 2) == 2.0
    assert check_count("warmup_epochs", 0, minimum=0) == 0
    assert check_fraction("beta", 1.0) == 1.0
    with pytest.raises(ValueError, match="`mu` must be > 0. Received: mu=0"):
        check_positive("mu", 0)
    with pytest.raises(ValueError, match=r"in \[0, 1\)\. Received: beta=1"):
        check_fraction("beta", 1, include_one=False)
    with pytest.raises(ValueError, match="max_iters=0"):
        check_count("max_iters", 0)
    with pytest.raises(ValueError, match="Received: mode='x'"):
        check_choice("mode", "x", ("a", "b"))
