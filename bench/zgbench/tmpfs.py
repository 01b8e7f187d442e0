"""A private tmpfs, mounted for one measurement and unmounted on every way out of it.

The `with` block's exit unmounts whether the block returns or raises; `bench/run` turns SIGTERM
and SIGHUP into an exception, so a killed run unmounts too (only SIGKILL cannot; then
`umount <workdir>/tmpfs` by hand, the path is printed when it is mounted).

`prefault` exists because of the machines this runs on: virtual machines whose balloon driver
reports freed memory to the host (virtio-balloon free page reporting), which takes it back. The
next first touch of such a page is a fault the host serves at about 440 MB/s here, ten times
slower than a tmpfs write into memory the guest holds (2.4 s against 0.26 s per GiB, measured
with 1 GiB writes: the fourth GiB of a fresh run is slow, a run right after a freed one is not).
A measurement that allocates more memory than its baseline would pay that toll alone, so each
side writes and frees the memory it is about to need just before its clock starts; the kernel
reports free pages only after a delay of seconds and hands out unreported ones first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["prefault", "tmpfs"]

CHUNK = 8 * 1024 * 1024


@contextmanager
def tmpfs(mountpoint: Path, size: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        raise PermissionError("mounting a tmpfs needs root (run bench/run as root)")
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700,nr_inodes=1m"
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "zonegate-bench", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise OSError(f"cannot mount a tmpfs on {mountpoint}: {r.stderr.strip()}")
    print(f"  mounted a tmpfs on {mountpoint} ({size >> 20} MiB)", file=sys.stderr)
    try:
        yield mountpoint
    finally:
        r = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            # something still holds a file open there: detach now, freed when it lets go
            print(f"  umount {mountpoint}: {r.stderr.strip()}; detaching it", file=sys.stderr)
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def prefault(directory: Path, nbytes: int) -> float:
    """Write `nbytes` into a file under `directory` and delete it; the seconds it took.

    On a tmpfs this makes the guest hold that much memory again (see the module's docstring),
    so the measurement that follows pays for its own work and not for the host's page faults.
    """
    path = directory / ".prefault"
    chunk = bytes(CHUNK)
    started = time.monotonic()
    try:
        with open(path, "wb") as f:
            for _ in range(-(-nbytes // CHUNK)):
                f.write(chunk)
    finally:
        path.unlink(missing_ok=True)
    return time.monotonic() - started
