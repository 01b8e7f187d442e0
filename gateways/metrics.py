"""Prometheus metrics of one agent, served over HTTP from its own registry.

Labels are bounded (flow, stage, outcome, reason code, state): never a file name or a message id,
which would let any sender grow the series without limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

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
        self.lost = Counter(
            "zonegate_link_lost_messages",
            "Messages the link transport knows it lost (UDP: FEC could not complete them).",
            ["flow"],
            registry=self.registry,
        )
        self.rcvbuf_errors = Gauge(
            "zonegate_udp_rcvbuf_errors",
            "The kernel's UDP RcvbufErrors counter (datagrams dropped on a full socket buffer).",
            registry=self.registry,
        )
        self.up = Gauge(
            "zonegate_agent_info", "Agent identity.", ["agent", "gateway"], registry=self.registry
        )
        self.up.labels(agent, gateway).set(1)
        if spool is not None:
            self.registry.register(_SpoolCollector(spool, STATES))

    def serve(self, address: Address | None) -> int | None:
        """Start the HTTP endpoint; returns the bound port (0 in config picks a free one)."""
        if address is None:
            return None
        server, _thread = start_http_server(address.port, addr=address.host, registry=self.registry)
        return int(server.server_address[1])
