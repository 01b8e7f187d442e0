"""Tests for transfer/envelope.py: vectors, round trips, tampering, schema, memory.

Several tests build envelopes with ``_raw_envelope``, an independent re-implementation of the
byte layout written from docs/envelope.md. It lets a test produce a *correctly signed* envelope
that is wrong in exactly one way (a schema violation, swapped chunks, another content key), so
the check under test is the only one that can refuse it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zonegate.transfer.envelope import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    REASONS,
    EnvelopeError,
    Header,
    envelope_length,
    key_id,
    max_envelope_length,
    open_envelope,
    read_header,
    seal,
    seal_deterministic,
    unwrap_content_key,
    verify_envelope,
    wrap_content_key,
)

ROOT = Path(__file__).resolve().parent.parent
VECTOR_DIR = ROOT / "tests" / "vectors" / "envelope"
VECTORS = sorted(VECTOR_DIR.glob("*.json"))
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
CHUNK = 4096

SENDER = Ed25519PrivateKey.generate()
RECIPIENT = X25519PrivateKey.generate()
OTHER_SENDER = Ed25519PrivateKey.generate()
OTHER_RECIPIENT = X25519PrivateKey.generate()


def lookup_for(*keys: Ed25519PrivateKey) -> Callable[[str, str], Ed25519PublicKey | None]:
    """A trusted-key table as a receiver would hold it: key id -> public key."""
    table = {key_id(k.public_key()): k.public_key() for k in keys}
    return lambda _sender, kid: table.get(kid)


TRUSTED = lookup_for(SENDER)


def make_header(data: bytes, **changes: Any) -> Header:
    fields: dict[str, Any] = {
        "version": 1,
        "message_id": os.urandom(16).hex(),
        "flow": "import",
        "sequence": 7,
        "sender": "internet-gw",
        "recipient": "internal-gw",
        "system": "mail-relay",
        "original_name": "report.pdf",
        "content_type": "application/pdf",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": "2026-11-25T09:41:56.123456Z",
        "chunk_size": CHUNK,
        "sender_key": key_id(SENDER.public_key()),
        "recipient_key": key_id(RECIPIENT.public_key()),
        "classification": "public",
    }
    fields.update(changes)
    return Header(**fields)


def sealed(data: bytes, **changes: Any) -> tuple[Header, bytes]:
    header = make_header(data, **changes)
    out = io.BytesIO()
    written = seal(io.BytesIO(data), out, header, RECIPIENT.public_key(), SENDER)
    assert written == len(out.getvalue()) == envelope_length(header)
    assert written <= max_envelope_length(len(data), header.chunk_size)
    return header, out.getvalue()


def open_bytes(
    blob: bytes,
    recipient: X25519PrivateKey = RECIPIENT,
    lookup: Callable[[str, str], Ed25519PublicKey | None] = TRUSTED,
) -> tuple[Header, bytes]:
    out = io.BytesIO()
    header = open_envelope(io.BytesIO(blob), out, recipient, lookup)
    return header, out.getvalue()


def refusal(blob: bytes, **kwargs: Any) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        open_bytes(blob, **kwargs)
    return info.value


# ----------------------------------------------------------------- independent implementation


def _nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + bytes([1 if last else 0])


def _raw_envelope(
    header_bytes: bytes,
    plaintext: bytes,
    chunk_size: int,
    *,
    content_key: bytes | None = None,
    wrapped: bytes | None = None,
    signing_key: Ed25519PrivateKey = SENDER,
    recipient_public: X25519PublicKey | None = None,
    chunk_order: Callable[[list[bytes]], list[bytes]] | None = None,
) -> bytes:
    """Build an envelope from the layout in docs/envelope.md, trusting nothing in the module."""
    hh = hashlib.sha256(header_bytes).digest()
    key = content_key if content_key is not None else os.urandom(32)
    if wrapped is None:
        pub = recipient_public or RECIPIENT.public_key()
        wrapped = SUITE.encrypt(key, pub, info=b"zonegate/envelope/v1/key" + hh)
    pieces = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]
    aead = AESGCM(key)
    chunks = [aead.encrypt(_nonce(i, i == len(pieces) - 1), p, hh) for i, p in enumerate(pieces)]
    if chunk_order is not None:
        chunks = chunk_order(chunks)
    body = b"".join(chunks)
    message = (
        b"zonegate/envelope/v1/sig"
        + hh
        + hashlib.sha256(wrapped).digest()
        + hashlib.sha256(body).digest()
    )
    return (
        MAGIC
        + struct.pack(">I", len(header_bytes))
        + header_bytes
        + struct.pack(">H", len(wrapped))
        + wrapped
        + body
        + signing_key.sign(message)
    )


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ----------------------------------------------------------------- vectors


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _vector_keys(vec: dict[str, Any]) -> tuple[Ed25519PrivateKey, X25519PrivateKey]:
    sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["sender_signing_private"]))
    rk = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["recipient_private"]))
    return sk, rk


def test_there_are_vectors_for_empty_one_byte_and_multi_chunk() -> None:
    sizes = {len(bytes.fromhex(_load(p)["plaintext"])) for p in VECTORS}
    assert {0, 1, 10000} <= sizes
    chunked = [_load(p) for p in VECTORS if len(bytes.fromhex(_load(p)["plaintext"])) == 10000]
    assert Header.from_bytes(chunked[0]["header"].encode()).chunk_size == 4096


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_reproduces_byte_for_byte(path: Path) -> None:
    vec = _load(path)
    sk, rk = _vector_keys(vec)
    header = Header.from_bytes(vec["header"].encode("utf-8"))
    assert header.to_bytes() == vec["header"].encode("utf-8")
    assert header.digest().hex() == vec["header_sha256"]
    assert header.sender_key == key_id(sk.public_key())
    assert header.recipient_key == key_id(rk.public_key())
    plaintext = bytes.fromhex(vec["plaintext"])
    out = io.BytesIO()
    n = seal_deterministic(
        io.BytesIO(plaintext),
        out,
        header,
        bytes.fromhex(vec["content_key"]),
        bytes.fromhex(vec["wrapped_key"]),
        sk,
    )
    assert out.getvalue().hex() == vec["envelope"]
    assert n == len(out.getvalue()) == envelope_length(header)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_opens_and_unwraps(path: Path) -> None:
    vec = _load(path)
    sk, rk = _vector_keys(vec)
    blob = bytes.fromhex(vec["envelope"])
    header, plaintext = open_bytes(blob, recipient=rk, lookup=lookup_for(sk))
    assert plaintext.hex() == vec["plaintext"]
    assert header.to_bytes().decode("utf-8") == vec["header"]
    hh = bytes.fromhex(vec["header_sha256"])
    wrapped = bytes.fromhex(vec["wrapped_key"])
    # Straight through the HPKE suite, with the info string from the docs.
    assert (
        SUITE.decrypt(wrapped, rk, info=b"zonegate/envelope/v1/key" + hh).hex()
        == (vec["content_key"])
    )
    assert unwrap_content_key(wrapped, header, rk).hex() == vec["content_key"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_matches_independent_implementation(path: Path) -> None:
    """The module and the docs-derived builder agree byte for byte (same key, same blob)."""
    vec = _load(path)
    sk, _ = _vector_keys(vec)
    header = Header.from_bytes(vec["header"].encode())
    blob = _raw_envelope(
        vec["header"].encode(),
        bytes.fromhex(vec["plaintext"]),
        header.chunk_size,
        content_key=bytes.fromhex(vec["content_key"]),
        wrapped=bytes.fromhex(vec["wrapped_key"]),
        signing_key=sk,
    )
    assert blob.hex() == vec["envelope"]


def _docs_vector() -> dict[str, str]:
    text = (ROOT / "docs" / "envelope.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```vector\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/envelope.md must hold exactly one ```vector block"
    fields: dict[str, str] = {}
    name = ""
    for line in blocks[0].splitlines():
        if line.startswith("  "):
            fields[name] += line.strip()
        elif line.strip():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def test_docs_vector_equals_first_vector_file() -> None:
    docs = _docs_vector()
    vec = _load(VECTORS[0])
    for name in (
        "sender_signing_private",
        "recipient_private",
        "content_key",
        "wrapped_key",
        "header",
        "header_sha256",
        "plaintext",
        "envelope",
    ):
        assert docs[name] == vec[name], name
    assert len(docs["envelope"]) > 1000


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 123, 6 * CHUNK])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    header, blob = sealed(data)
    assert blob.startswith(MAGIC)
    opened, plaintext = open_bytes(blob)
    assert opened == header
    assert plaintext == data


def test_round_trip_default_chunk_size_and_unicode_header() -> None:
    data = os.urandom(2 * DEFAULT_CHUNK_SIZE + 17)
    header, blob = sealed(
        data,
        chunk_size=DEFAULT_CHUNK_SIZE,
        original_name="案件材料 (终稿).docx",
        approvals=({"officer": "张三", "sig": "ab" * 64},),
        hops=({"node": "district-3"},),
    )
    opened, plaintext = open_bytes(blob)
    assert plaintext == data
    assert opened == header
    assert opened.approvals == ({"officer": "张三", "sig": "ab" * 64},)


def test_the_length_bound_holds_for_the_longest_header() -> None:
    """The sender decides from the bound alone that a message is small (no header built);
    a header filled to near its limit must still fit under it."""
    data = os.urandom(3 * CHUNK + 5)
    approvals = tuple({"officer": f"o{i}", "note": "x" * 3800} for i in range(16))
    header, blob = sealed(data, approvals=approvals)
    assert len(header.to_bytes()) > 60000
    assert len(blob) <= max_envelope_length(len(data), CHUNK)
    assert max_envelope_length(len(data), CHUNK) - len(blob) < 65536 - 60000 + 1


def test_two_seals_of_the_same_message_differ() -> None:
    data = b"same content"
    header = make_header(data)
    a, b = io.BytesIO(), io.BytesIO()
    seal(io.BytesIO(data), a, header, RECIPIENT.public_key(), SENDER)
    seal(io.BytesIO(data), b, header, RECIPIENT.public_key(), SENDER)
    assert a.getvalue() != b.getvalue()  # fresh content key and HPKE ephemeral each time


def test_envelope_can_start_at_an_offset_in_the_stream() -> None:
    data = os.urandom(3000)
    _, blob = sealed(data)
    src = io.BytesIO(b"prefix" + blob)
    src.seek(6)
    out = io.BytesIO()
    open_envelope(src, out, RECIPIENT, TRUSTED)
    assert out.getvalue() == data


def test_read_header_checks_structure_only() -> None:
    data = os.urandom(9000)
    header, blob = sealed(data)
    src = io.BytesIO(blob)
    parsed, length = read_header(src)
    assert parsed == header
    assert length == len(blob)
    assert src.tell() == 8 + 4 + len(header.to_bytes()) + 2


def test_verify_envelope_checks_signature_without_recipient_key() -> None:
    header, blob = sealed(os.urandom(5000))
    assert verify_envelope(io.BytesIO(blob), TRUSTED) == header
    bad = bytearray(blob)
    bad[-100] ^= 1
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(io.BytesIO(bytes(bad)), TRUSTED)
    assert info.value.reason == "bad-signature"
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(io.BytesIO(blob), lookup_for(OTHER_SENDER))
    assert info.value.reason == "unknown-sender"


# ----------------------------------------------------------------- tampering


def _regions(blob: bytes, header: Header) -> list[tuple[str, int, int]]:
    hlen = len(header.to_bytes())
    wrapped_at = 8 + 4 + hlen + 2
    body_at = wrapped_at + 80
    sig_at = len(blob) - 64
    ct = header.chunk_size + 16
    return [
        ("magic", 0, 8),
        ("hlen", 8, 12),
        ("header", 12, 12 + hlen),
        ("wlen", 12 + hlen, wrapped_at),
        ("wrapped", wrapped_at, body_at),
        ("first chunk", body_at, body_at + ct),
        ("middle chunk", body_at + ct, body_at + 2 * ct),
        ("last chunk", body_at + 2 * ct, sig_at),
        ("signature", sig_at, len(blob)),
    ]


EXPECTED_BY_REGION = {
    "magic": {"malformed"},
    "hlen": {"malformed"},
    # a flipped header byte may break the JSON/schema, change a length, name another key id,
    # or stay valid and then fail the signature
    "header": {"malformed", "wrong-recipient", "unknown-sender", "bad-signature"},
    "wlen": {"malformed"},
    "wrapped": {"bad-signature"},
    "first chunk": {"bad-signature"},
    "middle chunk": {"bad-signature"},
    "last chunk": {"bad-signature"},
    "signature": {"bad-signature"},
}


def test_every_single_byte_flip_is_refused() -> None:
    data = os.urandom(2 * CHUNK + 700)  # three chunks: first, middle, short last
    header, blob = sealed(data, approvals=({"a": 1},))
    regions = _regions(blob, header)
    assert regions[-1][2] == len(blob) and all(a < b for _, a, b in regions)
    seen: dict[str, set[str]] = {name: set() for name in EXPECTED_BY_REGION}
    for name, lo, hi in regions:
        for pos in range(lo, hi):
            for mask in (0x01, 0x80):
                bad = bytearray(blob)
                bad[pos] ^= mask
                try:
                    open_bytes(bytes(bad))
                except EnvelopeError as err:
                    assert err.reason in EXPECTED_BY_REGION[name], (name, pos, str(err))
                    seen[name].add(err.reason)
                else:
                    pytest.fail(f"flip at {pos} ({name}) was accepted")
    # the interesting header outcomes really happen (the test can tell them apart)
    assert seen["header"] == EXPECTED_BY_REGION["header"]


def test_byte_flips_in_small_envelope_never_escape_as_other_errors() -> None:
    vec = _load(VECTORS[0])
    sk, rk = _vector_keys(vec)
    blob = bytes.fromhex(vec["envelope"])
    secrets = [vec["content_key"], vec["recipient_private"], vec["sender_signing_private"]]
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with pytest.raises(EnvelopeError) as info:
            open_bytes(bytes(bad), recipient=rk, lookup=lookup_for(sk))
        assert info.value.reason in REASONS
        assert not any(s in str(info.value) for s in secrets)


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 11, 12, 100, -145, -81, -65, -64, -1])
def test_truncation_is_malformed(cut: int) -> None:
    _, blob = sealed(os.urandom(3 * CHUNK))
    err = refusal(blob[:cut])
    assert err.reason == "malformed"


def test_truncation_at_every_region_boundary_is_malformed() -> None:
    header, blob = sealed(os.urandom(2 * CHUNK + 1))
    for _, lo, _hi in _regions(blob, header):
        assert refusal(blob[:lo]).reason == "malformed"


def test_trailing_byte_is_malformed() -> None:
    _, blob = sealed(os.urandom(100))
    assert refusal(blob + b"\x00").reason == "malformed"
    assert "trailing" in refusal(blob + b"\x00").detail


def test_swapped_chunks_are_refused() -> None:
    data = os.urandom(3 * CHUNK)  # three equal-length chunks
    header, blob = sealed(data)
    body_at = 8 + 4 + len(header.to_bytes()) + 2 + 80
    ct = CHUNK + 16
    first, second = blob[body_at : body_at + ct], blob[body_at + ct : body_at + 2 * ct]
    swapped = blob[:body_at] + second + first + blob[body_at + 2 * ct :]
    assert len(swapped) == len(blob)
    assert refusal(swapped).reason == "bad-signature"


def test_swapped_chunks_refused_even_when_re_signed() -> None:
    """STREAM nonces: a sender-signed envelope with reordered chunks still fails to decrypt."""
    data = os.urandom(3 * CHUNK)
    header = make_header(data)
    blob = _raw_envelope(header.to_bytes(), data, CHUNK, chunk_order=lambda c: [c[1], c[0], c[2]])
    assert refusal(blob).reason == "decrypt-failed"


def test_last_chunk_flag_is_enforced_even_when_re_signed() -> None:
    data = os.urandom(2 * CHUNK)
    header = make_header(data)
    hh = header.digest()
    key = os.urandom(32)
    aead = AESGCM(key)
    # both chunks marked non-final: a stream cut short at a chunk boundary looks like this
    chunks = [aead.encrypt(_nonce(i, False), data[i * CHUNK : (i + 1) * CHUNK], hh) for i in (0, 1)]
    wrapped = SUITE.encrypt(key, RECIPIENT.public_key(), info=b"zonegate/envelope/v1/key" + hh)
    body = b"".join(chunks)
    sig = SENDER.sign(
        b"zonegate/envelope/v1/sig"
        + hh
        + hashlib.sha256(wrapped).digest()
        + hashlib.sha256(body).digest()
    )
    hb = header.to_bytes()
    blob = MAGIC + struct.pack(">I", len(hb)) + hb + struct.pack(">H", 80) + wrapped + body + sig
    assert refusal(blob).reason == "decrypt-failed"


class _SwapsAfterFirstPass(io.BytesIO):
    """A spool file replaced (same length) right after the signature pass has read to its end."""

    def __init__(self, first: bytes, second: bytes) -> None:
        super().__init__(first)
        self._second: bytes | None = second

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        if self._second is not None and self.tell() == len(self.getvalue()):
            pos = self.tell()
            self.seek(0)
            self.write(self._second)
            self.seek(pos)
            self._second = None
        return n


def test_file_swapped_between_passes_does_not_decrypt() -> None:
    """Pass 2 uses the wrapped key verified in pass 1: chunks sealed by someone else under their
    own content key (for our public key, same header) do not decrypt."""
    data = os.urandom(CHUNK + 5)
    header, blob = sealed(data)
    forged = _raw_envelope(header.to_bytes(), data, CHUNK, signing_key=OTHER_SENDER)
    assert len(forged) == len(blob)
    src = _SwapsAfterFirstPass(blob, forged)
    with pytest.raises(EnvelopeError) as info:
        open_envelope(src, io.BytesIO(), RECIPIENT, TRUSTED)
    assert info.value.reason == "decrypt-failed"
    assert src._second is None  # the swap did happen


def test_wrong_recipient() -> None:
    _, blob = sealed(b"for someone else")
    err = refusal(blob, recipient=OTHER_RECIPIENT)
    assert err.reason == "wrong-recipient"


def test_unknown_sender() -> None:
    _, blob = sealed(b"who sent this")
    assert refusal(blob, lookup=lambda _s, _k: None).reason == "unknown-sender"
    assert refusal(blob, lookup=lookup_for(OTHER_SENDER)).reason == "unknown-sender"
    # a lookup that hands back a key other than the one named in the header is not trusted
    assert refusal(blob, lookup=lambda _s, _k: OTHER_SENDER.public_key()).reason == (
        "unknown-sender"
    )


def test_lookup_is_asked_with_sender_name_and_key_id() -> None:
    header, blob = sealed(b"x")
    asked: list[tuple[str, str]] = []

    def lookup(sender: str, kid: str) -> Ed25519PublicKey | None:
        asked.append((sender, kid))
        return SENDER.public_key()

    open_bytes(blob, lookup=lookup)
    assert asked == [(header.sender, header.sender_key)]


def test_signature_by_another_key_is_refused() -> None:
    data = os.urandom(500)
    header = make_header(data)
    blob = _raw_envelope(header.to_bytes(), data, CHUNK, signing_key=OTHER_SENDER)
    assert refusal(blob).reason == "bad-signature"


def test_chunks_encrypted_with_another_key_fail_to_decrypt() -> None:
    data = os.urandom(CHUNK + 10)
    header = make_header(data)
    wrapped_other = wrap_content_key(os.urandom(32), header, RECIPIENT.public_key())
    out = io.BytesIO()
    seal_deterministic(io.BytesIO(data), out, header, os.urandom(32), wrapped_other, SENDER)
    plaintext = io.BytesIO()
    with pytest.raises(EnvelopeError) as info:
        open_envelope(io.BytesIO(out.getvalue()), plaintext, RECIPIENT, TRUSTED)
    assert info.value.reason == "decrypt-failed"
    assert plaintext.getvalue() == b""  # the first chunk already fails


def test_wrapped_key_bound_to_its_header() -> None:
    data = os.urandom(100)
    header = make_header(data)
    key = os.urandom(32)
    other_header = dataclasses.replace(header, sequence=header.sequence + 1)
    wrapped = wrap_content_key(key, other_header, RECIPIENT.public_key())
    out = io.BytesIO()
    seal_deterministic(io.BytesIO(data), out, header, key, wrapped, SENDER)
    err = refusal(out.getvalue())
    assert err.reason == "decrypt-failed"
    assert "content key" in err.detail


def test_wrapped_key_for_another_recipient_fails_to_decrypt() -> None:
    data = os.urandom(100)
    header = make_header(data)
    blob = _raw_envelope(
        header.to_bytes(), data, CHUNK, recipient_public=OTHER_RECIPIENT.public_key()
    )
    assert refusal(blob).reason == "decrypt-failed"


def test_signed_header_whose_sha256_lies_is_plaintext_mismatch() -> None:
    data = os.urandom(100)
    header = make_header(data, sha256="0" * 64)
    blob = _raw_envelope(header.to_bytes(), data, CHUNK)
    assert refusal(blob).reason == "plaintext-mismatch"


# ----------------------------------------------------------------- header schema


def _header_obj(data: bytes = b"abc") -> dict[str, Any]:
    return json.loads(make_header(data).to_bytes())


def _schema_cases() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []

    def add(name: str, change: Callable[[dict[str, Any]], None]) -> None:
        obj = _header_obj()
        change(obj)
        cases.append((name, _canonical(obj)))

    add("unknown key", lambda o: o.update(extra=1))
    add("missing key", lambda o: o.pop("hops"))
    add("missing sha256", lambda o: o.pop("sha256"))
    add("size as string", lambda o: o.update(size="3"))
    add("size as float", lambda o: o.update(size=3.0))
    add("size negative", lambda o: o.update(size=-1))
    add("size too big", lambda o: o.update(size=2**50 + 1))
    add("seq as bool", lambda o: o.update(seq=True))
    add("seq zero", lambda o: o.update(seq=0))
    add("version 2", lambda o: o.update(v=2))
    add("version as bool", lambda o: o.update(v=True))
    add("chunk not power of two", lambda o: o.update(chunk_size=5000))
    add("chunk too small", lambda o: o.update(chunk_size=2048))
    add("chunk too big", lambda o: o.update(chunk_size=32 * 1024 * 1024))
    add("id uppercase", lambda o: o.update(id=o["id"].upper()))
    add("id short", lambda o: o.update(id="abc"))
    add("flow bad", lambda o: o.update(flow="Import"))
    add("sender bad", lambda o: o.update(sender="../etc"))
    add("sender_key short", lambda o: o.update(sender_key="00"))
    add("name empty", lambda o: o.update(name=""))
    add("name too long", lambda o: o.update(name="x" * 1025))
    add("name as list", lambda o: o.update(name=["a"]))
    add("system too long", lambda o: o.update(system="s" * 129))
    add("content_type as null", lambda o: o.update(content_type=None))
    add("classification too long", lambda o: o.update(classification="c" * 65))
    add("created not UTC", lambda o: o.update(created="2026-11-25T09:41:56+08:00"))
    add("created impossible date", lambda o: o.update(created="2026-02-30T09:41:56Z"))
    add("created as int", lambda o: o.update(created=1764063716))
    add("approvals not list", lambda o: o.update(approvals={}))
    add("approvals item not object", lambda o: o.update(approvals=["sig"]))
    add("approvals too many", lambda o: o.update(approvals=[{}] * 17))
    add("hops item not object", lambda o: o.update(hops=[1]))
    add("hops too many", lambda o: o.update(hops=[{"n": i} for i in range(17)]))
    obj = _header_obj()
    cases.append(("not canonical: spaces", json.dumps(obj, sort_keys=True).encode()))
    cases.append(
        (
            "not canonical: key order",
            json.dumps(dict(reversed(obj.items())), separators=(",", ":")).encode(),
        )
    )
    cases.append(
        ("not canonical: ascii escapes", _canonical(obj).replace(b'"import"', b'"\\u0069mport"'))
    )
    cases.append(("duplicate key", _canonical(obj)[:-1] + b',"v":1}'))
    cases.append(("NaN", _canonical(obj).replace(b'"approvals":[]', b'"approvals":[{"x":NaN}]')))
    cases.append(("not an object", b"[1,2,3]"))
    cases.append(("not JSON", b"\x00\x01\x02"))
    cases.append(("bad UTF-8", _canonical(obj).replace(b"mail-relay", b"mail-\xff\xfe")))
    cases.append(("deep nesting", b'{"approvals":[{"a":' + b"[" * 30000 + b"]" * 30000 + b"}]}"))
    return cases


@pytest.mark.parametrize(("case", "header_bytes"), _schema_cases(), ids=lambda v: str(v)[:30])
def test_schema_violation_in_signed_envelope_is_malformed(case: str, header_bytes: bytes) -> None:
    blob = _raw_envelope(header_bytes, b"abc", CHUNK)
    err = refusal(blob)
    assert err.reason == "malformed", case
    with pytest.raises(EnvelopeError) as info:
        Header.from_bytes(header_bytes)
    assert info.value.reason == "malformed"


def test_header_round_trip_and_canonical_form() -> None:
    header = make_header(b"abc", approvals=({"z": 1, "a": [1, "二"]},))
    raw = header.to_bytes()
    assert raw == _canonical(json.loads(raw))
    assert Header.from_bytes(raw) == header
    assert list(json.loads(raw)) == sorted(json.loads(raw))
    assert "二".encode() in raw  # ensure_ascii=False


def test_header_constructor_validates() -> None:
    with pytest.raises(EnvelopeError) as info:
        make_header(b"abc", chunk_size=1000)
    assert info.value.reason == "malformed"
    with pytest.raises(EnvelopeError):
        make_header(b"abc", approvals=({1: "int key"},))
    with pytest.raises(EnvelopeError):
        make_header(b"abc", approvals=({"big": "x" * 70000},))  # header over 64 KiB


def test_header_lengths_in_preamble_are_checked() -> None:
    _, blob = sealed(b"abc")
    for hlen in (0, 65537, 2**32 - 1):
        bad = blob[:8] + struct.pack(">I", hlen) + blob[12:]
        assert refusal(bad).reason == "malformed"
    header, blob = sealed(b"abc")
    at = 12 + len(header.to_bytes())
    for wlen in (0, 79, 81, 65535):
        bad = blob[:at] + struct.pack(">H", wlen) + blob[at + 2 :]
        assert refusal(bad).reason == "malformed"


# ----------------------------------------------------------------- sealing checks


@pytest.mark.parametrize(
    ("actual", "why"),
    [
        (b"abc", "shorter"),
        (b"abcdefghijX", "longer"),
        (b"abcdefghiX", "same size, other content"),
    ],
)
def test_seal_refuses_plaintext_that_differs_from_header(actual: bytes, why: str) -> None:
    header = make_header(b"abcdefghij")
    out = io.BytesIO()
    with pytest.raises(EnvelopeError) as info:
        seal(io.BytesIO(actual), out, header, RECIPIENT.public_key(), SENDER)
    assert info.value.reason == "plaintext-mismatch", why
    # whatever was written is not a valid envelope: the signature is never written
    assert len(out.getvalue()) < envelope_length(header)


def test_seal_refuses_header_naming_other_keys() -> None:
    header = make_header(b"abc")
    with pytest.raises(EnvelopeError) as info:
        seal(io.BytesIO(b"abc"), io.BytesIO(), header, OTHER_RECIPIENT.public_key(), SENDER)
    assert info.value.reason == "key-mismatch"
    with pytest.raises(EnvelopeError) as info:
        seal(io.BytesIO(b"abc"), io.BytesIO(), header, RECIPIENT.public_key(), OTHER_SENDER)
    assert info.value.reason == "key-mismatch"


def test_key_id_form() -> None:
    ed = key_id(SENDER.public_key())
    x = key_id(RECIPIENT.public_key())
    assert re.fullmatch(r"[0-9a-f]{32}", ed) and re.fullmatch(r"[0-9a-f]{32}", x)
    raw = RECIPIENT.public_key().public_bytes_raw()
    assert x == hashlib.sha256(raw).hexdigest()[:32]
    with pytest.raises(TypeError):
        key_id(SENDER)  # type: ignore[arg-type]


def test_error_string_and_reason_codes() -> None:
    err = EnvelopeError("bad-signature", "the sender's signature does not verify")
    assert str(err) == "bad-signature: the sender's signature does not verify"
    assert err.reason == "bad-signature"
    with pytest.raises(ValueError):
        EnvelopeError("no-such-reason", "x")


# ----------------------------------------------------------------- memory and speed


def test_one_gib_in_constant_memory(tmp_path: Path) -> None:
    probe = ROOT / "tests" / "envelope_memory_probe.py"
    result = subprocess.run(
        [sys.executable, str(probe), str(tmp_path), str(1024)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["size_bytes"] == 1024**3
    assert report["opened_sha256"] == report["original_sha256"]
    assert report["peak_rss_mib"] < 100
