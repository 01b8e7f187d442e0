"""The receiver agent: takes envelopes off the link, verifies, decrypts and delivers them.

Two stages, each its own thread so a slow disk write never stalls the socket:
- link: frames -> `tmp/link/<id>/envelope` -> `received/<id>/` once the END frame's digest
  matches (durable before anything else happens to it);
- deliver: `received/` -> checks (flow, recipient, sender, replay, sequence) -> open the envelope
  -> the destination side's own policy -> atomic delivery into `inbox/<flow>/new/`, then a
  `delivered/<id>` marker that makes delivery idempotent by message id.

It writes nothing to the link. Anything refused is kept in `quarantine/` with its reason.

Approvals are checked against this gateway's own people: an envelope of a flow that needs them is
refused when one does not verify, when there are too few, or when one is from someone who is not a
security officer here. A flow with `signed_delivery` gets a signed manifest beside each delivered
file (transfer/publication.py) so the publishing step can verify it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..transfer import envelope as env
from ..transfer import hops as hop_records
from ..transfer.approvals import ApprovalRefused, Directory, Subject, Verified, check_approvals
from ..transfer.durable import (
    durable_rename,
    fsync_dir,
    open_exclusive,
    replace_durably,
    write_durably,
)
from ..transfer.ids import new_message_id
from ..transfer.keys import load_encryption_private, load_signing_private, load_signing_public
from ..transfer.link import Arrival, LinkNote, open_receiver
from ..transfer.names import safe_name
from ..transfer.publication import companion_paths, make_manifest, sign_manifest
from ..transfer.spool import ENVELOPE, META, MessageMeta
from ..transfer.udp_recv import kernel_rcvbuf_errors
from ..zones.config import Flow
from .agent import AgentContext, FailClosed, utc_now

__all__ = ["ReceiverAgent", "inbox_dirs"]

log = logging.getLogger("zonegate.receiver")
ENVELOPE_OVERHEAD = 1024 * 1024  # header, wrapped key, per-chunk tags, signature: generous


def inbox_dirs(root: Path, flow: str) -> tuple[Path, Path]:
    """The (tmp, new) pair of a flow's Maildir-style inbox."""
    return root / flow / "tmp", root / flow / "new"


class Refused(Exception):
    def __init__(self, code: str, reason: str, event: str = "quarantined") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.event = event


