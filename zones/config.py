"""One gateway's configuration: load the YAML, validate it, return typed immutable objects.

Why so strict: a gateway moves files between isolated zones, so a config mistake is a security
mistake. A typo'd key that is silently ignored (``transprot:``), a duplicated key where YAML keeps
the last value, a flow whose sender sits in the wrong zone, or a private key readable by other
users must stop the gateway at start-up with an error that names the file, the line, the key and
what was expected — never a stack trace, never a guess.

Order of errors: the first error is raised, so the order is fixed. YAML syntax errors come first,
then duplicate keys (in document order). Then the structure is read top-down: each mapping's own
keys are checked (unknown keys first, because a typo'd key is the cause of the "missing" key it
leaves behind; then missing keys), and then its values are read in document order (types, values,
key files). Once the whole document has the right shape, the cross references (zones, peers,
senders and receivers of flows) are checked and the one earliest in the document is raised.

Pure: reads the config and stats the key files; no sockets, no threads, nothing else of ours.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .yamlpos import Positions, YamlPath, compose_positions

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_RESEND_WINDOW",
    "LEVELS",
    "NAME_PATTERN",
    "ROLES",
    "SIZE_UNITS",
    "TRANSPORT_KINDS",
    "TRANSPORT_OPTIONS",
    "Address",
    "Approval",
    "ArchiveRules",
    "Audit",
    "ConfigError",
    "Flow",
    "GatewayConfig",
    "Hop",
    "Metrics",
    "Peer",
    "Person",
    "Policy",
    "Scanner",
    "SftpAccount",
    "SftpServer",
    "TextRules",
    "Transport",
    "Zone",
    "load_gateway_config",
    "parse_size",
    "read_yaml_document",
]

#: Classification levels of a zone, from least to most sensitive.
LEVELS: tuple[str, ...] = ("public", "sensitive", "classified")
#: Transport kinds a flow may use. The one place to add a kind (with its endpoint check below).
TRANSPORT_KINDS: frozenset[str] = frozenset({"zmq", "udp", "ferry", "sftp"})
#: Names of gateways, zones, nodes, peers and flows: they end up in paths, metrics labels and
#: audit records, so they are kept to a small, unambiguous alphabet.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_MAX_SIZE = 64 * 1024**2
DEFAULT_RESEND_WINDOW = 64 * 1024**2
#: The most a ZeroMQ link can lose when it drops or its receiver dies: what sits in both ends'
#: queues and kernel buffers and in one poll (`zmqlink.in_flight_bound`), and what the
#: receiver holds in memory before it is durable (`receiver.MEMORY_BACKLOG`). Nothing
#: acknowledges on a one-way link, so the sender re-sends its newest `resend_window` bytes on
#: reconnect; a smaller window than this could leave a message that was in flight unsent for
#: good. Tested to cover those two (tests/test_batch_recovery.py).
ZMQ_IN_FLIGHT_BYTES = 56 * 1024**2
DEFAULT_SENT_RETENTION = 7 * 86400.0
#: The three separated roles of a classified system; a person holds exactly one.
ROLES: tuple[str, ...] = ("administrator", "security-officer", "auditor")
#: How long a message may wait in review/ before it expires to quarantine, unless configured.
DEFAULT_REVIEW_EXPIRY = 72 * 3600.0
#: The two-person rule is the strongest the issue asks for; more would need more officers online.
MAX_APPROVALS = 2
#: Audit defaults: a signed checkpoint every minute bounds what a cut tail can hide to one
#: minute's records; retention of six months (183 days) is the floor security offices ask for.
DEFAULT_CHECKPOINT_INTERVAL = 60.0
DEFAULT_AUDIT_ROTATE_SIZE = 64 * 1024**2
DEFAULT_AUDIT_RETENTION = 183 * 86400.0
DEFAULT_AUDIT_STORAGE_WARNING = 1024**3
#: A rotated file must hold at least a few of the largest records (64 KiB each).
MIN_AUDIT_ROTATE_SIZE = 1024**2
#: File types a flow's `policy.types` may allow, as recognised from the content's magic bytes.
CONTENT_TYPES: tuple[str, ...] = (
    "pdf", "ooxml", "odf", "png", "jpeg", "xml", "json", "csv", "text", "zip",
)  # fmt: skip
#: The longest name a file system takes in one component; `policy.names.max_bytes` caps at it.
MAX_NAME_BYTES = 255
#: Size units: SI units are 1000-based, IEC units 1024-based, as their standards say.
SIZE_UNITS: Mapping[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


class ConfigError(Exception):
    """A config that cannot be used, located as precisely as a compiler error.

    `str(e)` is ``FILE:LINE: KEY: MESSAGE`` (``FILE: KEY: MESSAGE`` when there is no line), so
    an operator can jump to the spot, and tests can check each part separately.
    """

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        super().__init__(file, line, key, message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}"


@dataclass(frozen=True)
class Zone:
    """An isolated network and its classification level (one of `LEVELS`)."""

    name: str
    level: str


@dataclass(frozen=True)
class Address:
    """A host and port to listen on or connect to; kept apart so IPv6 brackets are not lost."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Peer:
    """Another gateway this one exchanges flows with, and its public keys (absolute paths)."""

    name: str
    zone: str
    signing_key: Path
    encryption_key: Path


@dataclass(frozen=True)
class Transport:
    """How a flow's envelopes travel: the kind (one of `TRANSPORT_KINDS`) and its endpoint.

    The optional settings below belong to some kinds only (see `TRANSPORT_OPTIONS`); giving one
    to another kind is an error, so a udp setting left on a zmq flow is not silently ignored.
    """

    kind: str
    endpoint: str
    #: udp: bytes per second the sender may put on the link (token bucket); 0 = unlimited
    bandwidth: int = 0
    #: udp: repair symbols per source symbol (0.25 = 25% FEC overhead)
    redundancy: float = 0.25
    #: udp: how many times each message is sent (nothing can ask for a resend)
    repeats: int = 1
    #: udp: seconds between heartbeats; the receiver calls the link dead after one missed
    heartbeat: float = 1.0
    #: udp: bytes of FEC symbol per datagram (keep header + this under the path MTU)
    packet_size: int = 1400
    #: zmq: this gateway's CurveZMQ secret key (sender: client key; receiver: server key)
    curve_key: Path | None = None
    #: zmq: the peer's CurveZMQ public key (only that peer may connect)
    peer_curve_key: Path | None = None
    #: sftp (sender): private key to log in with, and the known_hosts file the server must match
    identity: Path | None = None
    known_hosts: Path | None = None
    #: sftp (receiver): the directory the SFTP server writes into, read like a ferry directory
    drop_dir: Path | None = None


