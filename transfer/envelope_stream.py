"""Opening an envelope while it arrives: check, decrypt and verify it chunk by chunk, sans I/O.

`envelope.open_envelope` reads a whole envelope from a seekable file twice: the signature over
everything first, then the plaintext. A receiver that takes a large envelope off the link would
then write it to disk, read it twice and write its plaintext: three passes over the disk for one
file. `StreamOpener` does it in one: the structure and the header are checked as soon as they
are there (``malformed``, ``wrong-recipient``, ``unknown-sender``, the caller's own checks), the
content key is unwrapped, and each chunk is authenticated by its GCM tag and decrypted as it
arrives; the signature over the whole envelope and the plaintext's SHA-256 are checked by
`finish`, once the last byte is in.

So plaintext comes out *before* the envelope's signature is known to verify. The caller must
write it only to a scratch file that is never delivered, and discard it, unless `finish`
returns: the rule of `open_envelope` ("nothing delivered that did not verify") holds, only its
timing differs. The reason codes are the same as `open_envelope`'s (docs/envelope.md).

Nothing is kept of the envelope itself. A receiver that refuses one must still keep it as it
came: `reencrypt_chunks` rebuilds the chunks that decrypted, byte for byte, from their plaintext
(AES-GCM under the same key, nonce and header hash gives the same ciphertext and tag), and the
caller stores the bytes from `pending` on as they came. Memory: about two chunks, whatever the
envelope's size.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import envelope as env

__all__ = ["StreamOpener", "reencrypt_chunks"]

_HEAD = env._PREAMBLE.size  # magic and header length
_WRAPPED_AT = env._WLEN.size + env.WRAPPED_KEY_LENGTH  # what follows the header


class StreamOpener:
    """Feed an envelope's bytes in order (`feed`), then `finish`; `feed` hands each chunk's
    plaintext to its `write` as soon as that chunk is complete and authenticated.

    `check_header(header)` runs on the parsed header before any cryptography on the body (the
    caller's own refusals: flow, sender, size policy...); what it raises passes through. Every
    refusal of the envelope itself is an `env.EnvelopeError`; after one, the opener takes no more
    bytes, and `chunks_opened` / `pending` tell the caller what to keep.
    """

    def __init__(
        self,
        length: int,
        recipient_private: X25519PrivateKey,
        sender_public: Callable[[str, str], Ed25519PublicKey | None],
        check_header: Callable[[env.Header], None] | None = None,
    ) -> None:
        self.length = length
        self._recipient = recipient_private
        self._sender_public = sender_public
        self._check_header = check_header
        self._buf = bytearray()
        self._taken = 0  # bytes of the envelope consumed from _buf so far
        self.header: env.Header | None = None
        #: preamble, header, wrapped-key length and wrapped key, as they came
        self.prefix = b""
        self.content_key = b""
        self.chunks_opened = 0
        self.failed = False
        self._sender_key: Ed25519PublicKey | None = None
        self._aead: AESGCM | None = None
        self._hh = b""
        self._n_chunks = 0
        self._body_hash = hashlib.sha256()
        self._plain_hash = hashlib.sha256()
        self._wrapped = b""

    @property
    def pending(self) -> bytes:
        """Bytes taken but not consumed: after a refusal, the raw rest from where it failed."""
        return bytes(self._buf)

    def feed(self, data: bytes | memoryview, write: Callable[[bytes], object]) -> None:
        """Take the next bytes; `write` the plaintext of each chunk they complete."""
        if self.failed:
            raise ValueError("the opener refused this envelope; it takes no more bytes")
        if self._taken + len(self._buf) + len(data) > self.length:
            self.failed = True
            raise env.EnvelopeError("malformed", "envelope is longer than its announced length")
        try:
            if self.header is not None and not self._buf:
                # Whole chunks straight from the caller's buffer; only a rest is kept.
                rest = self._open_from(memoryview(data), write)
                self._buf += rest
                return
            self._buf += data
            if self.header is not None or self._parse_head():
                self._open_chunks(write)
        except BaseException:
            self.failed = True
            raise

    def _parse_head(self) -> bool:
        if len(self._buf) < _HEAD:
            return False
        magic, hlen = env._PREAMBLE.unpack_from(self._buf)
        if not hmac.compare_digest(magic, env.MAGIC):
            raise env._malformed("not a zonegate envelope (bad magic or unsupported version)")
        if not 1 <= hlen <= env.MAX_HEADER_LENGTH:
            raise env._malformed(f"header length {hlen} is outside 1..{env.MAX_HEADER_LENGTH}")
        end = _HEAD + hlen + _WRAPPED_AT
        if len(self._buf) < end:
            return False
        header = env.Header.from_bytes(bytes(self._buf[_HEAD : _HEAD + hlen]))
        (wlen,) = env._WLEN.unpack_from(self._buf, _HEAD + hlen)
        if wlen != env.WRAPPED_KEY_LENGTH:
            raise env._malformed(f"wrapped key length {wlen} is not {env.WRAPPED_KEY_LENGTH}")
        expected = env.envelope_length(header)
        if expected != self.length:
            raise env._malformed(
                f"envelope is {self.length} bytes long, its header implies {expected}"
            )
        ours = env.key_id(self._recipient.public_key())
        if not hmac.compare_digest(ours, header.recipient_key):
            raise env.EnvelopeError(
                "wrong-recipient", f"envelope is for key {header.recipient_key}, ours is {ours}"
            )
        self._sender_key = env._resolve_sender(header, self._sender_public)
        if self._check_header is not None:
            self._check_header(header)
        self._wrapped = bytes(self._buf[end - env.WRAPPED_KEY_LENGTH : end])
        self.content_key = env.unwrap_content_key(self._wrapped, header, self._recipient)
        self.header = header
        self.prefix = bytes(self._buf[:end])
        self._aead = AESGCM(self.content_key)
        self._hh = header.digest()
        self._n_chunks = env.chunk_count(header.size, header.chunk_size)
        del self._buf[:end]
        self._taken = end
        return True

    def _chunk_length(self, index: int) -> int:
        assert self.header is not None
        size, chunk = self.header.size, self.header.chunk_size
        return min(chunk, size - index * chunk) + env.TAG_LENGTH

    def _open_from(self, view: memoryview, write: Callable[[bytes], object]) -> memoryview:
        """Open the whole chunks at the start of `view`; return what is left of it."""
        while self.chunks_opened < self._n_chunks:
            want = self._chunk_length(self.chunks_opened)
            if len(view) < want:
                break
            try:
                self._open_one(view[:want], write)
            except env.EnvelopeError:
                self._buf += view  # kept as it came, from the chunk that failed on
                raise
            view = view[want:]
            self._taken += want
        return view

    def _open_one(self, ct: memoryview, write: Callable[[bytes], object]) -> None:
        assert self._aead is not None
        index = self.chunks_opened
        try:
            pt = self._aead.decrypt(env._nonce(index, index == self._n_chunks - 1), ct, self._hh)
        except InvalidTag:
            raise env.EnvelopeError("decrypt-failed", f"chunk {index} does not decrypt") from None
        self._body_hash.update(ct)
        self._plain_hash.update(pt)
        write(pt)
        self.chunks_opened += 1

    def _open_chunks(self, write: Callable[[bytes], object]) -> None:
        while self.chunks_opened < self._n_chunks:
            want = self._chunk_length(self.chunks_opened)
            if len(self._buf) < want:
                return
            ct = memoryview(self._buf)[:want]
            try:
                self._open_one(ct, write)
            finally:
                ct.release()
            del self._buf[:want]
            self._taken += want

    def finish(self) -> env.Header:
        """Once every byte is in: the signature over the whole envelope and the plaintext's
        hash; returns the header, or raises `EnvelopeError` (the plaintext is then not to be
        used). `pending` then holds the signature as it came."""
        if self.failed:
            raise ValueError("the opener refused this envelope")
        self.failed = True  # finish once; whatever it says, no more bytes
        if self.header is None or self.chunks_opened < self._n_chunks:
            raise env._malformed("envelope is truncated")
        if len(self._buf) != env.SIGNATURE_LENGTH:
            raise env._malformed("envelope is truncated in the signature")
        assert self._sender_key is not None
        message = env._signed_message(
            self._hh, hashlib.sha256(self._wrapped).digest(), self._body_hash.digest()
        )
        try:
            self._sender_key.verify(bytes(self._buf), message)
        except InvalidSignature:
            raise env.EnvelopeError(
                "bad-signature", "the sender's signature does not verify"
            ) from None
        if not hmac.compare_digest(self._plain_hash.hexdigest(), self.header.sha256):
            raise env.EnvelopeError(
                "plaintext-mismatch", "decrypted content SHA-256 differs from header"
            )
        return self.header


def reencrypt_chunks(
    plaintext: BinaryIO, dst: BinaryIO, header: env.Header, content_key: bytes, count: int
) -> None:
    """Write chunks 0..count-1 of the envelope sealed under `header` and `content_key`, from
    their plaintext: exactly the bytes that came (the encryption is deterministic)."""
    aead = AESGCM(content_key)
    hh = header.digest()
    n_chunks = env.chunk_count(header.size, header.chunk_size)
    for index in range(count):
        want = min(header.chunk_size, header.size - index * header.chunk_size)
        pt = plaintext.read(want)
        if len(pt) != want:
            raise env._malformed(f"plaintext of chunk {index} is missing")
        env._write_all(dst, aead.encrypt(env._nonce(index, index == n_chunks - 1), pt, hh))
