"""Our one-way UDP link next to udpcast and pydiode: the same file, the same loss, the same run.

  python bench/udp_compare.py --netns --mib 1024 --loss 0 0.05 --json out.json
  python bench/udp_compare.py --mib 1024 --loss 0 0.05          # loopback
  python bench/udp_compare.py --netns --quick                    # 64 MiB, one repeat

The link. `--netns`: two network namespaces joined by a veth pair (MTU 1500) whose receiver side
drops every packet it would send (tests/netns.py, the same link the one-way tests use), with
multicast routed on the veth for udpcast. The sending veth cuts GSO sends into datagrams before
the link (segmentation offload off: 1500-byte frames cross it, as on a wire); without loss the
receiving veth coalesces them again as a NIC's GRO does (it does so only for sockets that ask,
UDP_GRO: ours). Loopback (the default): the `lo` of a namespace of its own, so no other
program's traffic or ports are involved, with lo's own offloads.

Loss. This kernel has no netem; loss is a kernel-side random drop, an nftables rule
`numgen random mod 10000 < N` at the receiving side's prerouting hook, so every tool loses the
same share of its datagrams, independently, at no cost in speed (a Python forwarder would cap
all three tools at its own speed). The hook sees packets after GRO and before a loopback GSO
send is cut, so for lossy runs every offload is off: each datagram is dropped on its own.

Receive buffers. Ours asks for 64 MiB (SO_RCVBUFFORCE); udpcast asks for nothing (the kernel's
default, about 200 KiB) and pydiode for 8 MiB. So that the comparison is of the tools and not of
a setting, udpcast's and pydiode's receivers get the same 64 MiB through a small LD_PRELOAD shim
(built with gcc; without gcc they run as shipped, and the JSON says so).

The tools, each its sender in the sending namespace and its receiver in the receiving one:
- zonegate: transfer/udp_send.py -> transfer/udp_store.py, the transport the agents use (the
  envelope arrives fsynced), `--redundancy` repair symbols (25% by default);
- udpcast: `udp-sender --async --autostart 1 --fec 8xR/128` (one-way mode, R/128 =
  redundancy: 8x32/128 for 25%), multicast data on the link's interface, `udp-receiver`;
- pydiode (PyPI): it has no FEC, only whole repeats of each chunk (`--redundancy N` sends
  everything N times); the nearest to ours that survives any loss is 2 (100% overhead), and
  that is the baseline of `udp_vs_pydiode`; at 0% loss its 1-send figure is measured too.

Rates. A one-way sender cannot learn the receiver's speed, so every tool is given the same
ladder of rate limits (unlimited first) and goes down it, `--repeat` runs at each rate: the best
rate is the fastest at which every run succeeded (a rate that fails once does not count), and its
runs' median is reported with their spread; every attempt, failed or not, is in the JSON. A
transfer counts only when the received file's SHA-256 is the source's; anything else is reported
as failed, with why, and never as a figure.

Progress goes to stderr, the table to stdout, `--json FILE` gets {"results": [...]} with
`udp_vs_udpcast` and `udp_vs_pydiode` (`_loss5` etc. for lossy runs): value = our MB/s,
baseline_value = theirs (MB = 10^6 bytes), ratio = value / baseline_value.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from netns import OneWayLink, one_way_link, remove_namespace, sh  # noqa: E402

PORT = 46000
#: rate limits tried, in Mbit/s on the wire (0: unlimited)
LADDER = (0, 4000, 3000, 2400, 2000, 1600, 1300, 1000, 700, 400, 200)
#: udp-sender's --max-bitrate overflows past 2^31 bit/s
UDPCAST_MAX_MBIT = 2000
STALL = 8.0  # seconds without progress after which a transfer has failed
#: failures in a row after which a tool's ladder is given up (every rate fails the same way)
GIVE_UP = 8


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the link ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link(OneWayLink):
    """Where each side runs and how to reach the receiver (loopback: one namespace for both)."""

    kind: str = "netns"  # or "loopback"

    def run(self, ns: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def set_loss(self, loss: float) -> None:
        """A random drop of `loss` of the UDP datagrams arriving at the receiving side, and the
        offloads that go with it (see the module's docstring)."""
        sh("nft", "delete", "table", "inet", "zgbloss", ns=self.receiver_ns, check=False)
        on = "on" if loss <= 0 else "off"
        if self.kind == "netns":
            dev, ns = self.receiver_dev, self.receiver_ns
            sh("ethtool", "-K", dev, "gro", on, "rx-udp-gro-forwarding", on, ns=ns)
        else:
            sh("ethtool", "-K", "lo", "tx-udp-segmentation", on, ns=self.sender_ns)
        if loss <= 0:
            return
        share = round(loss * 10000)
        rule = (
            "table inet zgbloss {\n chain pre {\n"
            "  type filter hook prerouting priority -300; policy accept;\n"
            f'  iifname "{self.receiver_dev}" meta l4proto udp numgen random mod 10000 < {share}'
            " counter drop\n }\n}\n"
        )
        _nft(self.receiver_ns, rule)

    def loss_counter(self) -> int:
        out = sh("nft", "list", "table", "inet", "zgbloss", ns=self.receiver_ns, check=False)
        for word, value in zip(out.split(), out.split()[1:], strict=False):
            if word == "packets":
                return int(value)
        return 0

    def rcvbuf_errors(self) -> int:
        text = sh("cat", "/proc/net/snmp", ns=self.receiver_ns)
        lines = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])


