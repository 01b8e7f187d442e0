"""Durable file-system steps: every queue move in zonegate is built from these.

A step is durable only when the data, the rename and the directory entry have all reached the
disk: write, fsync the file, rename, fsync the directory. A crash between any two of those leaves
either the old state or the new one, never a half-written file under a final name.

``Barrier`` is the group commit of those steps for a batch of messages: the batch writes its
files (``write_new``, ``replace_file``) and names what it wrote, then one ``commit`` makes all of
it durable before the batch takes its next step (a rename that publishes what was written, or an
acknowledgement). The order that makes one message safe is kept phase by phase for every message
of the batch: write -> barrier -> rename -> barrier, never rename before the barrier.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "Barrier",
    "durable_rename",
    "fsync_dir",
    "open_exclusive",
    "replace_durably",
    "replace_file",
    "start_writeback",
    "write_durably",
    "write_new",
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


def write_new(path: Path, data: bytes, barrier: Barrier, mode: int = 0o600) -> None:
    """Write a small new file in full; it is durable once ``barrier`` commits."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    barrier.file(path)
    barrier.dir(path.parent)


def replace_file(path: Path, data: bytes, barrier: Barrier, mode: int = 0o600) -> None:
    """Atomically replace a small file (temp file, rename over); durable once ``barrier`` commits.

    A reader sees the old content or the new one, never a mix. Until the commit a crash may leave
    the old one: callers publish nothing that depends on the new content before committing.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    barrier.file(path)
    barrier.dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def _load_syncfs():  # type: ignore[no-untyped-def]
    """libc's syncfs(2), or None where there is none (then barriers fsync file by file)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file being written to disk now, without waiting for it.

    For large files: the disk works while the rest is still being produced, so the fsync at
    the end waits for the last part only, and dirty pages do not pile up. Not a durability
    step (the fsync still is); errors are left for that fsync to report.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
        return
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


#: How barriers commit: "auto" (below), or "fsync" / "syncfs" always (to compare them on a host:
#: both are as strong; on ext4 here syncfs was the faster by a third for floods of small files).
_STRATEGY = os.environ.get("ZONEGATE_BARRIER", "auto")
#: Above this much dirty page cache on the machine a barrier fsyncs its own files one by one
#: rather than flush the whole file system (which would wait for everyone's writeback).
SYNCFS_DIRTY_LIMIT = 32 * 1024 * 1024
#: A barrier over this few paths just fsyncs them: one journal commit either way.
SYNCFS_MIN_PATHS = 6
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        return _POOL


def dirty_bytes() -> int | None:
    """Dirty and under-writeback page cache of the whole machine (Linux), None if unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    found = 0
    for line in text.splitlines():
        if line.startswith((b"Dirty:", b"Writeback:")):
            total += int(line.split()[1]) * 1024
            found += 1
            if found == 2:
                return total
    return None


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Barrier:
    """Group commit: everything a batch wrote becomes durable at one point, ``commit``.

    A batch names the files it wrote (``file``) and the directories whose entries it changed
    (``dir``: a create, a rename in or out, an unlink); ``commit`` returns once all of them are
    on disk, or raises ``OSError`` (then nothing may be published that depends on them: the
    caller redoes the phase). Two ways to get there, equally strong:

    - ``fsync`` of every named file and directory, issued from a few threads at once, so that
      ext4 (jbd2) folds the fsyncs that arrive together into one journal commit instead of one
      commit each. POSIX durability, file by file.
    - one ``syncfs(2)`` per file system the named paths live on: it writes back every dirty page
      and inode of that file system and commits its journal, which is a superset of what the
      batch wrote. Used when the batch is large and the machine holds little dirty data
      (``/proc/meminfo``), so the flush does not wait for other writers' gigabytes. The file
      system is named by a descriptor held open for the barrier's lifetime, so syncfs also
      reports a writeback error that happened since then to any of our files (Linux >= 5.8
      reports such errors through syncfs; the descriptor makes sure they are reported to us).

    Not thread-safe: one barrier per stage (thread) of an agent.
    """

    def __init__(self) -> None:
        self._paths: dict[str, bool] = {}  # path -> is a directory; insertion-ordered, unique
        self._fs: dict[int, int] = {}  # st_dev -> descriptor naming that file system
        self.commits = 0

    def file(self, path: str | os.PathLike[str]) -> None:
        self._paths.setdefault(os.fspath(path), False)

    def dir(self, path: str | os.PathLike[str]) -> None:
        self._paths[os.fspath(path)] = True

    def __len__(self) -> int:
        return len(self._paths)

    def discard(self) -> None:
        """Forget what was named without making it durable (the phase is being redone)."""
        self._paths.clear()

    def commit(self) -> None:
        paths, self._paths = self._paths, {}
        if not paths:
            return
        self.commits += 1
        if _STRATEGY == "fsync":
            for future in [_pool().submit(_fsync_path, p) for p in paths]:
                future.result()
            return
        if len(paths) >= SYNCFS_MIN_PATHS and _SYNCFS is not None and _STRATEGY == "syncfs":
            self._syncfs(paths)
            return
        if len(paths) >= SYNCFS_MIN_PATHS and _SYNCFS is not None:
            dirty = dirty_bytes()
            if dirty is not None and dirty <= SYNCFS_DIRTY_LIMIT:
                self._syncfs(paths)
                return
        if len(paths) < SYNCFS_MIN_PATHS:
            for path in paths:
                _fsync_path(path)
            return
        for future in [_pool().submit(_fsync_path, p) for p in paths]:
            future.result()

    def _syncfs(self, paths: dict[str, bool]) -> None:
        # The file system of each directory named (a file shares its directory's: write_new and
        # replace_file name both); a directory can be a mount point, so each is looked at.
        dirs = {p for p, is_dir in paths.items() if is_dir}
        dirs.update(os.path.dirname(p) or "." for p, is_dir in paths.items() if not is_dir)
        devices: dict[int, str] = {}
        for d in dirs:
            dev = os.stat(d).st_dev
            # Keep the shortest path of each file system: a lasting directory to hold open.
            if dev not in devices or len(d) < len(devices[dev]):
                devices[dev] = d
        for dev, where in devices.items():
            fd = self._fs.get(dev)
            if fd is None:
                fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._fs[dev] = fd
            assert _SYNCFS is not None
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")

    def close(self) -> None:
        for fd in self._fs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fs.clear()


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
