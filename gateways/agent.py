"""What every agent shares: its config, spool, audit log, metrics, and a way to stop cleanly.

Audit comes first: `record()` writes the audit record before the caller changes any spool
state, and if the audit log cannot be written the agent stops (fail closed) rather than move
a message that the record would not show. `record_many()` does the same for the records of a
whole batch of messages with one write and one fsync (the group commit of the audit log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..audit.checkpoint import Checkpointer
from ..audit.log import AuditEntry, AuditLog, AuditWriteError
from ..audit.syslog import SyslogSender
from ..transfer.durable import replace_durably
from ..transfer.spool import MessageMeta, Spool
from ..zones.config import Address, GatewayConfig

__all__ = ["AgentContext", "AuditEntry", "FailClosed", "crash_point", "stop_on_signals", "utc_now"]

log = logging.getLogger("zonegate")

#: Fault injection for the crash tests: `ZONEGATE_CRASH_AT=<point>` makes the agent kill itself
#: with SIGKILL the first time it passes that named point (tests/test_batch_recovery.py). Unset
#: in any real deployment; read once, so a point costs one comparison.
_CRASH_AT = os.environ.get("ZONEGATE_CRASH_AT")


def crash_point(name: str) -> None:
    """A place where a kill -9 must lose nothing: the crash tests stop the agent exactly here."""
    if _CRASH_AT is not None and name == _CRASH_AT:
        log.warning("ZONEGATE_CRASH_AT=%s: killing this agent now", name)
        os.kill(os.getpid(), signal.SIGKILL)


class FailClosed(Exception):
    """The audit log could not be written: the agent must stop moving messages."""


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`, from a short-lived thread, never from the handler itself.

    A handler runs in the main thread between two bytecodes, wherever that thread is, and
    `Event.set` takes the event's lock. When the main thread is itself inside that lock, the
    handler's `set` waits for it forever and the process hangs until it is killed, without its
    final signed checkpoint. The main thread is there at two moments: inside `Event.set` (a
    second signal during the first one's handling: what a control-group stop does, systemd
    signalling every process and then the supervisor its agents), and at the end of every
    `Event.wait` (the supervisor's and the agents' polling loops: once in a while a first
    SIGTERM lands there; seen in CI as a supervisor that never passed the stop on). So the
    handler only hands the `set` to a new thread, which waits for the lock while the main
    thread goes on and lets it go; and later signals are no-ops.
    """

    def later(signum: int, frame: object) -> None:
        return None

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, later)
        signal.signal(signal.SIGINT, later)
        threading.Thread(target=stop.set, name="stop-on-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, first)
    signal.signal(signal.SIGINT, first)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message_fields(meta: MessageMeta) -> dict[str, Any]:
    return {
        "id": meta.id,
        "flow": meta.flow,
        "seq": meta.seq,
        "sha256": meta.sha256,
        "size": meta.size,
        # a sender's file name must not be able to look like PEM armour to the audit log's
        # key-material guard: that would refuse the record and stop ingest on every retry
        "name": meta.original_name.replace("-----BEGIN", "-----begin").replace(
            "PRIVATE KEY", "private key"
        ),
        "system": meta.system,
    }


@dataclass
class AgentContext:
    config: GatewayConfig
    agent: str
    spool: Spool
    audit: AuditLog
    metrics: Any  # AgentMetrics; typed loosely to keep this module import-light
    stop: threading.Event = field(default_factory=threading.Event)
    failed: bool = False  # the audit log refused a write: nothing more may move
    crashed: bool = False  # a stage raised: the agent stopped for it, not because it was told
    checkpointer: Checkpointer | None = None  # None when the config names no audit key
    _checkpoint_thread: threading.Thread | None = None

    @classmethod
    def open(cls, config: GatewayConfig, agent: str) -> AgentContext:
        from .metrics import AgentMetrics

        spool = Spool(config.spool)
        spool.create()
        config.audit_log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        audit = AuditLog(
            config.audit_log,
            gateway=config.name,
            agent=agent,
            zone=config.zone,
            rotate_bytes=config.audit.rotate_size,
            rotate_daily=config.audit.rotate_daily,
        )
        metrics = AgentMetrics(agent, config.name, spool)
        metrics.watch_audit(config.audit_log, config.audit.storage_warning)
        checkpointer = None
        if config.audit_key is not None:
            from ..transfer.keys import load_signing_private

            checkpointer = Checkpointer(
                config.audit_log,
                load_signing_private(config.audit_key),
                config.name,
                agent=agent,
                copy_path=config.audit.checkpoint_copy,
                syslog=SyslogSender(config.audit.syslog_address) if config.audit.syslog else None,
            )
        return cls(config, agent, spool, audit, metrics, checkpointer=checkpointer)

    def record(
        self,
        event: str,
        meta: MessageMeta | Mapping[str, Any] | None = None,
        *,
        outcome: str = "ok",
        reason: str | None = None,
        who: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.record_many(
            [self.entry(event, meta, outcome=outcome, reason=reason, who=who, **extra)]
        )

    @staticmethod
    def entry(
        event: str,
        meta: MessageMeta | Mapping[str, Any] | None = None,
        *,
        outcome: str = "ok",
        reason: str | None = None,
        who: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> AuditEntry:
        """One audit record of a batch, to be written by `record_many`."""
        message = message_fields(meta) if isinstance(meta, MessageMeta) else meta
        return AuditEntry(event, message, outcome, reason, who, extra)

    def record_many(self, entries: Sequence[AuditEntry]) -> None:
        """Write a batch's records durably, one write and one fsync; fail closed if it cannot.

        Either all of them are on disk when this returns, or none is and `FailClosed` is raised:
        the caller moves none of the batch's messages.
        """
        if not entries:
            return
        try:
            self.audit.append_many(entries)
        except AuditWriteError as e:
            self.metrics.audit_failures.inc()
            self.metrics.audit_write_failed.set(1)
            self.failed = True
            self.stop.set()
            log.critical("audit log cannot be written, stopping transfers: %s", e)
            raise FailClosed(str(e)) from e
        self.metrics.audit_records.inc(len(entries))

    def checkpoint(self) -> bool:
        """Sign and write a checkpoint of the log now; on failure fail closed like ``record``.

        A checkpoint that cannot be written leaves the log's tail unprotected, so it stops
        transfers exactly as an unwritable record does.
        """
        if self.checkpointer is None:
            return True
        copy_failures = self.checkpointer.copy_failures
        syslog = self.checkpointer.syslog
        syslog_failures = syslog.failures if syslog else 0
        try:
            self.checkpointer.checkpoint()
        except AuditWriteError as e:
            self.metrics.audit_failures.inc()
            self.metrics.audit_write_failed.set(1)
            self.failed = True
            self.stop.set()
            log.critical("audit checkpoint cannot be written, stopping transfers: %s", e)
            return False
        try:
            removed = self.checkpointer.prune(self.config.audit.retention)
        except AuditWriteError as e:
            self.metrics.audit_write_failed.set(1)
            self.failed = True
            self.stop.set()
            log.critical("audit retention cannot prune, stopping transfers: %s", e)
            return False
        if removed:
            self.record("expired", outcome="info", reason="audit log retention", files=removed)
        if self.checkpointer.copy_failures > copy_failures:
            self.metrics.audit_checkpoint_copy_failures.labels("file").inc()
            log.error("audit checkpoint copy not written to %s", self.config.audit.checkpoint_copy)
        if syslog and syslog.failures > syslog_failures:
            self.metrics.audit_checkpoint_copy_failures.labels("syslog").inc()
        return True

    def start_checkpoints(self) -> threading.Thread | None:
        """Write a checkpoint now and then every ``audit.checkpoint_interval`` until stopped."""
        if self.checkpointer is None:
            return None

        def loop() -> None:
            if not self.checkpoint():
                return
            while not self.stop.wait(self.config.audit.checkpoint_interval):
                if not self.checkpoint():
                    return

        self._checkpoint_thread = threading.Thread(target=loop, name="checkpoints", daemon=True)
        self._checkpoint_thread.start()
        return self._checkpoint_thread

    def final_checkpoint(self) -> None:
        """On shutdown: wait for the interval writer, then sign the log's final state."""
        if self._checkpoint_thread is not None:
            self._checkpoint_thread.join(timeout=60)
        if not self.failed:
            self.checkpoint()

    def run_stages(self, stages: list[tuple[str, Callable[[], None]]]) -> None:
        """Run an agent's stages as threads until they end; the first to fail stops them all.

        A stage that hits the unwritable audit log, or fails in any other way, sets `stop` so
        the others finish their current step and return: the agent never runs half-alive.
        """

        def guarded(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn()
                except FailClosed:
                    self.stop.set()
                except BaseException:
                    log.exception("%s failed; stopping the agent", threading.current_thread().name)
                    self.crashed = True
                    self.stop.set()
                    raise

            return run

        threads = [threading.Thread(target=guarded(fn), name=name) for name, fn in stages]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def record_stopped(self) -> None:
        """The agent-stopped record, unless the audit log is what stopped us."""
        if not self.failed:
            with contextlib.suppress(FailClosed):
                self.record("agent-stopped", outcome="info")

    def install_signal_handlers(self) -> None:
        stop_on_signals(self.stop)

    def serve_metrics(self, address: Address | None) -> str | None:
        port = self.metrics.serve(address)
        url = None
        if address is not None and port is not None:
            host = f"[{address.host}]" if ":" in address.host else address.host
            url = f"http://{host}:{port}/metrics"
        runtime = {"agent": self.agent, "pid": os.getpid(), "metrics": url, "started": utc_now()}
        replace_durably(
            self.runtime_file(self.spool.root, self.agent), json.dumps(runtime).encode()
        )
        return url

    @staticmethod
    def runtime_file(spool_root: Path, agent: str) -> Path:
        return Path(spool_root) / "state" / f"{agent}.json"

    def sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)
