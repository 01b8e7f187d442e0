"""Gateway key files: generated 0600, refused when readable by anyone else.

Each gateway holds three key pairs: Ed25519 to sign what it sends, X25519 to receive what is
sealed for it, and a separate Ed25519 audit key that signs only its audit checkpoints (so an
auditor can be given the audit public key alone, and the envelope key can be rotated without
breaking the verification of old logs). Files are PEM (PKCS#8 private, SubjectPublicKeyInfo
public) so standard tools can inspect them; private files are created with O_EXCL and mode
0600 and never overwritten silently.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .durable import fsync_dir, write_durably

__all__ = [
    "KeyFileError",
    "KeyFiles",
    "PersonKeyFiles",
    "generate_gateway_keys",
    "generate_person_key",
    "generate_ssh_host_key",
    "load_curve_public",
    "load_curve_secret",
    "load_encryption_private",
    "load_encryption_public",
    "load_signing_private",
    "load_signing_public",
]


class KeyFileError(Exception):
    """A key file is missing, malformed, of the wrong type or too widely readable."""


@dataclass(frozen=True)
class KeyFiles:
    signing_private: Path
    signing_public: Path
    encryption_private: Path
    encryption_public: Path
    audit_private: Path
    audit_public: Path
    curve_private: Path
    curve_public: Path


def key_file_names(directory: Path, name: str) -> KeyFiles:
    return KeyFiles(
        signing_private=directory / f"{name}.sign.key",
        signing_public=directory / f"{name}.sign.pub",
        encryption_private=directory / f"{name}.kem.key",
        encryption_public=directory / f"{name}.kem.pub",
        audit_private=directory / f"{name}.audit.key",
        audit_public=directory / f"{name}.audit.pub",
        curve_private=directory / f"{name}.curve.key",
        curve_public=directory / f"{name}.curve.pub",
    )


def generate_gateway_keys(directory: Path, name: str) -> KeyFiles:
    """Create a gateway's four key pairs; refuses to overwrite an existing file.

    Signing (Ed25519), envelope encryption (X25519), audit checkpoints (Ed25519) and the
    CurveZMQ link key (Curve25519, Z85 text, as ZeroMQ takes it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = key_file_names(directory, name)
    for path in (
        files.signing_private,
        files.signing_public,
        files.encryption_private,
        files.encryption_public,
        files.audit_private,
        files.audit_public,
        files.curve_private,
        files.curve_public,
    ):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path} already exists; remove it first to replace the key")
    sign = Ed25519PrivateKey.generate()
    kem = X25519PrivateKey.generate()
    _write_private(files.signing_private, sign)
    _write_public(files.signing_public, sign.public_key())
    _write_private(files.encryption_private, kem)
    _write_public(files.encryption_public, kem.public_key())
    audit = Ed25519PrivateKey.generate()
    _write_private(files.audit_private, audit)
    _write_public(files.audit_public, audit.public_key())
    curve_public, curve_secret = zmq.curve_keypair()
    write_durably(files.curve_private, curve_secret + b"\n", mode=0o600)
    write_durably(files.curve_public, curve_public + b"\n", mode=0o644)
    fsync_dir(directory)
    return files


@dataclass(frozen=True)
class PersonKeyFiles:
    private: Path
    public: Path


def person_key_file_names(directory: Path, name: str) -> PersonKeyFiles:
    """`NAME.person.key` / `NAME.person.pub`: apart from gateway keys, so that a person's key is
    never mistaken for (or configured as) a gateway's."""
    return PersonKeyFiles(
        private=directory / f"{name}.person.key", public=directory / f"{name}.person.pub"
    )


def generate_person_key(directory: Path, name: str) -> PersonKeyFiles:
    """Create a person's Ed25519 role key pair (private 0600); refuses to overwrite a file.

    A person proves their role (administrator, security officer, auditor) by signing with it;
    the gateway config maps the public half to the name and role.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = person_key_file_names(directory, name)
    for path in (files.private, files.public):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path} already exists; remove it first to replace the key")
    key = Ed25519PrivateKey.generate()
    _write_private(files.private, key)
    _write_public(files.public, key.public_key())
    fsync_dir(directory)
    return files


def generate_ssh_host_key(directory: Path, name: str) -> tuple[Path, Path]:
    """The SFTP drop server's Ed25519 host key, in OpenSSH format (private 0600, never replaced).

    A separate key from the signing key on purpose: the host key is presented to anyone who
    connects from the internet side, the signing key only ever signs envelopes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{name}.ssh_host_ed25519_key"
    public = directory / f"{name}.ssh_host_ed25519_key.pub"
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path} already exists; remove it first to replace the key")
    key = Ed25519PrivateKey.generate()
    write_durably(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_durably(public, line + f" {name}\n".encode(), mode=0o644)
    fsync_dir(directory)
    return private, public


def _write_private(path: Path, key: Ed25519PrivateKey | X25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_durably(path, pem, mode=0o600)


def _write_public(path: Path, key: Ed25519PublicKey | X25519PublicKey) -> None:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_durably(path, pem, mode=0o644)


def _read_private_bytes(path: Path) -> bytes:
    """A private key file's bytes, refused unless a regular file readable by its owner only."""
    try:
        # O_NONBLOCK: a FIFO at the key path must be refused below, not block the agent forever
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot open private key: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise KeyFileError(f"{path}: a private key must be a regular file")
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: permissions {mode:04o} are too open; run: chmod 600 {path}"
            )
        return f.read(64 * 1024)


def _read_private(path: Path) -> object:
    data = _read_private_bytes(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The parser's message could echo key bytes; say only what a person can act on.
        raise KeyFileError(f"{path}: not a PEM private key") from None


def _read_public(path: Path) -> object:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read public key: {e.strerror}") from None
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not a PEM public key") from None


def load_signing_private(path: Path) -> Ed25519PrivateKey:
    key = _read_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 private key (the .sign.key file)")
    return key


def load_encryption_private(path: Path) -> X25519PrivateKey:
    key = _read_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path}: expected an X25519 private key (the .kem.key file)")
    return key


def load_signing_public(path: Path) -> Ed25519PublicKey:
    key = _read_public(path)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 public key (the .sign.pub file)")
    return key


def load_encryption_public(path: Path) -> X25519PublicKey:
    key = _read_public(path)
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path}: expected an X25519 public key (the .kem.pub file)")
    return key


_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def load_curve_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 CurveZMQ keys from a 0600 `.curve.key` file."""
    data = _read_private_bytes(path).strip()
    if not _Z85_KEY.fullmatch(data):
        raise KeyFileError(f"{path}: not a CurveZMQ secret key (40 Z85 characters)")
    return zmq.curve_public(data), data


def load_curve_public(path: Path) -> bytes:
    try:
        data = path.read_bytes()[:256].strip()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read CurveZMQ public key: {e.strerror}") from None
    if not _Z85_KEY.fullmatch(data):
        raise KeyFileError(f"{path}: not a CurveZMQ public key (40 Z85 characters)")
    return data