@dataclass(frozen=True)
class ArchiveRules:
    """Limits on ZIP containers (plain ZIP, OOXML, ODF), read from headers, never extracted.

    Why these defaults: a chart in a Word file embeds a workbook (depth 2 is normal), XML
    compresses 10-50x (a ratio over 100 on a large entry is a bomb, not a document).
    """

    max_entries: int = 10_000
    max_expanded_size: int = 1024**3
    max_ratio: int = 100
    max_depth: int = 2


@dataclass(frozen=True)
class TextRules:
    """Classification markings and keywords looked for in text and in documents' text."""

    markings: bool = False
    keywords: tuple[str, ...] = ()
    #: text extracted from one PDF/OOXML/ODF; a document with more is refused, not half-read
    max_extracted: int = 64 * 1024**2


@dataclass(frozen=True)
class Scanner:
    """An external scanner (e.g. a site's antivirus): argv without a shell; exit 0 passes."""

    command: tuple[str, ...]
    input: str = "stdin"  # "stdin": the file's bytes on stdin; "path": "{path}" in command
    timeout: float = 60.0


@dataclass(frozen=True)
class Policy:
    """The flow's content policy: what the linear check pipeline of transfer/policy.py reads.

    `types` None means any content type (the pipeline still applies name, size and archive
    rules); a site that wants an allow-list names the types it accepts.
    """

    min_size: int = 0
    max_size: int = DEFAULT_MAX_SIZE
    types: tuple[str, ...] | None = None
    max_name_bytes: int = MAX_NAME_BYTES
    archive: ArchiveRules = ArchiveRules()
    text: TextRules = TextRules()
    scanner: Scanner | None = None


@dataclass(frozen=True)
class Person:
    """A person and the one role their Ed25519 key proves (administrator, officer, auditor).

    Why keys and not names: a name on a command line proves nothing; a signature made with the
    private half of `key` does. `accounts` are the system accounts (outbox, SFTP) this person
    drops files through: a message dropped through one of them counts as submitted by them, so
    they cannot approve it.
    """

    name: str
    role: str
    key: Path
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Approval:
    """A flow's review rule: `required` distinct officers' approvals, from `officers` (names;
    empty means every security officer of this config), before `expires` seconds have passed
    since the message was collected; after that it goes to quarantine."""

    required: int = 0
    officers: tuple[str, ...] = ()
    expires: float = DEFAULT_REVIEW_EXPIRY


@dataclass(frozen=True)
class Hop:
    """A relay gateway on a flow's route and the link *into* it (the one it receives on).

    Why the link is named by its receiving end: every link of a relayed route then has exactly
    one owner that binds or reads it, and the flow's own `transport` stays what it always was,
    the link into the final receiver.
    """

    gateway: str
    transport: Transport


@dataclass(frozen=True)
class Flow:
    """One named one-way route; `source`/`destination` are the YAML's `from`/`to` zones.

    A flow with `via` is relayed: the sender seals for the final `receiver`, each `via` gateway
    forwards it store-and-forward and adds a signed hop record (docs/relay.md).
    """

    name: str
    source: str
    destination: str
    sender: str
    receiver: str
    transport: Transport
    policy: Policy
    resend_window: int
    #: seconds a sent envelope is kept in sent/ (for re-sends and inspection) before removal
    sent_retention: float = DEFAULT_SENT_RETENTION
    #: the review rule (two-person rule for `publish`); required=0 means no review
    approval: Approval = Approval()
    #: the receiver writes a signed manifest beside each delivered file (signed publication)
    signed_delivery: bool = False
    #: relay gateways between sender and receiver, in order (empty: a direct link)
    via: tuple[Hop, ...] = ()
    #: the sender seals runs of small messages into one container envelope (docs/batch.md)
    batch: bool = False

    @property
    def route(self) -> tuple[str, ...]:
        """Every gateway the message passes, originator first, final receiver last."""
        return (self.sender, *(hop.gateway for hop in self.via), self.receiver)

    def link_into(self, gateway: str) -> Flow:
        """The one-hop flow that `gateway` receives on: previous hop as sender, `gateway` as
        receiver, the link into it as transport. Transports only ever see a one-hop flow."""
        route = self.route
        index = route.index(gateway)
        if index == 0:
            raise ValueError(f"{gateway} originates flow {self.name}; it receives nothing on it")
        transports = (*(hop.transport for hop in self.via), self.transport)
        return replace(
            self, sender=route[index - 1], receiver=gateway, transport=transports[index - 1], via=()
        )

    def link_from(self, gateway: str) -> Flow:
        """The one-hop flow that `gateway` sends on (to the next gateway of the route)."""
        route = self.route
        index = route.index(gateway)
        if index == len(route) - 1:
            raise ValueError(f"{gateway} is the final receiver of flow {self.name}")
        return self.link_into(route[index + 1])


@dataclass(frozen=True)
class Metrics:
    """Where each agent serves its Prometheus metrics; None means that agent serves none."""

    ingest: Address | None = None
    sender: Address | None = None
    receiver: Address | None = None
    sftp: Address | None = None
    relay: Address | None = None


@dataclass(frozen=True)
class SftpAccount:
    """One sending system's SFTP account: its keys, the flows it may drop into, its limits."""

    name: str
    authorized_keys: tuple[str, ...]
    flows: tuple[str, ...]
    max_file_size: int = DEFAULT_MAX_SIZE
    max_in_flight: int = 4
    bytes_per_day: int = 10 * 1024**3


@dataclass(frozen=True)
class SftpServer:
    """The SFTP drop server of a gateway (the `sftp` agent): where it listens, its host key."""

    listen: Address
    host_key: Path
    accounts: tuple[SftpAccount, ...]
    login_timeout: float = 30.0
    max_connections: int = 64


