"""`zonegate demo`: the internet -> internal exchange on one machine, with nothing to set up.

Two gateways run as separate processes on loopback, with their own keys, spools and audit logs,
exactly as they would on two hosts; only the link is loopback TCP. The demo drops files into the
internet side's outbox and reports, from what the gateways wrote to disk, what arrived where,
what was refused and why, whether both audit logs verify, and what the metrics endpoints say.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from ..audit.verify import verify
from ..transfer.keys import generate_gateway_keys
from ..transfer.spool import Spool
from .agent import AgentContext
from .submit import SubmitError, expand_paths, submit_files

__all__ = ["DemoError", "run_demo", "write_gateway_pair"]

FLOW = "import"
SAMPLE_LIMIT = 1024 * 1024
FILES_LIMIT = 16 * 1024**3


class DemoError(Exception):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_samples(directory: Path) -> list[Path]:
    """Sample traffic of the import flow: citizens' submissions, and one oversized scan."""
    directory.mkdir(parents=True, exist_ok=True)
    samples = {
        "legal-aid-application 法律援助申请.txt": "申请人：张三\n事由：劳动争议法律援助\n".encode(),
        "approval-form-2026-0173.csv": b"form,applicant,submitted\nA-0173,Li Si,2026-11-25\n",
        "citizen-letter.json": json.dumps({"from": "王五", "subject": "咨询公证流程"}).encode(),
        "empty-receipt.txt": b"",
        "site-photo.bin": bytes(range(256)) * 512,
        "scanned-case-file-too-big.pdf": b"%PDF-1.7\n" + b"\x00" * (2 * SAMPLE_LIMIT),
    }
    paths = []
    for name, data in samples.items():
        p = directory / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def _gateway_config(
    name: str,
    zone: str,
    peer: str,
    peer_zone: str,
    port: int,
    limit: int,
    transport: dict | None = None,
    curve: bool = False,
) -> dict:
    sender = name == "internet-gw"
    link = {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"}
    if curve:
        # CurveZMQ: the link is encrypted and only the peer's key gets in
        link |= {
            "curve_key": f"../keys/{name}.curve.key",
            "peer_curve_key": f"../keys/{peer}.curve.pub",
        }
    return {
        "version": 1,
        "gateway": {"name": name, "zone": zone, "node": "municipal-bureau"},
        "zones": [
            {"name": "internet", "level": "public"},
            {"name": "internal", "level": "classified"},
        ],
        "paths": {
            "spool": "spool",
            "audit_log": "audit/audit.jsonl",
            "outbox": "outbox",
            "inbox": "inbox",
        },
        "keys": {
            "signing": f"../keys/{name}.sign.key",
            "encryption": f"../keys/{name}.kem.key",
            "audit": f"../keys/{name}.audit.key",
        },
        "peers": [
            {
                "name": peer,
                "zone": peer_zone,
                "signing_key": f"../keys/{peer}.sign.pub",
                "encryption_key": f"../keys/{peer}.kem.pub",
            }
        ],
        "metrics": (
            {"ingest": "127.0.0.1:0", "sender": "127.0.0.1:0"}
            if sender
            else {"receiver": "127.0.0.1:0"}
        ),
        "flows": [
            {
                "name": FLOW,
                "from": "internet",
                "to": "internal",
                "sender": "internet-gw",
                "receiver": "internal-gw",
                "transport": transport or link,
                "policy": {"min_size": 0, "max_size": limit},
            }
        ],
    }


def write_gateway_pair(
    root: Path,
    limit: int,
    port: int | None = None,
    transports: dict[str, dict] | None = None,
    *,
    publish: bool = False,
    publish_port: int | None = None,
    review_expires: str = "1h",
    curve: bool = False,
) -> dict[str, Path]:
    """Keys and configs of the two demo gateways under `root`; returns name -> config path.

    `transports` maps a gateway name to its flow's transport mapping (default: zmq on loopback).
    With `curve`, the import link is CurveZMQ-encrypted with the gateways' Curve keys.
    With `publish`, both also get the demo people (keys under `root/people`) and the `publish`
    flow (internal -> internet, two officers' approvals, signed delivery); see demo_publish.py.
    """
    for name in ("internet-gw", "internal-gw"):
        generate_gateway_keys(root / "keys", name)
    port = port or _free_port()
    if publish:
        from .demo_publish import add_publish_flow, write_people

        write_people(root / "people")
        publish_port = publish_port or _free_port()
    configs = {}
    for name, zone, peer, peer_zone in (
        ("internet-gw", "internet", "internal-gw", "internal"),
        ("internal-gw", "internal", "internet-gw", "internet"),
    ):
        d = root / name
        d.mkdir()
        cfg = _gateway_config(
            name, zone, peer, peer_zone, port, limit, (transports or {}).get(name), curve
        )
        if publish:
            add_publish_flow(cfg, name, publish_port or 0, limit, review_expires)
        path = d / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        configs[name] = path
    return configs


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = (-1, -1)
        self.last_print = 0.0

    def update(self, delivered: int, refused: int) -> None:
        if self.quiet or (delivered, refused) == self.last:
            return
        now = time.monotonic()
        done = delivered + refused
        if not self.tty and now - self.last_print < 2 and done < self.total:
            return
        self.last, self.last_print = (delivered, refused), now
        width = 30
        filled = width * done // max(1, self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = f"  [{bar}] {done}/{self.total} files ({delivered} delivered, {refused} refused)"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)

    def done(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def _say(quiet: bool, text: str = "") -> None:
    if not quiet:
        print(text, flush=True)


def run_demo(
    files: list[Path] | None,
    workdir: Path | None,
    json_output: bool = False,
    timeout: float = 600.0,
) -> dict[str, Any]:
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="zonegate-demo-"))
    root = root.resolve()
    if keep and root.exists() and any(root.iterdir()):
        raise DemoError(f"{root} is not empty; give a new or empty directory to --workdir")
    root.mkdir(parents=True, exist_ok=True)
    quiet = json_output
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sources = expand_paths(files) if files else write_samples(root / "samples")
        if not sources:
            raise DemoError("no files to send: the paths given hold no regular files")
        limit = FILES_LIMIT if files else SAMPLE_LIMIT
        _say(quiet, "zonegate demo: internet zone -> internal zone, flow 'import'")
        _say(quiet, f"  workdir: {root}{'' if keep else ' (temporary, removed at the end)'}")
        configs = write_gateway_pair(root, limit, publish=not files, curve=True)
        for name in ("internal-gw", "internet-gw"):
            log = open(root / name / "gateway.log", "ab")  # noqa: SIM115 - child keeps it
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "zonegate.bin.cli",
                        "run",
                        "--config",
                        str(configs[name]),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        _say(
            quiet,
            f"  started internal-gw (pid {procs[0].pid}) and internet-gw (pid {procs[1].pid})",
        )
        expected = Counter((p.name, _sha256(p)) for p in sources)
        _say(quiet, f"  sending {len(sources)} file(s) into outbox/{FLOW}/")
        try:
            submit_files(root / "internet-gw" / "outbox", FLOW, sources, wait=timeout)
        except SubmitError as e:
            raise DemoError(str(e)) from None
        sender_spool = Spool(root / "internet-gw" / "spool")
        receiver_spool = Spool(root / "internal-gw" / "spool")
        progress = _Progress(len(sources), quiet)
        deadline = time.monotonic() + timeout
        while True:
            for p in procs:
                if p.poll() is not None:
                    raise DemoError(
                        f"a gateway exited early with code {p.returncode}; see {root}/*/gateway.log"
                    )
            delivered_n = receiver_spool.depth("delivered")
            refused_n = sender_spool.depth("quarantine") + receiver_spool.depth("quarantine")
            progress.update(delivered_n, refused_n)
            if delivered_n + refused_n >= len(sources):
                break
            if time.monotonic() > deadline:
                progress.done()
                raise DemoError(
                    f"timed out after {timeout:.0f}s with {delivered_n + refused_n} of "
                    f"{len(sources)} files accounted for; see {root}/*/gateway.log"
                )
            time.sleep(0.1)
        progress.done()
        release = None
        if not files:
            from .demo_publish import publish_release

            release = publish_release(root, configs, quiet, timeout)
        metrics = _scrape(root, quiet)
        summary = _summary(root, configs, expected, metrics, sender_spool, receiver_spool)
        if release is not None:
            # The release is delivered on the other side (internet-gw), with its approvers.
            summary["delivered"].append(release["delivered"])
            summary["publication"] = release
            summary["ok"] = summary["ok"] and release["ok"]
        if not files:
            # The samples are built so that exactly the oversized scan is refused.
            reasons = [r["reason"].split(":")[0] for r in summary["refused"]]
            summary["ok"] = summary["ok"] and reasons == ["too-large"]
        summary["kept"] = keep
        _print_summary(summary, quiet)
        return summary
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _scrape(root: Path, quiet: bool) -> list[dict[str, Any]]:
    out = []
    for gw, agents in (("internet-gw", ("ingest", "sender")), ("internal-gw", ("receiver",))):
        for agent in agents:
            runtime = json.loads(AgentContext.runtime_file(root / gw / "spool", agent).read_text())
            url = runtime["metrics"]
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our loopback URL
                text = resp.read().decode()
            counts = [
                line for line in text.splitlines() if line.startswith("zonegate_messages_total{")
            ]
            out.append({"gateway": gw, "agent": agent, "url": url, "messages": counts})
    return out


