import os
import stat

import pytest

from keras_mtl.src.utils.atomic_files import atomic_write
from keras_mtl.src.utils.atomic_files import move_into_place

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes")


def test_writes_the_exact_path(tmp_path):
    path = tmp_path / "weights"
    with atomic_write(path) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["weights"]


def test_the_old_file_stays_until_the_write_is_complete(tmp_path):
    path = tmp_path / "file.npz"
    path.write_bytes(b"old")
    with atomic_write(str(path)) as handle:
        handle.write(b"new")
        assert path.read_bytes() == b"old"
        assert len(os.listdir(tmp_path)) == 2  # The temporary file.
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["file.npz"]


@pytest.mark.parametrize("exists", [True, False])
def test_a_failed_write_changes_nothing(tmp_path, exists):
    path = tmp_path / "file.npz"
    if exists:
        path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(path) as handle:
            handle.write(b"half")
            raise RuntimeError("midway")
    assert os.listdir(tmp_path) == (["file.npz"] if exists else [])
    if exists:
        assert path.read_bytes() == b"old"


def test_a_missing_folder_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "missing" / "file") as handle:
            handle.write(b"x")
    assert os.listdir(tmp_path) == []


@posix_only
def test_permissions(tmp_path):
    reference = tmp_path / "reference"
    with open(reference, "wb"):
        pass
    new = tmp_path / "new"
    with atomic_write(new) as handle:
        handle.write(b"x")
    # A new file gets the umask's default mode, as with `open`.
    assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(
        reference.stat().st_mode
    )
    # A replaced file keeps its mode; an explicit mode wins.
    os.chmod(new, 0o640)
    with atomic_write(new) as handle:
        handle.write(b"y")
    assert stat.S_IMODE(new.stat().st_mode) == 0o640
    with atomic_write(new, permissions=0o600) as handle:
        handle.write(b"z")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert new.read_bytes() == b"z"


@posix_only
def test_a_symbolic_link_is_followed(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "file"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_write(link) as handle:
        handle.write(b"new")
    assert link.is_symlink()
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "real")) == ["file"]


def test_move_into_place(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    source = scratch / "download"
    source.write_bytes(b"archive")
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(b"old")
    move_into_place(source, target)
    assert target.read_bytes() == b"archive"
    assert os.listdir(scratch) == []
