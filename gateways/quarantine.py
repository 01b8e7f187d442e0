"""Quarantine tools: list, show, release and purge refused messages, every change audited.

Why release moves the message to ready/ untouched: the officer's decision overrides the policy
for that one file, and the bytes must stay exactly those that were refused and inspected
(byte-identical, the hash in meta.json and in the audit log). The audit record is written
before the move, as everywhere, so the log never misses a release or a purge.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..audit.log import AuditLog
from ..transfer.spool import DATA, MessageMeta, Spool, SpoolError
from ..zones.config import GatewayConfig
from .agent import message_fields, utc_now

__all__ = ["Operator", "QuarantineError", "list_entries", "purge", "release", "show"]


class QuarantineError(Exception):
    """The message is not in quarantine (or cannot be read); the operator gets this message."""


@dataclass(frozen=True)
class Operator:
    """Who asks for a change, and the role they claim; recorded in the audit log."""

    person: str
    role: str = "security-officer"


def _spool(config: GatewayConfig) -> Spool:
    return Spool(config.spool)


def _audit(config: GatewayConfig) -> AuditLog:
    return AuditLog(config.audit_log, gateway=config.name, agent="quarantine", zone=config.zone)


def _summary(msg_id: str, meta: MessageMeta) -> dict[str, Any]:
    return {
        "id": msg_id,
        "flow": meta.flow,
        "name": meta.original_name,
        "size": meta.size,
        "sha256": meta.sha256,
        "created": meta.created,
        "reason": meta.reason_code,
        "rule": meta.rule,
        "detail": meta.reason,
        "terms": list(meta.extra.get("terms", [])),
    }


def list_entries(config: GatewayConfig) -> list[dict[str, Any]]:
    out = []
    spool = _spool(config)
    for msg_id in spool.ids("quarantine"):
        try:
            out.append(_summary(msg_id, spool.read_meta("quarantine", msg_id)))
        except SpoolError as e:
            out.append({"id": msg_id, "error": str(e)})
    return out


def _read(config: GatewayConfig, msg_id: str) -> MessageMeta:
    spool = _spool(config)
    try:
        return spool.read_meta("quarantine", msg_id)
    except ValueError:
        raise QuarantineError(f"{msg_id!r} is not a message id") from None
    except SpoolError:
        raise QuarantineError(f"no message {msg_id} in quarantine") from None


def show(config: GatewayConfig, msg_id: str) -> dict[str, Any]:
    meta = _read(config, msg_id)
    data = _spool(config).entry("quarantine", msg_id) / DATA
    return {**_summary(msg_id, meta), "meta": json.loads(meta.to_json()), "data": str(data)}


def release(config: GatewayConfig, msg_id: str, operator: Operator) -> dict[str, Any]:
    """Move a refused message on to ready/ (the sender seals it as any other)."""
    meta = _read(config, msg_id)
    spool = _spool(config)
    _audit(config).append(
        "released",
        message=message_fields(meta),
        outcome="ok",
        reason=f"released by {operator.person} over {meta.reason_code}",
        who={"person": operator.person, "role": operator.role},
    )
    released = {"by": operator.person, "role": operator.role, "at": utc_now()}
    spool.write_meta("quarantine", msg_id, meta.replace(extra={**meta.extra, "released": released}))
    spool.move(msg_id, "quarantine", "ready")
    return _summary(msg_id, meta)


def purge(config: GatewayConfig, older_than: float, operator: Operator) -> list[str]:
    """Delete quarantined messages refused more than `older_than` seconds ago."""
    spool = _spool(config)
    cutoff = time.time() - older_than
    audit = _audit(config)
    purged = []
    for msg_id in spool.ids("quarantine"):
        try:
            meta = spool.read_meta("quarantine", msg_id)
            when = datetime.strptime(meta.created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            created = when.timestamp()
        except (SpoolError, ValueError):
            meta = MessageMeta(id=msg_id, flow="", system="", original_name="")
            created = spool.entry("quarantine", msg_id).stat().st_mtime
        if created > cutoff:
            continue
        audit.append(
            "purged",
            message=message_fields(meta),
            outcome="ok",
            reason=f"purged by {operator.person}: refused ({meta.reason_code}) before the cutoff",
            who={"person": operator.person, "role": operator.role},
        )
        spool.remove("quarantine", msg_id)
        purged.append(msg_id)
    return purged
