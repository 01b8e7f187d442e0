"""The sender agent: seals cleared messages for the receiving gateway and pushes them out.

It never reads from the link. Sequence numbers are given per flow at sealing time. Because
nothing can acknowledge a message on a one-way link, the sender re-sends, marked as re-sends,
the messages that might still have been in flight when the link broke or the agent died: the
tail of `sent/` covering the flow's resend window, and everything left in `active/`. The
receiver drops a re-send of a message it already holds and records it as a duplicate.

A message of a flow that needs approvals is sealed only with enough valid approvals, checked here
against this gateway's own people (whatever put it into `ready/`); the approvals travel in the
envelope header, covered by the gateway's signature. Without them it goes to quarantine.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from ..transfer import envelope as env
from ..transfer.approvals import ApprovalRefused, Directory, check_approvals
from ..transfer.durable import fsync_dir, replace_durably
from ..transfer.keys import load_encryption_public, load_signing_private
from ..transfer.link import LinkSender, open_sender
from ..transfer.spool import DATA, ENVELOPE, META, MessageMeta, SpoolError
from ..zones.config import Flow
from .agent import AgentContext, FailClosed, utc_now
from .review import subject_for

__all__ = ["SenderAgent"]

log = logging.getLogger("zonegate.sender")
HEARTBEAT_INTERVAL = 2.0
MIN_RESEND_MESSAGES = 8
PRUNE_INTERVAL = 60.0


@dataclass
class _FlowLink:
    flow: Flow
    link: LinkSender
    recipient_key: X25519PublicKey
    seq: int = 0
    last_heartbeat: float = 0.0
    #: (id, envelope bytes) of the newest sent messages, at most the resend window
    recent: deque[tuple[str, int]] = field(default_factory=deque)
    #: ids to send again as soon as the link is up, oldest first
    resend: list[str] = field(default_factory=list)
    #: messages sent after the link was seen to go down (they went into a dead connection)
    since_down: list[str] | None = None

    def remember(self, msg_id: str, size: int) -> None:
        self.recent.append((msg_id, size))
        total = sum(n for _, n in self.recent)
        while len(self.recent) > MIN_RESEND_MESSAGES and total - self.recent[0][1] >= (
            self.flow.resend_window
        ):
            total -= self.recent.popleft()[1]
        if self.since_down is not None:
            self.since_down.append(msg_id)


class SenderAgent:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.signing_key: Ed25519PrivateKey = load_signing_private(cfg.signing_key)
        self.directory = Directory.from_config(cfg)
        self.links: dict[str, _FlowLink] = {}
        #: envelopes in active/ that this process sealed; any other one (in active/ after a restart,
        #: or re-sent from sent/) is checked against our signature before it goes out
        self._sealed_here: set[str] = set()
        self._last_prune = 0.0
        for flow in cfg.outgoing_flows():
            peer = cfg.peer(flow.receiver)
            # A relayed flow leaves over the link into its first relay; sealing is still for
            # the final receiver (flow.receiver), whom only that gateway's key opens.
            link = open_sender(flow.link_from(cfg.name))
            state = _FlowLink(flow, link, load_encryption_public(peer.encryption_key))
            state.seq = self._load_seq(flow.name)
            self.links[flow.name] = state
        self._load_recent()
        self.ctx.metrics.up.labels("sender", cfg.name).set(1)

    # -- sequence numbers ---------------------------------------------------------------
    def _seq_file(self, flow: str) -> Path:
        return self.ctx.spool.dir("state") / f"{flow}.seq"

    def _load_seq(self, flow: str) -> int:
        """The last sequence number given: the counter file, or higher if a crash beat it."""
        seq = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            seq = int(self._seq_file(flow).read_text())
        for msg_id in self.ctx.spool.ids("active"):
            with contextlib.suppress(Exception):
                meta = self.ctx.spool.read_meta("active", msg_id)
                if meta.flow == flow:
                    seq = max(seq, meta.seq)
        return seq

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> None:
        self.ctx.record("agent-started", outcome="info")
        for msg_id in self.ctx.spool.ids("active"):
            # A previous run may have sent these in part or in full: they go again, as re-sends.
            with contextlib.suppress(Exception):
                meta = self.ctx.spool.read_meta("active", msg_id)
                if meta.resent == 0:
                    self.ctx.spool.write_meta("active", msg_id, meta.replace(resent=1))
        try:
            while not self.ctx.stop.is_set():
                if not self.step():
                    self.ctx.sleep(0.1)
            self.ctx.record("agent-stopped", outcome="info")
        except FailClosed:
            pass  # the audit log is unwritable: nothing more may move, not even a stop record
        finally:
            for state in self.links.values():
                state.link.close()

    def step(self) -> bool:
        busy = False
        self._service_links()
        for msg_id in self.ctx.spool.ids("ready"):
            if self.ctx.stop.is_set():
                return busy
            self._guarded("ready", msg_id, self.seal)
            busy = True
        for msg_id in self.ctx.spool.ids("active"):
            if self.ctx.stop.is_set():
                return busy
            self._service_links()
            busy = bool(self._guarded("active", msg_id, self.send)) or busy
        self._heartbeats()
        if time.monotonic() - self._last_prune > PRUNE_INTERVAL:
            self.prune_sent()
        return busy

    def prune_sent(self, now: float | None = None) -> int:
        """Remove sent envelopes older than their flow's retention, outside the resend window."""
        self._last_prune = time.monotonic()
        now = time.time() if now is None else now
        spool = self.ctx.spool
        keep = {i for state in self.links.values() for i, _ in state.recent}
        removed = 0
        for msg_id in spool.ids("sent"):
            if msg_id in keep or self.ctx.stop.is_set():
                continue
            try:
                age = now - (spool.entry("sent", msg_id) / META).stat().st_mtime
                meta = spool.read_meta("sent", msg_id)
            except (FileNotFoundError, SpoolError):
                continue
            state = self.links.get(meta.flow)
            retention = state.flow.sent_retention if state else 0.0
            if age < retention:
                continue
            self.ctx.record(
                "expired", meta, outcome="info", reason="sent envelope removed after retention"
            )
            spool.remove("sent", msg_id)
            removed += 1
        return removed

    def _service_links(self) -> None:
        """Follow connection changes; re-send what may have been lost as soon as a link is up.

        When a connection drops, whatever sat in queues and socket buffers is gone and the
        receiver may have died half-way through a message. Everything sent within the resend
        window before the drop, and everything sent after it, goes again on reconnect.
        """
        for state in self.links.values():
            name = state.flow.name
            for event in state.link.link_events():
                if event == "down":
                    self.ctx.metrics.link_up.labels(name).set(0)
                    self.ctx.record("link-down", {"flow": name}, outcome="info")
                    state.resend.extend(i for i, _ in state.recent)
                    state.since_down = []
                else:
                    self.ctx.metrics.link_up.labels(name).set(1)
                    self.ctx.record("link-up", {"flow": name}, outcome="info")
                    state.resend.extend(state.since_down or ())
                    state.since_down = None
            if state.resend and state.link.connected and state.since_down is None:
                self._resend(state)

    def _load_recent(self) -> None:
        """After a restart, the newest sent messages of each flow may not have arrived."""
        spool = self.ctx.spool
        newest: list[tuple[int, str, int]] = []
        for msg_id in spool.ids("sent"):
            entry = spool.entry("sent", msg_id)
            try:
                mtime = (entry / META).stat().st_mtime_ns
                size = (entry / ENVELOPE).stat().st_size
            except FileNotFoundError:
                continue
            newest.append((mtime, msg_id, size))
        newest.sort()
        for _mtime, msg_id, size in newest[-4096:]:
            try:
                meta = spool.read_meta("sent", msg_id)
            except Exception as e:
                log.warning("skipping unreadable sent/%s in the resend window: %s", msg_id, e)
                continue
            state = self.links.get(meta.flow)
            if state is not None:
                state.remember(msg_id, size)
        for state in self.links.values():
            state.resend.extend(i for i, _ in state.recent)

    def _heartbeats(self) -> None:
        now = time.monotonic()
        for state in self.links.values():
            if not state.link.connected or now - state.last_heartbeat < HEARTBEAT_INTERVAL:
                continue
            name = state.flow.name
            if state.link.send_heartbeat(
                name, self.ctx.config.name, state.seq, utc_now(), self.ctx.stop
            ):
                state.last_heartbeat = now
                self.ctx.metrics.last_heartbeat.labels(name).set(time.time())

    # -- sealing ------------------------------------------------------------------------
    def seal(self, msg_id: str) -> None:
        spool = self.ctx.spool
        try:
            meta = spool.read_meta("ready", msg_id)
            state = self.links[meta.flow]
        except Exception as e:
            self._corrupt("ready", msg_id, None, f"unreadable or unknown flow: {e}")
            return
        if not self._approved("ready", meta, state):
            return
        seq = state.seq + 1
        meta = meta.replace(seq=seq)
        self.ctx.record("sealed", meta)
        # The number is written before the move, so a message in active/ always has one; a
        # crash before the move leaves it in ready/, where it is simply numbered again.
        spool.write_meta("ready", msg_id, meta)
        spool.move(msg_id, "ready", "active")
        state.seq = seq
        replace_durably(self._seq_file(meta.flow), str(seq).encode())
        self._seal_in_place(msg_id, meta, state)

    def _approved(self, spool_state: str, meta: MessageMeta, state: _FlowLink) -> bool:
        """Enough valid approvals for the flow, or quarantine (audit record and metric first)."""
        rule = state.flow.approval
        if not rule.required:
            return True
        try:
            check_approvals(
                subject_for(self.ctx.config, meta),
                meta.extra.get("approvals", []),
                self.directory,
                rule,
            )
            return True
        except ApprovalRefused as r:
            code, reason = r.code, r.reason
        except Exception as e:  # fail closed: a check that breaks must not let a message out
            code, reason = "approvals-too-few", f"approvals could not be checked: {e}"
        meta = meta.replace(reason_code=code, reason=reason, rule="approval")
        self.ctx.record("quarantined", meta, outcome="refused", reason=f"{code}: {reason}")
        self.ctx.spool.write_meta(spool_state, meta.id, meta)
        self.ctx.spool.move(meta.id, spool_state, "quarantine")
        self.ctx.metrics.rejections.labels(meta.flow, "send", code).inc()
        log.warning("not sealing %s (%s): %s: %s", meta.id, meta.original_name, code, reason)
        return False

    def _seal_in_place(self, msg_id: str, meta: MessageMeta, state: _FlowLink) -> bool:
        entry = self.ctx.spool.entry("active", msg_id)
        cfg = self.ctx.config
        if not self._approved("active", meta, state):
            return False
        header = env.Header(
            version=1,
            message_id=meta.id,
            flow=meta.flow,
            sequence=meta.seq,
            sender=cfg.name,
            recipient=state.flow.receiver,
            system=meta.system,
            original_name=meta.original_name,
            content_type=meta.content_type,
            size=meta.size,
            sha256=meta.sha256,
            created=meta.created or utc_now(),
            chunk_size=env.DEFAULT_CHUNK_SIZE,
            sender_key=env.key_id(self.signing_key.public_key()),
            recipient_key=env.key_id(state.recipient_key),
            classification=_level(cfg, state.flow.source),
            approvals=_approvals(meta) if state.flow.approval.required else (),
        )
        tmp = entry / (ENVELOPE + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        started = time.monotonic()
        try:
            fd = os.open(entry / DATA, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as src, open(tmp, "xb") as dst:
                env.seal(src, dst, header, state.recipient_key, self.signing_key)
                dst.flush()
                os.fsync(dst.fileno())
        except (OSError, env.EnvelopeError) as e:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            self._corrupt("active", msg_id, meta, f"cannot seal: {e}")
            return False
        os.rename(tmp, entry / ENVELOPE)
        (entry / DATA).unlink()  # past this point only ciphertext stays in the spool
        fsync_dir(entry)
        self._sealed_here.add(msg_id)
        self.ctx.metrics.messages.labels(meta.flow, "seal", "ok").inc()
        self.ctx.metrics.observe_stage(meta.flow, "seal", started)
        return True

    # -- sending ------------------------------------------------------------------------
    def send(self, msg_id: str) -> bool:
        """Seal-if-needed and send one active message; False when nothing could go out."""
        spool = self.ctx.spool
        entry = spool.entry("active", msg_id)
        try:
            meta = spool.read_meta("active", msg_id)
            state = self.links[meta.flow]
        except Exception as e:
            self._corrupt("active", msg_id, None, f"unreadable or unknown flow: {e}")
            return False
        # A crash between taking the message and sealing it leaves only plaintext: seal it now.
        if not state.link.connected:
            return False  # stays in active/; sealing goes on while the link is down
        if not (entry / ENVELOPE).exists() and not (
            (entry / DATA).exists() and self._seal_in_place(msg_id, meta, state)
        ):
            if spool.entry("active", msg_id).exists():
                self._corrupt("active", msg_id, meta, "neither plaintext nor envelope left")
            return False
        if msg_id not in self._sealed_here and (problem := self._damage(entry)) is not None:
            self._corrupt("active", msg_id, meta, problem)
            return False
        resend = meta.resent > 0
        started = time.monotonic()
        ok = state.link.send_envelope(
            entry / ENVELOPE, meta.id, meta.flow, self.ctx.config.name, resend, self.ctx.stop
        )
        if not ok:
            return False  # stopping; the message stays in active/ and goes again next start
        meta = meta.replace(sent_at=utc_now())
        self.ctx.record("resent" if resend else "sent", meta)
        spool.write_meta("active", msg_id, meta)
        spool.move(msg_id, "active", "sent")
        self._sealed_here.discard(msg_id)  # only active/ needs it; the set must not grow
        size = (spool.entry("sent", msg_id) / ENVELOPE).stat().st_size
        state.remember(msg_id, size)
        self.ctx.metrics.messages.labels(meta.flow, "send", "resent" if resend else "sent").inc()
        self.ctx.metrics.bytes.labels(meta.flow, "send").inc(size)
        self.ctx.metrics.observe_stage(meta.flow, "send", started)
        return True

    def _resend(self, state: _FlowLink) -> None:
        spool = self.ctx.spool
        todo, state.resend = list(dict.fromkeys(state.resend)), []
        for i, msg_id in enumerate(todo):
            if self.ctx.stop.is_set() or not state.link.connected:
                state.resend = todo[i:] + state.resend
                return
            entry = spool.entry("sent", msg_id)
            try:
                meta = spool.read_meta("sent", msg_id)
            except SpoolError as e:  # pruned by retention or moved to corrupt/ meanwhile
                log.info("not re-sending %s: %s", msg_id, e)
                continue
            if msg_id not in self._sealed_here and (problem := self._damage(entry)) is not None:
                self._corrupt("sent", msg_id, meta, problem)
                continue
            ok = state.link.send_envelope(
                entry / ENVELOPE, meta.id, meta.flow, self.ctx.config.name, True, self.ctx.stop
            )
            if not ok:
                state.resend = todo[i:] + state.resend
                return
            self.ctx.record("resent", meta, outcome="info", reason="link re-established")
            self.ctx.metrics.messages.labels(meta.flow, "send", "resent").inc()

    def _guarded(self, state: str, msg_id: str, step: Callable[[str], object]) -> object:
        """One message's step; a failure it causes is its own, never the queue's.

        A full disk is waited out (the message stays where it is); any other error moves the
        message to corrupt/ with the error as its reason, so the messages behind it go on.
        """
        try:
            result = step(msg_id)
            self.ctx.metrics.disk_full.set(0)
            return result
        except FailClosed:
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("disk full while handling %s; waiting for space: %s", msg_id, e)
                self.ctx.metrics.disk_full.set(1)
                self.ctx.sleep(1.0)
                return False
            reason = f"{type(e).__name__}: {e}"
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
        log.exception("cannot handle %s/%s; moving it to corrupt/", state, msg_id)
        meta = None
        with contextlib.suppress(Exception):
            meta = self.ctx.spool.read_meta(state, msg_id)
        if self.ctx.spool.entry(state, msg_id).exists():
            self._corrupt(state, msg_id, meta, f"internal error: {reason}")
        return False

    def _damage(self, entry: Path) -> str | None:
        """Why an envelope on disk is no longer what we sealed (None when intact).

        The signature covers every byte, so checking it with our own public key finds any
        truncation, flipped bit or zero-filled block since sealing, without decrypting.
        """
        own = self.signing_key.public_key()
        try:
            with open(entry / ENVELOPE, "rb") as f:
                env.verify_envelope(f, lambda sender, key: own)
        except env.EnvelopeError as e:
            return f"envelope damaged on disk: {e}"
        except OSError as e:
            return f"envelope unreadable: {e}"
        return None

    def _corrupt(self, state: str, msg_id: str, meta: MessageMeta | None, reason: str) -> None:
        spool = self.ctx.spool
        fields = meta if meta is not None else {"id": msg_id}
        self.ctx.record("corrupt", fields, outcome="error", reason=reason)
        with contextlib.suppress(Exception):
            if meta is not None:
                spool.write_meta(state, msg_id, meta.replace(reason_code="corrupt", reason=reason))
        spool.move(msg_id, state, "corrupt")
        flow = meta.flow if meta is not None else "unknown"
        self.ctx.metrics.rejections.labels(flow, "send", "corrupt").inc()
        log.error("message %s moved to corrupt/: %s", msg_id, reason)


def _approvals(meta: MessageMeta) -> tuple[dict, ...]:
    return tuple(meta.extra.get("approvals", ()))


def _level(cfg: object, zone: str) -> str:
    for z in cfg.zones:  # type: ignore[attr-defined]
        if z.name == zone:
            return z.level
    return ""
