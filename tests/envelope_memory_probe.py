"""Seal and open a large file, report peak RSS and throughput as one JSON line.

Run in a subprocess by tests/test_envelope.py (so the RSS measured is this process alone):
    python tests/envelope_memory_probe.py WORKDIR [SIZE_MIB [CHUNK_SIZE]]
Writes a SIZE_MIB plaintext (default 1024) in 1 MiB blocks: one random block with a per-block
counter stamped in, so blocks differ without paying for os.urandom on every one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from zonegate.transfer.envelope import DEFAULT_CHUNK_SIZE, Header, key_id, open_envelope, seal

MIB = 1024 * 1024


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _peak_rss_kib() -> int:
    """This process's own high-water mark (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that across fork and exec, so a probe started
    from a large parent (pytest) would report the parent's peak instead of its own.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    workdir = Path(sys.argv[1])
    size_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    chunk_size = int(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_CHUNK_SIZE
    plain, sealed, opened = workdir / "plain.bin", workdir / "sealed.zge", workdir / "opened.bin"

    block = bytearray(os.urandom(MIB))
    digest = hashlib.sha256()
    with plain.open("wb") as f:
        for i in range(size_mib):
            block[:8] = i.to_bytes(8, "big")
            digest.update(block)
            f.write(block)
    original = digest.hexdigest()

    signer, recipient = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    header = Header(
        version=1,
        message_id=os.urandom(16).hex(),
        flow="import",
        sequence=1,
        sender="probe-a",
        recipient="probe-b",
        system="probe",
        original_name="plain.bin",
        content_type="application/octet-stream",
        size=size_mib * MIB,
        sha256=original,
        created="2026-11-25T09:41:56.123456Z",
        chunk_size=chunk_size,
        sender_key=key_id(signer.public_key()),
        recipient_key=key_id(recipient.public_key()),
        classification="public",
    )

    t0 = time.perf_counter()
    with plain.open("rb") as src, sealed.open("wb") as dst:
        written = seal(src, dst, header, recipient.public_key(), signer)
    t1 = time.perf_counter()
    with sealed.open("rb") as src, opened.open("wb") as dst:
        open_envelope(src, dst, recipient, lambda _s, _k: signer.public_key())
    t2 = time.perf_counter()

    mb = header.size / 1e6
    report = {
        "size_bytes": header.size,
        "chunk_size": chunk_size,
        "envelope_bytes": written,
        "original_sha256": original,
        "opened_sha256": _sha256_file(opened),
        "seal_seconds": round(t1 - t0, 3),
        "open_seconds": round(t2 - t1, 3),
        "seal_mb_per_s": round(mb / (t1 - t0), 1),
        "open_mb_per_s": round(mb / (t2 - t1), 1),
        "peak_rss_mib": round(_peak_rss_kib() / 1024, 1),
    }
    for path in (plain, sealed, opened):
        path.unlink()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
