"""`--profile DIR`: py-spy attached to every agent process, one speedscope file per agent and run.

py-spy samples a running interpreter from outside (ptrace), so the agents run unchanged. It is
attached by pid once an agent is up and stops by itself when the agent exits, which is when it
writes its file. The files open in https://www.speedscope.app (or `py-spy`'s own viewers); the
run also prints the functions that took the most samples in each, so the bottleneck has a name
in the log even without a viewer.

Profiled figures are not comparable with unprofiled ones: sampling pauses the process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["Profiler", "find_py_spy", "top_frames"]


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, directory: Path, rate: int = 100) -> None:
        exe = find_py_spy()
        if exe is None:
            raise FileNotFoundError("py-spy is not installed: pip install -e '.[bench]'")
        self.exe = exe
        self.directory = directory
        self.rate = rate
        directory.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.written: dict[str, Path] = {}
        self.problems: list[str] = []

    def attach(self, label: str, pid: int) -> None:
        out = self.directory / f"{label}.speedscope.json"
        log = self.directory / f"{label}.py-spy.log"
        # --nonblocking: read the interpreter's memory without ptrace-stopping it, so the agent
        # runs at (almost) full speed and a SIGTERM reaches it (a stopped tracee can lose one)
        cmd = [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--nonblocking"]
        cmd += ["--format", "speedscope", "--output", str(out)]
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        self.running[label] = (proc, out)
        time.sleep(0.2)
        if proc.poll() is not None:
            self.problems.append(f"py-spy for {label} exited at once: {log.read_text()[-500:]}")

    def finish(self, timeout: float = 60) -> None:
        """Wait for each py-spy (its agent has exited) and note any file that was not written."""
        for label, (proc, out) in self.running.items():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(10)
            if out.exists() and out.stat().st_size > 0:
                self.written[label] = out
            else:
                self.problems.append(f"py-spy wrote no profile for {label} (see {out}.log)")
        self.running.clear()

    def summary(self, top: int = 10) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "files": {k: str(v) for k, v in self.written.items()},
            "top_self": {k: top_frames(v, top) for k, v in self.written.items()},
            "problems": self.problems,
        }


#: Leaf frames that are a thread waiting for work, not doing it (py-spy's idle detection misses
#: some of them): counted apart, so the top of the list is where the work goes.
WAITING = frozenset(
    {
        "Condition.wait", "Event.wait", "Thread.join", "Thread._wait_for_tstate_lock",
        "_PollLikeSelector.select", "EpollSelector.select", "Poller.poll", "select", "poll",
        "sleep", "AgentContext.sleep",
    }
)  # fmt: skip


def top_frames(path: Path, top: int = 8) -> dict[str, Any]:
    """The leaf frames with the most samples in a speedscope file, all threads together.

    A stack's last frame is where the time went. Threads blocked waiting (`WAITING`) are
    summed as `waiting`; the rest are listed by their share of all samples. `sampled` is the
    samples' total weight (py-spy weighs them in seconds).
    """
    doc = json.loads(Path(path).read_text())
    frames = doc.get("shared", {}).get("frames", [])
    counts: Counter[int] = Counter()
    total = waiting = 0
    for prof in doc.get("profiles", []):
        samples = prof.get("samples", [])
        weights = prof.get("weights") or [1] * len(samples)
        for stack, weight in zip(samples, weights, strict=False):
            total += weight
            if not stack:
                continue
            leaf = frames[stack[-1]] if 0 <= stack[-1] < len(frames) else {}
            if leaf.get("name") in WAITING:
                waiting += weight
            else:
                counts[stack[-1]] += weight
    busy = []
    for index, n in counts.most_common(top):
        frame = frames[index] if 0 <= index < len(frames) else {}
        where = f"{frame.get('file', '?')}:{frame.get('line', '?')}"
        busy.append({"function": frame.get("name", "?"), "where": where, "share": n / total})
    return {"sampled": total, "waiting_share": waiting / total if total else 0.0, "top": busy}
