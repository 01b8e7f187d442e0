"""End-to-end benchmark of the spine: outbox -> ingest -> sender -> link -> receiver -> inbox.

    .venv/bin/python bench/spine.py [--quick] [--json FILE] [--workdir DIR]

Not part of the test suite. Each figure is printed next to a baseline measured in the same run on
the same disk, so the ratio says how far zonegate is from the hardware work it cannot avoid:

- large: one file (1 GiB; --quick 256 MiB) through a fresh gateway pair, MB/s from the rename
  into `outbox/import/new/` to the `spool/delivered/<id>` marker of the receiver; the delivered
  file's SHA-256 must equal the source's. Baseline: two durable copies (write + fsync, 1 MiB
  blocks) and one hashlib SHA-256 pass of the same file, timed together. Also the peak RSS of
  each agent process.
- small: 10,000 files of 1 KiB (--quick 2,000) renamed into `new/` at once, files/s until all
  are delivered. Baseline: single durable small-file creates (write 1 KiB, fsync, rename, fsync
  dir), 2,000 of them.

Each agent is its own process (`python -m zonegate.bin.cli run --agent ...`), as in
tests/harness.py; their logs are `<workdir>/<phase>/<agent>.log`. The work directory is removed
at the end unless --workdir was given or the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.transfer.durable import fsync_dir
from zonegate.transfer.ids import is_message_id

REPO = Path(__file__).resolve().parent.parent
AGENTS = {"ingest": "internet-gw", "sender": "internet-gw", "receiver": "internal-gw"}
FLOW = "import"
MiB = 1024 * 1024
BLOCK = MiB


class BenchError(Exception):
    pass


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the gateway pair as processes


def _ids(d: Path) -> list[str]:
    try:
        return [n for n in os.listdir(d) if is_message_id(n)]
    except FileNotFoundError:
        return []


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in task.read_text().split()]
                out += kids
                todo += kids
    return out


class Pair:
    """internet-gw (ingest + sender) and internal-gw (receiver), each agent its own process."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.configs = write_gateway_pair(root, limit)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peak_rss: dict[str, int] = {}
        self.send_spool = root / "internet-gw" / "spool"
        self.recv_spool = root / "internal-gw" / "spool"
        self.outbox_tmp = root / "internet-gw" / "outbox" / FLOW / "tmp"
        self.outbox_new = root / "internet-gw" / "outbox" / FLOW / "new"
        self.inbox_new = root / "internal-gw" / "inbox" / FLOW / "new"

    def log(self, agent: str) -> Path:
        return self.root / f"{agent}.log"

    def start(self, timeout: float = 60) -> None:
        for agent, gw in AGENTS.items():
            cmd = [sys.executable, "-m", "zonegate.bin.cli", "run", "-v"]
            cmd += ["--config", str(self.configs[gw]), "--agent", agent]
            with open(self.log(agent), "ab") as log:
                self.procs[agent] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for agent, gw in AGENTS.items():
            spool = self.send_spool if gw == "internet-gw" else self.recv_spool
            runtime = AgentContext.runtime_file(spool, agent)
            while not runtime.exists():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{agent} did not start within {timeout:.0f}s")
                time.sleep(0.05)
        self.outbox_tmp.mkdir(parents=True, exist_ok=True)
        self.outbox_new.mkdir(parents=True, exist_ok=True)

    def check_alive(self) -> None:
        for agent, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"agent {agent} exited with code {proc.returncode}")

    def sample_rss(self) -> None:
        for agent, proc in self.procs.items():
            for pid in (proc.pid, *_descendants(proc.pid)):
                st = _proc_status(pid)
                rss = max(st.get("VmRSS", 0), st.get("VmHWM", 0))
                self.peak_rss[agent] = max(self.peak_rss.get(agent, 0), rss)

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
        for state in ("incoming", "ready", "active", "sent"):
            parts.append(f"{state}={len(_ids(self.send_spool / state))}")
        parts.append(f"received={len(_ids(self.recv_spool / 'received'))}")
        with contextlib.suppress(FileNotFoundError):
            parts.append(f"outbox/new={len(os.listdir(self.outbox_new))}")
        return " ".join(parts)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for agent, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                say(f"  {agent} did not stop within 30s of SIGTERM; killing it")
                proc.kill()
                proc.wait()

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

    def wait_delivered(self, n: int, timeout: float, label: str) -> float:
        """Poll until `n` delivered markers exist; returns the monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        last_print = time.monotonic()
        last_rss = 0.0
        while True:
            now = time.monotonic()
            got = self.delivered()
            if got >= n:
                self.sample_rss()
                return now
            if now - last_rss > 0.2:
                self.sample_rss()
                last_rss = now
            self.check_alive()
            refused = self.refused()
            if refused:
                raise BenchError("refused or corrupt:\n  " + "\n  ".join(refused[:20]))
            if now - last_print >= 3:
                say(f"  [{label}] {got}/{n} delivered  ({self.depths()})")
                last_print = now
            if now > deadline:
                raise BenchError(f"{label}: only {got}/{n} delivered after {timeout:.0f}s")
            time.sleep(0.02)


# ----------------------------------------------------------------------------- helpers


def make_file(path: Path, size: int) -> str:
    """A file of distinct, incompressible-looking blocks; returns its SHA-256."""
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


def baseline_large(src: Path, scratch: Path) -> float:
    """Seconds for two durable copies (1 MiB blocks, fsync) plus one SHA-256 pass of `src`."""
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
    a.unlink()
    b.unlink()
    return elapsed


def baseline_small(scratch: Path, n: int) -> float:
    """Durable small-file creates per second: write 1 KiB, fsync, rename, fsync dir."""
    tmp, new = scratch / "tmp", scratch / "new"
    tmp.mkdir(parents=True)
    new.mkdir(parents=True)
    payload = os.urandom(1024)
    t0 = time.monotonic()
    for i in range(n):
        t = tmp / f"f{i:06d}"
        with open(t, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.rename(t, new / t.name)
        fsync_dir(new)
    elapsed = time.monotonic() - t0
    shutil.rmtree(scratch)
    return n / elapsed


def machine_info(path: Path) -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs, best = "", ""
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            dev, mnt, kind = line.split()[:3]
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, fs = mnt, f"{kind} ({dev} on {mnt})"
    return {"cores": os.cpu_count(), "cpu_model": cpu, "filesystem": fs}


def git_head() -> str:
    r = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return r.stdout.strip()


def result(name, value, unit, baseline, baseline_value, ratio=None) -> dict:
    if ratio is None and baseline_value:
        ratio = value / baseline_value
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if baseline_value is None else round(baseline_value, 3),
        "ratio": None if ratio is None else round(ratio, 3),
    }


# ------------------------------------------------------------------------------ the runs


def run_large(root: Path, size: int, timeout: float) -> list[dict]:
    say(f"large: generating {size // MiB} MiB source file")
    src_dir = root / "src"
    src_dir.mkdir(parents=True)
    src = src_dir / "large.bin"
    src_sha = make_file(src, size)

    say("large: baseline (2 durable copies + 1 SHA-256 pass)")
    base_s = baseline_large(src, root / "baseline-large")
    base_mbs = size / 1e6 / base_s
    say(f"  baseline {base_s:.2f}s = {base_mbs:.1f} MB/s")

    pair = Pair(root / "large", limit=2 * 1024**3)
    try:
        pair.start()
        staged = pair.outbox_tmp / "large.bin"
        shutil.copyfile(src, staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        say("large: submitting into outbox/import/new/")
        t0 = time.monotonic()
        os.rename(staged, pair.outbox_new / "large.bin")
        fsync_dir(pair.outbox_new)
        t1 = pair.wait_delivered(1, timeout, "large")
        elapsed = t1 - t0
        delivered = list(pair.inbox_new.iterdir())
        if len(delivered) != 1:
            raise BenchError(f"inbox/import/new holds {len(delivered)} files, expected 1")
        got_sha = sha256_file(delivered[0])
        if got_sha != src_sha:
            raise BenchError(f"SHA-256 mismatch: source {src_sha}, delivered {got_sha}")
        say(f"  delivered {delivered[0].name} in {elapsed:.2f}s, SHA-256 matches")
        problems = pair.log_problems()
        rss = dict(pair.peak_rss)
    except BaseException:
        with contextlib.suppress(Exception):
            say(pair.log_tails())
        raise
    finally:
        pair.stop()
    for line in problems:
        say(f"  log: {line}")
    mbs = size / 1e6 / elapsed
    label = f"large_{size // MiB}MiB"
    out = [
        result(f"{label}_throughput", mbs, "MB/s", "2x durable copy + sha256", base_mbs),
        result(f"{label}_seconds", elapsed, "s", "2x durable copy + sha256", base_s),
    ]
    for agent in AGENTS:
        out.append(result(f"{label}_peak_rss_{agent}", rss.get(agent, 0) / MiB, "MiB", "-", None))
    out.append(
        result(f"{label}_peak_rss_max", max(rss.values(), default=0) / MiB, "MiB", "-", None)
    )
    src.unlink()
    return out


def run_small(root: Path, n: int, base_n: int, timeout: float) -> list[dict]:
    say(f"small: baseline ({base_n} durable 1 KiB creates)")
    base_rate = baseline_small(root / "baseline-small", base_n)
    say(f"  baseline {base_rate:.1f} files/s")

    pair = Pair(root / "small", limit=2 * 1024**3)
    try:
        pair.start()
        say(f"small: writing {n} files of 1 KiB into outbox/import/tmp/")
        noise = os.urandom(1024)
        names = []
        for i in range(n):
            name = f"small-{i:06d}.bin"
            (pair.outbox_tmp / name).write_bytes((i.to_bytes(8, "big") + noise)[:1024])
            names.append(name)
        os.sync()
        say(f"small: renaming {n} files into outbox/import/new/")
        t0 = time.monotonic()
        for name in names:
            os.rename(pair.outbox_tmp / name, pair.outbox_new / name)
        fsync_dir(pair.outbox_new)
        t_submitted = time.monotonic() - t0
        t1 = pair.wait_delivered(n, timeout, "small")
        elapsed = t1 - t0
        got = sorted(os.listdir(pair.inbox_new))
        if got != names:
            missing = sorted(set(names) - set(got))
            extra = sorted(set(got) - set(names))
            raise BenchError(f"inbox mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
        say(f"  {n} delivered in {elapsed:.2f}s (renames took {t_submitted:.2f}s)")
        problems = pair.log_problems()
        rss = dict(pair.peak_rss)
    except BaseException:
        with contextlib.suppress(Exception):
            say(pair.log_tails())
        raise
    finally:
        pair.stop()
    for line in problems[:20]:
        say(f"  log: {line}")
    rate = n / elapsed
    out = [
        result(f"small_{n}x1KiB_rate", rate, "files/s", "durable 1KiB create", base_rate),
        result(f"small_{n}x1KiB_seconds", elapsed, "s", "-", None),
        result(
            f"small_{n}x1KiB_peak_rss_max", max(rss.values(), default=0) / MiB, "MiB", "-", None
        ),
    ]
    return out


def print_table(results: list[dict]) -> None:
    headers = ["name", "value", "unit", "baseline", "baseline_value", "ratio"]
    rows = [[("" if r[h] is None else str(r[h])) for h in headers] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="256 MiB and 2,000 small files")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--workdir", type=Path, help="work files here (kept); default a temp dir")
    p.add_argument("--timeout", type=float, default=1800, help="per phase, seconds")
    args = p.parse_args(argv)

    keep = args.workdir is not None
    if keep:
        root = args.workdir.resolve()
        if root.exists() and any(root.iterdir()):
            p.error(f"{root} is not empty")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="zonegate-bench-", dir="/tmp"))
    large = (256 if args.quick else 1024) * MiB
    small = 2000 if args.quick else 10000
    machine = machine_info(root)
    say(f"zonegate spine bench: workdir {root}; {machine}")
    ok = False
    try:
        results = run_large(root, large, args.timeout)
        results += run_small(root, small, 2000, args.timeout)
        ok = True
    except BenchError as e:
        say(f"FAILED: {e}")
        say(f"work files kept in {root}")
        return 1
    finally:
        if ok and not keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    if args.json:
        doc = {"results": results, "machine": machine, "commit": git_head()}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
