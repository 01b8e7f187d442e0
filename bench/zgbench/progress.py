"""Feedback on stderr while a run goes on: a bar redrawn in place on a terminal, lines otherwise.

stdout carries only the table, so `bench/run > table.txt` and a log of stderr both stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "say"]


def say(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stderr, flush=True)


class Progress:
    """One long step: `update(done)` as it goes, `close()` at the end.

    On a tty the line is redrawn at most ten times a second; otherwise a line is printed every
    `every` seconds, so a CI log shows the run is alive without drowning in counters.
    """

    def __init__(
        self, label: str, total: int | None = None, every: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.every = every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def line(self, done: int | None, detail: str) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"  [{self.label}]"]
        if self.total and done is not None:
            width = 24
            filled = min(width, width * done // max(1, self.total))
            parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {done}/{self.total}")
        elif done is not None:
            parts.append(str(done))
        parts.append(f"{elapsed:.0f}s")
        if detail:
            parts.append(detail)
        return " ".join(parts)

    def update(self, done: int | None = None, detail: str = "") -> None:
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else self.every):
            return
        self.last = now
        text = self.line(done, detail)
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self.drawn = True
        else:
            say(text, self.stream)

    def close(self, text: str = "") -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        if text:
            say(text, self.stream)