@dataclass(frozen=True)
class Audit:
    """Audit log settings: checkpoints, rotation, retention, alerts and the second places."""

    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    rotate_size: int = DEFAULT_AUDIT_ROTATE_SIZE
    rotate_daily: bool = True
    retention: float = DEFAULT_AUDIT_RETENTION
    storage_warning: int = DEFAULT_AUDIT_STORAGE_WARNING
    #: a second checkpoint file an operator ships elsewhere (None: only the one beside the log)
    checkpoint_copy: Path | None = None
    syslog: bool = False
    #: unix datagram socket path, or HOST:PORT for UDP
    syslog_address: str = "/dev/log"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway needs to run, validated; all paths are absolute."""

    path: Path
    name: str
    zone: str
    node: str
    zones: tuple[Zone, ...]
    spool: Path
    audit_log: Path
    outbox: Path
    inbox: Path
    signing_key: Path
    encryption_key: Path
    peers: tuple[Peer, ...]
    metrics: Metrics
    flows: tuple[Flow, ...]
    #: people and their role keys (administrator, security-officer, auditor)
    people: tuple[Person, ...] = ()
    audit: Audit = Audit()
    #: Ed25519 key that signs audit checkpoints (keys.audit); None: checkpoints are not signed
    audit_key: Path | None = None
    sftp: SftpServer | None = None

    def flow(self, name: str) -> Flow:
        """The flow called `name`; KeyError if this config has none."""
        for flow in self.flows:
            if flow.name == name:
                return flow
        raise KeyError(name)

    def peer(self, name: str) -> Peer:
        """The peer gateway called `name`; KeyError if this config has none."""
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    def outgoing_flows(self) -> tuple[Flow, ...]:
        """Flows this gateway sends on (its sender agent serves these)."""
        return tuple(flow for flow in self.flows if flow.sender == self.name)

    def incoming_flows(self) -> tuple[Flow, ...]:
        """Flows this gateway receives on (its receiver agent serves these)."""
        return tuple(flow for flow in self.flows if flow.receiver == self.name)

    def relayed_flows(self) -> tuple[Flow, ...]:
        """Flows this gateway relays (its relay agent serves these)."""
        return tuple(
            flow for flow in self.flows if any(hop.gateway == self.name for hop in flow.via)
        )


#: Public key types an SFTP account may authenticate with (no DSA, no certificates).
SSH_KEY_TYPES: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_SSH_KEY_RE = re.compile(
    r"(?P<type>" + "|".join(map(re.escape, SSH_KEY_TYPES)) + r") (?P<blob>[A-Za-z0-9+/]+={0,2})"
    r"(?: [^\r\n]*)?"
)

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: int | float | str) -> float:
    """Seconds from an int/float or a string such as "90s", "15m", "24h", "7d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 3600, '15m', '24h' or '7d', got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 3600, '15m', '24h' or '7d', got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"64 MiB"``, ``"1.5 GB"``, ``"4096"``.

    Why strict: a size that is silently misread (``"10k"`` as 10 bytes, ``"1.5 B"`` rounded)
    becomes a policy hole, so anything not clearly a whole number of bytes is a ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"expected a size (bytes as an integer, or a string like '64 MiB'), "
            f"got {_describe(value)}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    units = ", ".join(SIZE_UNITS)
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"cannot read {value!r} as a size (expected a number of bytes, or a number and "
            f"one of: {units}; e.g. '64 MiB')"
        )
    number, unit = match.groups()
    unit = unit or "B"
    if unit not in SIZE_UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (expected one of: {units})")
    size = Fraction(number) * SIZE_UNITS[unit]
    if size.denominator != 1:
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(size)


def _describe(value: object) -> str:
    """How a YAML value's type reads in an error: 'a string', 'a list', 'null'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def _dotted(path: YamlPath) -> str:
    """``("flows", 1, "from")`` -> ``flows[1].from``; the empty path is ``(top)``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_HOSTPORT_RE = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})")