def _nft(ns: str, rules: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=rules,
        text=True,
        check=True,
        timeout=30,
        capture_output=True,
    )


@contextlib.contextmanager
def netns_link() -> Iterator[Link]:
    with one_way_link("zb") as w:
        for ns, dev in ((w.sender_ns, w.sender_dev), (w.receiver_ns, w.receiver_dev)):
            sh("ip", "link", "set", dev, "mtu", "1500", "multicast", "on", ns=ns)
            # udpcast multicasts its data and broadcasts its control packets on the link
            sh("ip", "route", "add", "224.0.0.0/4", "dev", dev, ns=ns)
        sh("ethtool", "-K", w.sender_dev, "tx-udp-segmentation", "off", ns=w.sender_ns)
        yield Link(**asdict(w))


@contextlib.contextmanager
def loopback_link() -> Iterator[Link]:
    ns = f"zbL{os.getpid() % 100000}"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        yield Link(ns, ns, "lo", "lo", "127.0.0.1", "127.0.0.1", kind="loopback")
    finally:
        remove_namespace(ns)


# -- the receive-buffer shim for the other tools ------------------------------------------------
RCVBUF = 64 * 1024 * 1024  # what ours asks for (transfer/udp_recv.py)
_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    int fd = real(domain, type, protocol);
    const char *want = getenv("ZG_BENCH_RCVBUF");
    if (fd >= 0 && want && (domain == AF_INET || domain == AF_INET6)
        && (type & 0xf) == SOCK_DGRAM) {
        int n = atoi(want);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &n, sizeof n);
    }
    return fd;
}
/* a tool that sets its own (smaller) buffer afterwards keeps the bigger one */
int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
    static int (*real)(int, int, int, const void *, socklen_t);
    if (!real)
        real = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
    const char *want = getenv("ZG_BENCH_RCVBUF");
    if (want && level == SOL_SOCKET && name == SO_RCVBUF && len == sizeof(int)
        && *(const int *)value < atoi(want)) {
        int n = atoi(want);
        return real(fd, SOL_SOCKET, SO_RCVBUFFORCE, &n, sizeof n);
    }
    return real(fd, level, name, value, len);
}
"""


def build_shim(root: Path) -> Path | None:
    """An LD_PRELOAD library giving every UDP socket a process opens RCVBUF bytes of buffer."""
    if not shutil.which("gcc"):
        return None
    src, lib = root / "rcvbuf.c", root / "rcvbuf.so"
    src.write_text(_SHIM)
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return lib if done.returncode == 0 else None


def _env(shim: Path | None) -> list[str]:
    """`env` words that put the shim in front of a baseline tool's receiver."""
    if shim is None:
        return []
    return ["env", f"LD_PRELOAD={shim}", f"ZG_BENCH_RCVBUF={RCVBUF}"]


