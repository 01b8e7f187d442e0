"""What every agent shares: its config, spool, audit log, metrics, and a way to stop cleanly.

Audit comes first: `record()` writes the audit record before the caller changes any spool
state, and if the audit log cannot be written the agent stops (fail closed) rather than move
a message that the record would not show.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..audit.log import AuditLog, AuditWriteError
from ..transfer.durable import replace_durably
from ..transfer.spool import MessageMeta, Spool
from ..zones.config import Address, GatewayConfig

__all__ = ["AgentContext", "FailClosed", "utc_now"]

log = logging.getLogger("zonegate")


class FailClosed(Exception):
    """The audit log could not be written: the agent must stop moving messages."""


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

    @classmethod
    def open(cls, config: GatewayConfig, agent: str) -> AgentContext:
        from .metrics import AgentMetrics

        spool = Spool(config.spool)
        spool.create()
        config.audit_log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        audit = AuditLog(config.audit_log, gateway=config.name, agent=agent, zone=config.zone)
        return cls(config, agent, spool, audit, AgentMetrics(agent, config.name, spool))

    def record(
        self,
        event: str,
        meta: MessageMeta | Mapping[str, Any] | None = None,
        *,
        outcome: str = "ok",
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        message = message_fields(meta) if isinstance(meta, MessageMeta) else meta
        try:
            self.audit.append(event, message=message, outcome=outcome, reason=reason, **extra)
        except AuditWriteError as e:
            self.metrics.audit_failures.inc()
            self.failed = True
            self.stop.set()
            log.critical("audit log cannot be written, stopping transfers: %s", e)
            raise FailClosed(str(e)) from e
        self.metrics.audit_records.inc()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

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
