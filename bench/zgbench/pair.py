"""A gateway pair as real processes: internet-gw (ingest, sender) and internal-gw (receiver).

Each agent is its own `python -m zonegate.bin.cli run --agent ...` process, as in production
and in tests/harness.py, so a figure includes everything an agent really does (its audit log,
fsyncs, metrics, the ZeroMQ link between processes). The pair also samples the agents' memory,
scrapes their metrics endpoints and knows where their audit logs are; optionally each agent runs
under a profiler (`profile.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from zonegate.audit.log import OpenLog
from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.transfer.ids import is_message_id

from .profile import Profiler
from .progress import Progress, say
from .stages import BUSY_SOURCES, counter_values, histogram_sums

__all__ = ["AGENTS", "FLOW", "BenchError", "Pair", "RssSampler", "running"]

#: agent -> the gateway it belongs to
AGENTS = {"ingest": "internet-gw", "sender": "internet-gw", "receiver": "internal-gw"}
FLOW = "import"
MiB = 1024 * 1024


class BenchError(Exception):
    """A measurement could not be taken; the message says why and what to look at."""


def _ids(d: Path) -> list[str]:
    try:
        return [n for n in os.listdir(d) if is_message_id(n)]
    except FileNotFoundError:
        return []


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the kernel's own high-water mark) of a process, in bytes."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in task.read_text().split()]
                out += kids
                todo += kids
    return out


class RssSampler:
    """Peak resident memory per agent: VmHWM and VmRSS of it and its children, polled.

    VmHWM alone would do for the agent itself; polling catches children that exit between
    samples (a scanner hook, say) and works where VmHWM is not kept.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, int]:
        now: dict[str, int] = {}
        for agent, pid in self.pids.items():
            for p in (pid, *descendants(pid)):
                st = proc_memory(p)
                rss = max(st.get("VmRSS", 0), st.get("VmHWM", 0))
                now[agent] = max(now.get(agent, 0), rss)
                self.peak[agent] = max(self.peak.get(agent, 0), rss)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()
        return dict(self.peak)


