"""The loops, conditionals, solves and random draws the rules use
(`keras_mtl/src/backend/traceable_ops.py`): Keras' results eagerly, the
same results compiled, and draws with the right distribution."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_mtl.src import backend
from keras_mtl.src.backend import traceable_ops
from tests.helpers import BACKEND
from tests.helpers import to_numpy


def _halving(x):
    """Halves `x` until its largest entry is below 1 (at most 50 times);
    returns the count and the result."""
    return traceable_ops.while_loop(
        lambda i, v: (i < 50) & (ops.amax(v) >= 1.0),
        lambda i, v: (i + 1, v * 0.5),
        (ops.convert_to_tensor(0, "int32"), x))


def _branch(pred, x):
    return traceable_ops.cond(pred, lambda: (x * 2.0, ops.sum(x)),
                              lambda: (ops.transpose(x), -ops.sum(x)))


@pytest.mark.parametrize("compiled", [False, True])
def test_loop_and_conditional(compiled):
    x = np.array([[3.0, 40.0], [0.5, 7.0]], "float32")
    loop = backend.jit(_halving) if compiled else _halving
    count, halved = loop(x)
    assert int(to_numpy(count)) == 6
    np.testing.assert_allclose(to_numpy(halved), x / 64.0)
    # The loop variable returned unchanged by the body, and a loop that
    # never runs.
    count, same = loop(x * 0.01)
    assert int(to_numpy(count)) == 0
    np.testing.assert_allclose(to_numpy(same), x * 0.01, rtol=1e-6)

    branch = backend.jit(_branch) if compiled else _branch
    for pred, expected in ((True, (x * 2.0, x.sum())),
                           (False, (x.T, -x.sum()))):
        out = branch(ops.convert_to_tensor(pred), x)
        for a, b in zip(out, expected):
            np.testing.assert_allclose(to_numpy(a), b, rtol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_solve_is_keras_solve_and_non_finite_when_singular(compiled):
    solve = backend.jit(traceable_ops.solve) if compiled else (
        traceable_ops.solve)
    a = np.array([[4.0, 1.0], [1.0, 3.0]], "float32")
    b = np.array([[1.0], [2.0]], "float32")
    np.testing.assert_allclose(to_numpy(solve(a, b)),
                               np.linalg.solve(a, b), rtol=1e-6)
    if BACKEND == "torch":  # Keras' own raises on TensorFlow.
        singular = np.array([[1.0, 2.0], [2.0, 4.0]], "float32")
        assert not np.all(np.isfinite(to_numpy(solve(singular, b))))


def test_draws_have_their_distribution():
    u = to_numpy(traceable_ops.uniform((200, 100), -1.0, 3.0, seed=7))
    assert u.shape == (200, 100) and u.dtype == np.float32
    assert u.min() >= -1.0 and u.max() < 3.0
    # Mean 1 and variance 16 / 12 of Uniform(-1, 3): 20,000 draws put the
    # sample mean within 0.03 (3.5 standard errors).
    assert abs(u.mean() - 1.0) < 0.03
    assert abs(u.var() - 16.0 / 12.0) < 0.05
    # Neighbouring draws are uncorrelated.
    flat = u.reshape(-1)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.03
    z = to_numpy(traceable_ops.normal((20000,), seed=7))
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03
    assert abs(np.mean(z ** 4) - 3.0) < 0.2  # Gaussian kurtosis.


def test_seeds_and_seed_generators():
    first = to_numpy(traceable_ops.uniform((5,), seed=1))
    np.testing.assert_array_equal(
        to_numpy(traceable_ops.uniform((5,), seed=1)), first)
    assert not np.allclose(to_numpy(traceable_ops.uniform((5,), seed=2)),
                           first)
    generator = keras.random.SeedGenerator(3)
    state = to_numpy(generator.state)
    a = to_numpy(traceable_ops.uniform((5,), seed=generator))
    b = to_numpy(traceable_ops.uniform((5,), seed=generator))
    assert not np.allclose(a, b)  # The generator advanced...
    # ... as Keras' own draws advance it.
    reference = keras.random.SeedGenerator(3)
    keras.random.uniform((5,), seed=reference)
    keras.random.uniform((5,), seed=reference)
    np.testing.assert_array_equal(to_numpy(generator.state),
                                  to_numpy(reference.state))
    assert not np.array_equal(to_numpy(generator.state), state)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's own draws")
def test_compiled_draws_equal_eager_draws():
    generator = keras.random.SeedGenerator(5)
    eager_generator = keras.random.SeedGenerator(5)

    def draw(gen):
        return (traceable_ops.uniform((3, 4), seed=gen),
                traceable_ops.normal((6,), seed=gen))

    compiled = backend.jit(draw)
    for _ in range(2):  # The second call reads the advanced state.
        uniform, normal = compiled(generator)
        eager_uniform, eager_normal = draw(eager_generator)
        np.testing.assert_array_equal(to_numpy(uniform),
                                      to_numpy(eager_uniform))
        # Compiled `log` and `cos` may round the last bit differently.
        np.testing.assert_allclose(to_numpy(normal), to_numpy(eager_normal),
                                   rtol=1e-6)
