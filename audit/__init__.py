"""The tamper-evident audit log: one append-only, hash-chained JSON-lines file per gateway.

``AuditLog.append`` writes a record durably (or raises ``AuditWriteError`` so the caller fails
closed) and rotates the file by size or day; ``merkle`` is the RFC 6962 tree over the records;
``Checkpointer`` signs (size, root, time) with the gateway's audit key and writes it to a second
place; ``verify`` checks records, tree and checkpoints and names the first bad record or the
failed checkpoint; ``tools`` searches, shows, exports, proves and reconciles.
"""

from .checkpoint import Checkpoint, Checkpointer, checkpoint_path, key_id
from .log import AuditEntry, AuditLog, AuditWriteError, OpenLog, log_files
from .record import EVENTS, GENESIS_HASH, OUTCOMES, AuditRecord, canonical_bytes, record_hash
from .verify import VerifyResult, read_records, verify

__all__ = [
    "EVENTS",
    "GENESIS_HASH",
    "OUTCOMES",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "AuditWriteError",
    "Checkpoint",
    "Checkpointer",
    "OpenLog",
    "VerifyResult",
    "canonical_bytes",
    "checkpoint_path",
    "key_id",
    "log_files",
    "read_records",
    "record_hash",
    "verify",
]
