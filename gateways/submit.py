"""Dropping files into an outbox the way a well-behaved system does.

Copy into `outbox/<flow>/tmp/`, fsync, then give it its final name in `new/` with a link that
fails rather than overwrite: ingest only ever sees complete files, and a second file with the
same name waits until ingest has claimed the first instead of replacing it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from ..transfer.durable import fsync_dir
from ..transfer.ids import new_message_id
from .ingest import outbox_dirs

__all__ = ["SubmitError", "expand_paths", "submit_files"]


class SubmitError(Exception):
    pass


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, directories walked recursively (sorted; links are not followed)."""
    out: list[Path] = []
    for p in paths:
        if p.is_symlink():
            raise SubmitError(f"{p}: is a symbolic link; pass the file it points to instead")
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    f = Path(root) / name
                    if f.is_file() and not f.is_symlink():
                        out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise SubmitError(f"{p}: no such file or directory")
    return out


def submit_files(
    outbox_root: Path, flow: str, paths: list[Path], wait: float = 30.0
) -> list[tuple[Path, Path]]:
    tmp, new = outbox_dirs(outbox_root, flow)
    tmp.mkdir(parents=True, exist_ok=True)
    new.mkdir(parents=True, exist_ok=True)
    placed: list[tuple[Path, Path]] = []
    for src in expand_paths(paths):
        staging = tmp / new_message_id()
        with open(src, "rb") as fin, open(staging, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        target = new / src.name
        deadline = time.monotonic() + wait
        while True:
            try:
                os.link(staging, target)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    with contextlib.suppress(FileNotFoundError):
                        staging.unlink()
                    raise SubmitError(
                        f"{target} is still waiting to be claimed after {wait:.0f}s; "
                        "is the gateway's ingest agent running? (zonegate status)"
                    ) from None
                time.sleep(0.05)
        staging.unlink()
        fsync_dir(new)
        placed.append((src, target))
    return placed
