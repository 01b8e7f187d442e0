"""The batch container format (transfer/batch.py): many small messages in one sealed envelope.

Round trips go through the real envelope (seal, open); refusals are built byte by byte, so each
names the one fault it carries; a fuzz check makes sure no mutation of a valid container gets
anything but an EnvelopeError out of decode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.transfer import batch
from zonegate.transfer.envelope import EnvelopeError, Header, key_id, open_envelope, seal

SENDER = Ed25519PrivateKey.generate()
RECIPIENT = X25519PrivateKey.generate()
CREATED = "2026-12-01T09:00:00.000000Z"


def header(body: bytes, seq: int, **changes: Any) -> Header:
    fields: dict[str, Any] = {
        "version": 1,
        "message_id": os.urandom(16).hex(),
        "flow": "report",
        "sequence": seq,
        "sender": "waitan-jo-gov-gw",
        "recipient": "municipal-bureau-intra-gw",
        "system": "case-system",
        "original_name": f"report-{seq}.txt",
        "content_type": "text/plain",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "created": CREATED,
        "chunk_size": 512 * 1024,
        "sender_key": key_id(SENDER.public_key()),
        "recipient_key": key_id(RECIPIENT.public_key()),
        "classification": "classified",
    }
    fields.update(changes)
    return Header(**fields)


def messages(n: int, first_seq: int = 41) -> list[tuple[Header, bytes]]:
    out = []
    for i in range(n):
        body = f"report {i}\n".encode() * (50 + i)
        out.append((header(body, first_seq + i), body))
    return out


def outer_for(items: list[tuple[Header, bytes]], plaintext: bytes) -> Header:
    return batch.container_header(
        [h for h, _ in items], message_id=os.urandom(16).hex(), created=CREATED, plaintext=plaintext
    )


def refusal(plaintext: bytes, outer: Header) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        batch.decode(plaintext, outer)
    return info.value


def test_a_batch_sealed_and_opened_gives_every_message_back_as_sent() -> None:
    items = messages(5)
    plaintext = batch.encode(items)
    outer = outer_for(items, plaintext)
    sealed = io.BytesIO()
    seal(io.BytesIO(plaintext), sealed, outer, RECIPIENT.public_key(), SENDER)
    sealed.seek(0)
    opened = io.BytesIO()
    got_outer = open_envelope(sealed, opened, RECIPIENT, lambda _s, _k: SENDER.public_key())
    assert got_outer == outer and batch.is_batch(got_outer)
    assert outer.sequence == items[0][0].sequence and outer.size == len(plaintext)
    got = batch.decode(opened.getvalue(), got_outer)
    assert [(i.header, bytes(i.body)) for i in got] == items


def test_encode_refuses_what_a_sender_must_not_build() -> None:
    items = messages(3)
    with pytest.raises(ValueError, match=r"2\.\.256 messages"):
        batch.encode(items[:1])
    other_flow = (header(items[1][1], 42, flow="import"), items[1][1])
    with pytest.raises(ValueError, match="flow differs"):
        batch.encode([items[0], other_flow])
    with pytest.raises(ValueError, match="SHA-256"):
        batch.encode([items[0], (items[1][0], items[1][1][:-1] + b"?")])
    with pytest.raises(ValueError, match="does not rise"):
        batch.encode([items[1], items[0]])
    with pytest.raises(ValueError, match="twice"):
        twin = dataclasses.replace(items[1][0], message_id=items[0][0].message_id)
        batch.encode([items[0], (twin, items[1][1])])
    big = [(header(b"x" * 600_000, 1 + i), b"x" * 600_000) for i in range(2)]
    with pytest.raises(ValueError, match="small messages"):
        batch.encode(big)
    with pytest.raises(ValueError, match="id of its own"):
        batch.container_header([h for h, _ in items], message_id=items[0][0].message_id,
                               created=CREATED, plaintext=b"")  # fmt: skip


def _raw(parts: list[tuple[bytes, bytes]], count: int | None = None, tail: bytes = b"") -> bytes:
    """A container written by hand from (header bytes, body) pairs."""
    out = [batch.MAGIC, struct.pack(">H", len(parts) if count is None else count)]
    for h, body in parts:
        out += [struct.pack(">I", len(h)), h, body]
    return b"".join(out) + tail


def _case(parts: list[tuple[Header, bytes]], **kw: Any) -> tuple[bytes, Header]:
    raw = _raw([(h.to_bytes(), b) for h, b in parts], **kw)
    good = messages(2)
    outer = dataclasses.replace(
        outer_for(good, raw), size=len(raw), sha256=hashlib.sha256(raw).hexdigest()
    )
    return raw, dataclasses.replace(outer, sequence=parts[0][0].sequence if parts else 41)


@pytest.mark.parametrize(
    ("build", "reason", "detail"),
    [
        (lambda m: _case(m, count=1), "malformed", "count 1 is outside"),
        (lambda m: _case(m, count=3), "malformed", "ends inside message 2's header length"),
        (lambda m: _case(m, tail=b"\0"), "malformed", "1 bytes after the last message"),
        (lambda m: _case([m[0], (header(m[1][1], 42, flow="import"), m[1][1])]), "malformed",
         "message 1's flow differs"),
        (lambda m: _case([m[0], (header(m[1][1], 42, sender="other-gw"), m[1][1])]), "malformed",
         "message 1's sender differs"),
        (lambda m: _case([m[0], (header(m[1][1], 42, recipient_key="0" * 32), m[1][1])]),
         "malformed", "message 1's recipient_key differs"),
        (lambda m: _case([m[0], (header(m[1][1], 42, classification="public"), m[1][1])]),
         "malformed", "message 1's classification differs"),
        (lambda m: _case([m[0], (header(m[1][1], 42, content_type=batch.BATCH_CONTENT_TYPE),
                                 m[1][1])]), "malformed", "message 1 is itself a batch"),
        (lambda m: _case([m[0], (dataclasses.replace(m[1][0], message_id=m[0][0].message_id),
                                 m[1][1])]), "malformed", "is used twice"),
        (lambda m: _case([m[0], (header(m[1][1], 41), m[1][1])]), "malformed",
         "sequence 41 does not rise"),
        (lambda m: _case([m[0], (m[1][0], m[1][1][:-1] + b"!")]), "plaintext-mismatch",
         "message 1's body"),
    ],
)  # fmt: skip
def test_decode_refuses_each_fault_and_names_it(build, reason: str, detail: str) -> None:
    raw, outer = build(messages(2))
    err = refusal(raw, outer)
    assert err.reason == reason and detail in err.detail, err


def test_decode_refuses_a_container_that_does_not_match_its_envelope() -> None:
    items = messages(3)
    plaintext = batch.encode(items)
    outer = outer_for(items, plaintext)
    assert (
        "not a batch"
        in refusal(plaintext, dataclasses.replace(outer, content_type="text/plain")).detail
    )
    assert "the envelope says" in refusal(plaintext[:-1], outer).detail
    assert "magic" in refusal(b"ZGBATCH\x02" + plaintext[8:], outer).detail
    assert (
        "first message's sequence"
        in refusal(plaintext, dataclasses.replace(outer, sequence=40)).detail
    )
    # the container's own id may not be reused by a message inside it
    reused = dataclasses.replace(outer, message_id=items[2][0].message_id)
    assert "is used twice" in refusal(plaintext, reused).detail
    # a header in the container must be canonical JSON, like an envelope's
    h = items[0][0].to_bytes().replace(b'"v":1', b'"v": 1')
    raw = _raw([(h, items[0][1]), (items[1][0].to_bytes(), items[1][1])])
    err = refusal(raw, dataclasses.replace(outer, size=len(raw)))
    assert err.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_no_mutation_of_a_container_gets_more_than_an_envelope_error(data) -> None:  # type: ignore[no-untyped-def]
    items = messages(3)
    plaintext = bytearray(batch.encode(items))
    outer = outer_for(items, bytes(plaintext))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(plaintext) - 1))
        plaintext[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 40))
    mutated = bytes(plaintext[: len(plaintext) - cut])
    try:
        got = batch.decode(mutated, dataclasses.replace(outer, size=len(mutated)))
    except EnvelopeError:
        return
    # what is accepted is a valid batch: every body hashes to its header
    for item in got:
        assert hashlib.sha256(item.body).hexdigest() == item.header.sha256