def _summary(
    root: Path,
    configs: dict[str, Path],
    expected: Counter[tuple[str, str]],
    metrics: list[dict[str, Any]],
    sender_spool: Spool,
    receiver_spool: Spool,
) -> dict[str, Any]:
    remaining = Counter(expected)
    delivered = []
    for msg_id in receiver_spool.ids("delivered"):
        meta = receiver_spool.read_meta("delivered", msg_id)
        path = Path(meta.extra["delivered_as"])
        digest = _sha256(path)
        key = (meta.original_name, digest)
        identical = remaining[key] > 0 and digest == meta.sha256
        if identical:
            remaining[key] -= 1
        delivered.append(
            {
                "name": meta.original_name,
                "path": str(path),
                "sha256": digest,
                "flow": meta.flow,
                "size": meta.size,
                "identical": identical,
            }
        )
    refused = []
    for spool in (sender_spool, receiver_spool):
        for msg_id in spool.ids("quarantine"):
            meta = spool.read_meta("quarantine", msg_id)
            refused.append(
                {
                    "name": meta.original_name,
                    "reason": f"{meta.reason_code}: {meta.reason}",
                    "quarantine_path": str(spool.entry("quarantine", msg_id)),
                }
            )
    audits = []
    for name, cfg in configs.items():
        log = cfg.parent / "audit" / "audit.jsonl"
        r = verify(log)
        audits.append({"gateway": name, "path": str(log), "ok": r.ok, "records": r.records,
                       "problem": r.problem})  # fmt: skip
    accounted = len(delivered) + len(refused) == sum(expected.values())
    ok = (
        accounted
        and all(d["identical"] for d in delivered)
        and all(a["ok"] for a in audits)
        and len(metrics) == 3
    )
    return {
        "ok": ok,
        "workdir": str(root),
        "configs": [str(p) for p in configs.values()],
        "audit_logs": [a["path"] for a in audits],
        "audit": audits,
        "delivered": sorted(delivered, key=lambda d: d["name"]),
        "refused": sorted(refused, key=lambda r: r["name"]),
        "metrics": [m["url"] for m in metrics],
        "metrics_samples": metrics,
    }


