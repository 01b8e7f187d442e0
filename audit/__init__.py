"""The tamper-evident audit log: one append-only, hash-chained JSON-lines file per gateway.

``AuditLog.append`` writes a record durably (or raises ``AuditWriteError`` so the caller fails
closed); ``verify`` checks the chain and names the first bad line; ``read_records`` reads it
back for search and reports.
"""

from .log import AuditLog, AuditWriteError
from .record import EVENTS, GENESIS_HASH, OUTCOMES, AuditRecord, canonical_bytes, record_hash
from .verify import VerifyResult, read_records, verify

__all__ = [
    "EVENTS",
    "GENESIS_HASH",
    "OUTCOMES",
    "AuditLog",
    "AuditRecord",
    "AuditWriteError",
    "VerifyResult",
    "canonical_bytes",
    "read_records",
    "record_hash",
    "verify",
]
