"""Audit log rates on this machine: durable append, verify, checkpoint and prove at 1M records.

    .venv/bin/python bench/audit_rate.py [--records 1000000] [--appends 20000] [--json FILE]

Not part of the test suite. Steps, each timed:

1. build: a log of ``--records`` records written by the real record code (hash chain, canonical
   JSON) but without an fsync per record, to get to a million quickly; plus one signed
   checkpoint over it (the real ``Checkpointer``: a full read of the log and its tree).
2. append: ``--appends`` records through the real ``AuditLog.append`` onto the end of that log,
   each one durable (write, fsync, head file) before the next, so the rate is records/s on a log
   that already holds a million records. Baseline: the same number of bare write+fsync calls of
   the same line size to a scratch file on the same disk (the floor any durable log pays).
3. verify: the real ``verify`` of the whole log (records, chain, Merkle tree, checkpoint
   signature and root), records/s. Baseline: one SHA-256 pass over the same bytes.
4. prove: one inclusion proof for a record in the middle (reads the whole log once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zonegate.audit import AuditLog, Checkpointer, canonical_bytes, record_hash, verify
from zonegate.audit.log import write_head
from zonegate.audit.record import GENESIS_HASH, now
from zonegate.audit.tools import prove


def build(path: Path, n: int) -> int:
    prev = GENESIS_HASH
    stamp = now()
    with open(path, "wb", buffering=1 << 20) as f:
        for seq in range(1, n + 1):
            rec = {
                "seq": seq,
                "time": stamp,
                "gateway": "internal-gw",
                "agent": "receiver",
                "zone": "internal",
                "event": "delivered",
                "message": {
                    "id": f"01JD{seq:022d}",
                    "flow": "import",
                    "seq": seq,
                    "sha256": hashlib.sha256(seq.to_bytes(8, "big")).hexdigest(),
                    "size": 1000 + seq % 5000,
                    "name": f"letter-{seq}.txt",
                },
                "outcome": "ok",
                "reason": None,
                "who": {"system": "oa"},
                "prev": prev,
            }
            rec["hash"] = prev = record_hash(rec)
            f.write(canonical_bytes(rec) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    write_head(path, n, prev)
    return path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--appends", type=int, default=20_000)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="zg-audit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "audit.jsonl"
    out: dict[str, float | int | str] = {"records": args.records, "appends": args.appends}

    t = time.perf_counter()
    size = build(path, args.records)
    out["build_seconds"] = time.perf_counter() - t
    out["log_bytes"] = size
    key = Ed25519PrivateKey.generate()
    cp = Checkpointer(path, key, "internal-gw")
    t = time.perf_counter()
    cp.checkpoint()
    out["first_checkpoint_seconds"] = time.perf_counter() - t

    with AuditLog(path, gateway="internal-gw", agent="receiver", zone="internal") as log:
        message = {"id": "01JDBENCH0000000000000000", "flow": "import", "seq": 1,
                   "sha256": "ab" * 32, "size": 1234, "name": "letter.txt"}  # fmt: skip
        t = time.perf_counter()
        for i in range(args.appends):
            log.append("delivered", message={**message, "seq": i}, who={"system": "oa"})
        elapsed = time.perf_counter() - t
    out["append_durable_per_s"] = args.appends / elapsed
    line_len = size // args.records
    scratch = work / "scratch"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t = time.perf_counter()
    for _ in range(args.appends):
        os.write(fd, b"x" * line_len)
        os.fsync(fd)
    out["baseline_write_fsync_per_s"] = args.appends / (time.perf_counter() - t)
    os.close(fd)
    scratch.unlink()

    t = time.perf_counter()
    cp.checkpoint()  # incremental: reads only the appended records
    out["incremental_checkpoint_seconds"] = time.perf_counter() - t

    total = args.records + args.appends
    t = time.perf_counter()
    result = verify(path, public_key=key.public_key())
    elapsed = time.perf_counter() - t
    assert result.ok and result.records == total and result.checkpoints == 2, result
    out["verify_per_s"] = total / elapsed
    out["verify_seconds"] = elapsed
    t = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    out["baseline_sha256_records_per_s"] = total / (time.perf_counter() - t)

    t = time.perf_counter()
    bundles = prove(path, f"01JD{args.records // 2:022d}")
    out["prove_seconds"] = time.perf_counter() - t
    assert len(bundles) == 1 and bundles[0]["checkpoint"] is not None

    for k, v in out.items():
        print(f"{k:34} {v:,.1f}" if isinstance(v, float) else f"{k:34} {v:,}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.workdir is None:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
