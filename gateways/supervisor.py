"""Runs a gateway: one child process per agent, restarted if it dies, stopped together.

Agents share nothing but the spool directory, so each runs in its own process (and can use its
own core); a crash of one (even kill -9) is repaired by its own recovery on restart.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..zones.config import GatewayConfig
from .agent import stop_on_signals

__all__ = ["LIFELINE_ENV", "agents_for", "run_agent", "supervise"]

log = logging.getLogger("zonegate.supervisor")

#: Set by a program that starts gateways for its own lifetime only (the demo): the number of an
#: inherited pipe's read end. When that program is gone, even by SIGKILL, the pipe reads EOF and
#: the gateway stops as if told to (final checkpoints written), instead of running on orphaned.
LIFELINE_ENV = "ZONEGATE_LIFELINE_FD"


def _watch_lifeline(stop: threading.Event) -> None:
    """Stop when the lifeline pipe (if this process was given one) reads end of file."""
    value = os.environ.pop(LIFELINE_ENV, None)  # not for the agents: only we watch it
    if value is None:
        return
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        log.error("%s=%r names no open file; not watching it", LIFELINE_ENV, value)
        return

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        if not stop.is_set():
            log.warning("the program that started this gateway is gone; stopping")
            stop.set()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def agents_for(config: GatewayConfig) -> list[str]:
    """The agents a gateway needs: ingest+sender for outgoing flows, receiver for incoming."""
    agents: list[str] = []
    if config.outgoing_flows():
        agents += ["ingest", "sender"]
        if config.sftp is not None:
            agents.append("sftp")
    if config.incoming_flows():
        agents.append("receiver")
    if config.relayed_flows():
        agents.append("relay")
    return agents


def run_agent(config: GatewayConfig, agent: str) -> int:
    """Run one agent in this process until SIGTERM/SIGINT; the exit code says how it ended."""
    from .agent import AgentContext
    from .ingest import IngestAgent
    from .receiver import ReceiverAgent
    from .relay import RelayAgent
    from .sender import SenderAgent
    from .sftp import SftpAgent

    ctx = AgentContext.open(config, agent)
    ctx.install_signal_handlers()
    ctx.serve_metrics(getattr(config.metrics, agent))
    ctx.start_checkpoints()
    kinds = {
        "ingest": IngestAgent,
        "sender": SenderAgent,
        "receiver": ReceiverAgent,
        "sftp": SftpAgent,
        "relay": RelayAgent,
    }
    kinds[agent](ctx).run()  # type: ignore[abstract]
    ctx.final_checkpoint()
    # 3: the audit log failed (the supervisor stops the gateway); 1: a stage raised (it is
    # restarted, and the exit code says so); 0: told to stop.
    return 3 if ctx.failed else 1 if ctx.crashed else 0


@dataclass
class _Child:
    agent: str
    proc: subprocess.Popen[bytes]
    started: float
    backoff: float = 1.0


def supervise(config_path: Path, agents: list[str]) -> int:
    stop = threading.Event()
    stop_on_signals(stop)
    _watch_lifeline(stop)

    def spawn(agent: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "zonegate.bin.cli", "run", "--config", str(config_path)]
        return subprocess.Popen([*cmd, "--agent", agent])

    children = {a: _Child(a, spawn(a), time.monotonic()) for a in agents}
    failed = False
    while not stop.is_set():
        for child in children.values():
            code = child.proc.poll()
            if code is None:
                continue
            if code == 3:
                log.critical("%s stopped: the audit log cannot be written", child.agent)
                failed = True
                stop.set()
                break
            if time.monotonic() - child.started > 60:
                child.backoff = 1.0
            log.error("%s exited with %s; restarting in %.0fs", child.agent, code, child.backoff)
            stop.wait(child.backoff)
            child.backoff = min(child.backoff * 2, 30.0)
            child.proc = spawn(child.agent)
            child.started = time.monotonic()
        stop.wait(0.2)
    for child in children.values():
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
    return 3 if failed else 0
