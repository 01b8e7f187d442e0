"""What a run was measured on: the machine, the file system of the work dir, the git commit.

Figures from different machines are never compared directly; this is what tells a reader
whether two runs are comparable at all (and how loaded the machine was while it ran).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["filesystem", "git_state", "load_average", "machine_info"]

REPO = Path(__file__).resolve().parents[2]


def _cpu() -> tuple[str, list[str]]:
    model, flags = "", []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = rest.strip()
            elif key == "flags" and not flags:
                have = set(rest.split())
                # what the issue names as the limits: AES-NI for the cipher, SHA-NI for hashlib
                flags = [f for f in ("aes", "sha_ni", "avx2", "avx512f") if f in have]
    return model, flags


def _meminfo_mib(key: str) -> float | None:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def filesystem(path: Path) -> dict[str, str]:
    """The mount that holds `path`: its type, device and mount point (longest prefix wins)."""
    best: dict[str, str] = {"type": "", "device": "", "mount": ""}
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            dev, mnt, kind = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best["mount"]):
                best = {"type": kind, "device": dev, "mount": mnt}
    return best


def load_average() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def machine_info(workdir: Path) -> dict[str, Any]:
    model, flags = _cpu()
    uname = os.uname()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "cpu_flags": flags,
        "memory_mib": _meminfo_mib("MemTotal"),
        "kernel": f"{uname.sysname} {uname.release}",
        "filesystem": filesystem(workdir),
        "load_average_at_start": load_average(),
    }


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit measured and whether tracked files differed from it (untracked ones don't)."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except OSError as e:
        return {"commit": None, "dirty": None, "error": f"git not runnable: {e}"}
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "error": head.stderr.strip() or "not a git tree"}
    changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed_files": changed[:50]}