class ReceiverAgent:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.private_key = load_encryption_private(cfg.encryption_key)
        self.our_key_id = env.key_id(self.private_key.public_key())
        self.flows: dict[str, Flow] = {f.name: f for f in cfg.incoming_flows()}
        self.sender_keys: dict[str, Ed25519PublicKey] = {}
        self.relay_keys: dict[str, Ed25519PublicKey] = {}
        for flow in self.flows.values():
            peer = cfg.peer(flow.sender)
            self.sender_keys[peer.name] = load_signing_public(peer.signing_key)
            for hop in flow.via:  # relays sign hop records, never envelopes
                relay = cfg.peer(hop.gateway)
                self.relay_keys[relay.name] = load_signing_public(relay.signing_key)
        #: hop summaries of verified relayed messages, until delivery writes them into meta
        self._hops: dict[str, str] = {}
        self.lock = threading.Lock()  # serialises moves into received/ against dedup checks
        self.directory = Directory.from_config(cfg)
        self.publication_key = (
            load_signing_private(cfg.signing_key)
            if any(f.signed_delivery for f in self.flows.values())
            else None
        )
        for flow in self.flows.values():
            for d in inbox_dirs(cfg.inbox, flow.name):
                d.mkdir(parents=True, exist_ok=True)

    # -- running ------------------------------------------------------------------------
    def run(self) -> None:
        self.ctx.record("agent-started", outcome="info")
        self._discard_partial_transfers()
        stages = [(f"link-{f.name}", partial(self.link_loop, f)) for f in self.flows.values()]
        self.ctx.run_stages([*stages, ("deliver", self.deliver_loop)])
        self.ctx.record_stopped()

    def _discard_partial_transfers(self) -> None:
        scratch = self.ctx.spool.dir("tmp/link")
        for entry in scratch.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
        fsync_dir(scratch)

    # -- link stage ---------------------------------------------------------------------
    def link_loop(self, flow: Flow) -> None:
        scratch = self.ctx.spool.dir("tmp/link")
        # A relayed flow arrives from its last relay: the link is the one-hop flow into us.
        hop = flow.link_into(self.ctx.config.name)
        link = open_receiver(hop, scratch, flow.policy.max_size + ENVELOPE_OVERHEAD)
        self.ctx.metrics.link_up.labels(flow.name).set(1)
        try:
            while not self.ctx.stop.is_set():
                if flow.transport.kind == "udp":
                    self.ctx.metrics.rcvbuf_errors.set(kernel_rcvbuf_errors())
                for item in link.poll(200):
                    if isinstance(item, Arrival):
                        self.ctx.metrics.bytes.labels(flow.name, "link").inc(item.size)
                        self._accept_from_link(flow, item)
                    else:
                        self._on_note(flow, item)
        finally:
            link.close()

    def _on_note(self, flow: Flow, note: LinkNote) -> None:
        if note.kind == "heartbeat":
            self.ctx.metrics.last_heartbeat.labels(flow.name).set(time.time())
            self.ctx.metrics.link_up.labels(flow.name).set(1)
            return
        if note.kind == "repeat":  # the transport's own repeat round of a message held here
            fields = {"id": note.transfer or "", "flow": flow.name}
            self.ctx.record("duplicate", fields, outcome="info", reason=note.reason)
            self.ctx.metrics.messages.labels(flow.name, "receive", "duplicate").inc()
            return
        if note.kind == "silent":
            self.ctx.metrics.link_up.labels(flow.name).set(0)
            self.ctx.record("link-down", {"flow": flow.name}, outcome="info", reason=note.reason)
            return
        if note.kind == "lost":  # a message that will never complete: a gap, named if possible
            if note.transfer and any(
                self.ctx.spool.entry(s, note.transfer).exists() for s in ("received", "delivered")
            ):
                return  # an earlier copy arrived (before a restart of this receiver)
            fields = {"flow": flow.name} | ({"id": note.transfer} if note.transfer else {})
            self.ctx.record(
                "gap", fields, outcome="error", reason=f"lost on the link: {note.reason}"
            )
            self.ctx.metrics.lost.labels(flow.name).inc()
        reason = {"aborted": "transfer-aborted", "stray": "stray-frame"}.get(note.kind, note.kind)
        self.ctx.metrics.rejections.labels(flow.name, "link", reason).inc()
        log.warning("flow %s: %s: %s", flow.name, note.kind, note.reason)

    def _accept_from_link(self, flow: Flow, arrival: Arrival) -> None:
        spool = self.ctx.spool
        msg_id, work, resend = arrival.transfer, arrival.directory, arrival.resend
        meta = MessageMeta(id=msg_id, flow=flow.name, system=flow.sender, original_name="")
        meta = meta.replace(
            resent=int(resend), created=utc_now(), extra={"link_sha256": arrival.sha256}
        )
        with self.lock:
            known = (
                spool.entry("delivered", msg_id).exists()
                or spool.entry("received", msg_id).exists()
            )
            if known and resend:
                # The sender could not know this arrived: drop the copy, say so.
                self.ctx.record(
                    "duplicate", meta, outcome="info", reason="re-send of a held message"
                )
                self.ctx.metrics.messages.labels(flow.name, "receive", "duplicate").inc()
                shutil.rmtree(work, ignore_errors=True)
                return
            write_durably(work / META, meta.to_json())
            if known:
                self._quarantine_dir(
                    work, meta, "replay", "message id was already received or delivered", "replay"
                )
                return
            self.ctx.record("received-on-link", meta)
            durable_rename(work, spool.entry("received", msg_id))
        self.ctx.metrics.messages.labels(flow.name, "receive", "received").inc()

    # -- deliver stage ------------------------------------------------------------------
    def deliver_loop(self) -> None:
        while not self.ctx.stop.is_set():
            ids = self.ctx.spool.ids("received")
            for msg_id in ids:
                if self.ctx.stop.is_set():
                    return
                self._deliver_guarded(msg_id)
            if not ids:
                self.ctx.sleep(0.05)

    def _deliver_guarded(self, msg_id: str) -> None:
        """A message that breaks delivery goes to corrupt/; the ones behind it go on."""
        try:
            self.deliver(msg_id)
            self.ctx.metrics.disk_full.set(0)
            return
        except FailClosed:
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("disk full while delivering %s; waiting for space: %s", msg_id, e)
                self.ctx.metrics.disk_full.set(1)
                self.ctx.sleep(1.0)
                return
            reason = f"{type(e).__name__}: {e}"
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
        log.exception("cannot deliver received/%s; moving it to corrupt/", msg_id)
        if self.ctx.spool.entry("received", msg_id).exists():
            meta = MessageMeta(id=msg_id, flow="unknown", system="", original_name="")
            with contextlib.suppress(Exception):
                meta = self.ctx.spool.read_meta("received", msg_id)
            self._corrupt_received(msg_id, meta, f"internal error: {reason}")

    def deliver(self, msg_id: str) -> None:
        started = time.monotonic()
        spool = self.ctx.spool
        entry = spool.entry("received", msg_id)
        try:
            meta = spool.read_meta("received", msg_id)
        except Exception as e:
            meta = MessageMeta(id=msg_id, flow="unknown", system="", original_name="")
            self._corrupt_received(msg_id, meta, f"unreadable metadata: {e}")
            return
        if meta.extra.get("delivering_to") or meta.extra.get("delivered_as"):
            self._finish_delivery(msg_id, meta)  # a crash interrupted it: finish, never redo
            return
        flow = self.flows.get(meta.flow)
        try:
            if flow is None:
                raise Refused("unknown-flow", f"flow {meta.flow!r} is not received here")
            header = self._verify_and_open(entry, flow, meta)
            approvals = self._check_approvals(flow, header)
        except Refused as r:
            if self._damaged_on_disk(entry, meta):
                self._corrupt_received(
                    msg_id, meta, f"envelope changed on disk since it arrived ({r})"
                )
            else:
                self._quarantine_received(msg_id, meta, r.code, r.reason, r.event)
            return
        meta = _meta_from_header(header, resent=meta.resent)
        if header.message_id in self._hops:  # the delivered record lists every hop
            meta = meta.replace(extra={"hops": self._hops.pop(header.message_id)})
        if approvals:
            meta = meta.replace(
                extra={**meta.extra, "approvers": [_approver(v) for v in approvals]}
            )
        self._sequence(flow, header.sequence, meta)
        self._deliver_plaintext(msg_id, meta, flow)
        self.ctx.metrics.observe_stage(flow.name, "deliver", started)

    def _verify_and_open(self, entry: Path, flow: Flow, meta: MessageMeta) -> env.Header:
        path = entry / ENVELOPE
        with open(path, "rb") as src:
            try:
                hops, offset = hop_records.read_wrapper(src)
                if hops and not flow.via:
                    raise Refused("bad-hop", f"flow {flow.name!r} is not relayed here")
                header, _length = env.read_header(src)
            except (env.EnvelopeError, hop_records.HopError) as e:
                raise Refused(e.reason, e.detail) from None
            if header.message_id != meta.id:
                raise Refused("malformed", "the envelope's id differs from its link transfer id")
            if header.flow != flow.name or header.sender != flow.sender:
                raise Refused(
                    "wrong-flow",
                    f"envelope for flow {header.flow!r} from {header.sender!r} "
                    f"arrived on flow {flow.name!r}",
                )
            if header.recipient != self.ctx.config.name:
                raise Refused("wrong-recipient", f"addressed to {header.recipient!r}, not us")
            if header.size > flow.policy.max_size or header.size < flow.policy.min_size:
                raise Refused(
                    "policy-size",
                    f"{header.size} bytes is outside this side's limits "
                    f"{flow.policy.min_size}..{flow.policy.max_size}",
                )
            if flow.via:
                self._check_hops(src, flow, header, hops, offset)
            inbox_tmp, _new = inbox_dirs(self.ctx.config.inbox, flow.name)
            part = inbox_tmp / f"{header.message_id}.part"
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            try:
                src.seek(offset)
                with open_exclusive(part) as dst:
                    env.open_envelope(src, dst, self.private_key, self._sender_key)
                    dst.flush()
                    os.fsync(dst.fileno())
            except env.EnvelopeError as e:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                raise Refused(e.reason, e.detail) from None
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                raise
        verified = _meta_from_header(header, resent=meta.resent)
        if flow.via:
            self.ctx.record("verified", verified, hops=hop_records.summary(hops))
            self._hops[header.message_id] = hop_records.summary(hops)
        else:
            self.ctx.record("verified", verified)
        return header

    def _check_hops(
        self, src: BinaryIO, flow: Flow, header: env.Header, hops: tuple, offset: int
    ) -> None:
        """Every relay of the configured route signed a hop record for exactly this envelope,
        in order (docs/relay.md). The originator's own signature is checked by open_envelope."""
        try:
            digest = hop_records.envelope_digest(src, offset)
            hop_records.check_hops(hops, header, digest, flow.route, self._relay_key)
        except hop_records.HopError as e:
            raise Refused(e.reason, e.detail) from None

    def _relay_key(self, relay: str, key: str) -> Ed25519PublicKey | None:
        public = self.relay_keys.get(relay)
        if public is None or not hmac.compare_digest(env.key_id(public), key):
            return None
        return public

    def _check_approvals(self, flow: Flow, header: env.Header) -> tuple[Verified, ...]:
        """The flow's approvals, verified against our own officers; each one is audited.

        Runs after the envelope's signature verified, so a refusal here is about the approvals
        themselves (forged, too few, from someone who is not an officer here), not the bytes.
        """
        if not flow.approval.required:
            return ()
        try:
            verified = check_approvals(
                Subject.from_header(header), header.approvals, self.directory, flow.approval
            )
        except ApprovalRefused as r:
            _tmp, _new = inbox_dirs(self.ctx.config.inbox, flow.name)
            with contextlib.suppress(FileNotFoundError):
                (_tmp / f"{header.message_id}.part").unlink()
            raise Refused(r.code, r.reason) from None
        meta = _meta_from_header(header, resent=0)
        for v in verified:
            self.ctx.record(
                "approved",
                meta,
                reason="approval verified against this gateway's officers",
                who={"person": v.officer.name, "role": v.officer.role},
                fingerprint=v.officer.key_id,
                approved_at=v.time,
            )
        return verified

    def _sender_key(self, sender: str, key: str) -> Ed25519PublicKey | None:
        public = self.sender_keys.get(sender)
        if public is None or env.key_id(public) != key:
            return None
        return public

    def _sequence(self, flow: Flow, seq: int, meta: MessageMeta) -> None:
        path = self.ctx.spool.dir("state") / f"{flow.name}.received-seq"
        highest = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            highest = int(path.read_text())
        if seq > highest + 1:
            missing = seq - highest - 1
            self.ctx.record(
                "gap",
                {"flow": flow.name, "seq": seq},
                outcome="info",
                reason=f"sequence {highest + 1}..{seq - 1} not seen before {seq}",
            )
            self.ctx.metrics.gaps.labels(flow.name).inc(missing)
        if seq > highest:
            replace_durably(path, str(seq).encode())

    def _deliver_plaintext(self, msg_id: str, meta: MessageMeta, flow: Flow) -> None:
        _tmp, new = inbox_dirs(self.ctx.config.inbox, flow.name)
        name = safe_name(meta.original_name, fallback=msg_id)
        meta = meta.replace(extra={**meta.extra, "delivering_to": str(new / name)})
        self.ctx.spool.write_meta("received", msg_id, meta)
        self._finish_delivery(msg_id, meta)

    def _finish_delivery(self, msg_id: str, meta: MessageMeta) -> None:
        """Link the plaintext into the inbox, then mark the message delivered.

        Every step can be repeated after a crash without a second copy: the link is recognised by
        its inode, a lost `.part` by the delivered file's hash, and once the marker (`delivered_as`)
        is written only the move to delivered/ is left to do.
        """
        spool = self.ctx.spool
        if meta.extra.get("delivered_as"):
            target = Path(meta.extra["delivered_as"])
        else:
            target = Path(meta.extra["delivering_to"])
            part = target.parent.parent / "tmp" / f"{msg_id}.part"
            if part.exists():
                hops = meta.extra.get("hops")
                extra = {"hops": hops} if hops else {}
                self.ctx.record("delivered", meta, path=target.name, **extra)
                target = _link_no_clobber(part, target, msg_id)
                part.unlink()
                fsync_dir(target.parent)
                fsync_dir(part.parent)
            else:
                # Crash after the link but before the marker: the file is in the inbox already.
                found = _find_delivered(target, msg_id, meta.sha256)
                if found is None:
                    self._quarantine_received(
                        msg_id, meta, "lost-plaintext", "plaintext vanished mid-delivery; re-open"
                    )
                    return
                target = found
            flow = self.flows.get(meta.flow)
            if flow is not None and flow.signed_delivery:
                self._sign_publication(target, meta)
            kept = {k: v for k, v in meta.extra.items() if k != "delivering_to"}
            marker = meta.replace(
                extra={**kept, "delivered_as": str(target), "delivered_at": utc_now()}
            )
            spool.write_meta("received", msg_id, marker)
        with self.lock:
            spool.move(msg_id, "received", "delivered")
        with contextlib.suppress(FileNotFoundError):
            (spool.entry("delivered", msg_id) / ENVELOPE).unlink()
        self.ctx.metrics.messages.labels(meta.flow, "deliver", "delivered").inc()
        self.ctx.metrics.bytes.labels(meta.flow, "deliver").inc(meta.size)
        self.ctx.metrics.observe_since(meta.flow, None, meta.created)

    def _sign_publication(self, target: Path, meta: MessageMeta) -> None:
        """Manifest and detached signature beside the delivered file (signed publication).

        Written after the file is linked and before the delivered marker, so a crash in between
        writes them again (idempotent: same file, new time). A publishing step must refuse a file
        whose signature is missing, so the short window without one fails closed.
        """
        if self.publication_key is None:
            return
        manifest = make_manifest(
            message_id=meta.id,
            flow=meta.flow,
            name=target.name,
            size=meta.size,
            sha256=meta.sha256,
            approvers=list(meta.extra.get("approvers", [])),
            time=utc_now(),
            gateway=self.ctx.config.name,
            signer=self.publication_key.public_key(),
        )
        manifest_path, sig_path = companion_paths(target)
        replace_durably(manifest_path, manifest, mode=0o644)
        replace_durably(sig_path, sign_manifest(manifest, self.publication_key), mode=0o644)

    # -- refusals -----------------------------------------------------------------------
    def _damaged_on_disk(self, entry: Path, meta: MessageMeta) -> bool:
        """True when the envelope no longer hashes to what came off the link: the disk, not
        the sender, is to blame, so it goes to corrupt/ rather than quarantine/."""
        expected = meta.extra.get("link_sha256")
        if not expected:
            return False
        h = hashlib.sha256()
        try:
            with open(entry / ENVELOPE, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError:
            return True
        return not hmac.compare_digest(h.hexdigest(), expected)

    def _corrupt_received(self, msg_id: str, meta: MessageMeta, reason: str) -> None:
        qid = new_message_id()
        self.ctx.record("corrupt", meta, outcome="error", reason=reason, corrupt=qid)
        with self.lock:
            durable_rename(
                self.ctx.spool.entry("received", msg_id), self.ctx.spool.entry("corrupt", qid)
            )
        self.ctx.metrics.rejections.labels(meta.flow, "receive", "corrupt").inc()
        log.error("received/%s moved to corrupt/%s: %s", msg_id, qid, reason)

    def _quarantine_received(
        self, msg_id: str, meta: MessageMeta, code: str, reason: str, event: str = "quarantined"
    ) -> None:
        with self.lock:
            work = self.ctx.spool.entry("received", msg_id)
            self._quarantine_dir(work, meta, code, reason, event)

    def _quarantine_dir(
        self, work: Path, meta: MessageMeta, code: str, reason: str, event: str
    ) -> None:
        """Keep a refused envelope under a fresh id (a replay reuses an id we already hold)."""
        qid = new_message_id()
        meta = meta.replace(
            reason_code=code, reason=reason, extra={**meta.extra, "claimed_id": meta.id}
        )
        self.ctx.record(event, meta, outcome="refused", reason=f"{code}: {reason}", quarantine=qid)
        replace_durably(work / META, meta.to_json())
        durable_rename(work, self.ctx.spool.entry("quarantine", qid))
        self.ctx.metrics.messages.labels(meta.flow, "receive", "refused").inc()
        self.ctx.metrics.rejections.labels(meta.flow, "receive", code).inc()
        log.warning("quarantined envelope %s as %s: %s: %s", meta.id, qid, code, reason)


def _approver(v: Verified) -> dict[str, str]:
    return {"name": v.officer.name, "fingerprint": v.officer.key_id, "time": v.time}


def _meta_from_header(h: env.Header, resent: int) -> MessageMeta:
    return MessageMeta(
        id=h.message_id,
        flow=h.flow,
        system=h.system,
        original_name=h.original_name,
        size=h.size,
        sha256=h.sha256,
        content_type=h.content_type,
        created=h.created,
        seq=h.sequence,
        classification=h.classification,
        resent=resent,
    )


def _link_no_clobber(src: Path, target: Path, msg_id: str) -> Path:
    """Hard-link under the target name, or `name (id12).ext` if a different file holds it.

    Idempotent: after a crash between the link and the removal of `src`, the same inode is
    found under one of the two names and nothing is linked twice.
    """
    stem, dot, ext = target.name.partition(".")
    alt = target.with_name(f"{stem} ({msg_id[:12]}){dot}{ext}")
    for existing in (target, alt):
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(src, existing):
                return existing
    try:
        os.link(src, target)
        return target
    except FileExistsError:
        pass
    with contextlib.suppress(FileExistsError):
        os.link(src, alt)
    return alt


def _find_delivered(target: Path, msg_id: str, sha256: str) -> Path | None:
    stem, dot, ext = target.name.partition(".")
    for candidate in (target, target.with_name(f"{stem} ({msg_id[:12]}){dot}{ext}")):
        if candidate.exists():
            h = hashlib.sha256()
            with open(candidate, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() == sha256:
                return candidate
    return None
