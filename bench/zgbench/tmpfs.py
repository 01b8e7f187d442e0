"""A private tmpfs, mounted for one measurement and unmounted on every way out of it.

The `with` block's exit unmounts whether the block returns or raises; `bench/run` turns SIGTERM
and SIGHUP into an exception, so a killed run unmounts too (only SIGKILL cannot; then
`umount <workdir>/tmpfs` by hand, the path is printed when it is mounted).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["tmpfs"]


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
