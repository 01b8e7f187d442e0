"""Approvals: an officer's Ed25519 signature that one message, exactly as reviewed, may leave.

先审后发, "review before release": a flow that needs approvals releases a message only with
enough distinct security officers' approvals. An approval is a signature over a canonical payload
(``docs/approvals.md``) that binds the message id, the flow, the route (sending and receiving
gateway), the submitter and every sequence-independent header field including the plaintext's
SHA-256 and size, plus the approver's key id and the time. So an approval cannot be moved to
another message, another flow or another content: change one byte of the file and its SHA-256,
hence the signed payload, changes.

Approvals are checked three times, each time against the checking gateway's *own* list of people:
when an officer gives one (``zonegate review approve``), when the sender seals (a message dropped
straight into ``ready/`` has none and is never sent), and when the receiver opens the envelope
(the receiving side trusts nothing the sending side decided).

Pure: no files except the public keys ``Directory.from_config`` loads, no sockets, no logging.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..zones.config import Approval, GatewayConfig
from .envelope import key_id
from .keys import load_signing_public

if TYPE_CHECKING:
    from .envelope import Header

__all__ = [
    "APPROVAL_CONTEXT",
    "CODES",
    "ApprovalRefused",
    "Directory",
    "Identity",
    "Subject",
    "Verified",
    "approval_payload",
    "check_approval",
    "check_approvals",
    "format_time",
    "is_submitter",
    "sign_statement",
    "signed_bytes",
]

#: Prepended to the canonical payload before signing: an approval signature can never be taken
#: for (or replayed as) an envelope, audit or publication signature made with the same key.
APPROVAL_CONTEXT = b"zonegate/approval/v1\n"
PERSON_PREFIX = "person:"
OFFICER = "security-officer"

#: Refusal codes (for metrics, audit reasons and tests); each comes with a sentence for people.
CODES = frozenset(
    {
        "approval-malformed",
        "approval-unknown-key",
        "approval-bad-signature",
        "approval-not-officer",
        "approval-not-eligible",
        "approval-by-submitter",
        "approval-duplicate",
        "approval-expired",
        "approval-content-changed",
        "approvals-too-few",
    }
)

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_ITEM_KEYS = frozenset({"approver", "time", "sig"})


class ApprovalRefused(Exception):
    """An approval (or a set of them) that does not count, and why."""

    def __init__(self, code: str, reason: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown approval refusal code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds, the one spelling an approval time may have."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text[:-1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Subject:
    """What an approval is about: every header field that does not depend on the sequence number.

    The sequence number is given at sealing time, after review, so it cannot be signed; the
    message id (unique) binds the approval to the message instead. ``system`` is the submitter.
    """

    message_id: str
    flow: str
    sender: str
    recipient: str
    system: str
    original_name: str
    content_type: str
    size: int
    sha256: str
    created: str
    classification: str

    @classmethod
    def from_header(cls, header: Header) -> Subject:
        return cls(
            message_id=header.message_id,
            flow=header.flow,
            sender=header.sender,
            recipient=header.recipient,
            system=header.system,
            original_name=header.original_name,
            content_type=header.content_type,
            size=header.size,
            sha256=header.sha256,
            created=header.created,
            classification=header.classification,
        )


def approval_payload(
    subject: Subject, decision: str, approver: str, time: str, reason: str | None = None
) -> dict[str, Any]:
    """The statement an officer signs (``docs/approvals.md`` lists every key)."""
    if decision not in ("approve", "reject"):
        raise ValueError(f"decision must be approve or reject, got {decision!r}")
    payload: dict[str, Any] = {
        "type": "zonegate-approval",
        "v": 1,
        "decision": decision,
        "id": subject.message_id,
        "flow": subject.flow,
        "sender": subject.sender,
        "recipient": subject.recipient,
        "system": subject.system,
        "name": subject.original_name,
        "content_type": subject.content_type,
        "size": subject.size,
        "sha256": subject.sha256,
        "created": subject.created,
        "classification": subject.classification,
        "approver": approver,
        "time": time,
    }
    if decision == "reject":
        payload["reason"] = reason or ""
    return payload


def signed_bytes(payload: Mapping[str, Any]) -> bytes:
    """Context + canonical JSON (sorted keys, no spaces, UTF-8, no NaN): one statement, one
    byte string, so a verifier rebuilds exactly what was signed from the header alone."""
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return APPROVAL_CONTEXT + text.encode("utf-8")


def sign_statement(
    subject: Subject,
    key: Ed25519PrivateKey,
    time: str,
    decision: str = "approve",
    reason: str | None = None,
) -> dict[str, str]:
    """Sign an approval (or rejection); returns the item that travels in the envelope header.

    The item carries only the approver's key id, the time and the signature: everything else is
    rebuilt by the verifier from the header, so nothing in the item can disagree with it.
    """
    approver = key_id(key.public_key())
    payload = approval_payload(subject, decision, approver, time, reason)
    item = {"approver": approver, "time": time, "sig": key.sign(signed_bytes(payload)).hex()}
    if decision == "reject":
        item["reason"] = reason or ""
    return item


@dataclass(frozen=True)
class Identity:
    """A person of this gateway's config, with their public key loaded."""

    name: str
    role: str
    key_id: str
    public_key: Ed25519PublicKey
    accounts: tuple[str, ...] = ()


