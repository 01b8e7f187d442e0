"""The endpoint probe agent: is every conference endpoint of the topology answering?

Why: a video MCU or a phone bridge that died is found by the administrator before a meeting,
not by the bureau's director in one. Each endpoint is probed the way its protocol is spoken:

- SIP endpoints get an OPTIONS request over UDP (RFC 3261 section 11: the standard "are you
  there and what can you do" request). Any response with our Call-ID and Via branch means the
  endpoint's SIP stack is alive, whatever the status code (a 404 or 405 still proves it answers).
- H.323 endpoints (MCUs, gatekeepers, terminals) get a TCP connect to their H.225 call
  signalling port (1720 unless the topology says otherwise), closed at once.

Probes run on a schedule, all endpoints in parallel, each bounded by a timeout, and the results
are exported as Prometheus metrics with bounded labels (endpoint, node, protocol: all from the
topology, never from the network). Nothing here answers anything received: the probe only reads
the response to its own request on the socket it sent from.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ..zones.config import Address
from ..zones.topology import Endpoint

__all__ = [
    "ProbeAgent",
    "ProbeMetrics",
    "ProbeResult",
    "parse_sip_response",
    "probe_endpoint",
    "probe_h323",
    "probe_sip",
    "sip_options",
]

USER_AGENT = "zonegate-probe"
MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one endpoint: up or down, how long it took, and why (for people)."""

    endpoint: str
    node: str
    protocol: str
    address: str
    port: int
    up: bool
    seconds: float
    detail: str
    at: float  # time.time() when the probe finished

    def as_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "node": self.node,
            "protocol": self.protocol,
            "address": self.address,
            "port": self.port,
            "up": self.up,
            "seconds": round(self.seconds, 6),
            "detail": self.detail,
            "at": self.at,
        }


def _host(address: str) -> str:
    """An address as it appears in a SIP URI or Via: IPv6 in brackets (RFC 3261 section 25)."""
    return f"[{address}]" if ":" in address else address


@dataclass(frozen=True)
class SipRequest:
    """An OPTIONS request and the identifiers its response must echo."""

    data: bytes
    branch: str
    call_id: str


def sip_options(target: str, port: int, local: str, local_port: int, cseq: int = 1) -> SipRequest:
    """A complete RFC 3261 OPTIONS request from `local:local_port` to `target:port` over UDP.

    The branch starts with the magic cookie z9hG4bK (section 8.1.1.7) so RFC 3261 stacks match
    the response to this transaction; `rport` (RFC 3581) asks the answer back to the source port
    even through NAT; Content-Length: 0 because the request has no body.
    """
    branch = "z9hG4bK" + secrets.token_hex(12)
    call_id = f"{secrets.token_hex(16)}@{_host(local)}"
    tag = secrets.token_hex(6)
    uri = f"sip:{_host(target)}:{port}"
    lines = [
        f"OPTIONS {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {_host(local)}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{USER_AGENT}@{_host(local)}>;tag={tag}",
        f"To: <{uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: <sip:{USER_AGENT}@{_host(local)}:{local_port}>",
        "Accept: application/sdp",
        f"User-Agent: {USER_AGENT}",
        "Content-Length: 0",
        "",
        "",
    ]
    return SipRequest("\r\n".join(lines).encode("ascii"), branch, call_id)


#: RFC 3261 section 7.3.3 compact header forms we need to read.
_COMPACT = {"v": "via", "i": "call-id"}


def parse_sip_response(data: bytes) -> tuple[int, str, dict[str, list[str]]] | None:
    """(status code, reason, headers by lower-case name) of a SIP response, or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head = text.split("\r\n\r\n", 1)[0].replace("\r\n", "\n")
    lines = head.split("\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        headers.setdefault(_COMPACT.get(key, key), []).append(value.strip())
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def probe_sip(address: str, port: int, timeout: float) -> tuple[bool, float, str]:
    """Send OPTIONS, wait up to `timeout` for its response: (up, seconds, detail)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    started = time.monotonic()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, port))  # picks the local address; filters other senders
            local, local_port = sock.getsockname()[:2]
            request = sip_options(address, port, local, local_port)
            sock.send(request.data)
        except OSError as e:
            return False, time.monotonic() - started, f"cannot send: {e.strerror or e}"
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, time.monotonic() - started, "no SIP response before the timeout"
            sock.settimeout(left)
            try:
                data = sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                # ICMP port unreachable: nothing listens there.
                return False, time.monotonic() - started, "port unreachable (ICMP)"
            except OSError as e:
                return False, time.monotonic() - started, f"receive failed: {e.strerror or e}"
            parsed = parse_sip_response(data)
            if parsed is None:
                continue
            code, reason, headers = parsed
            if request.call_id not in headers.get("call-id", []):
                continue
            if not any(f"branch={request.branch}" in via for via in headers.get("via", [])):
                continue
            if code < 200:
                continue  # provisional; the final response follows
            return True, time.monotonic() - started, f"SIP {code} {reason}".strip()