# -- processes --------------------------------------------------------------------------------
class Procs:
    """Every process a run starts; all are killed on every way out of the run."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


class Failed(Exception):
    """A transfer that did not deliver the file byte for byte: the reason is the message."""


@dataclass
class Outcome:
    seconds: float
    detail: dict = field(default_factory=dict)


def _tail(path: Path, n: int = 300) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


def _wait_file(
    out: Path, size: int, sender: subprocess.Popen, receiver: subprocess.Popen, start: float
) -> float:
    """Seconds from `start` until `out` holds `size` bytes; Failed if it stalls or ends short."""
    last, last_change = -1, time.monotonic()
    while True:
        now = time.monotonic()
        have = out.stat().st_size if out.exists() else 0
        if have >= size:
            return now - start
        if have != last:
            last, last_change = have, now
        if receiver.poll() is not None:
            raise Failed(f"receiver exited ({receiver.returncode}) with {have} of {size} bytes")
        if sender.poll() is not None and now - last_change > STALL:
            raise Failed(f"stalled at {have} of {size} bytes after the sender ended")
        if now - last_change > 4 * STALL:
            raise Failed(f"no progress for {4 * STALL:.0f}s at {have} of {size} bytes")
        time.sleep(0.005)


# -- the tools --------------------------------------------------------------------------------
@dataclass
class Job:
    link: Link
    src: Path
    size: int
    digest: str
    work: Path
    redundancy: float
    mbit: int  # rate limit, 0: unlimited
    procs: Procs
    shim: Path | None = None


def run_ours(job: Job) -> Outcome:
    link, procs = job.link, job.procs
    me = [sys.executable, str(Path(__file__).resolve())]
    endpoint = f"{link.receiver_ip}:{PORT}"
    rx_log = job.work / "ours-recv.log"
    with open(rx_log, "w") as err:
        rx = procs.start(
            link.run(
                link.receiver_ns,
                [*me, "peer-recv", endpoint, str(job.work / "scratch"), str(job.redundancy)],
            ),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert rx.stdout is not None
    if rx.stdout.readline().strip() != "ready":
        raise Failed(f"receiver did not start: {_tail(rx_log)}")
    rate = job.mbit * 125_000
    start = time.monotonic()
    with open(job.work / "ours-send.log", "w") as err:
        tx = procs.start(
            link.run(
                link.sender_ns,
                [*me, "peer-send", endpoint, str(job.src), str(job.redundancy), str(rate)],
            ),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(rx.stdout.readline()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 4 * STALL + job.size / 5e6
    sender_done: float | None = None
    while reader.is_alive() and time.monotonic() < deadline:
        if tx.poll() is not None and tx.returncode != 0:
            raise Failed(f"sender failed ({tx.returncode}): {_tail(job.work / 'ours-send.log')}")
        if tx.returncode == 0:
            # The one-shot sender sends no heartbeats after it exits, so a receiver that lost
            # its last notices waits for ever (an agent's would learn from the next heartbeat).
            sender_done = sender_done or time.monotonic()
            if time.monotonic() - sender_done > 2 * STALL:
                raise Failed(
                    f"the sender finished {2 * STALL:.0f}s ago and the receiver neither "
                    f"completed the message nor reported it lost: {_tail(rx_log)}"
                )
        reader.join(0.05)
    if not result or not result[0].strip():
        raise Failed(f"nothing arrived: {_tail(rx_log)}")
    report = json.loads(result[0])
    if "lost" in report:
        raise Failed(f"the receiver reports the message lost: {report['lost']}")
    if report["sha256"] != job.digest:
        raise Failed("received envelope differs from the source (SHA-256)")
    tx.wait(30)
    return Outcome(report["arrived"] - start, report)


def run_udpcast(job: Job) -> Outcome:
    link, procs = job.link, job.procs
    if not shutil.which("udp-sender"):
        raise Failed("udp-sender not installed (Debian package udpcast)")
    out = job.work / "udpcast.out"
    stripe = 128
    fec = f"8x{max(1, round(stripe * job.redundancy))}/{stripe}"
    rx_log, tx_log = job.work / "udpcast-recv.log", job.work / "udpcast-send.log"
    common = ["--nokbd", "--portbase", str(PORT), "--interface", link.receiver_dev]
    with open(rx_log, "w") as err:
        rx = procs.start(
            link.run(
                link.receiver_ns, [*_env(job.shim), "udp-receiver", *common, "--file", str(out)]
            ),
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    time.sleep(0.3)
    rate = ["--max-bitrate", f"{job.mbit}m"] if job.mbit else []
    data = ["--mcast-data-address", "127.0.0.1"] if link.kind == "loopback" else []
    sender = [
        "udp-sender",
        "--async",  # one way: no confirmations asked
        "--autostart",  # start after this many HELLOs instead of waiting for receivers
        "1",
        "--rexmit-hello-interval",
        "50",
        "--fec",
        fec,
        *rate,
        "--nokbd",
        "--portbase",
        str(PORT),
        "--interface",
        link.sender_dev,
        *data,
        "--file",
        str(job.src),
    ]
    start = time.monotonic()
    with open(tx_log, "w") as err:
        tx = procs.start(link.run(link.sender_ns, sender), stdout=err, stderr=subprocess.STDOUT)
    try:
        seconds = _wait_file(out, job.size, tx, rx, start)
    except Failed as e:
        raise Failed(f"{e}; receiver: {_tail(rx_log, 160)}") from None
    try:
        rx.wait(30)
    except subprocess.TimeoutExpired:
        raise Failed("udp-receiver did not end after the whole file arrived") from None
    if _sha256(out) != job.digest:
        raise Failed("received file differs from the source (SHA-256)")
    return Outcome(seconds, {"fec": fec, "receiver_exit": rx.returncode})


def pydiode_exe() -> str | None:
    exe = shutil.which("pydiode") or str(Path(sys.executable).parent / "pydiode")
    return exe if os.path.exists(exe) else None


def run_pydiode(job: Job, repeats: int) -> Outcome:
    link, procs = job.link, job.procs
    exe = pydiode_exe()
    if exe is None:
        raise Failed("pydiode not installed (pip install '.[bench]')")
    out = job.work / "pydiode.out"
    rx_log = job.work / "pydiode-recv.log"
    with open(out, "wb") as fout, open(rx_log, "w") as err:
        rx = procs.start(
            link.run(
                link.receiver_ns,
                [*_env(job.shim), exe, "receive", "--port", str(PORT), link.receiver_ip],
            ),
            stdout=fout,
            stderr=err,
        )
    time.sleep(0.8)  # a Python start-up; pydiode prints nothing when ready
    send = [exe, "send", "--port", str(PORT), "--redundancy", str(repeats)]
    send += ["--max-bitrate", str(job.mbit * 1_000_000)]
    start = time.monotonic()
    with open(job.src, "rb") as fin, open(job.work / "pydiode-send.log", "w") as err:
        tx = procs.start(
            link.run(link.sender_ns, [*send, link.receiver_ip, link.sender_ip]),
            stdin=fin,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        seconds = _wait_file(out, job.size, tx, rx, start)
    except Failed as e:
        raise Failed(f"{e}; receiver: {_tail(rx_log, 160)}") from None
    try:
        rc = rx.wait(60)
    except subprocess.TimeoutExpired:
        raise Failed("pydiode receive did not end after the whole file arrived") from None
    if rc != 0:
        raise Failed(f"pydiode receive exited {rc} (its own digest check): {_tail(rx_log)}")
    if _sha256(out) != job.digest:
        raise Failed("received file differs from the source (SHA-256)")
    return Outcome(seconds, {"repeats": repeats})


@dataclass(frozen=True)
class Tool:
    name: str  # key in the JSON
    label: str  # in the table
    run: Callable[[Job], Outcome]
    max_mbit: int = 0  # the highest rate limit it can be given (0: any)
    #: run at this rate only, as shipped (no ladder, no receive-buffer shim)
    as_shipped: int | None = None


def tools(redundancy: float, loss: float) -> list[Tool]:
    repeats = max(2, 1 + math.ceil(redundancy))
    found = [
        Tool("zonegate", "zonegate udp", run_ours),
        Tool("udpcast", "udpcast", run_udpcast, UDPCAST_MAX_MBIT),
        Tool("pydiode", f"pydiode x{repeats}", lambda j: run_pydiode(j, repeats)),
    ]
    if loss == 0:
        found.append(Tool("pydiode_x1", "pydiode x1", lambda j: run_pydiode(j, 1)))
        # pydiode's own defaults: 1 Gbit/s, two sends of everything, its own 8 MiB buffer
        shipped = Tool("pydiode_shipped", "pydiode dflt", lambda j: run_pydiode(j, 2), 0, 1000)
        found.append(shipped)
    return found


# -- measuring --------------------------------------------------------------------------------
@dataclass
class Attempt:
    mbit: int
    ok: bool
    seconds: float | None
    reason: str = ""
    rcvbuf_errors: int = 0
    link_drops: int = 0


@dataclass
class Row:
    tool: str
    label: str
    loss: float
    attempts: list[Attempt] = field(default_factory=list)
    best_mbit: int | None = None
    times: list[float] = field(default_factory=list)

    @property
    def mbps(self) -> list[float]:
        return [self.size / t / 1e6 for t in self.times]

    size: int = 0


def attempt(tool: Tool, link: Link, base: dict, mbit: int, root: Path) -> Attempt:
    work = Path(tempfile.mkdtemp(prefix=f"{tool.name}-", dir=root))
    procs = Procs()
    before_err, before_drop = link.rcvbuf_errors(), link.loss_counter()
    try:
        outcome = tool.run(Job(**base, work=work, mbit=mbit, procs=procs))
        a = Attempt(mbit, True, outcome.seconds)
    except Failed as e:
        a = Attempt(mbit, False, None, str(e))
    finally:
        procs.kill_all()
    a.rcvbuf_errors = link.rcvbuf_errors() - before_err
    a.link_drops = link.loss_counter() - before_drop
    if a.ok:
        shutil.rmtree(work, ignore_errors=True)
    else:  # keep the logs, not the data
        for p in work.iterdir():
            if p.suffix != ".log":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        a.reason += f" (logs: {work.name})"
    rate = f"{mbit} Mbit/s" if mbit else "unlimited"
    what = f"{base['size'] / a.seconds / 1e6:.1f} MB/s" if a.ok and a.seconds else "FAILED"
    log(
        f"  {tool.label:<13} {rate:>14}: {what}"
        f"  (rcvbuf errors {a.rcvbuf_errors}, dropped by the loss rule {a.link_drops})"
        + ("" if a.ok else f"\n      {a.reason}")
    )
    return a


def measure(tool: Tool, link: Link, base: dict, loss: float, repeat: int, root: Path) -> Row:
    """Down the ladder: at each rate `repeat` runs (stopping at a failure). The best rate is the
    fastest whose runs all succeeded; the search ends at the first rate slower than it, or that
    fails below it, or after GIVE_UP failing rates in a row."""
    row = Row(tool.name, tool.label, loss, size=base["size"])
    if tool.as_shipped is not None:
        ladder = [tool.as_shipped]
        base = base | {"shim": None}
    else:
        ladder = [m for m in LADDER if not tool.max_mbit or m <= tool.max_mbit]
    best: tuple[int, list[float]] | None = None
    failures = 0
    for mbit in ladder:
        times: list[float] = []
        for _ in range(repeat):
            a = attempt(tool, link, base, mbit, root)
            row.attempts.append(a)
            if not a.ok:
                break
            times.append(a.seconds)  # type: ignore[arg-type]
        if len(times) < repeat:
            if best is not None:
                break
            failures += 1
            if failures == GIVE_UP:
                break
            continue
        if best is not None and statistics.median(times) >= statistics.median(best[1]):
            break  # slower than the rate above it: that one is the best
        best, failures = (mbit, times), 0
    if best is not None:
        row.best_mbit, row.times = best
    return row


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _loss_suffix(loss: float) -> str:
    return "" if loss == 0 else f"_loss{round(loss * 100):g}"


def summarise(rows: list[Row]) -> tuple[list[dict], list[dict]]:
    raw, results = [], []
    by = {(r.tool, r.loss): r for r in rows}
    for r in rows:
        ok = [a for a in r.attempts if a.ok]
        raw.append(
            {
                "tool": r.tool,
                "loss": r.loss,
                "mbps_median": statistics.median(r.mbps) if r.mbps else None,
                "mbps_min": min(r.mbps) if r.mbps else None,
                "mbps_max": max(r.mbps) if r.mbps else None,
                "runs_at_best_rate": len(r.times),
                "best_rate_mbit": r.best_mbit,
                "succeeded": len(ok),
                "attempts": [asdict(a) for a in r.attempts],
            }
        )
    for loss in sorted({r.loss for r in rows}):
        ours = by.get(("zonegate", loss))
        pairs = [("udpcast", "udp_vs_udpcast"), ("pydiode", "udp_vs_pydiode")]
        pairs.append(("pydiode_shipped", "udp_vs_pydiode_shipped"))  # pydiode's own defaults
        for other, name in pairs:
            theirs = by.get((other, loss))
            if ours is None or theirs is None:
                continue
            value = statistics.median(ours.mbps) if ours.mbps else None
            base = statistics.median(theirs.mbps) if theirs.mbps else None
            results.append(
                {
                    "name": name + _loss_suffix(loss),
                    "value": value,
                    "unit": "MB/s",
                    "baseline": theirs.label,
                    "baseline_value": base,
                    "ratio": value / base if value and base else None,
                    "loss": loss,
                    "note": None
                    if value and base
                    else ("zonegate failed" if not value else f"{theirs.label} failed"),
                }
            )
    return raw, results


def table(rows: list[Row], size: int, kind: str, redundancy: float, load: str) -> str:
    lines = [
        f"{size / 2**20:.0f} MiB over {kind}, redundancy {redundancy:.0%}; MB/s = 10^6 bytes/s;"
        f" median of the runs at each tool's best rate [min-max]; load before: {load}",
        f"{'loss':>5}  {'tool':<13} {'MB/s':>8}  {'spread':>15}  {'runs':>4}  {'rate':>10}  note",
    ]
    for r in rows:
        if r.mbps:
            m = statistics.median(r.mbps)
            spread = f"[{min(r.mbps):.1f}-{max(r.mbps):.1f}]"
            rate = f"{r.best_mbit}M" if r.best_mbit else "unlimited"
            failed = [a for a in r.attempts if not a.ok]
            note = f"{len(failed)} attempts failed" if failed else ""
            lines.append(
                f"{r.loss:>5.0%}  {r.label:<13} {m:>8.1f}  {spread:>15}  {len(r.times):>4}  "
                f"{rate:>10}  {note}"
            )
        else:
            why = r.attempts[-1].reason if r.attempts else "not run"
            lines.append(f"{r.loss:>5.0%}  {r.label:<13} {'FAILED':>8}  {why[:160]}")
    return "\n".join(lines)


# -- our transport as two processes -------------------------------------------------------------
def _flow(endpoint: str, redundancy: float, rate: int):
    from zonegate.zones.config import Flow, Policy, Transport

    t = Transport("udp", f"udp://{endpoint}", bandwidth=rate, redundancy=redundancy, heartbeat=0.5)
    return Flow("bench", "internet", "internal", "snd", "rcv", t, Policy(), 0)


def peer_recv(endpoint: str, scratch: str, redundancy: str) -> int:
    from zonegate.transfer.link import Arrival
    from zonegate.transfer.udp_store import UdpEnvelopeReceiver

    Path(scratch).mkdir(parents=True, exist_ok=True)
    rx = UdpEnvelopeReceiver(_flow(endpoint, float(redundancy), 0), Path(scratch), 1 << 42)
    print("ready", flush=True)
    notes: dict[str, int] = {}
    try:
        while True:
            for item in rx.poll(200):
                if isinstance(item, Arrival):
                    arrived = time.monotonic()
                    report = {
                        "arrived": arrived,
                        "sha256": _sha256(item.directory / "envelope"),
                        "notes": notes,
                        "drain_dropped": rx.drain.dropped,
                        "datagrams": rx.drain.datagrams,
                        "receives": rx.drain.receives,
                        "blocks_direct": rx.decoder.blocks_direct,
                        "blocks_repaired": rx.decoder.blocks_repaired,
                        "gro": rx.drain.gro,
                        "cpu": _cpu(),
                    }
                    print(json.dumps(report), flush=True)
                    return 0
                notes[item.kind] = notes.get(item.kind, 0) + 1
                if item.kind in ("lost", "aborted"):
                    why = f"{item.reason} (drain dropped {rx.drain.dropped} datagrams)"
                    print(json.dumps({"lost": why, "notes": notes}), flush=True)
                    return 1
    finally:
        rx.close()


def peer_send(endpoint: str, path: str, redundancy: str, rate: str) -> int:
    from zonegate.transfer.udp_send import UdpLinkSender

    tx = UdpLinkSender(_flow(endpoint, float(redundancy), int(rate)))
    try:
        ok = tx.send_envelope(Path(path), "ab" * 16, "bench", "snd", False, threading.Event())
    finally:
        tx.close()
    print(json.dumps({"sent": time.monotonic(), "cpu": _cpu(), "gso": tx.gso}), flush=True)
    return 0 if ok else 1


def _cpu() -> dict[str, float]:
    """CPU seconds of this process (all threads), user and system."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": round(ru.ru_utime, 3), "system": round(ru.ru_stime, 3)}


