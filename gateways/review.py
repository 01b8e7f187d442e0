"""Review before release (先审后发): messages of flows that need approvals wait in `review/`.

Ingest puts them there instead of `ready/`. Security officers look at them (`zonegate review list
| show`), and approve or reject them by signing with their own key (`approve | reject --key FILE`):
the key, looked up in this gateway's config, proves the role; a name on the command line would
prove nothing. When enough distinct officers have approved, the message moves to `ready/` with
its approvals, which the sender checks again and seals into the envelope header.

Every decision, and every refused attempt, is an audit record written before the spool changes.
Officers and the agents work on one spool at once, so each decision holds `state/review.lock`.

The review record kept in the message's metadata (`extra.review`) names who collected it (the
gateway and agent, and the submitter), who reviewed it (each officer, decision and time) and who
gave the final approval, and when.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..audit.log import AuditLog
from ..transfer.approvals import (
    OFFICER,
    ApprovalRefused,
    Directory,
    Identity,
    Subject,
    check_approval,
    check_approvals,
    format_time,
    is_submitter,
    sign_statement,
)
from ..transfer.envelope import key_id
from ..transfer.keys import load_signing_private
from ..transfer.policy import CHECKS
from ..transfer.safetext import preview, safe_text
from ..transfer.spool import DATA, MessageMeta, Spool, SpoolError
from ..zones.config import Flow, GatewayConfig
from .agent import message_fields

__all__ = [
    "Decision",
    "ReviewDesk",
    "ReviewError",
    "expire_due",
    "review_lock",
    "subject_for",
    "submitter_of",
]

PREVIEW_BYTES = 2048

#: record(event, meta, outcome=..., reason=..., **extra): an agent's or the desk's audit writer
Recorder = Callable[..., None]


class ReviewError(Exception):
    """A review command that cannot run (no such message, unusable key): a usage problem."""


@dataclass(frozen=True)
class Decision:
    """What happened to one approve/reject attempt, for the CLI and the demo to print."""

    ok: bool
    code: str
    message: str
    approvals: int = 0
    required: int = 0
    released: bool = False


def _level(config: GatewayConfig, zone: str) -> str:
    return next((z.level for z in config.zones if z.name == zone), "")


def subject_for(config: GatewayConfig, meta: MessageMeta) -> Subject:
    """The approval subject of a message in this (sending) gateway's spool: exactly the fields
    the sender will write into the envelope header, so the receiver rebuilds the same one."""
    flow = config.flow(meta.flow)
    return Subject(
        message_id=meta.id,
        flow=meta.flow,
        sender=flow.sender,
        recipient=flow.receiver,
        system=meta.system,
        original_name=meta.original_name,
        content_type=meta.content_type,
        size=meta.size,
        sha256=meta.sha256,
        created=meta.created,
        classification=_level(config, flow.source),
    )


def submitter_of(meta: MessageMeta) -> str:
    """How the review record names the submitter: `person:<key id>` or `system:<account>`."""
    return meta.system if meta.system.startswith("person:") else f"system:{meta.system}"


def _deadline(meta: MessageMeta, flow: Flow) -> datetime | None:
    try:
        created = datetime.strptime(meta.created[:26], "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        return None
    return created.replace(tzinfo=UTC) + timedelta(seconds=flow.approval.expires)


@contextlib.contextmanager
def review_lock(spool: Spool) -> Iterator[None]:
    """One decision at a time on this spool (officers in parallel, the ingest expiry sweep)."""
    path = spool.dir("state") / "review.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def review_record(meta: MessageMeta) -> dict[str, Any]:
    record = meta.extra.get("review")
    return dict(record) if isinstance(record, dict) else {}


def expire_due(
    spool: Spool, config: GatewayConfig, record: Recorder, now: datetime | None = None
) -> list[MessageMeta]:
    """Move every message whose review time is over to quarantine (audit record first)."""
    now = now or datetime.now(UTC)
    expired = []
    with review_lock(spool):
        for msg_id in spool.ids("review"):
            try:
                meta = spool.read_meta("review", msg_id)
                flow = config.flow(meta.flow)
            except (SpoolError, KeyError):
                continue
            deadline = _deadline(meta, flow)
            if deadline is None or now <= deadline:
                continue
            reason = f"not approved by {format_time(deadline)} ({flow.approval.required} needed)"
            _quarantine(spool, record, meta, "review-expired", reason, event="expired")
            expired.append(meta)
    return expired


def _quarantine(
    spool: Spool,
    record: Recorder,
    meta: MessageMeta,
    code: str,
    reason: str,
    event: str = "quarantined",
    **extra: Any,
) -> None:
    meta = meta.replace(reason_code=code, reason=reason, rule="review")
    record(event, meta, outcome="refused", reason=f"{code}: {reason}", **extra)
    spool.write_meta("review", meta.id, meta)
    spool.move(meta.id, "review", "quarantine")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ReviewDesk:
    """The officers' side of review, on one gateway's spool and audit log."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool)
        self.spool.create()
        config.audit_log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.audit = AuditLog(
            config.audit_log, gateway=config.name, agent="review", zone=config.zone
        )
        try:
            self.directory = Directory.from_config(config)
        except Exception as e:  # KeyFileError, or two people with one key
            raise ReviewError(f"cannot load the people of {config.path}: {e}") from None

    # -- audit --------------------------------------------------------------------------
    def record(
        self,
        event: str,
        meta: MessageMeta | None,
        *,
        outcome: str = "ok",
        reason: str | None = None,
        who: Identity | None = None,
        **extra: Any,
    ) -> None:
        self.audit.append(
            event,
            message=message_fields(meta) if meta is not None else None,
            outcome=outcome,
            reason=reason,
            who={"person": who.name, "role": who.role} if who is not None else None,
            **extra,
        )

    # -- reading ------------------------------------------------------------------------
    def _find(self, msg_id: str) -> tuple[str, MessageMeta]:
        try:
            states = self.spool.states_of(msg_id)
        except ValueError:
            raise ReviewError(f"{msg_id!r} is not a message id") from None
        if not states:
            raise ReviewError(f"no message {msg_id} in this gateway's spool")
        state = states[0]
        try:
            return state, self.spool.read_meta(state, msg_id)
        except SpoolError as e:
            raise ReviewError(str(e)) from None

    def list(self) -> list[dict[str, Any]]:
        out = []
        for msg_id in self.spool.ids("review"):
            try:
                meta = self.spool.read_meta("review", msg_id)
                flow = self.config.flow(meta.flow)
            except (SpoolError, KeyError):
                continue
            deadline = _deadline(meta, flow)
            out.append(
                {
                    "id": msg_id,
                    "flow": meta.flow,
                    "name": safe_text(meta.original_name, keep_newlines=False),
                    "size": meta.size,
                    "submitter": submitter_of(meta),
                    "collected_at": meta.created,
                    "approvals": len(self._approvers(meta)),
                    "required": flow.approval.required,
                    "expires_at": format_time(deadline) if deadline else None,
                }
            )
        return out

    def _approvers(self, meta: MessageMeta) -> list[str]:
        """Distinct names of the officers whose stored approvals still verify."""
        names: list[str] = []
        subject = subject_for(self.config, meta)
        rule = self.config.flow(meta.flow).approval
        for item in meta.extra.get("approvals", []):
            try:
                v = check_approval(subject, item, self.directory, rule)
            except ApprovalRefused:
                continue
            if v.officer.name not in names:
                names.append(v.officer.name)
        return names

    def show(self, msg_id: str) -> dict[str, Any]:
        """Metadata, policy results, matched keywords, review record and a safe preview."""
        state, meta = self._find(msg_id)
        flow = self.config.flow(meta.flow)
        data = self.spool.entry(state, msg_id) / DATA
        text = None
        if data.is_file() and not data.is_symlink():
            fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                text = preview(f.read(PREVIEW_BYTES), PREVIEW_BYTES)
        deadline = _deadline(meta, flow)
        eligible = flow.approval.officers or tuple(
            p.name for p in self.config.people if p.role == OFFICER
        )
        passed = [getattr(c, "__name__", "check").strip("_") for c in CHECKS]
        keywords = meta.extra.get("keywords") or meta.extra.get("matched_keywords") or []
        return {
            "id": meta.id,
            "state": state,
            "flow": meta.flow,
            "name": safe_text(meta.original_name, keep_newlines=False),
            "size": meta.size,
            "sha256": meta.sha256,
            "content_type": safe_text(meta.content_type, keep_newlines=False),
            "classification": _level(self.config, flow.source),
            "submitter": submitter_of(meta),
            "collected_at": meta.created,
            "expires_at": format_time(deadline) if deadline else None,
            "policy": {
                "result": "refused" if meta.reason_code else "passed",
                "checks": passed,
                "refusal": (
                    safe_text(f"{meta.reason_code}: {meta.reason}", keep_newlines=False)
                    if meta.reason_code
                    else None
                ),
            },
            "keywords": [safe_text(str(k), keep_newlines=False) for k in keywords],
            "approval": {
                "required": flow.approval.required,
                "officers": list(eligible),
                "approved_by": self._approvers(meta),
            },
            "review": _safe_json(review_record(meta)),
            "preview": text,
            "preview_bytes": min(meta.size, PREVIEW_BYTES),
        }

    # -- deciding -----------------------------------------------------------------------
    def _signer(self, key_file: Path) -> tuple[Any, str, Identity | None]:
        try:
            key = load_signing_private(Path(key_file))
        except Exception as e:  # KeyFileError: wrong type, too open, unreadable
            raise ReviewError(str(e)) from None
        kid = key_id(key.public_key())
        return key, kid, self.directory.by_key_id(kid)

    def _refuse(
        self, event: str, meta: MessageMeta, who: Identity | None, kid: str, code: str, why: str
    ) -> Decision:
        self.record(
            event, meta, outcome="refused", reason=f"{code}: {why}", who=who, fingerprint=kid
        )
        return Decision(False, code, why)

    def approve(self, msg_id: str, key_file: Path, now: datetime | None = None) -> Decision:
        """Sign and store one officer's approval; release the message when enough are given."""
        key, kid, person = self._signer(key_file)
        with review_lock(self.spool):
            state, meta = self._find(msg_id)
            if state != "review":
                why = (
                    "its review expired; it is in quarantine"
                    if meta.reason_code == "review-expired"
                    else f"it is not waiting for review (it is in {state}/)"
                )
                expired = meta.reason_code == "review-expired"
                code = "approval-expired" if expired else "not-in-review"
                self.record(
                    "approved",
                    meta,
                    outcome="refused",
                    reason=f"{code}: {why}",
                    who=person,
                    fingerprint=kid,
                )
                return Decision(False, code, why)
            flow = self.config.flow(meta.flow)
            rule = flow.approval
            subject = subject_for(self.config, meta)
            now = now or datetime.now(UTC)
            if person is None:
                return self._refuse(
                    "approved", meta, None, kid, "approval-unknown-key",
                    f"key {kid} belongs to no person in {self.config.path.name}",
                )  # fmt: skip
            if person.role != OFFICER:
                return self._refuse(
                    "approved", meta, person, kid, "approval-not-officer",
                    f"{person.name} is {person.role}; only a security officer may approve",
                )  # fmt: skip
            if rule.officers and person.name not in rule.officers:
                return self._refuse(
                    "approved", meta, person, kid, "approval-not-eligible",
                    f"{person.name} is not among the officers of flow {flow.name}",
                )  # fmt: skip
            if is_submitter(person, meta.system):
                return self._refuse(
                    "approved", meta, person, kid, "approval-by-submitter",
                    f"{person.name} submitted this message and cannot approve it "
                    f"(two-person rule)",
                )  # fmt: skip
            if person.name in self._approvers(meta):
                return self._refuse(
                    "approved", meta, person, kid, "approval-duplicate",
                    f"{person.name} has already approved this message; the same officer "
                    f"counts once",
                )  # fmt: skip
            deadline = _deadline(meta, flow)
            if deadline is None or now > deadline:
                why = f"the review expired at {format_time(deadline) if deadline else '?'}"
                self.record(
                    "approved", meta, outcome="refused", reason=f"approval-expired: {why}",
                    who=person, fingerprint=kid,
                )  # fmt: skip
                _quarantine(self.spool, self.record, meta, "review-expired", why, "expired")
                return Decision(False, "approval-expired", why + "; moved to quarantine")
            if _hash_file(self.spool.entry("review", msg_id) / DATA) != meta.sha256:
                why = "the file changed after it was collected (SHA-256 differs); not approved"
                self.record(
                    "approved", meta, outcome="refused",
                    reason=f"approval-content-changed: {why}", who=person, fingerprint=kid,
                )  # fmt: skip
                _quarantine(self.spool, self.record, meta, "content-changed", why)
                return Decision(False, "approval-content-changed", why + "; moved to quarantine")
            item = sign_statement(subject, key, format_time(now))
            try:  # the gateway's own check is the authority, not the pre-checks above
                check_approval(subject, item, self.directory, rule)
            except ApprovalRefused as r:
                return self._refuse("approved", meta, person, kid, r.code, r.reason)
            items = [*meta.extra.get("approvals", []), item]
            review = review_record(meta)
            reviews = [
                *review.get("reviews", []),
                {"person": person.name, "role": person.role, "decision": "approve",
                 "time": item["time"], "fingerprint": kid},
            ]  # fmt: skip
            review["reviews"] = reviews
            try:
                verified = check_approvals(subject, items, self.directory, rule)
                final = True
            except ApprovalRefused:
                verified, final = (), False
            count = len(verified) if final else len(self._approvers(meta)) + 1
            if final:
                review["final_approval"] = {"person": person.name, "time": item["time"]}
            meta = meta.replace(extra={**meta.extra, "approvals": items, "review": review})
            self.record(
                "approved", meta, who=person, fingerprint=kid, approved_at=item["time"],
                approvals=count, required=rule.required, final=final,
            )  # fmt: skip
            self.spool.write_meta("review", msg_id, meta)
            if final:
                names = ", ".join(v.officer.name for v in verified)
                self.record("accepted", meta, reason=f"released after review, approved by {names}")
                self.spool.move(msg_id, "review", "ready")
                return Decision(True, "released", f"approved; released to send ({names})",
                                count, rule.required, True)  # fmt: skip
            return Decision(True, "approved", f"approved ({count} of {rule.required})",
                            count, rule.required)  # fmt: skip

    def reject(
        self, msg_id: str, key_file: Path, reason: str, now: datetime | None = None
    ) -> Decision:
        """An officer refuses the release: signed, with a reason; the message goes to quarantine."""
        if not reason or not reason.strip():
            raise ReviewError("a rejection needs a reason (--reason TEXT)")
        key, kid, person = self._signer(key_file)
        with review_lock(self.spool):
            state, meta = self._find(msg_id)
            if state != "review":
                return self._refuse(
                    "rejected", meta, person, kid, "not-in-review",
                    f"it is not waiting for review (it is in {state}/)",
                )  # fmt: skip
            if person is None:
                return self._refuse(
                    "rejected", meta, None, kid, "approval-unknown-key",
                    f"key {kid} belongs to no person in {self.config.path.name}",
                )  # fmt: skip
            if person.role != OFFICER:
                return self._refuse(
                    "rejected", meta, person, kid, "approval-not-officer",
                    f"{person.name} is {person.role}; only a security officer may reject",
                )  # fmt: skip
            now = now or datetime.now(UTC)
            subject = subject_for(self.config, meta)
            statement = sign_statement(subject, key, format_time(now), "reject", reason.strip())
            review = review_record(meta)
            review["reviews"] = [
                *review.get("reviews", []),
                {"person": person.name, "role": person.role, "decision": "reject",
                 "time": statement["time"], "reason": reason.strip(), "fingerprint": kid,
                 "sig": statement["sig"]},
            ]  # fmt: skip
            meta = meta.replace(extra={**meta.extra, "review": review})
            self.record(
                "rejected", meta, reason=reason.strip(), who=person, fingerprint=kid,
                rejected_at=statement["time"], signature=statement["sig"],
            )  # fmt: skip
            _quarantine(
                self.spool, self.record, meta, "rejected-in-review",
                f"rejected by {person.name}: {reason.strip()}",
            )  # fmt: skip
            return Decision(True, "rejected", f"rejected by {person.name}; moved to quarantine")


def _safe_json(value: Any) -> Any:
    """A review record with every string made terminal-safe (it holds reasons people typed)."""
    if isinstance(value, str):
        return safe_text(value, keep_newlines=False)
    if isinstance(value, list):
        return [_safe_json(v) for v in value]
    if isinstance(value, dict):
        return {safe_text(str(k), False): _safe_json(v) for k, v in value.items()}
    return value
