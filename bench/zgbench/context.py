"""What one `bench/run` asked for, handed to every measurement family, and what they leave."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .profile import Profiler

__all__ = ["Context", "MiB"]

MiB = 1024 * 1024


@dataclass
class Context:
    workdir: Path  # each family works in its own folder below it
    quick: bool
    large_size: int  # bytes of the one large file
    small_files: int  # files in the small-file flood
    paced_seconds: float  # how long the paced feed for the latency figure lasts at most
    timeout: float  # per wait for deliveries, seconds
    keep: bool = False  # keep the payloads (else only logs and audit logs stay after a family)
    profiler: Profiler | None = None
    #: extra JSON sections by family (stage details, logs kept, ...), written beside `results`
    details: dict[str, Any] = field(default_factory=dict)

    def folder(self, name: str) -> Path:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=False)
        return d