def probe_h323(address: str, port: int, timeout: float) -> tuple[bool, float, str]:
    """TCP connect to the H.225 call signalling port: (up, seconds, detail)."""
    started = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True, time.monotonic() - started, "TCP connect ok"
    except TimeoutError:
        return False, time.monotonic() - started, "TCP connect timed out"
    except OSError as e:
        return False, time.monotonic() - started, f"TCP connect failed: {e.strerror or e}"


def probe_endpoint(endpoint: Endpoint, timeout: float) -> ProbeResult:
    """Probe one endpoint the way its protocol is spoken."""
    probe = probe_sip if endpoint.protocol == "sip" else probe_h323
    up, seconds, detail = probe(endpoint.address, endpoint.port, timeout)
    return ProbeResult(
        endpoint=endpoint.name,
        node=endpoint.node,
        protocol=endpoint.protocol,
        address=endpoint.address,
        port=endpoint.port,
        up=up,
        seconds=seconds,
        detail=detail,
        at=time.time(),
    )


class ProbeMetrics:
    """The probe agent's Prometheus metrics, one registry, labels from the topology only."""

    LABELS = ("endpoint", "node", "protocol")

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.up = Gauge(
            "zonegate_probe_up",
            "1 when the endpoint answered its last probe, 0 when it did not.",
            self.LABELS,
            registry=self.registry,
        )
        self.duration = Gauge(
            "zonegate_probe_duration_seconds",
            "How long the endpoint's last probe took (its response time when up).",
            self.LABELS,
            registry=self.registry,
        )
        self.last_seen = Gauge(
            "zonegate_probe_last_seen_timestamp_seconds",
            "When the endpoint last answered a probe (0 if never).",
            self.LABELS,
            registry=self.registry,
        )
        self.probes = Counter(
            "zonegate_probes",
            "Probes sent, by endpoint and outcome (up or down).",
            (*self.LABELS, "outcome"),
            registry=self.registry,
        )
        self.info = Gauge(
            "zonegate_agent_info", "Agent identity.", ["agent", "gateway"], registry=self.registry
        )
        self.info.labels("probe", "").set(1)

    def declare(self, endpoints: Iterable[Endpoint]) -> None:
        """Create every endpoint's series at once, so a never-answering one shows as down."""
        for e in endpoints:
            labels = (e.name, e.node, e.protocol)
            self.up.labels(*labels).set(0)
            self.last_seen.labels(*labels).set(0)
            self.duration.labels(*labels).set(0)
            for outcome in ("up", "down"):
                self.probes.labels(*labels, outcome)

    def record(self, result: ProbeResult) -> None:
        labels = (result.endpoint, result.node, result.protocol)
        self.up.labels(*labels).set(1 if result.up else 0)
        self.duration.labels(*labels).set(result.seconds)
        if result.up:
            self.last_seen.labels(*labels).set(result.at)
        self.probes.labels(*labels, "up" if result.up else "down").inc()

    def serve(self, address: Address) -> int:
        server, _thread = start_http_server(address.port, addr=address.host, registry=self.registry)
        return int(server.server_address[1])


class ProbeAgent:
    """Probes all endpoints every `interval` seconds until stopped."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        interval: float = 10.0,
        timeout: float = 2.0,
        metrics: ProbeMetrics | None = None,
    ) -> None:
        if timeout > interval:
            raise ValueError("the probe timeout must not be longer than the interval")
        self.endpoints = tuple(endpoints)
        self.interval = interval
        self.timeout = timeout
        self.metrics = metrics or ProbeMetrics()
        self.metrics.declare(self.endpoints)
        self.stop = threading.Event()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(32, len(self.endpoints))), thread_name_prefix="probe"
        )

    def probe_all(self) -> list[ProbeResult]:
        """One round: every endpoint in parallel; results in topology order."""
        results = list(self._pool.map(lambda e: probe_endpoint(e, self.timeout), self.endpoints))
        for result in results:
            self.metrics.record(result)
        return results

    def run(self, on_round: object = None) -> None:
        """Probe on schedule (rounds start `interval` apart) until `stop` is set."""
        next_round = time.monotonic()
        while not self.stop.is_set():
            results = self.probe_all()
            if callable(on_round):
                on_round(results)
            next_round += self.interval
            self.stop.wait(max(0.0, next_round - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=True, cancel_futures=True)
