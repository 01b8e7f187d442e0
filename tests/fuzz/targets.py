"""Fuzz targets: each takes arbitrary bytes and may only refuse them cleanly.

A target raises nothing for input it refuses with the parser's own error; any other exception,
or a hang, is a bug. The same targets run under atheris (coverage-guided, tests/fuzz/run.py)
and under hypothesis (tests/test_fuzz.py), so a crash found by one replays in the other.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from zonegate.audit.record import GENESIS_HASH
from zonegate.transfer import envelope as env
from zonegate.transfer.linkframe import Reassembler
from zonegate.transfer.udp_decode import Decoder
from zonegate.transfer.udp_encode import EncodeParams, encode_message
from zonegate.transfer.udp_packet import heartbeat_datagram
from zonegate.zones.config import ConfigError, load_gateway_config
from zonegate.zones.topology import load_topology

# The package re-exports the function `verify`; the module is what the targets need.
audit_verify = importlib.import_module("zonegate.audit.verify")

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "envelope"
_vector = json.loads((VECTORS / "03-multi-chunk.json").read_text())
_RECIPIENT = X25519PrivateKey.from_private_bytes(bytes.fromhex(_vector["recipient_private"]))
_SENDER = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(_vector["sender_signing_private"]))
_SENDER_PUB = _SENDER.public_key()


def envelope_target(data: bytes) -> None:
    """The receiver's path: structure, then signature and decryption; only EnvelopeError."""
    try:
        env.read_header(io.BytesIO(data))
        env.open_envelope(io.BytesIO(data), io.BytesIO(), _RECIPIENT, lambda s, k: _SENDER_PUB)
    except env.EnvelopeError:
        pass


def header_target(data: bytes) -> None:
    with contextlib.suppress(env.EnvelopeError):
        env.Header.from_bytes(data)


_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="zg-fuzz-config-"))


def config_target(data: bytes) -> None:
    """Any bytes as a gateway config file: a ConfigError naming the file, never a crash."""
    path = _CONFIG_DIR / "gateway.yaml"
    path.write_bytes(data)
    try:
        load_gateway_config(path)
    except ConfigError as e:
        assert e.file == str(path)


def topology_target(data: bytes) -> None:
    """Any bytes as a topology file: a TopologyError (a ConfigError) naming the file."""
    path = _CONFIG_DIR / "topology.yaml"
    path.write_bytes(data)
    try:
        load_topology(path)
    except ConfigError as e:
        assert e.file == str(path)


def fec_target(data: bytes) -> None:
    """Datagrams off the one-way UDP link (split at a 4-byte marker) into the FEC block decoder:
    only its own events, never an exception, whatever arrives. Fed one by one and as one batch
    (as the receiver's drain hands them over): both ways must give the same events."""
    grams = data.split(_DATAGRAM_SEP)[:256]
    one = Decoder("import", "internet-gw", 1 << 22, heartbeat=1.0)
    singly = [_plain(e) for g in grams for e in one.feed(g, 1.0)]
    one.tick(11.0)
    batch = Decoder("import", "internet-gw", 1 << 22, heartbeat=1.0)
    buf = bytearray(b"".join(grams))
    ends = list(itertools.accumulate(len(g) for g in grams))
    together = [_plain(e) for e in batch.feed_batch(buf, ends, 1.0)]
    assert singly == together, "a batch decoded differently from its datagrams one by one"


def _plain(event: object) -> object:
    """An event with its block bytes copied (a BlockDone's data may be a view)."""
    data = getattr(event, "data", None)
    return (type(event).__name__, bytes(data), event.offset) if data is not None else event  # type: ignore[attr-defined]


_DATAGRAM_SEP = b"\xf0\x9f\x92\xa5"


def _fec_seed(lost: int = 0) -> bytes:
    """A real encoded message and its closing heartbeat; `lost`: every lost-th datagram left
    out, so the decoder needs its codec (a seed that reaches the repair path)."""
    payload = bytes(range(256)) * 40
    params = EncodeParams(symbol=512, redundancy=0.25, rounds=1, block_size=4096)
    grams = list(
        encode_message(
            io.BytesIO(payload), len(payload), "0" * 31 + "1", b"s" * 8, 1, False, params
        )
    )
    if lost:
        grams = [g for i, g in enumerate(grams) if i % lost]
    beat = heartbeat_datagram(b"s" * 8, 1, "import", "internet-gw", 1, 1000, [(1, "0" * 31 + "1")])
    return _DATAGRAM_SEP.join([*grams, beat])


def audit_line_target(data: bytes) -> None:
    """One audit log line, checked as verify checks it: a verdict, never an exception."""
    problem, _digest = audit_verify.check_line(data, 1, GENESIS_HASH)
    assert problem is None or isinstance(problem, str)


_AUDIT_DIR = Path(tempfile.mkdtemp(prefix="zg-fuzz-audit-"))


def audit_file_target(data: bytes) -> None:
    path = _AUDIT_DIR / "audit.jsonl"
    path.write_bytes(data)
    result = audit_verify.verify(path)
    assert result.ok or result.problem


def linkframe_target(data: bytes) -> None:
    """Frames off the link, split at 0xff bytes into parts and at 0xfe into messages."""
    reasm = Reassembler("import", "internet-gw", 1 << 20)
    for message in data.split(b"\xfe")[:64]:
        reasm.feed(message.split(b"\xff")[:8])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": envelope_target,
    "header": header_target,
    "config": config_target,
    "topology": topology_target,
    "audit_line": audit_line_target,
    "audit_file": audit_file_target,
    "linkframe": linkframe_target,
    "fec": fec_target,
}


def seed_corpus(target: str) -> list[bytes]:
    """Valid inputs the fuzzers start from (mutating valid input reaches deep code fast)."""
    here = Path(__file__).resolve().parent
    seeds: list[bytes] = []
    if target in ("envelope",):
        for f in sorted(VECTORS.glob("*.json")):
            seeds.append(bytes.fromhex(json.loads(f.read_text())["envelope"]))
    if target == "header":
        for f in sorted(VECTORS.glob("*.json")):
            seeds.append(json.loads(f.read_text())["header"].encode())
    if target == "fec":
        seeds += [_fec_seed(), _fec_seed(lost=5)]
    if target == "config":
        seeds.append((here.parent.parent / "configs" / "example-gateway.yaml").read_bytes())
    if target == "topology":
        seeds.append((here.parent.parent / "configs" / "topology.yaml").read_bytes())
    corpus = here / "corpus" / target
    if corpus.is_dir():
        seeds += [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    return seeds or [b""]


def cleanup() -> None:
    for d in (_CONFIG_DIR, _AUDIT_DIR):
        for p in d.iterdir():
            os.unlink(p)
        os.rmdir(d)