class Pair:
    """The two demo gateways under `root`, each agent its own process; see the module doc."""

    def __init__(
        self, root: Path, limit: int, profiler: Profiler | None = None, batch: bool = False
    ) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.configs = write_gateway_pair(root, limit, batch=batch)
        self.profiler = profiler
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.rss: RssSampler | None = None
        self.idle_rss: dict[str, int] = {}
        self.metrics_urls: dict[str, str] = {}
        self.send_spool = root / "internet-gw" / "spool"
        self.recv_spool = root / "internal-gw" / "spool"
        self.outbox_tmp = root / "internet-gw" / "outbox" / FLOW / "tmp"
        self.outbox_new = root / "internet-gw" / "outbox" / FLOW / "new"
        self.inbox_new = root / "internal-gw" / "inbox" / FLOW / "new"

    def spool(self, agent: str) -> Path:
        return self.send_spool if AGENTS[agent] == "internet-gw" else self.recv_spool

    def log(self, agent: str) -> Path:
        return self.root / f"{agent}.log"

    def audit_logs(self) -> list[Path]:
        return [self.root / gw / "audit" / "audit.jsonl" for gw in ("internet-gw", "internal-gw")]

    def audit_records(self) -> list[dict]:
        """Every record so far of both gateways' audit logs (all rotated segments).

        Safe while the agents run: a last line still being written is left for the next read.
        Not a verification (`zonegate audit verify` is); only what the records say about time.
        """
        records: list[dict] = []
        for log in self.audit_logs():
            with OpenLog(log) as files:
                for log_file in files:
                    for raw in log_file.file:
                        if not raw.endswith(b"\n"):
                            break
                        with contextlib.suppress(ValueError):
                            obj = json.loads(raw)
                            if isinstance(obj, dict):
                                records.append(obj)
        return records

    def start(self, phase: str, timeout: float = 60) -> None:
        for agent, gw in AGENTS.items():
            cmd = [sys.executable, "-m", "zonegate.bin.cli", "run", "-v"]
            cmd += ["--config", str(self.configs[gw]), "--agent", agent]
            with open(self.log(agent), "ab") as log:
                self.procs[agent] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for agent in AGENTS:
            runtime = AgentContext.runtime_file(self.spool(agent), agent)
            while not runtime.exists():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{agent} did not start within {timeout:.0f}s")
                time.sleep(0.05)
            with contextlib.suppress(OSError, ValueError):
                url = json.loads(runtime.read_text()).get("metrics")
                if url:
                    self.metrics_urls[agent] = url
        self.outbox_tmp.mkdir(parents=True, exist_ok=True)
        self.outbox_new.mkdir(parents=True, exist_ok=True)
        self.rss = RssSampler({a: p.pid for a, p in self.procs.items()}).start()
        self.idle_rss = self.rss.sample()
        if self.profiler is not None:
            for agent, proc in self.procs.items():
                self.profiler.attach(f"{phase}-{agent}", proc.pid)

    def check_alive(self) -> None:
        for agent, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(
                    f"agent {agent} exited with code {proc.returncode} (log: {self.log(agent)})"
                )

    def scrape(self, agent: str) -> str:
        """The agent's metrics page (Prometheus text), or BenchError."""
        url = self.metrics_urls.get(agent)
        if not url:
            raise BenchError(f"{agent} publishes no metrics endpoint")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (our own loopback)
                return resp.read().decode()
        except OSError as e:
            raise BenchError(f"cannot scrape {agent}'s metrics at {url}: {e}") from e

    def stage_seconds(self, agent: str, stage: str) -> float | None:
        """The sum so far of an agent's `zonegate_stage_duration_seconds` for `stage`, or None.

        None (with a line on stderr) when it cannot be scraped or has no such stage: the stage
        shares then fall back to the audit records alone and say so.
        """
        try:
            sums = histogram_sums(self.scrape(agent), flow=FLOW)
        except BenchError as e:
            say(f"  {e}")
            return None
        return sums[stage][0] if stage in sums else None

    def busy_seconds(self, settle: float = 10.0) -> dict[str, float | None]:
        """Per stage (stages.BUSY_SOURCES), the agents' busy seconds; None when none of the
        stage's counters could be read.

        A message can be delivered before its sender's batch is over (the sender still makes
        its envelope durable and moves it to sent/), and a batch's time is counted when it
        ends; so this waits, up to `settle` seconds, for the sender's ready/ and active/ to be
        empty and two readings 0.2 s apart to agree.
        """
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and (
            _ids(self.send_spool / "ready") or _ids(self.send_spool / "active")
        ):
            time.sleep(0.05)
        last = self._busy_now()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self._busy_now()
            if now == last:
                break
            last = now
        return last

    def _busy_now(self) -> dict[str, float | None]:
        scraped: dict[str, dict[str, float] | None] = {}
        for agent in {a for sources in BUSY_SOURCES.values() for a, _ in sources}:
            try:
                scraped[agent] = counter_values(self.scrape(agent))
            except BenchError as e:
                say(f"  {e}")
                scraped[agent] = None
        out: dict[str, float | None] = {}
        for stage, sources in BUSY_SOURCES.items():
            found = [
                got[label]
                for agent, label in sources
                if (got := scraped[agent]) is not None and label in got
            ]
            out[stage] = sum(found) if found else None
        return out

    def delivered(self) -> int:
        return len(_ids(self.recv_spool / "delivered"))

    def refused(self) -> list[str]:
        """Entries in quarantine/ or corrupt/ on either side, with their reasons."""
        out = []
        for spool in (self.send_spool, self.recv_spool):
            for state in ("quarantine", "corrupt"):
                for msg_id in _ids(spool / state):
                    meta: dict = {}
                    with contextlib.suppress(OSError, ValueError):
                        meta = json.loads((spool / state / msg_id / "meta.json").read_bytes())
                    out.append(
                        f"{spool.parent.name}/{state}/{msg_id}: {meta.get('original_name')} "
                        f"{meta.get('reason_code')}: {meta.get('reason')}"
                    )
        return out

    def depths(self) -> str:
        parts = []
        with contextlib.suppress(FileNotFoundError):
            parts.append(f"outbox={len(os.listdir(self.outbox_new))}")
        for state in ("incoming", "ready", "active"):
            parts.append(f"{state}={len(_ids(self.send_spool / state))}")
        parts.append(f"received={len(_ids(self.recv_spool / 'received'))}")
        return " ".join(parts)

    def wait_delivered(self, n: int, timeout: float, label: str) -> None:
        """Poll until `n` messages are delivered; BenchError on a refusal, a dead agent, timeout.

        The poll only notices completion; the times reported come from the audit records, so
        the poll interval does not enter any figure (and a slow poll leaves the cores to the
        agents).
        """
        progress = Progress(label, n)
        deadline = time.monotonic() + timeout
        interval = 0.05 if n == 1 else 0.25
        while True:
            got = self.delivered()
            if got >= n:
                progress.close()
                return
            self.check_alive()
            if refused := self.refused():
                progress.close()
                raise BenchError("refused or corrupt:\n  " + "\n  ".join(refused[:20]))
            if time.monotonic() > deadline:
                progress.close()
                raise BenchError(f"{label}: only {got}/{n} delivered after {timeout:.0f}s")
            progress.update(got, self.depths())
            time.sleep(interval)

    def stop(self) -> None:
        """SIGTERM every agent (each writes its final checkpoint), then wait; kill stragglers."""
        if self.rss is not None:
            self.rss.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for agent, proc in self.procs.items():
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)  # again: one sent mid-startup can be lost
            if proc.poll() is None:
                say(f"  {agent} did not stop within 60s of SIGTERM; killing it")
                proc.kill()
                proc.wait()
        if self.profiler is not None:
            self.profiler.finish()

    def discard_data(self) -> None:
        """Remove what the messages left (outbox, spools, inbox); keep configs, keys and logs.

        For a temporary work dir kept after a failure: the logs and audit logs explain it, the
        gigabytes of payload do not.
        """
        for gw, parts in (
            ("internet-gw", ("outbox", "spool")),
            ("internal-gw", ("spool", "inbox")),
        ):
            for part in parts:
                shutil.rmtree(self.root / gw / part, ignore_errors=True)

    def peak_rss(self) -> dict[str, int]:
        return dict(self.rss.peak) if self.rss else {}

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for agent in AGENTS:
            p = self.log(agent)
            if p.exists():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p}\n" + "\n".join(tail))
        return "\n".join(out)

    def log_problems(self) -> list[str]:
        """Log lines that look like errors or tracebacks."""
        bad = []
        for agent in AGENTS:
            p = self.log(agent)
            if not p.exists():
                continue
            for line in p.read_text(errors="replace").splitlines():
                if any(w in line for w in ("Traceback", "ERROR", "CRITICAL", "Error:")):
                    bad.append(f"{agent}: {line}")
        return bad


@contextlib.contextmanager
def running(pair: Pair, phase: str):
    """Start the pair; on any failure print the agents' log tails; always stop it."""
    try:
        pair.start(phase)
        yield pair
    except BaseException:
        with contextlib.suppress(Exception):
            print(pair.log_tails(), file=sys.stderr)
        raise
    finally:
        pair.stop()
