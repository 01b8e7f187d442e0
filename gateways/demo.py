"""`zonegate demo`: the bureau's three-zone, three-tier exchange on one machine, nothing to set up.

The gateways of demo_network.py (the municipal bureau's internet, internal and government
gateways, the Huangpu district bureau's, the Waitan judicial office's) run as separate
processes, each with its own keys, spool and audit log, exactly as they would on five hosts;
only the links are loopback (or directories, or SFTP drop points, as `--transport` says). The
demo drops sample files (or the user's, on `import`) into the outboxes of four flows, has the
officers review the release on `publish`, and then reports, from what the gateways wrote to
disk: what arrived where, what was refused and why, each relayed message's trail hop by hop,
whether every audit log verifies, and what the metrics endpoints say.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..zones.config import ConfigError, load_gateway_config
from ..zones.topology import load_topology
from . import demo_sftpdrop
from .agent import AgentContext
from .demo_configs import write_demo_configs, write_gateway_pair
from .demo_links import KINDS, UDP_HEARTBEAT, LinkPlan, plan_links, udp_ports_bound
from .demo_network import TOPOLOGY, DemoNetwork, NetworkError, demo_network
from .demo_publish import PUBLISH, check_publication, review_release, write_release
from .demo_report import print_summary, result_line
from .demo_samples import IMPORT_REFUSED, SAMPLE_LIMIT, write_dispatch, write_import, write_report
from .demo_summary import (
    audit_results,
    counts,
    flow_results,
    plaintext_at_relays,
    scrape_metrics,
    trail,
)
from .submit import SubmitError, expand_paths, submit_files
from .supervisor import LIFELINE_ENV, agents_for

__all__ = ["KINDS", "DemoError", "run_demo", "write_gateway_pair"]

FILES_LIMIT = 16 * 1024**3
#: room for the envelope around a file, and the hop records around an envelope
ENVELOPE_ROOM = 2 * 1024 * 1024
STOP_WAIT = 30.0


class DemoError(Exception):
    """The demo could not run or finish; `code` is the exit code (1 failed, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class _Processes:
    """The demo's children, each in its own session, so a Ctrl-C reaches only the demo, which
    then stops them itself.

    Stopped by one SIGTERM to the process itself, never to its process group: the supervisor
    passes it on to each agent once, and an agent that gets a second SIGTERM while its handler
    is still in `Event.set()` (the group's signal, then the supervisor's) deadlocks on the
    event's lock until the supervisor kills it 15 s later, without its final signed checkpoint.
    The group is killed only if a process will not stop within STOP_WAIT."""

    def __init__(self) -> None:
        self.running: list[_Process] = []
        # Each child gets the read end; only the demo holds the write end, so when the demo is
        # gone (even by SIGKILL, a test's timeout) every gateway reads EOF and stops itself.
        self._lifeline, self._lifeline_w = os.pipe()

    def start(self, name: str, argv: list[str], log: Path) -> _Process:
        env = {**os.environ, LIFELINE_ENV: str(self._lifeline)}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(self._lifeline,),
                env=env,
            )
        p = _Process(name, proc, log)
        self.running.append(p)
        return p

    def check(self) -> None:
        for p in self.running:
            if p.proc.poll() is not None:
                raise DemoError(f"{p.name} exited early with code {p.proc.returncode}; see {p.log}")

    def stop(self, names: list[str] | None = None) -> dict[str, int | None]:
        """SIGTERM, wait, SIGKILL what is left; returns name -> exit code (None: killed)."""
        chosen = [p for p in self.running if names is None or p.name in names]
        for p in chosen:
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + STOP_WAIT
        for p in chosen:
            try:
                codes[p.name] = p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()
                codes[p.name] = None
            self.running.remove(p)
        return codes


def _say(quiet: bool, text: str = "") -> None:
    if not quiet:
        print(text, flush=True)


class _Progress:
    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last: tuple[int, ...] = ()
        self.last_print = 0.0

    def update(self, delivered: int, refused: int, per_flow: str) -> None:
        if self.quiet or (delivered, refused) == self.last:
            return
        now = time.monotonic()
        done = delivered + refused
        if not self.tty and now - self.last_print < 2 and done < self.total:
            return
        self.last, self.last_print = (delivered, refused), now
        width = 30
        filled = width * min(done, self.total) // max(1, self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"  [{bar}] {done}/{self.total} files ({delivered} delivered, {refused} refused)"
            f"  {per_flow}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)

    def done(self) -> None:
        if self.tty and not self.quiet and self.last:
            print(file=sys.stderr)


