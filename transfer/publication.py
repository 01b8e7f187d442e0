"""Signed publication: a manifest and a detached signature beside each published file.

What the internet side delivers for the public websites must be verifiable by the website's
publishing step, long after it left the gateway: that the page is byte for byte what was
approved, by whom, and when. The receiving gateway writes, beside ``NAME``:

- ``NAME.zgmanifest.json`` — canonical JSON: message id, flow, delivered name, size, SHA-256,
  approvers (names, key ids, times), delivery time, gateway name and signing key id;
- ``NAME.zgsig`` — the gateway's Ed25519 signature over ``PUBLICATION_CONTEXT`` + the manifest's
  exact bytes, in hex.

``verify_publication`` checks both against a public key the verifier already trusts (never a key
found beside the file). The format is in ``docs/approvals.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .envelope import key_id

__all__ = [
    "MANIFEST_SUFFIX",
    "PUBLICATION_CONTEXT",
    "SIGNATURE_SUFFIX",
    "PublicationCheck",
    "companion_paths",
    "make_manifest",
    "sign_manifest",
    "verify_publication",
]

PUBLICATION_CONTEXT = b"zonegate/publication/v1\n"
MANIFEST_SUFFIX = ".zgmanifest.json"
SIGNATURE_SUFFIX = ".zgsig"
_MAX_MANIFEST = 65536


def companion_paths(path: Path) -> tuple[Path, Path]:
    """(manifest, signature) beside a delivered file."""
    return path.with_name(path.name + MANIFEST_SUFFIX), path.with_name(path.name + SIGNATURE_SUFFIX)


def make_manifest(
    *,
    message_id: str,
    flow: str,
    name: str,
    size: int,
    sha256: str,
    approvers: list[dict[str, str]],
    time: str,
    gateway: str,
    signer: Ed25519PublicKey,
) -> bytes:
    """Canonical manifest bytes (sorted keys, no spaces, UTF-8)."""
    manifest: dict[str, Any] = {
        "type": "zonegate-publication",
        "v": 1,
        "id": message_id,
        "flow": flow,
        "name": name,
        "size": size,
        "sha256": sha256,
        "approvers": approvers,
        "time": time,
        "gateway": gateway,
        "signer": key_id(signer),
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature file's content: hex of the signature, and a newline."""
    return key.sign(PUBLICATION_CONTEXT + manifest).hex().encode() + b"\n"


@dataclass(frozen=True)
class PublicationCheck:
    ok: bool
    problem: str | None
    manifest: dict[str, Any] | None


def _sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def verify_publication(path: Path, trusted: Ed25519PublicKey) -> PublicationCheck:
    """Check a delivered file against its manifest and signature; never raises for bad input."""
    manifest_path, sig_path = companion_paths(path)

    def bad(problem: str, manifest: dict[str, Any] | None = None) -> PublicationCheck:
        return PublicationCheck(False, problem, manifest)

    for p, what in ((manifest_path, "manifest"), (sig_path, "signature")):
        if not p.is_file():
            return bad(f"no {what} beside the file (expected {p.name})")
    manifest_bytes = manifest_path.read_bytes()[:_MAX_MANIFEST]
    try:
        signature = bytes.fromhex(sig_path.read_text(encoding="ascii").strip())
        trusted.verify(signature, PUBLICATION_CONTEXT + manifest_bytes)
    except (ValueError, UnicodeDecodeError, InvalidSignature):
        return bad(f"the signature in {sig_path.name} does not verify with the trusted key")
    manifest = json.loads(manifest_bytes)
    if not isinstance(manifest, dict) or manifest.get("type") != "zonegate-publication":
        return bad("the manifest is not a zonegate publication manifest")
    if not hmac.compare_digest(str(manifest.get("signer", "")), key_id(trusted)):
        return bad("the manifest names another signing key", manifest)
    if manifest.get("name") != path.name:
        return bad(f"the manifest is for {manifest.get('name')!r}, not {path.name!r}", manifest)
    size, digest = _sha256(path)
    if size != manifest.get("size") or not hmac.compare_digest(
        digest, str(manifest.get("sha256", ""))
    ):
        return bad("the file's size or SHA-256 differs from the signed manifest", manifest)
    return PublicationCheck(True, None, manifest)
