"""Gateway key files: 0600 private keys, refused when too open, never echoed in errors."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from zonegate.transfer.keys import (
    KeyFileError,
    KeyFiles,
    generate_gateway_keys,
    load_curve_public,
    load_curve_secret,
    load_encryption_private,
    load_encryption_public,
    load_signing_private,
    load_signing_public,
)

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def keys(tmp_path: Path, umask022: None) -> KeyFiles:
    return generate_gateway_keys(tmp_path / "keys", "internet-gw")


def all_paths(files: KeyFiles) -> list[Path]:
    return [
        files.signing_private,
        files.signing_public,
        files.encryption_private,
        files.encryption_public,
    ]


def test_generate_writes_eight_files_with_modes(keys: KeyFiles, tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "internet-gw.audit.key",
        "internet-gw.audit.pub",
        "internet-gw.curve.key",
        "internet-gw.curve.pub",
        "internet-gw.kem.key",
        "internet-gw.kem.pub",
        "internet-gw.sign.key",
        "internet-gw.sign.pub",
    ]
    assert mode_of(keys.signing_private) == 0o600
    assert mode_of(keys.encryption_private) == 0o600
    assert mode_of(keys.signing_public) == 0o644
    assert mode_of(keys.encryption_public) == 0o644
    assert mode_of(keys.audit_private) == 0o600
    assert mode_of(keys.audit_public) == 0o644
    audit = load_signing_private(keys.audit_private)
    assert audit.public_key() == load_signing_public(keys.audit_public)
    assert audit.public_key() != load_signing_private(keys.signing_private).public_key()
    assert mode_of(keys.curve_private) == 0o600
    assert mode_of(keys.curve_public) == 0o644
    public, _secret = load_curve_secret(keys.curve_private)
    assert public == load_curve_public(keys.curve_public)
    keys.curve_private.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_curve_secret(keys.curve_private)
    assert keys.signing_private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.signing_public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_private_keys_are_0600_even_with_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = generate_gateway_keys(tmp_path, "gw")
    finally:
        os.umask(old)
    assert mode_of(files.signing_private) == 0o600
    assert mode_of(files.encryption_private) == 0o600
    assert mode_of(files.signing_public) == 0o644


def test_generate_refuses_to_overwrite(keys: KeyFiles, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in all_paths(keys)}
    with pytest.raises(KeyFileError, match="already exists"):
        generate_gateway_keys(tmp_path / "keys", "internet-gw")
    assert {p: p.read_bytes() for p in all_paths(keys)} == before


@pytest.mark.parametrize("which", ["sign.key", "sign.pub", "kem.key", "kem.pub"])
def test_generate_refuses_when_any_one_file_exists(tmp_path: Path, which: str) -> None:
    existing = tmp_path / f"gw.{which}"
    existing.write_bytes(b"someone else's")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_gateway_keys(tmp_path, "gw")
    assert existing.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing.name]


def test_generate_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "gw.sign.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeyFileError):
        generate_gateway_keys(tmp_path, "gw")
    assert not (tmp_path / "elsewhere").exists()


def test_load_round_trip(keys: KeyFiles) -> None:
    sign = load_signing_private(keys.signing_private)
    sign_pub = load_signing_public(keys.signing_public)
    kem = load_encryption_private(keys.encryption_private)
    kem_pub = load_encryption_public(keys.encryption_public)
    assert isinstance(sign, Ed25519PrivateKey) and isinstance(sign_pub, Ed25519PublicKey)
    assert isinstance(kem, X25519PrivateKey) and isinstance(kem_pub, X25519PublicKey)
    # the public files belong to the private ones
    assert sign.public_key().public_bytes(*RAW) == sign_pub.public_bytes(*RAW)
    assert kem.public_key().public_bytes(*RAW) == kem_pub.public_bytes(*RAW)
    sign_pub.verify(sign.sign(b"header"), b"header")  # raises if they do not match


def test_each_generation_makes_new_keys(tmp_path: Path) -> None:
    a = generate_gateway_keys(tmp_path, "a")
    b = generate_gateway_keys(tmp_path, "b")
    assert a.signing_public.read_bytes() != b.signing_public.read_bytes()
    assert a.encryption_public.read_bytes() != b.encryption_public.read_bytes()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_loading_a_too_open_private_key_is_refused(keys: KeyFiles, mode: int) -> None:
    keys.signing_private.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_signing_private(keys.signing_private)
    assert "chmod 600" in str(info.value)
    assert str(keys.signing_private) in str(info.value)


def test_a_0400_private_key_is_accepted(keys: KeyFiles) -> None:
    keys.encryption_private.chmod(0o400)
    assert isinstance(load_encryption_private(keys.encryption_private), X25519PrivateKey)


@pytest.mark.parametrize(
    ("loader", "attr", "expected"),
    [
        (load_signing_private, "encryption_private", "Ed25519 private"),
        (load_encryption_private, "signing_private", "X25519 private"),
        (load_signing_public, "encryption_public", "Ed25519 public"),
        (load_encryption_public, "signing_public", "X25519 public"),
        (load_signing_public, "signing_private", "not a PEM public key"),
    ],
)
def test_wrong_key_type_is_refused(keys: KeyFiles, loader, attr: str, expected: str) -> None:
    with pytest.raises(KeyFileError, match=expected):
        loader(getattr(keys, attr))


def test_a_public_key_file_is_not_a_private_key(keys: KeyFiles) -> None:
    keys.signing_public.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_signing_private(keys.signing_public)


def test_a_symlinked_private_key_is_refused(keys: KeyFiles, tmp_path: Path) -> None:
    link = tmp_path / "link.sign.key"
    link.symlink_to(keys.signing_private)
    with pytest.raises(KeyFileError, match="cannot open private key"):
        load_signing_private(link)


@pytest.mark.parametrize("loader", [load_signing_private, load_signing_public])
def test_a_missing_key_file_is_a_key_file_error(tmp_path: Path, loader) -> None:
    with pytest.raises(KeyFileError):
        loader(tmp_path / "absent")


@pytest.mark.parametrize("loader", [load_signing_private, load_encryption_private])
def test_a_directory_as_private_key_is_a_key_file_error(tmp_path: Path, loader) -> None:
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        loader(d)


def test_a_fifo_as_private_key_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError):
        load_signing_private(fifo)


def _pem(label: str, body: bytes) -> tuple[bytes, str]:
    b64 = base64.encodebytes(body).decode()
    return f"-----BEGIN {label}-----\n{b64}-----END {label}-----\n".encode(), b64.strip()


def _unknown_algorithm_pkcs8() -> bytes:
    der = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ed25519_oid = bytes.fromhex("06032b6570")  # 1.3.101.112
    return der.replace(ed25519_oid, bytes.fromhex("06032b6563"))  # 1.3.101.99: no such key


@pytest.mark.parametrize(
    "body",
    [
        b"\x30\x82\x01\x00" + b"SECRETSECRETSECRET" * 8,
        bytes(range(48)),
        _unknown_algorithm_pkcs8(),
    ],
    ids=["garbage-der", "bytes", "unknown-algorithm"],
)
@pytest.mark.parametrize("loader", [load_signing_private, load_encryption_private])
def test_errors_never_echo_the_pem_body(tmp_path: Path, body: bytes, loader) -> None:
    path = tmp_path / "bad.key"
    pem, b64 = _pem("PRIVATE KEY", body)
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        loader(path)
    message = str(info.value)
    assert "PRIVATE KEY" not in message
    assert b64 not in message
    for line in b64.splitlines():
        assert line[:16] not in message
    assert "SECRET" not in message
    assert info.value.__cause__ is None  # the parser's own message is not chained either


def test_public_key_errors_never_echo_the_pem_body(tmp_path: Path) -> None:
    path = tmp_path / "bad.pub"
    pem, b64 = _pem("PUBLIC KEY", b"\x30\x2a" + b"SECRETSECRETSECRET" * 2)
    path.write_bytes(pem)
    with pytest.raises(KeyFileError) as info:
        load_signing_public(path)
    assert "PUBLIC KEY" not in str(info.value)
    assert b64 not in str(info.value)


def test_a_valid_private_key_with_open_mode_error_does_not_echo_it(keys: KeyFiles) -> None:
    pem = keys.signing_private.read_bytes()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    keys.signing_private.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        load_signing_private(keys.signing_private)
    assert body not in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)