def _prepare_root(workdir: Path | None) -> tuple[Path, bool]:
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="zonegate-demo-"))
    root = root.resolve()
    if keep and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DemoError(
            f"{root} is not an empty directory; give a new or empty one to --workdir", 2
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot make the workdir {root}: {e.strerror}", 2) from None
    return root, keep


def _load_network(topology_file: Path) -> tuple[DemoNetwork, list[dict[str, str]]]:
    try:
        topology = load_topology(topology_file)
        network = demo_network(topology)
    except (ConfigError, NetworkError, OSError) as e:
        raise DemoError(f"the demo's topology: {e}", 2) from None
    zones = [{"name": z.name, "level": z.level} for z in topology.zones]
    return network, zones


def _wait_ready(
    root: Path, plan: LinkPlan, agents: dict[str, list[str]], procs: _Processes, deadline: float
) -> None:
    """Every agent has started (its runtime file names its metrics) and, on udp, every receiver
    has bound its port: a datagram sent before that would be lost for good."""

    def ready() -> bool:
        files = all(
            AgentContext.runtime_file(root / gw / "spool", a).exists()
            for gw, names in agents.items()
            for a in names
        )
        return files and udp_ports_bound(plan.udp_ports())

    while not ready():
        procs.check()
        if time.monotonic() > deadline:
            raise DemoError(f"the gateways did not start in time; see {root}/*/gateway.log")
        time.sleep(0.05)


def _start_drop_points(
    plan: LinkPlan, configs: list[Path], procs: _Processes, deadline: float
) -> list[dict[str, Any]]:
    """Each receiving gateway's SFTP drop point, its own process; returns them once listening."""
    out = []
    for config in configs:
        point = next(p for p in plan.drop_points.values() if p.directory == config.parent)
        argv = [sys.executable, "-m", "zonegate.gateways.demo_sftpdrop", str(config)]
        p = procs.start(f"sftp drop point of {point.gateway}", argv, point.directory / "log")
        out.append(
            {
                "gateway": point.gateway,
                "port": point.port,
                "pid": p.proc.pid,
                "log": str(p.log),
                "config": str(config),
                "accounts": {a: sorted(d) for a, d in point.accounts.items()},
            }
        )
    for point in plan.drop_points.values():
        while not demo_sftpdrop.listen_file(point).exists():
            procs.check()
            if time.monotonic() > deadline:
                raise DemoError(f"the SFTP drop point of {point.gateway} did not start in time")
            time.sleep(0.05)
    return out


def _samples(root: Path, files: list[Path] | None) -> dict[str, list[Path]]:
    if files:
        try:
            user = expand_paths(files)
        except SubmitError as e:
            raise DemoError(str(e), 2) from None
        if not user:
            raise DemoError("no files to send: the paths given hold no regular files", 2)
    return {
        "import": user if files else write_import(root / "samples" / "import"),
        "publish": [write_release(root / "samples" / "publish")],
        "report": write_report(root / "samples" / "report"),
        "dispatch": write_dispatch(root / "samples" / "dispatch"),
    }


class _Run:
    """One run of the demo: its directory, network, links, files and processes."""

    def __init__(
        self,
        root: Path,
        keep: bool,
        quiet: bool,
        transport: str,
        network: DemoNetwork,
        zones: list[dict[str, str]],
        deadline: float,
    ) -> None:
        self.root, self.keep, self.quiet = root, keep, quiet
        self.transport, self.network, self.zones = transport, network, zones
        self.deadline = deadline
        self.procs = _Processes()
        self.gateways: list[dict[str, Any]] = []
        self.drop_points: list[dict[str, Any]] = []

    def left(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def set_up(self, files: list[Path] | None) -> None:
        """Samples (or the user's files on import), link plan, keys and configs."""
        self.sources = _samples(self.root, files)
        self.limits = {f.name: SAMPLE_LIMIT for f in self.network.flows}
        if files:
            self.limits["import"] = FILES_LIMIT
        self.plan = plan_links(self.transport, self.network, self.root)
        self.configs = write_demo_configs(
            self.root, self.network, self.zones, self.plan.transport, self.limits
        )
        self.drop_configs: list[Path] = []
        if self.transport == "sftp":  # login keys and known_hosts: the configs name them
            room = max(self.limits.values()) + ENVELOPE_ROOM
            self.drop_configs = demo_sftpdrop.prepare(self.plan, room)
        try:
            self.agents = {g: agents_for(load_gateway_config(p)) for g, p in self.configs.items()}
        except ConfigError as e:
            raise DemoError(f"a generated config does not load: {e}") from None

    def start(self) -> None:
        """Drop points (sftp) first, then every gateway; returns once all are ready."""
        self.drop_points = _start_drop_points(
            self.plan, self.drop_configs, self.procs, self.deadline
        )
        for g in self.network.gateways:
            config = self.configs[g.name]
            argv = [sys.executable, "-m", "zonegate.bin.cli", "run", "--config", str(config)]
            p = self.procs.start(g.name, argv, self.root / g.name / "gateway.log")
            self.gateways.append(
                {
                    "name": g.name,
                    "node": g.node,
                    "tier": g.tier,
                    "site": g.site,
                    "site_zh": g.site_zh,
                    "zone": g.zone,
                    "pid": p.proc.pid,
                    "agents": self.agents[g.name],
                    "config": str(config),
                    "log": str(p.log),
                }
            )
        _print_start(self)
        _wait_ready(self.root, self.plan, self.agents, self.procs, self.deadline)
        if self.transport == "udp":
            # Datagrams sent before a receiver bound its port drew ICMP port-unreachable, which
            # the kernel keeps on the sender's connected socket as a pending error and raises on
            # its next send; the sender agent would count that send as failed and move the
            # message to corrupt/. Each sender's heartbeat thread (which ignores errors) takes
            # it first if we give it two heartbeats before the first file.
            time.sleep(2 * UDP_HEARTBEAT)

    def exchange(self) -> dict[str, Any]:
        """Drop every flow's files, have the officers review the release, wait for the rest;
        returns the review's steps."""
        counted = ", ".join(f"{n} {len(s)} file(s)" for n, s in self.sources.items())
        _say(self.quiet, f"  sending: {counted}")
        try:
            for f in self.network.flows:
                outbox = self.root / f.sender / "outbox"
                submit_files(outbox, f.name, self.sources[f.name], wait=self.left())
            sender = self.network.flow(PUBLISH).sender
            review = review_release(
                self.configs[sender], self.root / "people", self.left(), self.quiet
            )
        except SubmitError as e:
            raise DemoError(str(e)) from None
        except TimeoutError as e:
            raise DemoError(f"{e}; see {self.root}/*/gateway.log") from None
        _wait_all(self)
        return review

    def finish(self, review: dict[str, Any]) -> dict[str, Any]:
        """Scrape the metrics, stop the gateways (each writes its final signed checkpoint),
        then read what happened from disk."""
        metrics = scrape_metrics(self.root, self.network, self.agents)
        codes = self.procs.stop([g.name for g in self.network.gateways])
        self.procs.stop()
        summary = _summarise(self, review, metrics)
        for g in self.gateways:
            g["exit_code"] = codes.get(g["name"])
            if g["exit_code"] != 0:
                summary["problems"].append(f"{g['name']} did not stop cleanly: {g['exit_code']}")
        summary |= {
            "ok": not summary["problems"],
            "transport": self.transport,
            "workdir": str(self.root),
            "kept": self.keep,
            "gateways": self.gateways,
            "drop_points": self.drop_points,
            "configs": [str(p) for p in self.configs.values()],
        }
        return summary


def run_demo(
    files: list[Path] | None,
    workdir: Path | None,
    json_output: bool = False,
    timeout: float = 600.0,
    transport: str = "zmq",
    topology: Path | None = None,
) -> dict[str, Any]:
    """Run the whole exchange and return the summary (also printed, unless `json_output`)."""
    if transport not in KINDS:
        raise DemoError(f"unknown transport {transport!r} (expected: {', '.join(KINDS)})", 2)
    if not timeout > 0:
        raise DemoError("--timeout must be a positive number of seconds", 2)
    started = time.monotonic()
    topology = topology or TOPOLOGY
    network, zones = _load_network(topology)
    root, keep = _prepare_root(workdir)
    run = _Run(root, keep, json_output, transport, network, zones, started + timeout)
    try:
        run.set_up(files)
        run.start()
        summary = run.finish(run.exchange())
        summary["topology"] = str(topology)
        summary["elapsed_seconds"] = round(time.monotonic() - started, 1)
        summary["result"] = result_line(summary)
        first = ("ok", "result", "transport", "elapsed_seconds", "workdir", "kept", "topology")
        summary = {k: summary[k] for k in first} | summary
        print_summary(summary, json_output)
        return summary
    finally:
        run.procs.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _print_start(run: _Run) -> None:
    kind = {
        "zmq": "zmq, CurveZMQ over loopback TCP",
        "udp": "udp, one-way datagrams with RaptorQ FEC",
        "ferry": "ferry, a directory the receiver only reads",
        "sftp": "sftp, a push to the receiving site's drop point",
    }
    say = partial(_say, run.quiet)
    say(f"zonegate demo: the bureau's three zones and tiers; every link: {kind[run.transport]}")
    say(f"  workdir: {run.root}{'' if run.keep else ' (temporary, removed at the end)'}")
    say("  gateways, each its own process:")
    for g in run.gateways:
        say(
            f"    {g['name']:<27} tier {g['tier']}  {g['zone']:<10} {g['site']} "
            f"(pid {g['pid']}: {', '.join(g['agents'])})"
        )
    for d in run.drop_points:
        say(f"    SFTP drop point of {d['gateway']}: 127.0.0.1:{d['port']} (pid {d['pid']})")
    say("  flows (routes from the topology):")
    for f in run.network.flows:
        say(f"    {f.name:<9} {f.source} -> {f.destination} ({f.what}): {' -> '.join(f.route)}")


def _wait_all(run: _Run) -> None:
    """Until every file of every flow is delivered, refused or damaged, with progress."""
    total = sum(len(s) for s in run.sources.values())
    progress = _Progress(total, run.quiet)
    while True:
        run.procs.check()
        delivered = refused = corrupt = 0
        parts = []
        for f in run.network.flows:
            d, r, c = counts(run.root, f)
            delivered, refused, corrupt = delivered + d, refused + r, corrupt + c
            parts.append(f"{f.name} {d + r}/{len(run.sources[f.name])}")
        progress.update(delivered, refused, " ".join(parts))
        if delivered + refused + corrupt >= total:
            break
        if time.monotonic() > run.deadline:
            progress.done()
            raise DemoError(
                f"timed out with {delivered + refused} of {total} files accounted for "
                f"({', '.join(parts)}); see {run.root}/*/gateway.log"
            )
        time.sleep(0.1)
    progress.done()


def _summarise(run: _Run, review: dict[str, Any], metrics: list[dict]) -> dict[str, Any]:
    root, network, sources = run.root, run.network, run.sources
    samples = run.limits["import"] == SAMPLE_LIMIT
    flows = {}
    for f in network.flows:
        # the samples are built so that exactly the oversized scan is refused; a user's files
        # may be refused for any reason the policy gives (and are still accounted for)
        refusals = (IMPORT_REFUSED if samples else None) if f.name == "import" else {}
        flows[f.name] = flow_results(root, f, sources[f.name], refusals)
    releases = flows[PUBLISH]["delivered"]
    publication = review | {"check": None}
    if len(releases) == 1:
        trusted = root / "keys" / f"{releases[0]['gateway']}.sign.pub"
        publication["check"] = check_publication(releases[0], trusted)
    publication["ok"] = review["ok"] and bool(publication["check"] and publication["check"]["ok"])
    relayed = [f for f in network.flows if f.relays]
    trails = [trail(root, network, f, d) for f in relayed for d in flows[f.name]["delivered"]]
    plaintext = [
        plaintext_at_relays(root, f, sources[f.name], run.plan.directories(f.name)) for f in relayed
    ]
    audits = audit_results(root, network)
    problems = [f"flow {n}: not every file as expected" for n, r in flows.items() if not r["ok"]]
    if not publication["ok"]:
        problems.append("flow publish: the review or the signed manifest failed")
    problems += [f"{t['flow']} {t['message_id']}: {p}" for t in trails for p in t["problems"]]
    problems += [
        f"flow {p['flow']}: plaintext outside the final receiver: {p['found']}"
        for p in plaintext
        if not p["ok"]
    ]
    problems += [f"audit log of {a['gateway']}: {a['problem']}" for a in audits if not a["ok"]]
    problems += [
        f"metrics of {m['gateway']} {m['agent']}: {m['error']}" for m in metrics if m.get("error")
    ]
    return {
        "problems": problems,
        "flows": flows,
        "publication": publication,
        "trails": trails,
        "plaintext": plaintext,
        "audit": audits,
        "audit_logs": [a["path"] for a in audits],
        "metrics": [m["url"] for m in metrics],
        "metrics_samples": metrics,
    }
