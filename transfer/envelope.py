"""The envelope: one message sealed for transit between two gateways.

An envelope is encrypted for the receiving gateway (HPKE, RFC 9180: X25519, HKDF-SHA256,
AES-256-GCM, single-shot base mode, wrapping a random 32-byte content key) and signed by the
sending gateway (Ed25519). The body is AES-256-GCM in the STREAM construction, so files of any
size are sealed and opened chunk by chunk in constant memory, and truncation, reordering and
splicing of chunks are detected.

The byte layout, the header schema and the reasons behind each choice are in
``docs/envelope.md``; this module is the reference implementation of that page.

Sans-I/O in spirit: every function works on file objects handed in by the caller (``BinaryIO``);
nothing here opens files, sockets or threads, and nothing logs. Errors are ``EnvelopeError`` with a
short machine-readable ``reason`` code and a human ``detail`` that never carries key material.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, ClassVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_LENGTH",
    "MAX_SIZE",
    "MIN_CHUNK_SIZE",
    "REASONS",
    "SIGNATURE_LENGTH",
    "TAG_LENGTH",
    "WRAPPED_KEY_LENGTH",
    "EnvelopeError",
    "Header",
    "chunk_count",
    "envelope_length",
    "header_hash",
    "key_id",
    "max_envelope_length",
    "open_envelope",
    "read_header",
    "seal",
    "seal_deterministic",
    "unwrap_content_key",
    "verify_envelope",
    "wrap_content_key",
]

MAGIC = b"ZGENV\x00\x01\n"
"""8 bytes: a recognisable name, a NUL and the format version, and a newline so that a text-mode
transfer (CRLF mangling) breaks the magic instead of silently corrupting the body."""
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_HEADER_LENGTH = 65536
MAX_SIZE = 2**50
MAX_SEQUENCE = 2**63 - 1
MAX_LIST_ITEMS = 16
CONTENT_KEY_LENGTH = 32
WRAPPED_KEY_LENGTH = 32 + CONTENT_KEY_LENGTH + 16  # X25519 enc || key ciphertext || GCM tag
TAG_LENGTH = 16
SIGNATURE_LENGTH = 64

KEY_INFO_PREFIX = b"zonegate/envelope/v1/key"
SIG_CONTEXT = b"zonegate/envelope/v1/sig"

_PREAMBLE = struct.Struct(">8sI")  # magic, hlen
_WLEN = struct.Struct(">H")
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

REASONS = frozenset(
    {
        "malformed",
        "wrong-recipient",
        "unknown-sender",
        "bad-signature",
        "decrypt-failed",
        "plaintext-mismatch",
        "key-mismatch",
    }
)

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_GATEWAY_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_CREATED_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?Z")

# JSON key <-> Python field, in the order of the docs; the JSON keys are the wire names.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("v", "version"),
    ("id", "message_id"),
    ("flow", "flow"),
    ("seq", "sequence"),
    ("sender", "sender"),
    ("recipient", "recipient"),
    ("system", "system"),
    ("name", "original_name"),
    ("content_type", "content_type"),
    ("size", "size"),
    ("sha256", "sha256"),
    ("created", "created"),
    ("chunk_size", "chunk_size"),
    ("sender_key", "sender_key"),
    ("recipient_key", "recipient_key"),
    ("classification", "classification"),
    ("approvals", "approvals"),
    ("hops", "hops"),
)
_JSON_KEYS = frozenset(k for k, _ in _FIELDS)


class EnvelopeError(Exception):
    """Why an envelope was refused (or could not be sealed).

    ``reason`` is one of ``REASONS`` so callers can branch, count metrics and audit on it;
    ``detail`` is a sentence for people. Neither ever contains key material or plaintext.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:  # a typo here would silently create a new metric label
            raise ValueError(f"unknown envelope error reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _malformed(detail: str) -> EnvelopeError:
    return EnvelopeError("malformed", detail)


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Short, stable name of a public key: first 16 bytes of SHA-256 of its raw 32 bytes, in hex.

    Headers name keys by id rather than embedding them, so a receiver looks the key up in its own
    trusted configuration instead of trusting a key the envelope brings along.
    """
    if not isinstance(public_key, Ed25519PublicKey | X25519PublicKey):
        raise TypeError("key_id needs an Ed25519 or X25519 public key")
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:16].hex()


# --------------------------------------------------------------------------- header


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; JSON true must never pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(name: str, value: object, *, min_len: int = 0, max_len: int) -> None:
    if not isinstance(value, str):
        raise _malformed(f"header field {name} must be a string")
    if not min_len <= len(value) <= max_len:
        raise _malformed(f"header field {name} must be {min_len}..{max_len} characters long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _malformed(f"header field {name} is not valid Unicode text") from None


def _check_pattern(name: str, value: object, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise _malformed(f"header field {name} does not match {pattern.pattern}")


def _check_created(value: object) -> None:
    m = _CREATED_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _malformed("header field created must be RFC 3339 UTC like 2026-11-25T09:41:56.123Z")
    try:
        datetime(*(int(g) for g in m.groups()[:6]))  # naive on purpose: validates the fields
    except ValueError:
        raise _malformed("header field created is not a real date and time") from None


def _check_json_objects(name: str, value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list | tuple):
        raise _malformed(f"header field {name} must be a list")
    if len(value) > MAX_LIST_ITEMS:
        raise _malformed(f"header field {name} holds more than {MAX_LIST_ITEMS} items")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise _malformed(f"every item of header field {name} must be a JSON object")
        try:
            # Only plain JSON survives a round trip unchanged (no tuples, int keys, NaN...).
            text = json.dumps(item, sort_keys=True, ensure_ascii=False, allow_nan=False)
            same = json.loads(text) == item
        except (TypeError, ValueError, RecursionError):
            same = False
        if not same:
            raise _malformed(f"an item of header field {name} is not plain JSON")
        items.append(copy.deepcopy(item))
    return tuple(items)


@dataclass(frozen=True)
class Header:
    """The envelope header: the message's metadata, in the clear but signed.

    It is in the clear so a gateway can route, sequence-check and refuse envelopes (wrong
    recipient, unknown sender, oversized) before any decryption; it is bound to the ciphertext
    three ways (HPKE info, every chunk's AAD, the signature), so it cannot be swapped.

    Construction validates everything, so a ``Header`` object is always one that ``from_bytes``
    would accept; invalid values raise ``EnvelopeError("malformed", ...)``. ``approvals`` and
    ``hops`` are tuples of JSON objects (dicts, deep-copied in); they are opaque here.
    """

    version: int
    message_id: str
    flow: str
    sequence: int
    sender: str
    recipient: str
    system: str
    original_name: str
    content_type: str
    size: int
    sha256: str
    created: str
    chunk_size: int
    sender_key: str
    recipient_key: str
    classification: str
    approvals: tuple[dict[str, Any], ...] = ()
    hops: tuple[dict[str, Any], ...] = ()
    # Cached canonical encoding, set once in __post_init__; a ClassVar annotation keeps it out of
    # the dataclass fields (eq, repr, asdict, replace).
    _encoded: ClassVar[bytes]

    def __post_init__(self) -> None:
        if not _is_int(self.version) or self.version != FORMAT_VERSION:
            raise _malformed(f"header field v must be {FORMAT_VERSION}")
        _check_pattern("id", self.message_id, _HEX32_RE)
        _check_pattern("flow", self.flow, _NAME_RE)
        if not _is_int(self.sequence) or not 1 <= self.sequence <= MAX_SEQUENCE:
            raise _malformed(f"header field seq must be an integer 1..{MAX_SEQUENCE}")
        _check_pattern("sender", self.sender, _GATEWAY_RE)
        _check_pattern("recipient", self.recipient, _GATEWAY_RE)
        _check_str("system", self.system, max_len=128)
        _check_str("name", self.original_name, min_len=1, max_len=1024)
        _check_str("content_type", self.content_type, max_len=255)
        if not _is_int(self.size) or not 0 <= self.size <= MAX_SIZE:
            raise _malformed(f"header field size must be an integer 0..{MAX_SIZE}")
        _check_pattern("sha256", self.sha256, _HEX64_RE)
        _check_created(self.created)
        cs = self.chunk_size
        if not _is_int(cs) or not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE or cs & (cs - 1):
            raise _malformed(
                f"header field chunk_size must be a power of two {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
            )
        _check_pattern("sender_key", self.sender_key, _HEX32_RE)
        _check_pattern("recipient_key", self.recipient_key, _HEX32_RE)
        _check_str("classification", self.classification, max_len=64)
        object.__setattr__(self, "approvals", _check_json_objects("approvals", self.approvals))
        object.__setattr__(self, "hops", _check_json_objects("hops", self.hops))
        encoded = self._encode()
        if len(encoded) > MAX_HEADER_LENGTH:
            raise _malformed(f"header is longer than {MAX_HEADER_LENGTH} bytes")
        object.__setattr__(self, "_encoded", encoded)

    def _encode(self) -> bytes:
        obj: dict[str, Any] = {}
        for key, attr in _FIELDS:
            value = getattr(self, attr)
            obj[key] = list(value) if isinstance(value, tuple) else value
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")

    def to_bytes(self) -> bytes:
        """Canonical JSON (UTF-8, sorted keys, no spaces, no ASCII escaping): one header, one
        byte string, so the header hash is well defined and signatures are reproducible."""
        return self._encoded

    def digest(self) -> bytes:
        """SHA-256 of ``to_bytes()``: the header hash every cryptographic step is bound to."""
        return hashlib.sha256(self._encoded).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse and strictly validate a header.

        Refuses (``EnvelopeError("malformed")``) anything that is not exactly the canonical
        encoding of a valid header: invalid UTF-8, duplicate, unknown or missing keys, wrong types
        (``true`` is not an integer), NaN, non-canonical spacing or number forms. Requiring the
        canonical form means two different byte strings never parse to the same header.
        """
        if not 1 <= len(data) <= MAX_HEADER_LENGTH:
            raise _malformed(f"header length must be 1..{MAX_HEADER_LENGTH} bytes")

        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not allowed")

        try:
            obj = json.loads(bytes(data).decode("utf-8"), parse_constant=no_constants)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _malformed("header is not valid UTF-8 JSON") from None
        if not isinstance(obj, dict):
            raise _malformed("header must be a JSON object")
        missing = _JSON_KEYS - obj.keys()
        if missing:
            raise _malformed(f"header lacks required keys: {', '.join(sorted(missing))}")
        unknown = obj.keys() - _JSON_KEYS
        if unknown:
            shown = ", ".join(sorted(repr(k)[:40] for k in unknown)[:5])
            raise _malformed(f"header has unknown keys: {shown}")
        header = cls(**{attr: obj[key] for key, attr in _FIELDS})
        if not hmac.compare_digest(header.to_bytes(), bytes(data)):
            raise _malformed("header is not in canonical JSON form")
        return header


def header_hash(header: Header) -> bytes:
    """SHA-256 of the header bytes (same as ``header.digest()``)."""
    return header.digest()


# --------------------------------------------------------------------------- lengths


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of body chunks: at least one, so an empty file still carries an authenticated
    final chunk (otherwise an empty body could not be told from a truncated one)."""
    return max(1, -(-size // chunk_size))


def _body_length(header: Header) -> int:
    return header.size + TAG_LENGTH * chunk_count(header.size, header.chunk_size)


def max_envelope_length(size: int, chunk_size: int) -> int:
    """The longest envelope any header could give a body of ``size`` bytes in chunks of
    ``chunk_size``: a bound known before a header is built (the header is at most
    ``MAX_HEADER_LENGTH`` bytes, everything else is fixed by the size)."""
    return (
        _PREAMBLE.size
        + MAX_HEADER_LENGTH
        + _WLEN.size
        + WRAPPED_KEY_LENGTH
        + size
        + TAG_LENGTH * chunk_count(size, chunk_size)
        + SIGNATURE_LENGTH
    )


def envelope_length(header: Header) -> int:
    """Exact total byte length of the envelope for ``header``.

    Everything variable is fixed by the header, so a reader checks the file length before doing
    any cryptography, and truncated or padded files are refused cheaply and unambiguously.
    """
    return (
        _PREAMBLE.size
        + len(header.to_bytes())
        + _WLEN.size
        + WRAPPED_KEY_LENGTH
        + _body_length(header)
        + SIGNATURE_LENGTH
    )


def _nonce(index: int, last: bool) -> bytes:
    # STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015): counter || last-flag. A chunk moved to
    # another position, or a non-final chunk presented as final, fails its tag.
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _key_info(hh: bytes) -> bytes:
    return KEY_INFO_PREFIX + hh


def _signed_message(hh: bytes, wrapped_digest: bytes, body_digest: bytes) -> bytes:
    return SIG_CONTEXT + hh + wrapped_digest + body_digest


# --------------------------------------------------------------------------- key wrapping


def wrap_content_key(
    content_key: bytes, header: Header, recipient_public: X25519PublicKey
) -> bytes:
    """HPKE-seal the content key for the recipient, with the header hash in HPKE's ``info``:
    the key only unwraps under the exact header it was sealed with."""
    if len(content_key) != CONTENT_KEY_LENGTH:
        raise ValueError("content key must be 32 bytes")
    wrapped = _SUITE.encrypt(bytes(content_key), recipient_public, info=_key_info(header.digest()))
    if len(wrapped) != WRAPPED_KEY_LENGTH:  # pragma: no cover - fixed by the suite
        raise ValueError("unexpected HPKE output length")
    return wrapped


def unwrap_content_key(
    wrapped_key: bytes, header: Header, recipient_private: X25519PrivateKey
) -> bytes:
    """Open the HPKE blob; ``EnvelopeError("decrypt-failed")`` if it does not open."""
    try:
        key = _SUITE.decrypt(bytes(wrapped_key), recipient_private, info=_key_info(header.digest()))
    except (InvalidTag, ValueError):
        raise EnvelopeError("decrypt-failed", "the wrapped content key does not open") from None
    if len(key) != CONTENT_KEY_LENGTH:
        raise EnvelopeError("decrypt-failed", "the wrapped content key has the wrong length")
    return key


# --------------------------------------------------------------------------- I/O helpers


def _readinto_exact(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` as far as it goes (short reads are legal for raw files);
    return the number of bytes read, less than ``len(view)`` only at end of file."""
    got = 0
    total = len(view)
    while got < total:
        n = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    buf = bytearray(n)
    if _readinto_exact(src, memoryview(buf)) != n:
        raise _malformed(f"envelope is truncated in the {what}")
    return bytes(buf)


def _write_all(dst: BinaryIO, data: bytes | bytearray | memoryview) -> int:
    view = memoryview(data)
    written = 0
    while written < len(view):
        n = dst.write(view[written:])
        if n is None:  # non-blocking raw stream that could not take anything
            raise BlockingIOError("destination stream would block")
        written += n
    return written


# --------------------------------------------------------------------------- seal


def _check_sealing_keys(header: Header, signing_key: Ed25519PrivateKey) -> None:
    if not hmac.compare_digest(key_id(signing_key.public_key()), header.sender_key):
        raise EnvelopeError("key-mismatch", "header sender_key is not the id of the signing key")


def seal_deterministic(
    src: BinaryIO,
    dst: BinaryIO,
    header: Header,
    content_key: bytes,
    wrapped_key: bytes,
    signing_key: Ed25519PrivateKey,
) -> int:
    """Seal with a given content key and HPKE blob; returns the number of bytes written.

    Exists so test vectors are byte-for-byte reproducible (HPKE encryption is randomised, Ed25519
    signing is not); ``seal`` is this plus a fresh key. Streams ``src`` in ``chunk_size`` pieces
    and checks while streaming that it holds exactly ``header.size`` bytes hashing to
    ``header.sha256``; if not, raises ``EnvelopeError("plaintext-mismatch")`` *before* writing
    the signature, so ``dst`` never holds a validly signed envelope of the wrong content (it does
    hold partial output, which the caller discards). The caller must pass a ``wrapped_key`` made
    for this header (``wrap_content_key``); it is not checked here, the receiver will refuse it.
    """
    if len(content_key) != CONTENT_KEY_LENGTH:
        raise ValueError("content key must be 32 bytes")
    if len(wrapped_key) != WRAPPED_KEY_LENGTH:
        raise ValueError(f"wrapped key must be {WRAPPED_KEY_LENGTH} bytes")
    _check_sealing_keys(header, signing_key)

    header_bytes = header.to_bytes()
    hh = header.digest()
    aead = AESGCM(bytes(content_key))
    chunk_size = header.chunk_size
    n_chunks = chunk_count(header.size, chunk_size)

    written = _write_all(dst, _PREAMBLE.pack(MAGIC, len(header_bytes)))
    written += _write_all(dst, header_bytes)
    written += _write_all(dst, _WLEN.pack(WRAPPED_KEY_LENGTH))
    written += _write_all(dst, wrapped_key)

    plain_hash = hashlib.sha256()
    body_hash = hashlib.sha256()
    # No bigger than the file: a 1 KiB message must not zero a 1 MiB buffer. Each chunk's
    # ciphertext is a new bytes object, so a destination may keep it without a copy (a link
    # that sends it while it is also written to disk).
    pt_buf = bytearray(min(chunk_size, header.size))
    pt_view = memoryview(pt_buf)
    remaining = header.size
    for index in range(n_chunks):
        want = min(chunk_size, remaining)
        got = _readinto_exact(src, pt_view[:want])
        if got != want:
            raise EnvelopeError(
                "plaintext-mismatch",
                f"source ended after {header.size - remaining + got} bytes, header says "
                f"{header.size}",
            )
        remaining -= want
        pt = pt_view[:want]
        plain_hash.update(pt)
        ct = aead.encrypt(_nonce(index, index == n_chunks - 1), pt, hh)
        body_hash.update(ct)
        written += _write_all(dst, ct)
    if src.read(1):
        raise EnvelopeError("plaintext-mismatch", f"source is longer than {header.size} bytes")
    if not hmac.compare_digest(plain_hash.hexdigest(), header.sha256):
        raise EnvelopeError("plaintext-mismatch", "source SHA-256 differs from the header")

    message = _signed_message(hh, hashlib.sha256(wrapped_key).digest(), body_hash.digest())
    written += _write_all(dst, signing_key.sign(message))
    return written


def seal(
    src: BinaryIO,
    dst: BinaryIO,
    header: Header,
    recipient_public: X25519PublicKey,
    signing_key: Ed25519PrivateKey,
) -> int:
    """Seal ``src`` into ``dst`` for ``recipient_public``, signed with ``signing_key``.

    A fresh random content key per envelope, so no nonce is ever reused across envelopes and the
    STREAM counter may start at zero. Raises ``EnvelopeError("key-mismatch")`` if the header's key
    ids are not those of the given keys (a sealing-side configuration error), and
    ``EnvelopeError("plaintext-mismatch")`` as ``seal_deterministic`` does.
    """
    if not hmac.compare_digest(key_id(recipient_public), header.recipient_key):
        raise EnvelopeError("key-mismatch", "header recipient_key is not the id of the recipient")
    _check_sealing_keys(header, signing_key)
    content_key = os.urandom(CONTENT_KEY_LENGTH)
    wrapped = wrap_content_key(content_key, header, recipient_public)
    return seal_deterministic(src, dst, header, content_key, wrapped, signing_key)


# --------------------------------------------------------------------------- open


def read_header(src: BinaryIO) -> tuple[Header, int]:
    """Parse the structure only: magic, header length, header, wrapped-key length; then check the
    stream's length (by seeking to its end) equals ``envelope_length(header)``. No cryptography.

    The envelope starts at ``src``'s current position and must run exactly to end of file;
    returns the header and that length. ``src`` must be seekable. On return the position is just
    after the wrapped-key length field (at the wrapped key). Raises ``EnvelopeError("malformed")``.
    """
    start = src.tell()
    preamble = _read_exact(src, _PREAMBLE.size, "preamble")
    magic, hlen = _PREAMBLE.unpack(preamble)
    if not hmac.compare_digest(magic, MAGIC):
        raise _malformed("not a zonegate envelope (bad magic or unsupported version)")
    if not 1 <= hlen <= MAX_HEADER_LENGTH:
        raise _malformed(f"header length {hlen} is outside 1..{MAX_HEADER_LENGTH}")
    header = Header.from_bytes(_read_exact(src, hlen, "header"))
    (wlen,) = _WLEN.unpack(_read_exact(src, _WLEN.size, "wrapped key length"))
    if wlen != WRAPPED_KEY_LENGTH:
        raise _malformed(f"wrapped key length {wlen} is not {WRAPPED_KEY_LENGTH}")
    here = src.tell()
    end = src.seek(0, os.SEEK_END)
    src.seek(here)
    length = end - start
    expected = envelope_length(header)
    if length != expected:
        kind = "truncated" if length < expected else "followed by trailing data"
        raise _malformed(f"envelope is {kind}: {length} bytes, header implies {expected}")
    return header, length


def _resolve_sender(
    header: Header, sender_public: Callable[[str, str], Ed25519PublicKey | None]
) -> Ed25519PublicKey:
    key = sender_public(header.sender, header.sender_key)
    if key is None:
        raise EnvelopeError(
            "unknown-sender", f"no trusted key {header.sender_key} for sender {header.sender!r}"
        )
    if not isinstance(key, Ed25519PublicKey) or not hmac.compare_digest(
        key_id(key), header.sender_key
    ):
        raise EnvelopeError(
            "unknown-sender",
            f"the key found for {header.sender!r} is not {header.sender_key}",
        )
    return key


def _verify_signature(
    src: BinaryIO, header: Header, body_start: int, sender_key: Ed25519PublicKey
) -> bytes:
    """Pass 1: hash the wrapped key and the whole body, check the signature. Reads in large
    blocks independent of chunk boundaries: the signature covers the concatenation.

    Returns the verified wrapped key, so pass 2 uses exactly the key the sender signed even if
    the file changes between the passes (then the chunks no longer decrypt)."""
    src.seek(body_start)
    wrapped = _read_exact(src, WRAPPED_KEY_LENGTH, "wrapped key")
    body_hash = hashlib.sha256()
    remaining = _body_length(header)
    block = min(max(header.chunk_size, DEFAULT_CHUNK_SIZE), 4 * DEFAULT_CHUNK_SIZE)
    buf = bytearray(min(block, remaining))
    view = memoryview(buf)
    while remaining:
        want = min(len(buf), remaining)
        if _readinto_exact(src, view[:want]) != want:
            raise _malformed("envelope is truncated in the body")  # file shrank under us
        body_hash.update(view[:want])
        remaining -= want
    signature = _read_exact(src, SIGNATURE_LENGTH, "signature")
    message = _signed_message(header.digest(), hashlib.sha256(wrapped).digest(), body_hash.digest())
    try:
        sender_key.verify(signature, message)
    except InvalidSignature:
        raise EnvelopeError("bad-signature", "the sender's signature does not verify") from None
    return wrapped


def verify_envelope(
    src: BinaryIO, sender_public: Callable[[str, str], Ed25519PublicKey | None]
) -> Header:
    """Check structure, lengths and the sender's signature without decrypting.

    For a gateway that holds no recipient key (a relay, or a spool integrity check). Proves who
    sealed the envelope and that it is intact, nothing about whether it will decrypt. Leaves the
    position at end of file.
    """
    start = src.tell()
    header, _ = read_header(src)
    sender_key = _resolve_sender(header, sender_public)
    body_start = start + _PREAMBLE.size + len(header.to_bytes()) + _WLEN.size
    _verify_signature(src, header, body_start, sender_key)
    return header


def open_envelope(
    src: BinaryIO,
    dst: BinaryIO,
    recipient_private: X25519PrivateKey,
    sender_public: Callable[[str, str], Ed25519PublicKey | None],
    *,
    header: Header | None = None,
) -> Header:
    """Verify and decrypt an envelope into ``dst``; return its header.

    Order, cheapest refusal first: structure and length (``malformed``), recipient key id
    (``wrong-recipient``), ``sender_public(sender, sender_key)`` must return the key with that id
    (``unknown-sender``), pass 1 verifies the signature over everything (``bad-signature``) before
    a single plaintext byte is written, pass 2 unwraps the content key and decrypts chunk by chunk
    (``decrypt-failed``) while hashing the plaintext, which must match the header's size and
    SHA-256 (``plaintext-mismatch``; only a sender that signed a wrong header gets here).

    ``src`` must be seekable (two passes). ``dst`` may hold partial plaintext when this raises:
    the caller must discard it. Replay (id), sequence and policy checks are the caller's.
    ``header``: what ``read_header`` returned for this source at its current position, when the
    caller has checked it already (it is then not parsed a second time).
    """
    start = src.tell()
    if header is None:
        header, _ = read_header(src)
    ours = key_id(recipient_private.public_key())
    if not hmac.compare_digest(ours, header.recipient_key):
        raise EnvelopeError(
            "wrong-recipient", f"envelope is for key {header.recipient_key}, ours is {ours}"
        )
    sender_key = _resolve_sender(header, sender_public)
    body_start = start + _PREAMBLE.size + len(header.to_bytes()) + _WLEN.size
    wrapped = _verify_signature(src, header, body_start, sender_key)

    # Pass 2: the wrapped key comes from pass 1, not from a second read of the file.
    src.seek(body_start + WRAPPED_KEY_LENGTH)
    content_key = unwrap_content_key(wrapped, header, recipient_private)
    aead = AESGCM(content_key)
    hh = header.digest()
    chunk_size = header.chunk_size
    n_chunks = chunk_count(header.size, chunk_size)
    largest = min(chunk_size, header.size)
    ct_buf = bytearray(largest + TAG_LENGTH)
    pt_buf = bytearray(largest)
    ct_view = memoryview(ct_buf)
    pt_view = memoryview(pt_buf)
    plain_hash = hashlib.sha256()
    remaining = header.size
    for index in range(n_chunks):
        want = min(chunk_size, remaining)
        ct = ct_view[: want + TAG_LENGTH]
        pt = pt_view[:want]
        if _readinto_exact(src, ct) != len(ct):
            raise _malformed("envelope is truncated in the body")  # file shrank under us
        try:
            aead.decrypt_into(_nonce(index, index == n_chunks - 1), ct, hh, pt)
        except InvalidTag:
            raise EnvelopeError("decrypt-failed", f"chunk {index} does not decrypt") from None
        plain_hash.update(pt)
        _write_all(dst, pt)
        remaining -= want
    # size is implied by the chunk lengths; sha256 is what the sender claimed about the plaintext.
    if not hmac.compare_digest(plain_hash.hexdigest(), header.sha256):
        raise EnvelopeError("plaintext-mismatch", "decrypted content SHA-256 differs from header")
    return header
