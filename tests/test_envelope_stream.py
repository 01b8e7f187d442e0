"""Opening an envelope while it arrives (transfer/envelope_stream.py) against the file reader.

Whatever the pieces the link cuts an envelope into, the stream gives the plaintext
`open_envelope` gives, refuses what it refuses (a damaged chunk is refused by its tag before the
signature is known: ``decrypt-failed`` where the file reader, which checks the signature first,
says ``bad-signature``; a damaged header or wrapped key makes the content key fail to unwrap,
also ``decrypt-failed``), and what it refused can be rebuilt byte for byte from its plaintext.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.transfer import envelope as env
from zonegate.transfer.envelope_stream import StreamOpener, reencrypt_chunks

VECTORS = Path(__file__).resolve().parent / "vectors" / "envelope"
SENDER = Ed25519PrivateKey.generate()
RECIPIENT = X25519PrivateKey.generate()


def _seal(body: bytes, chunk_size: int = 4096, **changes: object) -> tuple[env.Header, bytes]:
    fields: dict[str, object] = {
        "version": 1,
        "message_id": os.urandom(16).hex(),
        "flow": "import",
        "sequence": 1,
        "sender": "internet-gw",
        "recipient": "internal-gw",
        "system": "test",
        "original_name": "a.bin",
        "content_type": "application/octet-stream",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "created": "2026-11-25T09:41:56.123Z",
        "chunk_size": chunk_size,
        "sender_key": env.key_id(SENDER.public_key()),
        "recipient_key": env.key_id(RECIPIENT.public_key()),
        "classification": "public",
    }
    fields.update(changes)
    header = env.Header(**fields)  # type: ignore[arg-type]
    out = io.BytesIO()
    env.seal(io.BytesIO(body), out, header, RECIPIENT.public_key(), SENDER)
    return header, out.getvalue()


def _sender(name: str, key: str):  # type: ignore[no-untyped-def]
    return SENDER.public_key() if name == "internet-gw" else None


def _stream(data: bytes, pieces: list[int], length: int | None = None) -> tuple[bytes, object]:
    """Feed `data` cut at `pieces`; (plaintext, header or the EnvelopeError raised)."""
    opener = StreamOpener(len(data) if length is None else length, RECIPIENT, _sender)
    out = bytearray()
    at = 0
    try:
        for n in [*pieces, len(data)]:
            piece = data[at : at + n] if n else b""
            at += len(piece)
            opener.feed(piece, out.extend)
            if at >= len(data):
                break
        return bytes(out), opener.finish()
    except env.EnvelopeError as e:
        return bytes(out), e


def _file_open(data: bytes) -> object:
    try:
        return env.open_envelope(io.BytesIO(data), io.BytesIO(), RECIPIENT, _sender)
    except env.EnvelopeError as e:
        return e


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 5 * 4096 + 17),
    pieces=st.lists(st.integers(1, 9000), max_size=40),
)
def test_any_cutting_gives_the_plaintext_open_envelope_gives(size: int, pieces: list[int]) -> None:
    body = random.Random(size).randbytes(size)
    header, data = _seal(body)
    plain, result = _stream(data, pieces)
    assert result == header
    assert plain == body


def test_the_vectors_open_streamed_as_from_a_file() -> None:
    for path in sorted(VECTORS.glob("*.json")):
        v = json.loads(path.read_text())
        data = bytes.fromhex(v["envelope"])
        recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["recipient_private"]))
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["sender_signing_private"]))

        def sender(name: str, kid: str, key: Ed25519PrivateKey = key):  # type: ignore[no-untyped-def]
            return key.public_key()

        opener = StreamOpener(len(data), recipient, sender)
        got = bytearray()
        for i in range(0, len(data), 100):
            opener.feed(data[i : i + 100], got.extend)
        plain = bytes(got)
        header = opener.finish()
        out = io.BytesIO()
        assert env.open_envelope(io.BytesIO(data), out, recipient, sender)
        assert plain == out.getvalue() and header.sha256 == hashlib.sha256(plain).hexdigest()


REGIONS = ["magic", "header-length", "header", "wrapped-key", "first-chunk", "last-chunk", "sig"]


@pytest.mark.parametrize("region", REGIONS)
def test_damage_anywhere_is_refused_and_what_came_can_be_rebuilt(region: str) -> None:
    body = os.urandom(3 * 4096 + 100)
    header, good = _seal(body)
    hlen = len(header.to_bytes())
    offsets = {
        "magic": 3,
        "header-length": 10,
        "header": 12 + hlen // 2,
        "wrapped-key": 14 + hlen + 40,
        "first-chunk": 94 + hlen + 10,
        "last-chunk": len(good) - 64 - 20,
        "sig": len(good) - 5,
    }
    data = bytearray(good)
    data[offsets[region]] ^= 0x01
    data = bytes(data)
    file_result = _file_open(data)
    assert isinstance(file_result, env.EnvelopeError)
    opener = StreamOpener(len(data), RECIPIENT, _sender)
    plain = io.BytesIO()
    error = None
    at = 0
    for n in (7, 500, 4000, 9000, 100000):
        if error is not None or at >= len(data):
            break
        try:
            opener.feed(data[at : at + n], plain.write)
        except env.EnvelopeError as e:
            error = e
        at += n
    if error is None:
        with pytest.raises(env.EnvelopeError) as caught:
            opener.finish()
        error = caught.value
    expected = {file_result.reason}
    if region in ("header", "wrapped-key", "first-chunk", "last-chunk"):
        # The content key or a chunk's tag fails before the signature can be checked.
        expected.add("decrypt-failed")
    assert error.reason in expected, (region, error, file_result)
    # What came is rebuilt exactly: the chunks that decrypted, then the rest as it came.
    rebuilt = io.BytesIO()
    if opener.header is not None:
        rebuilt.write(opener.prefix)
        plain.seek(0)
        reencrypt_chunks(plain, rebuilt, opener.header, opener.content_key, opener.chunks_opened)
    rebuilt.write(opener.pending)
    rebuilt.write(data[min(at, len(data)) :])
    assert rebuilt.getvalue() == data


def test_wrong_length_recipient_sender_and_caller_checks_are_refused_at_the_header() -> None:
    _header, data = _seal(b"x" * 5000)
    got = _stream(data, [], length=len(data) + 1)[1]
    assert isinstance(got, env.EnvelopeError) and got.reason == "malformed"
    other = X25519PrivateKey.generate()
    opener = StreamOpener(len(data), other, _sender)
    with pytest.raises(env.EnvelopeError, match="wrong-recipient"):
        opener.feed(data, print)
    opener = StreamOpener(len(data), RECIPIENT, lambda s, k: None)
    with pytest.raises(env.EnvelopeError, match="unknown-sender"):
        opener.feed(data, print)

    class Policy(Exception):
        pass

    def refuse(h: env.Header) -> None:
        if h.size > 100:
            raise Policy("too large here")

    opener = StreamOpener(len(data), RECIPIENT, _sender, check_header=refuse)
    with pytest.raises(Policy):
        opener.feed(data[:3000], print)
    assert opener.pending == data[:3000], "nothing consumed: it is kept as it came"
    with pytest.raises(ValueError):
        opener.feed(b"more", print)


def _seal_lying(body: bytes, claimed_sha256: str) -> bytes:
    """What a faulty sender could produce: a signed envelope whose header names another hash
    (env.seal refuses to make one, so the steps are spelt out here)."""
    header, _ = _seal(body)
    header = env.Header(**{**_fields(header), "sha256": claimed_sha256})
    key = os.urandom(32)
    wrapped = env.wrap_content_key(key, header, RECIPIENT.public_key())
    aead = AESGCM(key)
    hh = header.digest()
    n = env.chunk_count(len(body), header.chunk_size)
    chunks = b"".join(
        aead.encrypt(
            env._nonce(i, i == n - 1), body[i * header.chunk_size : (i + 1) * header.chunk_size], hh
        )
        for i in range(n)
    )
    head = env._PREAMBLE.pack(env.MAGIC, len(header.to_bytes())) + header.to_bytes()
    head += env._WLEN.pack(env.WRAPPED_KEY_LENGTH) + wrapped
    message = env._signed_message(
        hh, hashlib.sha256(wrapped).digest(), hashlib.sha256(chunks).digest()
    )
    return head + chunks + SENDER.sign(message)


def _fields(h: env.Header) -> dict[str, object]:
    names = [f for f in h.__dataclass_fields__ if not f.startswith("_")]
    return {f: getattr(h, f) for f in names}


def test_a_lying_header_is_plaintext_mismatch_at_the_end() -> None:
    body = b"what was sealed" * 1000
    forged = _seal_lying(body, hashlib.sha256(b"other").hexdigest())
    with pytest.raises(env.EnvelopeError, match="plaintext-mismatch"):
        env.open_envelope(io.BytesIO(forged), io.BytesIO(), RECIPIENT, _sender)
    plain, got = _stream(forged, [1000])
    assert isinstance(got, env.EnvelopeError) and got.reason == "plaintext-mismatch"
    assert plain == body, "the plaintext came out, for the scratch file the caller discards"


def test_truncated_or_overlong_streams_are_malformed() -> None:
    _header, data = _seal(b"y" * 9000)
    sink = bytearray()
    opener = StreamOpener(len(data), RECIPIENT, _sender)
    opener.feed(data[:-10], sink.extend)
    with pytest.raises(env.EnvelopeError, match="truncated"):
        opener.finish()
    opener = StreamOpener(len(data), RECIPIENT, _sender)
    with pytest.raises(env.EnvelopeError, match="longer"):
        opener.feed(data + b"!", sink.extend)
