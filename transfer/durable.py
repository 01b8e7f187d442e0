"""Durable file-system steps: every queue move in zonegate is built from these.

A step is durable only when the data, the rename and the directory entry have all reached the
disk: write, fsync the file, rename, fsync the directory. A crash between any two of those leaves
either the old state or the new one, never a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "durable_rename",
    "fsync_dir",
    "open_exclusive",
    "replace_durably",
    "write_durably",
]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries, so a rename or create inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(src: Path, dst: Path) -> None:
    """Rename and make both directory entries durable (one fsync when they share a directory)."""
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def open_exclusive(path: Path, mode: int = 0o600) -> BinaryIO:
    """Create a new file that must not exist yet; O_NOFOLLOW so a planted link is never written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    return os.fdopen(fd, "wb")


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a small file in full, fsync it, then fsync its directory (the file must be new)."""
    with open_exclusive(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def replace_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace a small file: write a sibling temp file, fsync, rename over, fsync dir."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with open_exclusive(tmp, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def durable_output(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A new file that is fsynced on a clean exit and removed if the body raises."""
    f = open_exclusive(path, mode)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    f.close()
