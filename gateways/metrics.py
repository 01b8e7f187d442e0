"""Prometheus metrics of one agent, served over HTTP from its own registry.

Labels are bounded (flow, stage, outcome, reason code, state): never a file name or a message id,
which would let any sender grow the series without limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..transfer.spool import STATES, Spool
from ..zones.config import Address

__all__ = ["AgentMetrics"]


class _SpoolCollector(Collector):
    """Queue depth and oldest age, read from the spool directories at scrape time."""

    def __init__(self, spool: Spool, states: Iterable[str]) -> None:
        self.spool = spool
        self.states = tuple(states)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "zonegate_queue_depth", "Messages in a spool state.", labels=["state"]
        )
        age = GaugeMetricFamily(
            "zonegate_queue_oldest_age_seconds",
            "Age of the oldest message in a spool state.",
            labels=["state"],
        )
        now = time.time()
        for state in self.states:
            depth.add_metric([state], self.spool.depth(state))
            age.add_metric([state], self.spool.oldest_age(state, now))
        yield depth
        yield age


class AgentMetrics:
    def __init__(self, agent: str, gateway: str, spool: Spool | None) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "zonegate_messages",
            "Messages by flow, stage and outcome.",
            ["flow", "stage", "outcome"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "zonegate_bytes",
            "Payload bytes by flow and stage.",
            ["flow", "stage"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "zonegate_rejections",
            "Refused messages or envelopes by flow and reason code.",
            ["flow", "stage", "reason"],
            registry=self.registry,
        )
        self.audit_records = Counter(
            "zonegate_audit_records", "Audit records written.", registry=self.registry
        )
        self.audit_failures = Counter(
            "zonegate_audit_write_failures",
            "Audit appends that failed (transfers stop).",
            registry=self.registry,
        )
        self.audit_write_failed = Gauge(
            "zonegate_audit_write_failed",
            "1 once this agent could not write its audit log or checkpoint (it stops: alert).",
            registry=self.registry,
        )
        self.audit_checkpoint_copy_failures = Counter(
            "zonegate_audit_checkpoint_copy_failures",
            "Checkpoints not written to the second place (copy file or syslog).",
            ["place"],
            registry=self.registry,
        )
        self.link_up = Gauge(
            "zonegate_link_up", "1 when the flow's link is connected.", ["flow"],
            registry=self.registry,
        )  # fmt: skip
        self.last_heartbeat = Gauge(
            "zonegate_link_last_heartbeat_timestamp_seconds",
            "When the last heartbeat was sent or received on the flow's link.",
            ["flow"],
            registry=self.registry,
        )
        self.gaps = Counter(
            "zonegate_sequence_gaps",
            "Sequence numbers skipped on a flow (messages never seen).",
            ["flow"],
            registry=self.registry,
        )
        self.up = Gauge(
            "zonegate_agent_info", "Agent identity.", ["agent", "gateway"], registry=self.registry
        )
        self.up.labels(agent, gateway).set(1)
        if spool is not None:
            self.registry.register(_SpoolCollector(spool, STATES))

    def watch_audit(self, log: Path, storage_warning: int) -> None:
        """Gauges read at scrape time: checkpoint age and audit storage against its threshold.

        Read from the files rather than tracked in memory, so every agent of a gateway reports
        the same checkpoint age whichever of them wrote the last one.
        """
        started = time.time()
        checkpoints = Path(f"{log}.checkpoints")

        def age() -> float:
            try:
                return max(0.0, time.time() - checkpoints.stat().st_mtime)
            except OSError:
                return time.time() - started  # none yet: as old as this agent

        def used() -> float:
            total = 0
            try:
                for entry in os.scandir(log.parent):
                    if entry.name.startswith(log.name) and entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
            return float(total)

        Gauge(
            "zonegate_audit_checkpoint_age_seconds",
            "Seconds since the newest signed checkpoint of the gateway's audit log.",
            registry=self.registry,
        ).set_function(age)
        Gauge(
            "zonegate_audit_storage_bytes",
            "Bytes used by the audit log, its rotated files and checkpoints.",
            registry=self.registry,
        ).set_function(used)
        Gauge(
            "zonegate_audit_storage_warning",
            "1 when the audit files use more than the configured storage_warning.",
            registry=self.registry,
        ).set_function(lambda: 1.0 if used() >= storage_warning else 0.0)

    def serve(self, address: Address | None) -> int | None:
        """Start the HTTP endpoint; returns the bound port (0 in config picks a free one)."""
        if address is None:
            return None
        server, _thread = start_http_server(address.port, addr=address.host, registry=self.registry)
        return int(server.server_address[1])