# -- main -------------------------------------------------------------------------------------
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("peer-recv", "peer-send"):
        role, args = sys.argv[1], sys.argv[2:]
        return peer_recv(*args) if role == "peer-recv" else peer_send(*args)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--netns", action="store_true", help="two namespaces + veth (MTU 1500)")
    ap.add_argument("--mib", type=int, default=None, help="file size (default 1024, quick 64)")
    ap.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--redundancy", type=float, default=0.25)
    ap.add_argument("--repeat", type=int, default=None, help="runs at the best rate (3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="64 MiB, one run per tool")
    ap.add_argument("--tools", default="zonegate,udpcast,pydiode,pydiode_x1,pydiode_shipped")
    ap.add_argument("--workdir", type=Path, default=None, help="default: under /dev/shm")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root: it creates network namespaces")
    for what in ("ip", "nft", "ethtool"):
        if not shutil.which(what):
            log(f"{what} not found: apt-get install iproute2 nftables ethtool")
            return 2
    mib = args.mib or (64 if args.quick else 1024)
    repeat = args.repeat or (1 if args.quick else 3)
    wanted = set(args.tools.split(","))
    base_dir = args.workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds: every process killed, namespaces removed

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="zg-udpbench-", dir=base_dir) as d:
        root = Path(d)
        src = root / "src.bin"
        log(f"writing {mib} MiB of random data to {src}")
        with open(src, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        shim = build_shim(root)
        log(f"baselines' receive buffer: {'64 MiB (shim)' if shim else 'as shipped (no gcc)'}")
        base = {
            "src": src,
            "size": mib << 20,
            "digest": _sha256(src),
            "redundancy": args.redundancy,
            "shim": shim,
        }
        with netns_link() if args.netns else loopback_link() as link:
            base["link"] = link
            for loss in args.loss:
                link.set_loss(loss)
                log(f"loss {loss:.0%} ({link.kind}):")
                for tool in tools(args.redundancy, loss):
                    if tool.name in wanted:
                        rows.append(measure(tool, link, base, loss, repeat, root))
        kept = [p for p in root.iterdir() if p.is_dir()]
        if kept:  # logs of failed attempts: moved out of the temporary directory
            keep = Path(tempfile.mkdtemp(prefix="zg-udpbench-failed-"))
            for p in kept:
                shutil.move(str(p), keep / p.name)
            log(f"logs of failed attempts: {keep}")
    print(table(rows, mib << 20, "netns veth" if args.netns else "loopback", args.redundancy, load))
    raw, results = summarise(rows)
    if args.json:
        doc = {
            "results": results,
            "raw": raw,
            "config": {
                "link": "netns" if args.netns else "loopback",
                "mib": mib,
                "loss": args.loss,
                "redundancy": args.redundancy,
                "repeat": repeat,
                "ladder_mbit": LADDER,
                "load_before": load,
                "load_after": "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "loss_method": "nftables numgen random drop at the receiver's prerouting hook",
                "baseline_rcvbuf": RCVBUF if shim else "as shipped",
            },
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.get("value") and r.get("baseline_value") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
