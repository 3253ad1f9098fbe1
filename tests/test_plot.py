"""`keras_mtl.plot`: the drawn data equal the inputs; bad inputs refused."""

import sys

import keras
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import keras_mtl  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_monitor():
    monitor = keras_mtl.callbacks.ConflictMonitor()
    monitor.task_names = ("a", "b")
    monitor.history = {
        "step": np.array([1, 2, 3]),
        "task_weights": np.array([[0.1, 0.9], [0.3, 0.7], [0.5, 0.5]]),
        "grad_norms": np.array([[1.0, 2.0], [0.5, 1.0], [0.2, 0.4]]),
        "cosines": np.array([[[1.0, -0.5], [-0.5, 1.0]],
                             [[1.0, 0.1], [0.1, 1.0]],
                             [[1.0, np.nan], [np.nan, 1.0]]]),
    }
    return monitor


def test_task_weights_and_norms_from_a_monitor():
    monitor = fake_monitor()
    ax = keras_mtl.plot.task_weights(monitor)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    np.testing.assert_array_equal(lines[1].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.9, 0.7, 0.5])
    ax = keras_mtl.plot.gradient_norms(monitor)
    assert ax.get_yscale() == "log"
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(),
                                  [1.0, 0.5, 0.2])


def test_task_weights_from_history_logs():
    logs = {"a_weight": [0.2, 0.4], "b_weight": [0.8, 0.6],
            "val_a_weight": [9.0, 9.0], "loss": [1.0, 0.5]}
    _, ax = plt.subplots()
    assert keras_mtl.plot.task_weights(logs, ax=ax) is ax
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [0.2, 0.4])
    with pytest.raises(ValueError, match="task_names"):
        keras_mtl.plot.task_weights(logs, task_names=["c"])
    with pytest.raises(ValueError, match="_grad_norm"):
        keras_mtl.plot.gradient_norms(logs)


def test_cosine_heatmap():
    ax = keras_mtl.plot.cosine_heatmap(fake_monitor())
    image = ax.get_images()[0].get_array()
    # The NaN of the last record is left out of the mean.
    np.testing.assert_allclose(image, [[1.0, -0.2], [-0.2, 1.0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="square"):
        keras_mtl.plot.cosine_heatmap(np.ones((2, 3)))
    with pytest.raises(ValueError, match="task_names"):
        keras_mtl.plot.cosine_heatmap(np.eye(2), task_names=["a"])


def test_fusion_attention_of_a_real_fusion_layer():
    fusion = keras_mtl.layers.AdapterFusion()
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(2, 5, 3, 4)).astype("float32")
    query = rng.normal(size=(2, 5, 4)).astype("float32")
    _, scores = fusion(outputs, query=query, return_attention_scores=True)
    ax = keras_mtl.plot.fusion_attention(
        scores, adapter_names=["x", "y", "z"])
    np.testing.assert_allclose(
        ax.get_images()[0].get_array(),
        keras.ops.convert_to_numpy(scores).mean(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="adapter_names"):
        keras_mtl.plot.fusion_attention(scores, adapter_names=["x"])
    with pytest.raises(ValueError, match="scores"):
        keras_mtl.plot.fusion_attention(np.ones((1, 2, 3, 4)))


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"keras-mtl\[plot\]"):
        keras_mtl.plot.cosine_heatmap(np.eye(2))
