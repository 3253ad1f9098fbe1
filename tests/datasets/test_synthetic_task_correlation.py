import numpy as np
import pytest

from keras_mtl.datasets import synthetic_task_correlation


def label_correlation(p, **kwargs):
    _, y = synthetic_task_correlation(
        num_samples=20000, correlation=p, seed=1, **kwargs
    )
    return np.corrcoef(y["task_1"][:, 0], y["task_2"][:, 0])[0, 1]


def test_shapes_dtypes_and_determinism():
    x, y = synthetic_task_correlation(
        num_samples=50, num_features=7, num_tasks=3
    )
    assert x.shape == (50, 7) and x.dtype == np.float32
    assert sorted(y) == ["task_1", "task_2", "task_3"]
    assert all(v.shape == (50, 1) and v.dtype == np.float32 for v in y.values())
    x2, y2 = synthetic_task_correlation(
        num_samples=50, num_features=7, num_tasks=3
    )
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y["task_3"], y2["task_3"])
    x3, _ = synthetic_task_correlation(num_samples=50, num_features=7, seed=1)
    assert not np.allclose(x, x3)


def test_label_correlation_increases_with_p():
    # With the google-research constants the paper's monotone relation holds
    # (reference values 0.22 / 0.46 / 1.0 at p = 0.5 / 0.9 / 1.0).
    values = [label_correlation(p) for p in (0.0, 0.5, 0.9, 1.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert abs(values[0]) < 0.05
    assert values[-1] > 0.99


def test_weight_vectors_have_cosine_p():
    # Without sines and noise the labels are w_k^T x, so w_k can be recovered
    # by least squares and its cosine checked against p.
    x, y = synthetic_task_correlation(
        num_samples=500, num_features=10, correlation=0.3, num_sines=0,
        noise_std=0.0, alphas=[], betas=[], scale=2.0,
    )
    w1 = np.linalg.lstsq(x, y["task_1"][:, 0], rcond=None)[0]
    w2 = np.linalg.lstsq(x, y["task_2"][:, 0], rcond=None)[0]
    cosine = w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2)
    assert cosine == pytest.approx(0.3, abs=1e-4)
    assert np.linalg.norm(w1) == pytest.approx(2.0, rel=1e-4)


def test_clear_errors():
    with pytest.raises(ValueError, match="correlation=1.5"):
        synthetic_task_correlation(correlation=1.5)
    with pytest.raises(ValueError, match="num_tasks=1"):
        synthetic_task_correlation(num_tasks=1)
    with pytest.raises(ValueError, match="num_features=2"):
        synthetic_task_correlation(num_features=2, num_tasks=3)
    with pytest.raises(ValueError, match="len\\(alphas\\)=2"):
        synthetic_task_correlation(alphas=[1.0, 2.0])
