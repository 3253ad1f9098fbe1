"""Crash-safe file writes: a temporary file, fsync, then `os.replace`."""

import contextlib
import os
import secrets
import stat


def _create_scratch(directory, name):
    """Creates a new, empty temporary file in `directory`; returns (fd, path).

    Created with mode 0o666 minus the umask, as `open(path, "wb")` would.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        scratch = os.path.join(
            directory, f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        )
        try:
            return os.open(scratch, flags, 0o666), scratch
        except FileExistsError:
            continue


def _fsync_directory(directory):
    """Makes a rename in `directory` durable (where the platform allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # E.g. Windows, where directories cannot be opened.
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_into_place(source, path):
    """Syncs the finished file `source` and moves it onto `path` atomically.

    `source` must be on the same file system as `path` (e.g. in a temporary
    folder created inside the folder of `path`).
    """
    with open(source, "rb+") as handle:
        os.fsync(handle.fileno())
    target = os.path.realpath(os.fspath(path))
    os.replace(source, target)
    _fsync_directory(os.path.dirname(target))


@contextlib.contextmanager
def atomic_write(path, permissions=None):
    """Opens a binary file that replaces `path` only once fully written.

    Yields a file object for a temporary file in the folder of `path`. When
    the `with` block ends normally, the file is flushed, synced to disk and
    moved onto `path` with `os.replace` (atomic), so readers and crashes see
    either the old file or the complete new one. If the block raises, the
    temporary file is removed and any existing file at `path` is untouched.

    Args:
        path: destination (str or path-like); used exactly as given (no
            suffix is added). A symbolic link is followed.
        permissions: mode bits for the new file. Defaults to `None`: those
            of the file it replaces, else `0o666` minus the umask (as
            `open(path, "wb")` would give).

    Yields:
        A file object opened for binary writing.
    """
    target = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(target)
    if permissions is None and os.path.isfile(target):
        permissions = stat.S_IMODE(os.stat(target).st_mode)
    fd, scratch = _create_scratch(directory, name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if permissions is not None:
            os.chmod(scratch, permissions)
        os.replace(scratch, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(scratch)
        raise
    _fsync_directory(directory)
