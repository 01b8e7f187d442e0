"""Prometheus metrics of one agent, served over HTTP from its own registry.

Labels are bounded (flow, stage, outcome, reason code, state): never a file name or a message id,
which would let any sender grow the series without limit.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..audit.verify import verify
from ..transfer.spool import STATES, Spool
from ..zones.config import Address

__all__ = ["LATENCY_BUCKETS", "AgentMetrics"]

#: Seconds; from a small file on loopback (milliseconds) to a large one over a slow link.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


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


class _DiskCollector(Collector):
    """Free and total bytes of the spool's file system: a full disk stops every transfer."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return
        yield GaugeMetricFamily(
            "zonegate_spool_filesystem_avail_bytes",
            "Bytes available to the gateway on the spool's file system.",
            value=st.f_bavail * st.f_frsize,
        )
        yield GaugeMetricFamily(
            "zonegate_spool_filesystem_size_bytes",
            "Size of the spool's file system in bytes.",
            value=st.f_blocks * st.f_frsize,
        )


class _AuditCollector(Collector):
    """Whether the gateway's audit log verifies, read at scrape time.

    Why here: an audit log that stops growing or stops verifying must page someone, and the
    agents are what Prometheus scrapes. The full verify is cached for `verify_every` seconds so
    a large log is not re-read on every scrape.
    """

    def __init__(self, log: Path, verify_every: float = 60.0) -> None:
        self.log = log
        self.verify_every = verify_every
        self._checked = 0.0
        self._ok = 1.0

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.time()
        if os.path.exists(self.log) and now - self._checked >= self.verify_every:
            self._ok = 1.0 if verify(self.log).ok else 0.0
            self._checked = now
        yield GaugeMetricFamily(
            "zonegate_audit_verify_ok",
            "1 when the audit log's hash chain verified at the last check, 0 when it did not.",
            value=self._ok,
        )
        yield GaugeMetricFamily(
            "zonegate_audit_last_verify_timestamp_seconds",
            "When the audit log's hash chain was last verified.",
            value=self._checked,
        )


def _since(created: str, now: float | None = None) -> float | None:
    """Seconds since an ISO-8601 UTC stamp (utc_now()'s format); None if it cannot be read."""
    try:
        start = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None
    return max(0.0, (time.time() if now is None else now) - start)


class AgentMetrics:
    def __init__(self, agent: str, gateway: str, spool: Spool | None) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "zonegate_messages",
            "Messages by flow, stage and outcome.",
            ["flow", "stage", "outcome"],
            registry=self.registry,
        )
        self.containers = Counter(
            "zonegate_containers",
            "Container envelopes (many small messages in one) sealed, or opened, by flow.",
            ["flow"],
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
        self.udp_queue_drops = Counter(
            "zonegate_udp_queue_dropped_datagrams",
            "Datagrams the UDP receiver took off its socket but dropped because the decoder was "
            "that far behind (its queue full): the link is faster than this host decodes.",
            ["flow"],
            registry=self.registry,
        )
        self.disk_full = Gauge(
            "zonegate_disk_full",
            "1 while the agent is waiting for disk space (writes failed with ENOSPC).",
            registry=self.registry,
        )
        self.up = Gauge(
            "zonegate_agent_info", "Agent identity.", ["agent", "gateway"], registry=self.registry
        )
        self.up.labels(agent, gateway).set(1)
        self.stage_seconds = Histogram(
            "zonegate_stage_duration_seconds",
            "Time a message spent in one stage (ingest check, seal, send, open, deliver).",
            ["flow", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_busy = Counter(
            "zonegate_stage_busy_seconds",
            "Wall time this agent spent working on a stage (whole batches, waits excluded): "
            "across a gateway pair, the stage busy longest is the bottleneck.",
            ["stage"],
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "zonegate_end_to_end_latency_seconds",
            "From the claim at the sending gateway to delivery here (clocks must agree).",
            ["flow"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fec_repaired = Counter(
            "zonegate_fec_repaired_packets",
            "Link packets rebuilt by forward error correction (UDP+FEC transports).",
            ["flow"],
            registry=self.registry,
        )
        self.fec_lost = Counter(
            "zonegate_fec_lost_packets",
            "Link packets lost beyond what forward error correction could rebuild.",
            ["flow"],
            registry=self.registry,
        )
        if spool is not None:
            self.registry.register(_SpoolCollector(spool, STATES))
            self.registry.register(_DiskCollector(spool.root))

    def observe_stage(self, flow: str, stage: str, started: float) -> None:
        """Record a stage that began at `started` (time.monotonic())."""
        self.stage_seconds.labels(flow, stage).observe(max(0.0, time.monotonic() - started))

    @contextlib.contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        """Count the wall time of the block as work on `stage` (also when it raises)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.stage_busy.labels(stage).inc(max(0.0, time.monotonic() - started))

    def observe_interval(self, flow: str, stage: str, started: float, ended: float) -> None:
        """Record a stage that ran from `started` to `ended` (both time.monotonic())."""
        self.stage_seconds.labels(flow, stage).observe(max(0.0, ended - started))

    def observe_since(self, flow: str, stage: str | None, created: str) -> None:
        """Record the time since `created` (ISO UTC) for a stage, or end to end when None."""
        seconds = _since(created)
        if seconds is None:
            return
        if stage is None:
            self.end_to_end_seconds.labels(flow).observe(seconds)
        else:
            self.stage_seconds.labels(flow, stage).observe(seconds)

    def watch_audit(self, log: Path, storage_warning: int) -> None:
        """Gauges read at scrape time: checkpoint age and audit storage against its threshold.

        Read from the files rather than tracked in memory, so every agent of a gateway reports
        the same checkpoint age whichever of them wrote the last one.
        """
        self.registry.register(_AuditCollector(Path(log)))
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
