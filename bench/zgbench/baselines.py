"""The work the hardware must do anyway, timed in the same run and on the same disk.

- `durable_copies`: a file moving through two gateways is written durably once per gateway and
  hashed at least once: two copies (1 MiB writes, fsync) and one hashlib SHA-256 pass, together.
- `durable_creates`: a small file that is acknowledged only once it is durable costs at least a
  write, an fsync, a rename and an fsync of the directory; the rate of doing that one at a time,
  and each one's latency.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from zonegate.transfer.durable import fsync_dir

__all__ = ["CreateBaseline", "durable_copies", "durable_creates", "make_file", "sha256_file"]

BLOCK = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    """A file of distinct, incompressible blocks, written durably; returns its SHA-256."""
    h = hashlib.sha256()
    base = os.urandom(BLOCK)
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block = (i.to_bytes(8, "big") + base[8:])[: size - written]
            h.update(block)
            f.write(block)
            written += len(block)
            i += 1
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


def durable_copies(src: Path, scratch: Path) -> float:
    """Seconds for two durable copies of `src` (1 MiB blocks, fsync) plus one SHA-256 pass."""
    scratch.mkdir(parents=True, exist_ok=True)
    a, b = scratch / "copy-a", scratch / "copy-b"
    t0 = time.monotonic()
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(a, "wb") as fa, open(b, "wb") as fb:
        while chunk := fin.read(BLOCK):
            h.update(chunk)
            fa.write(chunk)
            fb.write(chunk)
        fa.flush()
        fb.flush()
        os.fsync(fa.fileno())
        os.fsync(fb.fileno())
    fsync_dir(scratch)
    elapsed = time.monotonic() - t0
    h.hexdigest()
    shutil.rmtree(scratch)
    return elapsed


@dataclass(frozen=True)
class CreateBaseline:
    rate: float  # creates per second, one after another
    latencies: list[float]  # seconds, each create from open to the directory fsync


def durable_creates(scratch: Path, n: int) -> CreateBaseline:
    """`n` single durable 1 KiB creates: write, fsync, rename into new/, fsync new/."""
    tmp, new = scratch / "tmp", scratch / "new"
    tmp.mkdir(parents=True)
    new.mkdir(parents=True)
    payload = os.urandom(1024)
    latencies = []
    t0 = time.monotonic()
    for i in range(n):
        started = time.monotonic()
        t = tmp / f"f{i:06d}"
        with open(t, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.rename(t, new / t.name)
        fsync_dir(new)
        latencies.append(time.monotonic() - started)
    elapsed = time.monotonic() - t0
    shutil.rmtree(scratch)
    return CreateBaseline(n / elapsed, latencies)
