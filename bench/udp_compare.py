"""Throughput of our UDP link on loopback next to udpcast and pydiode, same file, same run.

Loss is a lossy forwarder (tests/lossy_forwarder.py: the kernel here has no netem) between the
sender and each receiver. Redundancy is 25% for ours; udpcast gets --fec 8x2 (25%); pydiode has
no FEC, only whole-chunk repeats (--redundancy 2 is its nearest). Usage:
  python bench/udp_compare.py [--mib 1024] [--loss 0 0.05]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from zonegate.transfer.udp_send import UdpLinkSender
from zonegate.transfer.udp_store import UdpEnvelopeReceiver
from zonegate.zones.config import Flow, Policy, Transport

HERE = Path(__file__).resolve().parent
FWD = HERE.parent / "tests" / "lossy_forwarder.py"


def forwarder(port: int, target: int, loss: float) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, str(FWD), "127.0.0.1", str(port), str(target), str(loss), "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def ours(src: Path, work: Path, loss: float) -> float:
    front, back = 48100, 48101
    t = Transport("udp", f"udp://127.0.0.1:{front}", bandwidth=0, redundancy=0.25, heartbeat=0.5)
    rt = Transport("udp", f"udp://127.0.0.1:{back if loss else front}", heartbeat=0.5)
    fwd = forwarder(front, back, loss) if loss else None
    rx = UdpEnvelopeReceiver(Flow("b", "x", "y", "s", "r", rt, Policy(), 0), work, 1 << 40)
    tx = UdpLinkSender(Flow("b", "x", "y", "s", "r", t, Policy(), 0))
    stop = threading.Event()
    got: list = []
    start = time.monotonic()
    sender = threading.Thread(target=tx.send_envelope, args=(src, "ab" * 16, "b", "s", False, stop))
    sender.start()
    while not got and time.monotonic() - start < 600:
        got = [a for a in rx.poll(200) if getattr(a, "directory", None)]
    elapsed = time.monotonic() - start
    sender.join()
    tx.close()
    rx.close()
    if fwd:
        fwd.kill()
    assert got and digest(got[0].directory / "envelope") == digest(src), "ours: corrupt"
    return elapsed


def udpcast(src: Path, work: Path, loss: float) -> float | None:
    if not shutil.which("udp-sender"):
        return None
    out = work / "udpcast.out"
    port = 49000
    rport = port + 10 if loss else port
    fwd = forwarder(port + 1, rport + 1, loss) if loss else None
    rx = subprocess.Popen(
        [
            "udp-receiver",
            "--nokbd",
            "--portbase",
            str(rport),
            "--interface",
            "lo",
            "--file",
            str(out),
        ],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    start = time.monotonic()
    subprocess.run(
        [
            "udp-sender",
            "--async",
            "--fec",
            "8x2",
            "--max-bitrate",
            "2000m",
            "--nokbd",
            "--portbase",
            str(port),
            "--interface",
            "lo",
            "--mcast-data-address",
            "127.0.0.1",
            "--file",
            str(src),
        ],
        stderr=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    try:
        rx.wait(60)
    except subprocess.TimeoutExpired:
        rx.kill()
    elapsed = time.monotonic() - start
    if fwd:
        fwd.kill()
    return elapsed if out.exists() and digest(out) == digest(src) else float("nan")


def pydiode(src: Path, work: Path, loss: float) -> float | None:
    exe = shutil.which("pydiode") or str(Path(sys.executable).parent / "pydiode")
    if not os.path.exists(exe):
        return None
    port = 50000
    rport = port + 10 if loss else port
    fwd = forwarder(port, rport, loss) if loss else None
    out = work / "pydiode.out"
    with open(out, "wb") as f:
        rx = subprocess.Popen([exe, "receive", "--port", str(rport), "127.0.0.1"], stdout=f)
        time.sleep(0.5)
        start = time.monotonic()
        with open(src, "rb") as fin:
            subprocess.run(
                [
                    exe,
                    "send",
                    "--port",
                    str(port),
                    "--redundancy",
                    "2",
                    "--max-bitrate",
                    "0",
                    "127.0.0.1",
                    "127.0.0.1",
                ],
                stdin=fin,
                timeout=900,
                check=False,
            )
        try:
            rx.wait(60)
        except subprocess.TimeoutExpired:
            rx.kill()
    elapsed = time.monotonic() - start
    if fwd:
        fwd.kill()
    return elapsed if digest(out) == digest(src) else float("nan")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.05])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zg-udpbench-") as d:
        work = Path(d)
        src = work / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        for loss in args.loss:
            for name, fn in (("zonegate udp", ours), ("udpcast", udpcast), ("pydiode", pydiode)):
                scratch = work / f"{name.replace(' ', '-')}-{loss}"
                scratch.mkdir()
                try:
                    t = fn(src, scratch, loss)
                except Exception as e:  # a tool that fails is reported, not hidden
                    print(f"loss {loss:>4.0%}  {name:<13} failed: {e}")
                    continue
                if t is None:
                    print(f"loss {loss:>4.0%}  {name:<13} not installed")
                else:
                    print(f"loss {loss:>4.0%}  {name:<13} {args.mib / t:8.1f} MiB/s ({t:.1f}s)")
                shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