def _print_summary(s: dict[str, Any], quiet: bool) -> None:
    if quiet:
        return
    imported = [d for d in s["delivered"] if d["flow"] == FLOW]
    print(f"\nDelivered ({len(imported)}) into the internal zone:")
    for d in imported:
        mark = "ok " if d["identical"] else "BAD"
        print(f"  [{mark}] {d['name']}  ({d['size']} B, sha256 {d['sha256'][:16]}…)")
        print(f"        -> {d['path']}")
    print(f"\nRefused ({len(s['refused'])}), kept in quarantine with the reason:")
    for r in s["refused"]:
        print(f"  [no ] {r['name']}: {r['reason']}")
        print(f"        -> {r['quarantine_path']}")
    if s.get("publication"):
        from .demo_publish import print_publication

        print_publication(s["publication"])
    print("\nAudit logs:")
    for a in s["audit"]:
        state = "verifies" if a["ok"] else f"FAILS: {a['problem']}"
        print(f"  {a['gateway']}: {a['records']} records, hash chain {state}  ({a['path']})")
    print("\nMetrics (scraped):")
    for m in s["metrics_samples"]:
        print(f"  {m['gateway']} {m['agent']}: {m['url']}")
        for line in m["messages"]:
            print(f"      {line}")
    verdict = "OK: every file accounted for" if s["ok"] else "FAILED: see above"
    print(f"\nResult: {verdict}")
    if not s.get("kept"):
        print("(temporary workdir removed; keep everything with --workdir DIR)")