class Directory:
    """This gateway's own people, found by key id (never by a name an envelope or CLI claims)."""

    def __init__(self, people: Iterable[Identity]) -> None:
        self._by_id: dict[str, Identity] = {}
        self._by_name: dict[str, Identity] = {}
        for person in people:
            if person.key_id in self._by_id:
                other = self._by_id[person.key_id].name
                raise ValueError(
                    f"{person.name} and {other} have the same key; a person holds one role"
                )
            self._by_id[person.key_id] = person
            self._by_name[person.name] = person

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Directory:
        """Load every person's public key; KeyFileError or ValueError name what is wrong."""
        people = []
        for person in config.people:
            public = load_signing_public(person.key)
            people.append(
                Identity(person.name, person.role, key_id(public), public, person.accounts)
            )
        return cls(people)

    def by_key_id(self, kid: str) -> Identity | None:
        return self._by_id.get(kid)

    def by_name(self, name: str) -> Identity | None:
        return self._by_name.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id.values())


def is_submitter(person: Identity, system: str) -> bool:
    """Did `person` submit a message whose header `system` is this?

    The submitter is the header's ``system``: ``person:<key id>`` for a file a person submitted
    with their own key, otherwise the dropping system or account (an outbox, an SFTP account), of
    which the config lists the people who use it (``people[].accounts``).
    """
    if system.startswith(PERSON_PREFIX):
        return hmac.compare_digest(system[len(PERSON_PREFIX) :].encode(), person.key_id.encode())
    return system in person.accounts


@dataclass(frozen=True)
class Verified:
    """One approval that counts: who gave it and when."""

    officer: Identity
    time: str
    item: Mapping[str, str]


def _item_fields(item: object) -> tuple[str, str, bytes]:
    if not isinstance(item, Mapping) or set(item) != _ITEM_KEYS:
        raise ApprovalRefused(
            "approval-malformed", "an approval must hold exactly approver, time and sig"
        )
    approver, time, sig = item["approver"], item["time"], item["sig"]
    if not isinstance(approver, str) or not _HEX32.fullmatch(approver):
        raise ApprovalRefused("approval-malformed", "approver must be a 32-hex key id")
    if not isinstance(time, str) or not _TIME.fullmatch(time):
        raise ApprovalRefused("approval-malformed", "time must be like 2026-11-25T09:41:56.123456Z")
    try:
        _parse_time(time)
    except ValueError:
        raise ApprovalRefused("approval-malformed", "time is not a real date and time") from None
    if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
        raise ApprovalRefused("approval-malformed", "sig must be 128 hex digits (Ed25519)")
    return approver, time, bytes.fromhex(sig)


def check_approval(
    subject: Subject, item: object, directory: Directory, rule: Approval
) -> Verified:
    """One approval item: a real officer of ours, eligible for the flow, not the submitter,
    signed over exactly this subject, in time. Raises ApprovalRefused naming the first failure.

    The signature is checked before the role, so "by an administrator" means an administrator's
    key really signed it, not that someone wrote an administrator's key id into a list.
    """
    approver, time, sig = _item_fields(item)
    person = directory.by_key_id(approver)
    if person is None:
        raise ApprovalRefused(
            "approval-unknown-key", f"key {approver} is not a person listed in this gateway"
        )
    try:
        payload = approval_payload(subject, "approve", approver, time)
        person.public_key.verify(sig, signed_bytes(payload))
    except InvalidSignature:
        raise ApprovalRefused(
            "approval-bad-signature",
            f"{person.name}'s signature does not match this message (a changed header, "
            f"content hash, flow or id), or was not made with their key",
        ) from None
    if person.role != OFFICER:
        raise ApprovalRefused(
            "approval-not-officer",
            f"{person.name} is {person.role}; only a security officer may approve",
        )
    if rule.officers and person.name not in rule.officers:
        raise ApprovalRefused(
            "approval-not-eligible",
            f"{person.name} is not among the officers of flow {subject.flow}: "
            f"{', '.join(rule.officers)}",
        )
    if is_submitter(person, subject.system):
        raise ApprovalRefused(
            "approval-by-submitter",
            f"{person.name} submitted this message and cannot approve it (two-person rule)",
        )
    created = _parse_time_lenient(subject.created)
    when = _parse_time(time)
    if created is not None and when > created + timedelta(seconds=rule.expires):
        raise ApprovalRefused(
            "approval-expired",
            f"approved at {time}, after the review expired "
            f"({format_time(created + timedelta(seconds=rule.expires))})",
        )
    return Verified(person, time, dict(item))  # type: ignore[arg-type]


def _parse_time_lenient(text: str) -> datetime | None:
    """`created` as written by ingest or found in a header (1..9 fraction digits)."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z", text)
    if m is None:
        return None
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    return base + timedelta(microseconds=int(fraction))


def check_approvals(
    subject: Subject, items: Iterable[object], directory: Directory, rule: Approval
) -> tuple[Verified, ...]:
    """Every item must verify; distinct officers must reach `rule.required`.

    Any item that does not verify refuses the whole set: an honest sender never adds one, so an
    invalid item means the list was edited or forged. The same officer twice counts once.
    """
    counted: dict[str, Verified] = {}
    for item in items:
        verified = check_approval(subject, item, directory, rule)
        counted.setdefault(verified.officer.key_id, verified)
    if len(counted) < rule.required:
        names = ", ".join(v.officer.name for v in counted.values()) or "none"
        raise ApprovalRefused(
            "approvals-too-few",
            f"flow {subject.flow} needs {rule.required} distinct officers' approvals, "
            f"has {len(counted)} ({names})",
        )
    return tuple(sorted(counted.values(), key=lambda v: (v.time, v.officer.name)))