def _parse_hostport(text: str, min_port: int) -> Address:
    """Parse ``host:port`` / ``[v6]:port``; ValueError saying what was wrong."""
    match = _HOSTPORT_RE.fullmatch(text)
    if match is None:
        if text.count(":") > 1 and not text.startswith("["):
            raise ValueError("put an IPv6 address in brackets, e.g. [::1]:9100")
        raise ValueError("expected HOST:PORT (e.g. 127.0.0.1:9100, or [::1]:9100 for IPv6)")
    port = int(match["port"])
    if not min_port <= port <= 65535:
        raise ValueError(f"port {port} is out of range (expected {min_port}..65535)")
    if match["v6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(match["v6"]))
        except ValueError:
            raise ValueError(f"{match['v6']!r} in brackets is not an IPv6 address") from None
        return Address(host, port)
    host = match["host"]
    if not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if all(label.isdigit() for label in host.split(".")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    return Address(host, port)


def _check_zmq_endpoint(endpoint: str) -> None:
    """A zmq flow endpoint: ``tcp://HOST:PORT`` — the receiver binds it, the sender connects."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"expected tcp://HOST:PORT for a zmq transport, got {endpoint!r}")
    try:
        _parse_hostport(endpoint.removeprefix("tcp://"), min_port=1)
    except ValueError as exc:
        raise ValueError(f"bad zmq endpoint {endpoint!r}: {exc}") from None


def _check_udp_endpoint(endpoint: str) -> None:
    """A udp flow endpoint: ``udp://HOST:PORT`` — the receiver binds it, the sender sends to it."""
    if not endpoint.startswith("udp://"):
        raise ValueError(f"expected udp://HOST:PORT for a udp transport, got {endpoint!r}")
    try:
        _parse_hostport(endpoint.removeprefix("udp://"), min_port=1)
    except ValueError as exc:
        raise ValueError(f"bad udp endpoint {endpoint!r}: {exc}") from None


def _check_ferry_endpoint(endpoint: str) -> None:
    """A ferry flow endpoint: the directory both sides see (absolute, or relative to the file)."""
    if not endpoint or "\0" in endpoint or "://" in endpoint:
        raise ValueError(f"expected a directory path for a ferry transport, got {endpoint!r}")


_SFTP_RE = re.compile(r"sftp://(?P<user>[a-z_][a-z0-9_-]{0,31})@(?P<hostport>[^/]+)(?P<path>/.*)")


def _check_sftp_endpoint(endpoint: str) -> None:
    """An sftp flow endpoint: ``sftp://USER@HOST:PORT/DIR`` (sender) — the drop point."""
    match = _SFTP_RE.fullmatch(endpoint)
    if match is None:
        raise ValueError(
            f"expected sftp://USER@HOST:PORT/DIR for an sftp transport, got {endpoint!r}"
        )
    try:
        _parse_hostport(match["hostport"], min_port=1)
    except ValueError as exc:
        raise ValueError(f"bad sftp endpoint {endpoint!r}: {exc}") from None


#: Endpoint check for each transport kind; a kind in TRANSPORT_KINDS must have one.
_ENDPOINT_CHECKS: Mapping[str, Callable[[str], None]] = {
    "zmq": _check_zmq_endpoint,
    "udp": _check_udp_endpoint,
    "ferry": _check_ferry_endpoint,
    "sftp": _check_sftp_endpoint,
}
#: Optional transport settings each kind accepts (besides kind and endpoint).
TRANSPORT_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "zmq": ("curve_key", "peer_curve_key"),
    "udp": ("bandwidth", "redundancy", "repeats", "heartbeat", "packet_size"),
    "ferry": (),
    # drop_dir: on the receiving side, the directory the SFTP server writes into (read as a ferry)
    "sftp": ("identity", "known_hosts", "drop_dir"),
}


class _Reader:
    """Validating reads of the safe_load'ed document, each error pointed at its line."""

    def __init__(self, file: str, base: Path, positions: Positions) -> None:
        self.file = file
        self.base = base
        self.positions = positions

    # -- errors --------------------------------------------------------------------------------

    def at_value(self, path: YamlPath, message: str) -> ConfigError:
        """An error about the value at `path` (its line)."""
        return ConfigError(self.file, self.positions.value_line(path), _dotted(path), message)

    def at_key(self, path: YamlPath, message: str) -> ConfigError:
        """An error about the key at `path` itself (the key's line)."""
        return ConfigError(self.file, self.positions.key_line(path), _dotted(path), message)

    # -- shapes --------------------------------------------------------------------------------

    def mapping(
        self,
        value: object,
        path: YamlPath,
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Check `value` is a mapping with exactly the allowed keys and all required ones."""
        if not isinstance(value, dict):
            raise self.at_value(path, f"expected a mapping, got {_describe(value)}")
        allowed = required + optional
        for key in value:
            if key not in allowed:
                shown = key if isinstance(key, str) else str(key)
                raise self.at_key(
                    (*path, shown),
                    f"unknown key {shown!r} (expected one of: {', '.join(allowed)})",
                )
        for key in required:
            if key not in value:
                # The key is absent, so point at the mapping that should have held it.
                line = self.positions.key_line(path)
                raise ConfigError(
                    self.file, line, _dotted((*path, key)), f"missing required key {key!r}"
                )
        return value

    def fields(
        self, value: dict[str, Any], path: YamlPath, readers: Mapping[str, Callable[..., Any]]
    ) -> dict[str, Any]:
        """Read each present key with its reader, in document order (so errors are too)."""
        return {key: readers[key](item, (*path, key)) for key, item in value.items()}

    def sequence(self, value: object, path: YamlPath) -> list[Any]:
        if not isinstance(value, list):
            raise self.at_value(path, f"expected a list, got {_describe(value)}")
        return value

    def string(self, value: object, path: YamlPath) -> str:
        if not isinstance(value, str):
            raise self.at_value(path, f"expected a string, got {_describe(value)}")
        return value

    def boolean(self, value: object, path: YamlPath) -> bool:
        if not isinstance(value, bool):
            raise self.at_value(path, f"expected true or false, got {_describe(value)}")
        return value

    def integer(self, value: object, path: YamlPath) -> int:
        # bool is an int in Python; `version: yes` must not read as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.at_value(path, f"expected an integer, got {_describe(value)}")
        return value

    def name(self, value: object, path: YamlPath) -> str:
        text = self.string(value, path)
        if not NAME_PATTERN.fullmatch(text):
            raise self.at_value(
                path,
                f"invalid name {text!r} (expected 1-63 characters of a-z, 0-9 and '-', "
                f"starting with a letter or digit)",
            )
        return text

    def choice(self, value: object, path: YamlPath, what: str, options: tuple[str, ...]) -> str:
        text = self.string(value, path)
        if text not in options:
            raise self.at_value(
                path, f"unknown {what} {text!r} (expected one of: {', '.join(options)})"
            )
        return text

    def size(self, value: object, path: YamlPath) -> int:
        try:
            return parse_size(value)  # type: ignore[arg-type]  # parse_size checks the type
        except ValueError as exc:
            raise self.at_value(path, str(exc)) from None

    def duration(self, value: object, path: YamlPath) -> float:
        try:
            return parse_duration(value)  # type: ignore[arg-type]
        except ValueError as exc:
            raise self.at_value(path, str(exc)) from None

    def path(self, value: object, path: YamlPath) -> Path:
        """A filesystem path; relative ones resolve against the config file's directory."""
        text = self.string(value, path)
        if not text or "\0" in text:
            raise self.at_value(path, "expected a non-empty file system path")
        return self.base / text

    def key_file(self, value: object, path: YamlPath, private: bool) -> Path:
        """A key file that exists; a private one must be readable by its owner only."""
        file = self.path(value, path)
        try:
            info = file.stat()
        except FileNotFoundError:
            raise self.at_value(path, f"key file {file} does not exist") from None
        except OSError as exc:
            raise self.at_value(path, f"cannot stat key file {file}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise self.at_value(path, f"key file {file} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise self.at_value(path, f"permissions {mode:04o} are too open; chmod 600 {file}")
        return file

    def address(self, value: object, path: YamlPath) -> Address:
        text = self.string(value, path)
        try:
            return _parse_hostport(text, min_port=0)
        except ValueError as exc:
            raise self.at_value(path, f"bad address {text!r}: {exc}") from None

    def unique(self, items: list[dict[str, Any]], path: YamlPath, what: str) -> None:
        """Refuse two items of a list with one name; report the second, citing the first."""
        first: dict[str, int] = {}
        for index, item in enumerate(items):
            name = item["name"]
            name_path = (*path, index, "name")
            if name in first:
                raise self.at_value(
                    name_path,
                    f"duplicate {what} name {name!r} (first at line {first[name]})",
                )
            first[name] = self.positions.value_line(name_path) or 0

    # -- sections ------------------------------------------------------------------------------

    def version(self, value: object, path: YamlPath) -> int:
        number = self.integer(value, path)
        if number != 1:
            raise self.at_value(path, f"unsupported version {number} (expected 1)")
        return number

    def gateway(self, value: object, path: YamlPath) -> dict[str, Any]:
        raw = self.mapping(value, path, ("name", "zone"), ("node",))
        return {"node": "local"} | self.fields(
            raw, path, {"name": self.name, "zone": self.name, "node": self.name}
        )

    def zones(self, value: object, path: YamlPath) -> tuple[Zone, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.at_value(path, "expected at least one zone, got an empty list")
        parsed = []
        for index, item in enumerate(items):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "level"))
            parsed.append(
                self.fields(
                    raw,
                    item_path,
                    {
                        "name": self.name,
                        "level": lambda v, p: self.choice(v, p, "level", LEVELS),
                    },
                )
            )
        self.unique(parsed, path, "zone")
        return tuple(Zone(**zone) for zone in parsed)

    def paths(self, value: object, path: YamlPath) -> dict[str, Path]:
        raw = self.mapping(value, path, ("spool", "audit_log"), ("outbox", "inbox"))
        defaults = {"outbox": self.base / "outbox", "inbox": self.base / "inbox"}
        return defaults | self.fields(raw, path, dict.fromkeys(raw, self.path))

    def keys(self, value: object, path: YamlPath) -> dict[str, Path]:
        raw = self.mapping(value, path, ("signing", "encryption"), ("audit",))
        return self.fields(
            raw, path, dict.fromkeys(raw, lambda v, p: self.key_file(v, p, private=True))
        )

    def peers(self, value: object, path: YamlPath) -> tuple[Peer, ...]:
        parsed = []
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "zone", "signing_key", "encryption_key"))
            public = lambda v, p: self.key_file(v, p, private=False)  # noqa: E731
            parsed.append(
                self.fields(
                    raw,
                    item_path,
                    {
                        "name": self.name,
                        "zone": self.name,
                        "signing_key": public,
                        "encryption_key": public,
                    },
                )
            )
        self.unique(parsed, path, "peer")
        return tuple(Peer(**peer) for peer in parsed)

    def audit(self, value: object, path: YamlPath) -> Audit:
        keys = (
            "checkpoint_interval", "rotate_size", "rotate_daily", "retention",
            "storage_warning", "checkpoint_copy", "syslog", "syslog_address",
        )  # fmt: skip
        raw = self.mapping(value, path, (), keys)

        def positive_duration(v: object, p: YamlPath) -> float:
            seconds = self.duration(v, p)
            if seconds <= 0:
                raise self.at_value(p, "must be longer than 0 seconds")
            return seconds

        def rotate_size(v: object, p: YamlPath) -> int:
            size = self.size(v, p)
            if size < MIN_AUDIT_ROTATE_SIZE:
                raise self.at_value(
                    p, f"rotate_size {size} is too small (at least {MIN_AUDIT_ROTATE_SIZE} bytes)"
                )
            return size

        def syslog_address(v: object, p: YamlPath) -> str:
            text = self.string(v, p)
            if text.startswith("/"):
                return text
            try:
                _parse_hostport(text, min_port=1)
            except ValueError as exc:
                raise self.at_value(
                    p, f"expected a unix socket path (/dev/log) or HOST:PORT for UDP: {exc}"
                ) from None
            return text

        read = self.fields(
            raw,
            path,
            {
                "checkpoint_interval": positive_duration,
                "rotate_size": rotate_size,
                "rotate_daily": self.boolean,
                "retention": positive_duration,
                "storage_warning": self.size,
                "checkpoint_copy": self.path,
                "syslog": self.boolean,
                "syslog_address": syslog_address,
            },
        )
        return Audit(**read)

    def metrics(self, value: object, path: YamlPath) -> Metrics:
        raw = self.mapping(value, path, (), ("ingest", "sender", "receiver", "sftp", "relay"))
        return Metrics(**self.fields(raw, path, dict.fromkeys(raw, self.address)))

    def fraction(self, value: object, path: YamlPath, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.at_value(path, f"expected a number, got {_describe(value)}")
        if not low <= value <= high:
            raise self.at_value(path, f"{value} is out of range (expected {low}..{high})")
        return float(value)

    def transport(self, value: object, path: YamlPath) -> Transport:
        every = tuple(dict.fromkeys(o for opts in TRANSPORT_OPTIONS.values() for o in opts))
        raw = self.mapping(value, path, ("kind", "endpoint"), every)
        kinds = tuple(sorted(TRANSPORT_KINDS))
        public = lambda v, p: self.key_file(v, p, private=False)  # noqa: E731
        private = lambda v, p: self.key_file(v, p, private=True)  # noqa: E731
        read = self.fields(
            raw,
            path,
            {
                "kind": lambda v, p: self.choice(v, p, "transport kind", kinds),
                "endpoint": self.string,
                "bandwidth": self.size,
                "redundancy": lambda v, p: self.fraction(v, p, 0.0, 4.0),
                "repeats": lambda v, p: self.bounded(v, p, 1, 16),
                "heartbeat": self.duration,
                "packet_size": lambda v, p: self.bounded(v, p, 256, 65000),
                "curve_key": private,
                "peer_curve_key": public,
                "identity": private,
                "known_hosts": public,
                "drop_dir": self.path,
            },
        )
        kind = read["kind"]
        for key in raw:
            if key not in ("kind", "endpoint", *TRANSPORT_OPTIONS[kind]):
                allowed = ", ".join(TRANSPORT_OPTIONS[kind]) or "none"
                raise self.at_key(
                    (*path, key), f"{key!r} is not a setting of a {kind} transport ({allowed})"
                )
        try:
            _ENDPOINT_CHECKS[kind](read["endpoint"])
        except ValueError as exc:
            raise self.at_value((*path, "endpoint"), str(exc)) from None
        if ("curve_key" in read) != ("peer_curve_key" in read):
            raise self.at_key(path, "curve_key and peer_curve_key go together (both or neither)")
        if kind == "udp" and "heartbeat" in read and not 0.05 <= read["heartbeat"] <= 3600:
            raise self.at_value((*path, "heartbeat"), "expected 0.05s..1h between heartbeats")
        if kind == "ferry":
            read["endpoint"] = str(self.base / read["endpoint"])
        return Transport(**read)

    def bounded(self, value: object, path: YamlPath, low: int, high: int | None = None) -> int:
        number = self.integer(value, path)
        if number < low or (high is not None and number > high):
            upper = "" if high is None else f"..{high}"
            raise self.at_value(path, f"{number} is out of range (expected {low}{upper})")
        return number

    def strings(self, value: object, path: YamlPath, what: str) -> tuple[str, ...]:
        """A list of non-empty strings (keywords, argv, flow names...)."""
        items = self.sequence(value, path)
        for index, item in enumerate(items):
            if not self.string(item, (*path, index)) or "\0" in item:
                raise self.at_value((*path, index), f"expected a non-empty {what}")
        return tuple(items)

    def content_types(self, value: object, path: YamlPath) -> tuple[str, ...]:
        items = self.sequence(value, path)
        if not items:
            raise self.at_value(path, "expected at least one type (omit `types` to allow any)")
        for index, item in enumerate(items):
            self.choice(item, (*path, index), "content type", CONTENT_TYPES)
        return tuple(items)

    def names_rules(self, value: object, path: YamlPath) -> int:
        raw = self.mapping(value, path, (), ("max_bytes",))
        if "max_bytes" not in raw:
            return MAX_NAME_BYTES
        return self.bounded(raw["max_bytes"], (*path, "max_bytes"), 1, MAX_NAME_BYTES)

    def archive_rules(self, value: object, path: YamlPath) -> ArchiveRules:
        raw = self.mapping(
            value, path, (), ("max_entries", "max_expanded_size", "max_ratio", "max_depth")
        )
        return ArchiveRules(
            **self.fields(
                raw,
                path,
                {
                    "max_entries": lambda v, p: self.bounded(v, p, 1),
                    "max_expanded_size": self.size,
                    "max_ratio": lambda v, p: self.bounded(v, p, 1),
                    "max_depth": lambda v, p: self.bounded(v, p, 1, 16),
                },
            )
        )

    def text_rules(self, value: object, path: YamlPath) -> TextRules:
        raw = self.mapping(value, path, (), ("markings", "keywords", "max_extracted"))
        return TextRules(
            **self.fields(
                raw,
                path,
                {
                    "markings": self.boolean,
                    "keywords": lambda v, p: self.strings(v, p, "keyword"),
                    "max_extracted": self.size,
                },
            )
        )

    def scanner(self, value: object, path: YamlPath) -> Scanner:
        raw = self.mapping(value, path, ("command",), ("input", "timeout"))
        read = self.fields(
            raw,
            path,
            {
                "command": lambda v, p: self.strings(v, p, "argument"),
                "input": lambda v, p: self.choice(v, p, "scanner input", ("stdin", "path")),
                "timeout": self.duration,
            },
        )
        if not read["command"]:
            raise self.at_value((*path, "command"), "expected the scanner's argv, got []")
        if read.get("timeout", 1.0) <= 0:
            raise self.at_value((*path, "timeout"), "a scanner needs a time limit above 0")
        has_placeholder = any("{path}" in arg for arg in read["command"])
        if read.get("input") == "path" and not has_placeholder:
            raise self.at_value(
                (*path, "command"), "input: path needs a '{path}' argument in the command"
            )
        return Scanner(**read)

    def policy(self, value: object, path: YamlPath) -> Policy:
        raw = self.mapping(
            value,
            path,
            (),
            ("min_size", "max_size", "types", "names", "archive", "text", "scanner"),
        )
        read = self.fields(
            raw,
            path,
            {
                "min_size": self.size,
                "max_size": self.size,
                "types": self.content_types,
                "names": self.names_rules,
                "archive": self.archive_rules,
                "text": self.text_rules,
                "scanner": self.scanner,
            },
        )
        if "names" in read:
            read["max_name_bytes"] = read.pop("names")
        policy = Policy(**read)
        if policy.max_size < policy.min_size:
            culprit = "max_size" if "max_size" in raw else "min_size"
            raise self.at_value(
                (*path, culprit),
                f"max_size ({policy.max_size}) is smaller than min_size ({policy.min_size})",
            )
        return policy

    def people(self, value: object, path: YamlPath) -> tuple[Person, ...]:
        """People and role keys. One role per person: a name or a key file listed twice (or
        two files with the same key) is an error, so no one can hold two roles."""
        parsed = []
        seen_keys: dict[bytes, int] = {}
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(item, item_path, ("name", "role", "key"), ("accounts",))
            read = {"accounts": ()} | self.fields(
                raw,
                item_path,
                {
                    "name": self.name,
                    "role": lambda v, p: self.choice(v, p, "role", ROLES),
                    "key": lambda v, p: self.key_file(v, p, private=False),
                    "accounts": lambda v, p: tuple(
                        self.string(a, (*p, i)) for i, a in enumerate(self.sequence(v, p))
                    ),
                },
            )
            key_path = (*item_path, "key")
            try:
                content = b"".join(read["key"].read_bytes().split())
            except OSError as exc:
                raise self.at_value(key_path, f"cannot read key file: {exc.strerror}") from None
            if content in seen_keys:
                raise self.at_value(
                    key_path,
                    f"this key is already listed for another person (line {seen_keys[content]}); "
                    f"a person holds exactly one role",
                )
            seen_keys[content] = self.positions.value_line(key_path) or 0
            parsed.append(read)
        self.unique(parsed, path, "person")
        return tuple(Person(**person) for person in parsed)

    def approval(self, value: object, path: YamlPath) -> Approval:
        raw = self.mapping(value, path, ("required",), ("officers", "expires"))

        def required(v: object, p: YamlPath) -> int:
            number = self.integer(v, p)
            if not 0 <= number <= MAX_APPROVALS:
                raise self.at_value(p, f"expected 0..{MAX_APPROVALS} approvals, got {number}")
            return number

        def officers(v: object, p: YamlPath) -> tuple[str, ...]:
            return tuple(self.name(n, (*p, i)) for i, n in enumerate(self.sequence(v, p)))

        def expires(v: object, p: YamlPath) -> float:
            seconds = self.duration(v, p)
            if seconds <= 0:
                raise self.at_value(p, "a review expiry must be longer than 0 seconds")
            return seconds

        read = self.fields(
            raw, path, {"required": required, "officers": officers, "expires": expires}
        )
        return Approval(**read)

    def ssh_public_key(self, value: object, path: YamlPath) -> str:
        """An OpenSSH public key line (`TYPE BASE64 [comment]`), checked for shape only."""
        text = self.string(value, path)
        match = _SSH_KEY_RE.fullmatch(text.strip())
        blob = b""
        if match:
            try:
                blob = base64.b64decode(match["blob"], validate=True)
            except (binascii.Error, ValueError):
                blob = b""
        name = match["type"].encode() if match else b""
        if not match or blob[4 : 4 + len(name)] != name or blob[:4] != len(name).to_bytes(4):
            raise self.at_value(
                path,
                "expected an OpenSSH public key line such as 'ssh-ed25519 AAAAC3Nza... "
                f"comment' (types: {', '.join(SSH_KEY_TYPES)})",
            )
        return f"{match['type']} {match['blob']}"

    def sftp_account(self, value: object, path: YamlPath) -> SftpAccount:
        raw = self.mapping(
            value,
            path,
            ("name", "authorized_keys", "flows"),
            ("max_file_size", "max_in_flight", "bytes_per_day"),
        )

        def keys(v: object, p: YamlPath) -> tuple[str, ...]:
            items = self.sequence(v, p)
            if not items:
                raise self.at_value(p, "expected at least one public key")
            return tuple(self.ssh_public_key(item, (*p, i)) for i, item in enumerate(items))

        def flows(v: object, p: YamlPath) -> tuple[str, ...]:
            items = self.sequence(v, p)
            if not items:
                raise self.at_value(p, "expected at least one flow this account may drop into")
            return tuple(self.name(item, (*p, i)) for i, item in enumerate(items))

        return SftpAccount(
            **self.fields(
                raw,
                path,
                {
                    "name": self.name,
                    "authorized_keys": keys,
                    "flows": flows,
                    "max_file_size": self.size,
                    "max_in_flight": lambda v, p: self.bounded(v, p, 1, 1024),
                    "bytes_per_day": self.size,
                },
            )
        )

    def sftp(self, value: object, path: YamlPath) -> SftpServer:
        raw = self.mapping(
            value,
            path,
            ("listen", "host_key", "accounts"),
            ("login_timeout", "max_connections"),
        )

        def accounts(v: object, p: YamlPath) -> tuple[SftpAccount, ...]:
            items = self.sequence(v, p)
            if not items:
                raise self.at_value(p, "expected at least one account")
            parsed = [self.sftp_account(item, (*p, i)) for i, item in enumerate(items)]
            self.unique([{"name": a.name} for a in parsed], p, "account")
            return tuple(parsed)

        read = self.fields(
            raw,
            path,
            {
                "listen": self.address,
                "host_key": lambda v, p: self.key_file(v, p, private=True),
                "accounts": accounts,
                "login_timeout": self.duration,
                "max_connections": lambda v, p: self.bounded(v, p, 1, 10_000),
            },
        )
        if read.get("login_timeout", 1.0) <= 0:
            raise self.at_value((*path, "login_timeout"), "a login timeout must be above 0")
        return SftpServer(**read)

    def via(self, value: object, path: YamlPath) -> tuple[Hop, ...]:
        """Relay hops: each a gateway and the link into it; at most 15 (the hop list's room)."""
        items = self.sequence(value, path)
        if len(items) > 15:
            raise self.at_value(path, f"{len(items)} relay hops; at most 15 are allowed")
        hops = []
        for index, item in enumerate(items):
            raw = self.mapping(item, (*path, index), ("gateway", "transport"))
            read = self.fields(
                raw, (*path, index), {"gateway": self.name, "transport": self.transport}
            )
            hops.append(Hop(**read))
        return tuple(hops)

    def flows(self, value: object, path: YamlPath) -> tuple[Flow, ...]:
        parsed = []
        readers = {
            "name": self.name,
            "from": self.name,
            "to": self.name,
            "sender": self.name,
            "receiver": self.name,
            "transport": self.transport,
            "policy": self.policy,
            "resend_window": self.size,
            "sent_retention": self.duration,
            "approval": self.approval,
            "signed_delivery": self.boolean,
            "via": self.via,
            "batch": self.boolean,
        }
        for index, item in enumerate(self.sequence(value, path)):
            item_path = (*path, index)
            raw = self.mapping(
                item,
                item_path,
                ("name", "from", "to", "sender", "receiver", "transport"),
                (
                    "policy",
                    "resend_window",
                    "sent_retention",
                    "approval",
                    "signed_delivery",
                    "via",
                    "batch",
                ),
            )
            defaults = {
                "policy": Policy(),
                "resend_window": DEFAULT_RESEND_WINDOW,
                "sent_retention": DEFAULT_SENT_RETENTION,
                "approval": Approval(),
                "signed_delivery": False,
                "via": (),
                "batch": False,
            }
            flow = defaults | self.fields(raw, item_path, readers)
            if flow["transport"].kind == "zmq" and flow["resend_window"] < ZMQ_IN_FLIGHT_BYTES:
                raise self.at_value(
                    (*item_path, "resend_window"),
                    f"resend_window {flow['resend_window']} bytes is less than the "
                    f"{ZMQ_IN_FLIGHT_BYTES // 1024**2} MiB a ZeroMQ link can hold in flight: "
                    "a message in flight when the link drops could then never be sent again; "
                    f"use at least {ZMQ_IN_FLIGHT_BYTES // 1024**2} MiB (or leave it out: "
                    f"{DEFAULT_RESEND_WINDOW // 1024**2} MiB)",
                )
            if flow["batch"] and flow["via"]:
                raise self.at_value(
                    (*item_path, "batch"),
                    "batch needs a direct flow: a relay cannot open a container sealed for the "
                    "final gateway to sign a hop record for each message in it; remove `batch` "
                    "or `via`",
                )
            parsed.append(flow)
        self.unique(parsed, path, "flow")
        return tuple(
            Flow(
                name=flow["name"],
                source=flow["from"],
                destination=flow["to"],
                sender=flow["sender"],
                receiver=flow["receiver"],
                transport=flow["transport"],
                policy=flow["policy"],
                resend_window=flow["resend_window"],
                sent_retention=flow["sent_retention"],
                approval=flow["approval"],
                signed_delivery=flow["signed_delivery"],
                via=flow["via"],
                batch=flow["batch"],
            )
            for flow in parsed
        )


_TOP_REQUIRED = ("version", "gateway", "zones", "paths", "keys", "flows")
_TOP_OPTIONAL = ("peers", "metrics", "people", "audit", "sftp")


def _cross_check(reader: _Reader, config: GatewayConfig) -> None:
    """Check the references between sections; raise the error earliest in the document.

    Why collect-then-pick: the sections refer to each other in any order (a flow may come before
    the zones it names), so checking them in a fixed order would not report the first line.
    A check that depends on another (the sender's zone against `from`) only runs when the one it
    depends on passed, so a single typo gives one error, not a cascade.
    """
    errors: list[ConfigError] = []
    zone_names = {zone.name for zone in config.zones}
    zone_list = ", ".join(zone.name for zone in config.zones)

    def known_zone(name: str, path: YamlPath) -> bool:
        if name in zone_names:
            return True
        errors.append(
            reader.at_value(path, f"unknown zone {name!r} (expected one of: {zone_list})")
        )
        return False

    known_zone(config.zone, ("gateway", "zone"))
    gateway_zones = {config.name: config.zone}
    for index, peer in enumerate(config.peers):
        if peer.name == config.name:
            errors.append(
                reader.at_value(
                    ("peers", index, "name"),
                    f"a peer cannot have this gateway's own name {peer.name!r}",
                )
            )
        else:
            gateway_zones.setdefault(peer.name, peer.zone)
        known_zone(peer.zone, ("peers", index, "zone"))

    peer_list = ", ".join(peer.name for peer in config.peers) or "(none)"
    for index, flow in enumerate(config.flows):
        flow_path: YamlPath = ("flows", index)
        source_ok = known_zone(flow.source, (*flow_path, "from"))
        destination_ok = known_zone(flow.destination, (*flow_path, "to"))
        if source_ok and destination_ok and flow.source == flow.destination:
            errors.append(
                reader.at_value((*flow_path, "to"), "a flow cannot go from a zone to itself")
            )
        for role, zone, zone_key, zone_ok in (
            ("sender", flow.source, "from", source_ok),
            ("receiver", flow.destination, "to", destination_ok),
        ):
            who = getattr(flow, role)
            role_path = (*flow_path, role)
            if who not in gateway_zones:
                errors.append(
                    reader.at_value(
                        role_path,
                        f"unknown gateway {who!r} (expected this gateway {config.name!r} "
                        f"or a peer: {peer_list})",
                    )
                )
            elif zone_ok and gateway_zones[who] != zone:
                errors.append(
                    reader.at_value(
                        role_path,
                        f"{role} {who!r} is in zone {gateway_zones[who]!r}, "
                        f"but {zone_key} is {zone!r}",
                    )
                )
        relays = [hop.gateway for hop in flow.via]
        for position, relay in enumerate(relays):
            relay_path = (*flow_path, "via", position, "gateway")
            if relay not in gateway_zones:
                errors.append(
                    reader.at_value(
                        relay_path,
                        f"unknown relay gateway {relay!r} (expected this gateway "
                        f"{config.name!r} or a peer: {peer_list})",
                    )
                )
            elif relay in (flow.sender, flow.receiver) or relay in relays[:position]:
                errors.append(
                    reader.at_value(
                        relay_path,
                        f"relay {relay!r} is already on the route of flow {flow.name!r} "
                        f"(a route visits each gateway once)",
                    )
                )
        # Only when both are known: an unknown sender is usually a typo of this gateway's name.
        known = flow.sender in gateway_zones and flow.receiver in gateway_zones
        if known and config.name not in (flow.sender, flow.receiver, *relays):
            errors.append(
                reader.at_key(
                    flow_path,
                    f"this gateway ({config.name}) is neither sender nor receiver"
                    f"{' nor relay' if relays else ''} of flow {flow.name!r}",
                )
            )
    _check_approvals(reader, config, errors)
    if config.sftp is not None:
        outgoing = [flow.name for flow in config.outgoing_flows()]
        for index, account in enumerate(config.sftp.accounts):
            for position, flow_name in enumerate(account.flows):
                if flow_name not in outgoing:
                    errors.append(
                        reader.at_value(
                            ("sftp", "accounts", index, "flows", position),
                            f"flow {flow_name!r} is not sent by this gateway (accounts may "
                            f"drop into: {', '.join(outgoing) or 'none'})",
                        )
                    )
    if errors:
        # min() keeps the first of equal lines, i.e. the logical order within a line.
        raise min(errors, key=lambda e: e.line if e.line is not None else float("inf"))


def _check_approvals(reader: _Reader, config: GatewayConfig, errors: list[ConfigError]) -> None:
    """Each flow's officers are security officers listed under `people`, enough of them.

    Why at load time: a flow that needs two approvals but names one officer (or an auditor) could
    never release anything, and that should stop the gateway at start-up, not a release at 2 a.m.
    """
    roles = {person.name: person.role for person in config.people}
    officers = tuple(name for name, role in roles.items() if role == "security-officer")
    for index, flow in enumerate(config.flows):
        rule = flow.approval
        if rule.required == 0:
            continue
        path: YamlPath = ("flows", index, "approval")
        for i, name in enumerate(rule.officers):
            if name not in roles:
                errors.append(
                    reader.at_value(
                        (*path, "officers", i),
                        f"unknown person {name!r} (expected one of the security officers "
                        f"under people: {', '.join(officers) or '(none)'})",
                    )
                )
            elif roles[name] != "security-officer":
                errors.append(
                    reader.at_value(
                        (*path, "officers", i),
                        f"{name!r} is {roles[name]}, not security-officer; only officers approve",
                    )
                )
        eligible = set(rule.officers or officers)
        if len(eligible) < rule.required:
            errors.append(
                reader.at_value(
                    (*path, "required"),
                    f"{rule.required} approvals needed but only {len(eligible)} security "
                    f"officer(s) may give them",
                )
            )


def read_yaml_document(file: str, path: Path, expected: Iterable[str]) -> tuple[Any, Positions]:
    """Read a YAML file into (safe_load'ed document, positions), or raise a ConfigError.

    Shared by every loader of ours (gateway configs, the topology), so a file that cannot be
    read, is not UTF-8, is not YAML, repeats a key or is empty gets the same message everywhere.
    `expected` names the top-level keys, for the empty-file message.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(file, None, "(top)", f"cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file, None, "(top)", f"the file is not UTF-8 text (byte {exc.start})"
        ) from None
    try:
        positions = compose_positions(text)
        document = yaml.safe_load(text) if positions.root_line is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(
            file, mark.line + 1 if mark else None, "(top)", f"invalid YAML: {detail}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, "(top)", f"invalid YAML: {exc}") from None
    if positions.duplicates:
        dup = positions.duplicates[0]
        raise ConfigError(
            file,
            dup.line,
            _dotted(dup.path),
            f"duplicate key {dup.path[-1]!r} (first at line {dup.first_line}); "
            f"YAML would silently keep only the last one",
        )
    if document is None:
        raise ConfigError(
            file,
            None,
            "(top)",
            f"the file is empty (expected a mapping with keys: {', '.join(expected)})",
        )
    return document, positions


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read, validate and return one gateway's config; raise ConfigError on the first problem."""
    file = str(path)
    config_path = Path(path).absolute()
    document, positions = read_yaml_document(file, config_path, _TOP_REQUIRED)
    reader = _Reader(file, config_path.parent, positions)
    raw = reader.mapping(document, (), _TOP_REQUIRED, _TOP_OPTIONAL)
    sections = {
        "people": (),
        "peers": (),
        "metrics": Metrics(),
        "audit": Audit(),
    } | reader.fields(
        raw,
        (),
        {
            "version": reader.version,
            "gateway": reader.gateway,
            "zones": reader.zones,
            "paths": reader.paths,
            "keys": reader.keys,
            "peers": reader.peers,
            "metrics": reader.metrics,
            "flows": reader.flows,
            "people": reader.people,
            "audit": reader.audit,
            "sftp": reader.sftp,
        },
    )
    gateway, paths, keys = sections["gateway"], sections["paths"], sections["keys"]
    config = GatewayConfig(
        path=config_path,
        name=gateway["name"],
        zone=gateway["zone"],
        node=gateway["node"],
        zones=sections["zones"],
        spool=paths["spool"],
        audit_log=paths["audit_log"],
        outbox=paths["outbox"],
        inbox=paths["inbox"],
        signing_key=keys["signing"],
        encryption_key=keys["encryption"],
        peers=sections["peers"],
        metrics=sections["metrics"],
        flows=sections["flows"],
        people=sections["people"],
        audit=sections["audit"],
        audit_key=keys.get("audit"),
        sftp=sections.get("sftp"),
    )
    _cross_check(reader, config)
    return config
