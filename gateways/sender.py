"""The sender agent: seals cleared messages for the receiving gateway and pushes them out.

It never reads from the link. Sequence numbers are given per flow at sealing time. Because
nothing can acknowledge a message on a one-way link, the sender re-sends, marked as re-sends,
the messages that might still have been in flight when the link broke or the agent died: the
tail of `sent/` covering the flow's resend window, and everything left in `active/`. The
receiver drops a re-send of a message it already holds and records it as a duplicate.

A message of a flow that needs approvals is sealed only with enough valid approvals, checked here
against this gateway's own people (whatever put it into `ready/`); the approvals travel in the
envelope header, covered by the gateway's signature. Without them it goes to quarantine.

Batches (group commit): each step takes every message waiting now, up to `BATCH_MESSAGES` or
`BATCH_BYTES`, and never waits for more. Per batch, in this order:

1. seal: each message is sealed into `ready/<id>/envelope`, numbered in order; the `sealed`
   records; one barrier makes the envelopes durable; only then the renames `ready/<id>` ->
   `active/<id>` (and the plaintext is removed) and the counter `state/<flow>.seq`; barrier. An
   envelope in `ready/` is never sent: a crash before the move seals the message again, with a
   fresh key and the same number.
2. send: each envelope goes onto the link; the `sent` records; the renames `active/<id>` ->
   `sent/<id>`; barrier.

A message's number lives in its envelope's header (signed), not in `meta.json`, which keeps what
ingest (or review) wrote: rewriting it per message would cost a file per message and step.

A message is durable in `active/`, sealed and numbered, before any byte of it leaves, so a
crash at any point re-sends it from there, marked as a re-send, and never numbers it twice.

A large message (an envelope over 1 MiB) on a link that takes an envelope while it is written
(zmq: `open_stream`) is sealed while it is sent instead (`_seal_while_sending`): one pass over
the plaintext and one durable write of the envelope, not a write then a read back. Its number
and a mark that it may have gone out are durable in its meta.json before its first byte
leaves, so a crash or a broken link mid-way leaves it in `ready/`, to be sealed and sent again
with the same number as a re-send (a fresh key: the receiver, which drops re-sends of what it
holds, never needs the earlier envelope). The plaintext stays in `ready/` (the ingest side of
the spool) until its envelope is complete and durable, never in `active/` or `sent/`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import io
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from ..transfer import batch as containers
from ..transfer import envelope as env
from ..transfer.approvals import ApprovalRefused, Directory, check_approvals
from ..transfer.durable import Barrier, fsync_dir, replace_file, start_writeback, write_new
from ..transfer.keys import load_encryption_public, load_signing_private
from ..transfer.link import LinkBroken, LinkSender, LinkStream, open_sender
from ..transfer.reaper import Reaper
from ..transfer.spool import DATA, ENVELOPE, META, MessageMeta, SpoolError
from ..zones.config import Flow
from .agent import AgentContext, AuditEntry, FailClosed, crash_point, utc_now
from .review import subject_for

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "SenderAgent"]

log = logging.getLogger("zonegate.sender")
HEARTBEAT_INTERVAL = 2.0
MIN_RESEND_MESSAGES = 8
PRUNE_INTERVAL = 60.0
#: The most messages, and plaintext or envelope bytes, one batch takes (at least one message).
BATCH_MESSAGES = 256
BATCH_BYTES = 16 * 1024 * 1024
#: How long an idle sender waits before it looks for work again.
POLL_INTERVAL = 0.02
#: Envelopes up to this size are also kept in memory from sealing until sent (at most
#: MEMORY_BYTES of them), so a small message is not read back from the disk to be sent.
MEMORY_ENVELOPE = 1024 * 1024
MEMORY_BYTES = 32 * 1024 * 1024
#: while a large envelope is written, the disk is started on it every this many bytes
WRITEBACK_EVERY = 32 * 1024 * 1024
#: A message of a `batch: true` flow this small or smaller may go in a container with others;
#: a container's plaintext (bodies and inner headers) stays under CONTAINER_BYTES, so it is
#: sealed and opened in memory and crosses a link as one frame.
BATCH_ITEM_MAX = 64 * 1024
CONTAINER_BYTES = 512 * 1024
#: what an inner header is counted as when a container is filled (its JSON is 500-700 bytes;
#: each approval adds about 400): an estimate, CONTAINER_BYTES is far below what must not be passed
_HEADER_ESTIMATE = 1024
_APPROVAL_ESTIMATE = 512
#: the fields of a message a container's meta.json keeps for each of its messages
_ITEM_FIELDS = (
    "id", "seq", "system", "original_name", "size", "sha256", "content_type", "created",
    "classification",
)  # fmt: skip
#: The envelope chunk: with its tag it fits one link frame (linkframe.MAX_PAYLOAD, 1 MiB), so
#: a receiver opening an envelope as it comes decrypts each frame as it is, without a copy.
CHUNK_SIZE = 512 * 1024


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
    #: envelope bytes held in `recent`
    recent_bytes: int = 0
    #: the id of `recipient_key`, named in every header sealed for this flow
    recipient_key_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.recipient_key_id = env.key_id(self.recipient_key)

    def remember(self, msg_id: str, size: int) -> None:
        self.recent.append((msg_id, size))
        self.recent_bytes += size
        while len(self.recent) > MIN_RESEND_MESSAGES and self.recent_bytes - self.recent[0][1] >= (
            self.flow.resend_window
        ):
            self.recent_bytes -= self.recent.popleft()[1]
        if self.since_down is not None:
            self.since_down.append(msg_id)


class SenderAgent:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.signing_key: Ed25519PrivateKey = load_signing_private(cfg.signing_key)
        self._sender_key_id = env.key_id(self.signing_key.public_key())  # in every header
        self.directory = Directory.from_config(cfg)
        self.links: dict[str, _FlowLink] = {}
        #: envelopes in active/ that this process sealed, with their numbered metadata; any
        #: other one (in active/ after a restart, or re-sent from sent/) is checked against our
        #: signature before it goes out, which also gives its header (and number)
        self._sealed_here: dict[str, MessageMeta] = {}
        #: the bytes of small envelopes sealed here and not yet sent (MEMORY_BYTES at most)
        self._in_memory: dict[str, bytes] = {}
        self._in_memory_bytes = 0
        self._last_prune = 0.0
        self.barrier = Barrier()
        #: removals (plaintexts once sealed, entries once in a container, expired envelopes)
        #: are renames out of the way; the unlinks wait for the disk in a thread of their own
        self.reaper = Reaper(ctx.spool.dir("tmp/reap"))
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
        """The last sequence number given: the counter file, or higher if a crash beat it (the
        envelopes in active/ were numbered before the counter was written)."""
        seq = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            seq = int(self._seq_file(flow).read_text())
        for msg_id in self.ctx.spool.ids("active"):
            with (
                contextlib.suppress(Exception),
                open(self.ctx.spool.entry("active", msg_id) / ENVELOPE, "rb") as f,
            ):
                header, _length = env.read_header(f)
                if header.flow == flow:
                    seq = max(seq, header.sequence)
                if header.flow == flow and containers.is_batch(header):
                    # numbered in its header from its first message; its meta.json lists all
                    items = self.ctx.spool.read_meta("active", msg_id).extra["batch"]
                    seq = max([seq, *(int(item["seq"]) for item in items)])
        return seq

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> None:
        self.ctx.record("agent-started", outcome="info")
        try:
            self._recover_active()
            while not self.ctx.stop.is_set():
                if not self.step():
                    self.ctx.sleep(POLL_INTERVAL)
            self.ctx.record("agent-stopped", outcome="info")
        except FailClosed:
            pass  # the audit log is unwritable: nothing more may move, not even a stop record
        finally:
            for state in self.links.values():
                state.link.close()
            self.barrier.close()
            self.reaper.close()

    def _recover_active(self) -> None:
        """What a previous run left in active/ may have gone out in part or in full.

        It goes again, marked as a re-send; a plaintext left beside a complete envelope (a crash
        between the move into active/ and the unlink) is removed, so only ciphertext stays.
        """
        spool = self.ctx.spool
        # A container begun and not moved into active/ was never durable: its messages are
        # still in ready/, sealed again now. One in active/ holds its messages: any of them
        # still in ready/ (a crash between the move and their removal) is removed.
        scratch = spool.dir("tmp/seal")
        scratch.mkdir(mode=0o700, exist_ok=True)  # a spool made before containers existed
        for name in os.listdir(scratch):
            shutil.rmtree(scratch / name, ignore_errors=True)
        for msg_id in spool.ids("active"):
            with contextlib.suppress(Exception):
                items = spool.read_meta("active", msg_id).extra.get("batch") or ()
                for item in items:
                    entry = spool.entry("ready", item["id"])
                    if entry.exists():
                        shutil.rmtree(entry)
                        self.barrier.dir(spool.dir("ready"))
        for msg_id in spool.ids("ready"):
            entry = spool.entry("ready", msg_id)
            if not (entry / DATA).exists() and (entry / ENVELOPE).exists():
                # Sealed while sent, its plaintext removed, then a crash: it goes again.
                with contextlib.suppress(Exception):
                    meta = spool.read_meta("ready", msg_id)
                    spool.write_meta("ready", msg_id, meta.replace(resent=1))
                    spool.move(msg_id, "ready", "active")
        for msg_id in spool.ids("active"):
            entry = spool.entry("active", msg_id)
            with contextlib.suppress(Exception):
                meta = spool.read_meta("active", msg_id)
                if meta.resent == 0:
                    spool.write_meta("active", msg_id, meta.replace(resent=1), self.barrier)
            if (entry / ENVELOPE).exists() and (entry / DATA).exists():
                (entry / DATA).unlink()
                self.barrier.dir(entry)
        self.barrier.commit()

    def step(self) -> bool:
        busy = False
        self._service_links()
        ready = self.ctx.spool.ids("ready")
        while ready and not self.ctx.stop.is_set():
            batch, ready = self._take("ready", ready)
            with self.ctx.metrics.busy("seal"):  # a large file's: sealed while it is sent
                self._batch_guarded("ready", batch, self.seal_batch)
            busy = True
            # Send what was just sealed before sealing more: nothing waits for the whole queue.
            busy = self._send_active() or busy
            if any(self.ctx.spool.entry("ready", i).exists() for i in batch):
                # It stopped before the end of its batch (a container full, a large message
                # that goes alone, no space): the next step lists ready/ again from its oldest,
                # so that numbers keep following the ids; the rest of `ready` must wait.
                break
        if not busy:
            busy = self._send_active()
        self._heartbeats()
        if time.monotonic() - self._last_prune > PRUNE_INTERVAL:
            self.prune_sent()
        return busy

    def _send_active(self) -> bool:
        busy = False
        active = self.ctx.spool.ids("active")
        while active and not self.ctx.stop.is_set():
            self._service_links()
            batch, active = self._take("active", active)
            with self.ctx.metrics.busy("send"):
                busy = bool(self._batch_guarded("active", batch, self.send_batch)) or busy
        return busy

    def _take(self, state: str, ids: list[str]) -> tuple[list[str], list[str]]:
        """The next batch: at most BATCH_MESSAGES, and BATCH_BYTES after the first message."""
        spool = self.ctx.spool
        name = DATA if state == "ready" else ENVELOPE
        total = 0
        for i, msg_id in enumerate(ids[:BATCH_MESSAGES]):
            try:
                total += (spool.entry(state, msg_id) / name).stat().st_size
            except OSError:
                continue
            if total > BATCH_BYTES and i > 0:
                return ids[:i], ids[i:]
        return ids[:BATCH_MESSAGES], ids[BATCH_MESSAGES:]

    def _batch_guarded(
        self, state: str, ids: list[str], step: Callable[[list[str]], object]
    ) -> object:
        """A batch step; if it fails as a whole, its messages are taken one by one.

        A full disk is waited out (the messages stay where they are). Any other failure of a
        batch is retried message by message (`_guarded`), so that the one message that causes
        it goes to corrupt/ with the error as its reason and the others go on.
        """
        if len(ids) == 1:
            return self._guarded(state, ids[0], lambda i: step([i]))
        try:
            result = step(ids)
            self.ctx.metrics.disk_full.set(0)
            return result
        except FailClosed:
            raise
        except OSError as e:
            self.barrier.discard()
            if self._waited_for_space(e, f"a batch of {state}/"):
                return False
            log.exception("a batch of %d in %s/ failed; taking them one by one", len(ids), state)
        except Exception:
            self.barrier.discard()
            log.exception("a batch of %d in %s/ failed; taking them one by one", len(ids), state)
        result = False
        for msg_id in ids:
            if self.ctx.stop.is_set():
                break
            if self.ctx.spool.entry(state, msg_id).exists():
                result = self._guarded(state, msg_id, lambda i: step([i])) or result
        return result

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
            self.ctx.record_many(
                self._records(
                    "expired", meta, outcome="info", reason="sent envelope removed after retention"
                )
            )
            self.reaper.reap(spool.entry("sent", msg_id))
            removed += 1
        if removed:
            fsync_dir(spool.dir("sent"))
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
        self.seal_batch([msg_id])

    def seal_batch(self, ids: list[str]) -> None:
        """Seal messages of ready/ and move them to active/, each after its `sealed` record.

        On a `batch: true` flow, its small messages are sealed together into one container
        (`_seal_container`); numbers still follow the order of the ids, so a message of that
        flow that cannot join the container waits for the next batch."""
        spool = self.ctx.spool
        barrier = self.barrier
        sealed: list[MessageMeta] = []
        last_seq: dict[str, int] = {}
        groups: dict[str, list[MessageMeta]] = {}
        group_bytes: dict[str, int] = {}
        for msg_id in ids:
            if self.ctx.stop.is_set():
                break
            try:
                meta = spool.read_meta("ready", msg_id)
                state = self.links[meta.flow]
            except Exception as e:
                self._corrupt("ready", msg_id, None, f"unreadable or unknown flow: {e}")
                continue
            if not self._approved("ready", meta, state):
                continue
            entry = spool.entry("ready", msg_id)
            if self._streams(meta, state, entry):
                if not sealed and not groups:  # alone, in order: what came before is sealed
                    self._seal_while_sending(meta, state)
                break
            if self._batchable(meta, state):
                group = groups.setdefault(meta.flow, [])
                cost = meta.size + _HEADER_ESTIMATE
                cost += _APPROVAL_ESTIMATE * len(meta.extra.get("approvals") or ())
                total = group_bytes.get(meta.flow, 0) + cost
                if len(group) >= containers.MAX_ITEMS or (group and total > CONTAINER_BYTES):
                    break  # full: the rest of the flow goes in the next batch's container
                group.append(meta)
                group_bytes[meta.flow] = total
                continue
            if meta.flow in groups:
                break  # after a container's messages: it must take a higher number than they
            if not self._seal_single(meta, state, last_seq, sealed):
                break
        built: list[tuple[MessageMeta, list[MessageMeta], Path]] = []
        for flow, group in groups.items():
            state = self.links[flow]
            readable = self._read_bodies(group)
            if len(readable) >= 2:
                built.append(self._seal_container(readable, state, last_seq))
                continue
            for meta, _body in readable:
                if not self._seal_single(meta, state, last_seq, sealed):
                    break
        if not sealed and not built:
            return
        records = [self.ctx.entry("sealed", meta) for meta in sealed]
        for container, items, _work in built:
            records += [self.ctx.entry("sealed", m, batch=container.id) for m in items]
        self.ctx.record_many(records)
        # Envelopes and numbered metadata durable before anything reaches active/: a message
        # in active/ always has its number and its envelope.
        barrier.commit()
        crash_point("sender-sealed")
        for flow, seq in last_seq.items():
            # Taken in memory now: should a move below fail, no number is given twice.
            self.links[flow].seq = seq
        for meta in sealed:
            target = spool.move(meta.id, "ready", "active", barrier)
            crash_point("sender-moved")
            # past this point only ciphertext stays in the message's entry
            self.reaper.reap(target / DATA, barrier)
            self._sealed_here[meta.id] = meta
        if built:
            for container, _items, work in built:
                os.rename(work, spool.entry("active", container.id))
                barrier.dir(spool.dir("active"))
                barrier.dir(work.parent)
                self._sealed_here[container.id] = container
            # A container is durable in active/ before its messages leave ready/: a crash in
            # between finds them named in it, and they are removed then (_recover_active).
            barrier.commit()
            crash_point("sender-batched")
            for _container, items, _work in built:
                for m in items:
                    self.reaper.reap(spool.entry("ready", m.id), barrier)
        # The counter follows the moves (as for one message): a crash before them leaves the
        # batch in ready/, numbered again from the same counter, so no number is skipped; one
        # after them finds the numbers in active/ (_load_seq).
        for flow, seq in last_seq.items():
            replace_file(self._seq_file(flow), str(seq).encode(), barrier)
        barrier.commit()
        for meta in sealed:
            self.ctx.metrics.messages.labels(meta.flow, "seal", "ok").inc()
        for container, items, _work in built:
            self.ctx.metrics.messages.labels(container.flow, "seal", "ok").inc(len(items))
            self.ctx.metrics.containers.labels(container.flow).inc()

    def _seal_single(
        self,
        meta: MessageMeta,
        state: _FlowLink,
        last_seq: dict[str, int],
        sealed: list[MessageMeta],
    ) -> bool:
        """Seal one message of ready/ into its own envelope (not yet durable), numbered next;
        False when the batch must stop here (the disk is full: what is sealed moves on)."""
        entry = self.ctx.spool.entry("ready", meta.id)
        if meta.extra.get("streaming") and meta.seq:
            # Began to go out sealed while sent: it keeps its number, and is a re-send.
            meta = meta.replace(resent=1)
        else:
            # Numbered only once sealed: a message that cannot be sealed takes no number.
            meta = meta.replace(seq=last_seq.get(meta.flow, state.seq) + 1)
        try:
            sealed_bytes = self._seal_to(entry / DATA, entry / ENVELOPE, meta, state)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT) and sealed:
                return False  # move on what is sealed; the rest waits for space
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._corrupt("ready", meta.id, meta, f"cannot seal: {e}")
            return True
        except env.EnvelopeError as e:
            self._corrupt("ready", meta.id, meta, f"cannot seal: {e}")
            return True
        self.barrier.file(entry / ENVELOPE)
        self.barrier.dir(entry)
        self._forget_bytes(meta.id)  # what an earlier, failed attempt kept
        if sealed_bytes is not None:
            self._in_memory[meta.id] = sealed_bytes
            self._in_memory_bytes += len(sealed_bytes)
        last_seq[meta.flow] = max(last_seq.get(meta.flow, state.seq), meta.seq)
        sealed.append(meta)
        return True

    # -- containers: many small messages in one envelope (docs/batch.md) ------------------
    def _batchable(self, meta: MessageMeta, state: _FlowLink) -> bool:
        flow = state.flow
        return (
            flow.batch
            and not flow.via
            and meta.size <= BATCH_ITEM_MAX
            and not (meta.extra.get("streaming") and meta.seq)
        )

    def _read_bodies(self, group: list[MessageMeta]) -> list[tuple[MessageMeta, bytes]]:
        """Each message's plaintext, checked against what ingest recorded of it; one that
        changed on disk since goes to corrupt/ (as sealing it alone would have found)."""
        out = []
        for meta in group:
            path = self.ctx.spool.entry("ready", meta.id) / DATA
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    body = f.read(BATCH_ITEM_MAX + 1)
            except OSError as e:
                self._corrupt("ready", meta.id, meta, f"cannot seal: {e}")
                continue
            if len(body) != meta.size or not hmac.compare_digest(
                hashlib.sha256(body).hexdigest(), meta.sha256
            ):
                reason = "cannot seal: plaintext-mismatch: the spool copy differs from ingest's"
                self._corrupt("ready", meta.id, meta, reason)
                continue
            out.append((meta, body))
        return out

    def _seal_container(
        self, group: list[tuple[MessageMeta, bytes]], state: _FlowLink, last_seq: dict[str, int]
    ) -> tuple[MessageMeta, list[MessageMeta], Path]:
        """Seal messages of one flow into one container in `tmp/seal/<id>/` (not yet durable).

        Each keeps its own header inside (number, name, digest, approvals); the container's
        own id sorts right after its last message's, so that active/ lists it where those
        messages were and envelopes still leave in the order of their numbers."""
        flow = state.flow.name
        base = last_seq.get(flow, state.seq)
        items = [meta.replace(seq=base + i + 1) for i, (meta, _body) in enumerate(group)]
        headers = [self._header(meta, state) for meta in items]
        bodies = [body for _meta, body in group]
        plaintext = containers.encode(list(zip(headers, bodies, strict=True)))
        cid = _container_id(items[-1].id)
        header = containers.container_header(
            headers, message_id=cid, created=utc_now(), plaintext=plaintext
        )
        sealed = io.BytesIO()
        env.seal(io.BytesIO(plaintext), sealed, header, state.recipient_key, self.signing_key)
        data = sealed.getvalue()
        work = self.ctx.spool.dir("tmp/seal") / cid
        shutil.rmtree(work, ignore_errors=True)  # what a crashed run began
        work.mkdir(mode=0o700)
        meta = MessageMeta(
            id=cid,
            flow=flow,
            system=items[0].system,
            original_name=header.original_name,
            size=header.size,
            sha256=header.sha256,
            content_type=header.content_type,
            created=header.created,
            seq=header.sequence,
            classification=header.classification,
            extra={"batch": [{k: getattr(m, k) for k in _ITEM_FIELDS} for m in items]},
        )
        write_new(work / ENVELOPE, data, self.barrier)
        write_new(work / META, meta.to_json(), self.barrier)
        self.barrier.dir(work.parent)
        self._forget_bytes(cid)
        if self._in_memory_bytes < MEMORY_BYTES:
            self._in_memory[cid] = data
            self._in_memory_bytes += len(data)
        last_seq[flow] = items[-1].seq
        return meta, items, work

    def _records(self, event: str, meta: MessageMeta, **fields: object) -> list[AuditEntry]:
        """The audit records of an event for what an envelope holds: one, or one for each
        message of a container (naming it), so every message keeps its own trail."""
        items = meta.extra.get("batch")
        if not items:
            return [self.ctx.entry(event, meta, **fields)]  # type: ignore[arg-type]
        return [
            self.ctx.entry(  # type: ignore[arg-type]
                event,
                MessageMeta(flow=meta.flow, resent=meta.resent, **item),
                batch=meta.id,
                **fields,
            )
            for item in items
        ]

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

    # -- large messages: sealed while they are sent ---------------------------------------
    def _streams(self, meta: MessageMeta, state: _FlowLink, entry: Path) -> bool:
        """A large message, on a link that takes an envelope while it is being sealed."""
        if not hasattr(state.link, "open_stream") or not state.link.connected:
            return False
        if env.max_envelope_length(meta.size, CHUNK_SIZE) <= MEMORY_ENVELOPE:
            return False  # small whatever its header: not worth building one to find out
        if not (entry / DATA).exists():
            return False
        return env.envelope_length(self._header(meta.replace(seq=1), state)) > MEMORY_ENVELOPE

    def _seal_while_sending(self, meta: MessageMeta, state: _FlowLink) -> bool:
        """Seal a large message of ready/ into its envelope and onto the link at once.

        One pass over the plaintext and one durable write of the envelope, instead of sealing
        it to disk and reading it back to send it. The order that keeps it safe: the message's
        number and a mark that it may have gone out (`streaming`) are durable in its meta.json,
        with the counter and the `sealed` record, before its first byte leaves; then it is
        sealed and sent; then the envelope is made durable and the plaintext removed; then the
        `sent` record and the move to sent/. A crash or a broken link before that leaves it in
        ready/, sealed and sent again (a fresh key, the same number) as a re-send; a crash after
        the plaintext is gone finds its envelope in ready/ and sends that again (_recover_active).
        """
        spool = self.ctx.spool
        barrier = self.barrier
        entry = spool.entry("ready", meta.id)
        again = bool(meta.extra.get("streaming")) and meta.seq > 0
        seq = meta.seq if again else state.seq + 1
        meta = meta.replace(seq=seq, extra={**meta.extra, "streaming": True})
        self.ctx.record("sealed", meta)
        spool.write_meta("ready", meta.id, meta, barrier)
        if seq > state.seq:
            replace_file(self._seq_file(meta.flow), str(seq).encode(), barrier)
            state.seq = seq
        barrier.commit()
        header = self._header(meta, state)
        tmp = entry / (ENVELOPE + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        name = self.ctx.config.name
        started = time.monotonic()
        try:
            stream = state.link.open_stream(  # type: ignore[attr-defined]
                meta.id, meta.flow, name, env.envelope_length(header), again, self.ctx.stop
            )
            fd = os.open(entry / DATA, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as src, open(tmp, "xb") as out:
                env.seal(src, _Tee(out, stream), header, state.recipient_key, self.signing_key)
                out.flush()
                os.fsync(out.fileno())
            ok = stream.finish()
        except LinkBroken:
            ok = False
        except (OSError, env.EnvelopeError) as e:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._corrupt("ready", meta.id, meta, f"cannot seal: {e}")
            return False
        if not ok:  # it stays in ready/, to be sealed and sent again, as a re-send
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            return False
        self.ctx.metrics.observe_stage(meta.flow, "seal", started)
        os.rename(tmp, entry / ENVELOPE)
        self.reaper.reap(entry / DATA)  # past this point only ciphertext stays in its entry
        fsync_dir(entry)
        crash_point("sender-streamed")
        self.ctx.record("resent" if again else "sent", meta)
        spool.move(meta.id, "ready", "sent")
        size = (spool.entry("sent", meta.id) / ENVELOPE).stat().st_size
        state.remember(meta.id, size)
        self.ctx.metrics.messages.labels(meta.flow, "seal", "ok").inc()
        outcome = "resent" if again else "sent"
        self.ctx.metrics.messages.labels(meta.flow, "send", outcome).inc()
        self.ctx.metrics.bytes.labels(meta.flow, "send").inc(size)
        self.ctx.metrics.observe_stage(meta.flow, "send", started)
        return True

    def _header(self, meta: MessageMeta, state: _FlowLink) -> env.Header:
        cfg = self.ctx.config
        return env.Header(
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
            chunk_size=CHUNK_SIZE,
            sender_key=self._sender_key_id,
            recipient_key=state.recipient_key_id,
            classification=_level(cfg, state.flow.source),
            approvals=_approvals(meta) if state.flow.approval.required else (),
        )

    def _seal_to(self, src: Path, dst: Path, meta: MessageMeta, state: _FlowLink) -> bytes | None:
        """Seal `src` into a new `dst` (not yet durable); a partial `dst` is removed on error.

        Returns the envelope's bytes if it is small enough to be kept in memory until sent."""
        header = self._header(meta, state)
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()  # what a crashed run began
        started = time.monotonic()
        keep = (
            env.envelope_length(header) <= MEMORY_ENVELOPE and self._in_memory_bytes < MEMORY_BYTES
        )
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f, open(dst, "xb") as out:
                if keep:
                    buf = io.BytesIO()
                    env.seal(f, buf, header, state.recipient_key, self.signing_key)
                    out.write(buf.getbuffer())
                else:
                    env.seal(f, out, header, state.recipient_key, self.signing_key)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            raise
        self.ctx.metrics.observe_stage(meta.flow, "seal", started)
        return buf.getvalue() if keep else None

    def _seal_in_place(self, msg_id: str, meta: MessageMeta, state: _FlowLink) -> bool:
        """Seal a message found in active/ with only its plaintext (left by an older version)."""
        entry = self.ctx.spool.entry("active", msg_id)
        if not self._approved("active", meta, state):
            return False
        tmp = entry / (ENVELOPE + ".tmp")
        try:
            self._seal_to(entry / DATA, tmp, meta, state)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except (OSError, env.EnvelopeError) as e:
            self._corrupt("active", msg_id, meta, f"cannot seal: {e}")
            return False
        os.rename(tmp, entry / ENVELOPE)
        self.reaper.reap(entry / DATA)  # past this point only ciphertext stays in its entry
        fsync_dir(entry)
        self._sealed_here[msg_id] = meta
        self.ctx.metrics.messages.labels(meta.flow, "seal", "ok").inc()
        return True

    # -- sending ------------------------------------------------------------------------
    def send(self, msg_id: str) -> bool:
        return self.send_batch([msg_id])

    def send_batch(self, ids: list[str]) -> bool:
        """Send active messages and move them to sent/; False when nothing could go out."""
        spool = self.ctx.spool
        barrier = self.barrier
        sent: list[tuple[MessageMeta, float]] = []
        for msg_id in ids:
            if self.ctx.stop.is_set():
                break
            self._service_links()  # a link that went down is noticed between messages
            entry = spool.entry("active", msg_id)
            sealed = self._sealed_here.get(msg_id)
            if sealed is not None:  # sealed by this process: its numbered metadata is here
                meta, state = sealed, self.links[sealed.flow]
                if not state.link.connected:
                    continue  # stays in active/; sealing goes on while the link is down
            else:
                found = self._active_found(msg_id, entry)
                if found is None:
                    continue
                meta, state = found
            started = time.monotonic()
            ok = self._send_one(state, entry / ENVELOPE, meta)
            if not ok:
                # Stopping, or the link went down mid-way: it stays in active/, goes again.
                break
            sent.append((meta, started))
        if not sent:
            return False
        self.ctx.record_many(
            [r for m, _started in sent for r in self._records("resent" if m.resent else "sent", m)]
        )
        crash_point("sender-sent")
        for meta, _started in sent:
            # meta.json's time says when it was sent (the resend window and the retention
            # count from it); the record above holds the exact time, so it is not rewritten.
            os.utime(spool.entry("active", meta.id) / META)
            spool.move(meta.id, "active", "sent", barrier)
        barrier.commit()
        for meta, started in sent:
            self._sealed_here.pop(meta.id, None)  # only active/ needs it; it must not grow
            self._forget_bytes(meta.id)
            size = (spool.entry("sent", meta.id) / ENVELOPE).stat().st_size
            self.links[meta.flow].remember(meta.id, size)
            outcome = "resent" if meta.resent else "sent"
            self.ctx.metrics.messages.labels(meta.flow, "send", outcome).inc(_messages_in(meta))
            self.ctx.metrics.bytes.labels(meta.flow, "send").inc(size)
            self.ctx.metrics.observe_stage(meta.flow, "send", started)
        return True

    def _active_found(self, msg_id: str, entry: Path) -> tuple[MessageMeta, _FlowLink] | None:
        """A message found in active/ (after a restart): its metadata, numbered from its
        envelope, once that is checked to be what we sealed; None if it cannot go now."""
        spool = self.ctx.spool
        try:
            meta = spool.read_meta("active", msg_id)
            state = self.links[meta.flow]
        except Exception as e:
            self._corrupt("active", msg_id, None, f"unreadable or unknown flow: {e}")
            return None
        if not state.link.connected:
            return None  # stays in active/; sealing goes on while the link is down
        # A crash between taking the message and sealing it leaves only plaintext: seal it.
        if not (entry / ENVELOPE).exists() and not (
            (entry / DATA).exists() and self._seal_in_place(msg_id, meta, state)
        ):
            if spool.entry("active", msg_id).exists():
                self._corrupt("active", msg_id, meta, "neither plaintext nor envelope left")
            return None
        sealed = self._sealed_here.get(msg_id)
        if sealed is not None:  # sealed just now, in place
            return sealed.replace(resent=meta.resent), state
        header, problem = self._check_own(entry)
        if header is None:
            self._corrupt("active", msg_id, meta, problem)
            return None
        return meta.replace(seq=header.sequence), state

    def _send_one(self, state: _FlowLink, path: Path, meta: MessageMeta) -> bool:
        """Hand one envelope to the link: from memory if the link takes bytes and it is there."""
        name, resend = self.ctx.config.name, meta.resent > 0
        data = self._in_memory.get(meta.id)
        send_bytes = getattr(state.link, "send_envelope_bytes", None)
        if data is not None and send_bytes is not None:
            return bool(send_bytes(data, meta.id, meta.flow, name, resend, self.ctx.stop))
        return state.link.send_envelope(path, meta.id, meta.flow, name, resend, self.ctx.stop)

    def _forget_bytes(self, msg_id: str) -> None:
        data = self._in_memory.pop(msg_id, None)
        if data is not None:
            self._in_memory_bytes -= len(data)

    def _resend(self, state: _FlowLink) -> None:
        spool = self.ctx.spool
        todo, state.resend = list(dict.fromkeys(state.resend)), []
        records: list[AuditEntry] = []
        try:
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
                header, problem = self._check_own(entry)
                if header is None:
                    self._corrupt("sent", msg_id, meta, problem)
                    continue
                meta = meta.replace(seq=header.sequence)
                ok = state.link.send_envelope(
                    entry / ENVELOPE, meta.id, meta.flow, self.ctx.config.name, True, self.ctx.stop
                )
                if not ok:
                    state.resend = todo[i:] + state.resend
                    return
                records += self._records(
                    "resent", meta, outcome="info", reason="link re-established"
                )
                self.ctx.metrics.messages.labels(meta.flow, "send", "resent").inc(
                    _messages_in(meta)
                )
                if len(records) >= BATCH_MESSAGES:
                    self.ctx.record_many(records)
                    records = []
        finally:
            # Informational (no state changes with a re-send): written once per batch.
            self.ctx.record_many(records)

    def _waited_for_space(self, e: OSError, what: str) -> bool:
        """True, after a pause, when `e` says the disk is full: the work stays where it is."""
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return False
        log.error("disk full while handling %s; waiting for space: %s", what, e)
        self.ctx.metrics.disk_full.set(1)
        self.ctx.sleep(1.0)
        return True

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
            self.barrier.discard()
            if self._waited_for_space(e, msg_id):
                return False
            reason = f"{type(e).__name__}: {e}"
        except Exception as e:
            self.barrier.discard()
            reason = f"{type(e).__name__}: {e}"
        log.exception("cannot handle %s/%s; moving it to corrupt/", state, msg_id)
        meta = None
        with contextlib.suppress(Exception):
            meta = self.ctx.spool.read_meta(state, msg_id)
        if self.ctx.spool.entry(state, msg_id).exists():
            self._corrupt(state, msg_id, meta, f"internal error: {reason}")
        return False

    def _check_own(self, entry: Path) -> tuple[env.Header | None, str]:
        """The header of an envelope on disk, if it is still what we sealed; else why not.

        The signature covers every byte, so checking it with our own public key finds any
        truncation, flipped bit or zero-filled block since sealing, without decrypting.
        """
        own = self.signing_key.public_key()
        try:
            with open(entry / ENVELOPE, "rb") as f:
                return env.verify_envelope(f, lambda sender, key: own), ""
        except env.EnvelopeError as e:
            return None, f"envelope damaged on disk: {e}"
        except OSError as e:
            return None, f"envelope unreadable: {e}"

    def _corrupt(self, state: str, msg_id: str, meta: MessageMeta | None, reason: str) -> None:
        spool = self.ctx.spool
        self._sealed_here.pop(msg_id, None)
        self._forget_bytes(msg_id)
        if meta is not None:
            self.ctx.record_many(self._records("corrupt", meta, outcome="error", reason=reason))
        else:
            self.ctx.record("corrupt", {"id": msg_id}, outcome="error", reason=reason)
        with contextlib.suppress(Exception):
            if meta is not None:
                spool.write_meta(state, msg_id, meta.replace(reason_code="corrupt", reason=reason))
        spool.move(msg_id, state, "corrupt")
        flow = meta.flow if meta is not None else "unknown"
        self.ctx.metrics.rejections.labels(flow, "send", "corrupt").inc()
        log.error("message %s moved to corrupt/: %s", msg_id, reason)


class _Tee:
    """Writes go to the envelope file and onto the link at once (sealing while sending); the
    disk is started on the file as it grows, so its fsync at the end waits for little."""

    def __init__(self, out: BinaryIO, stream: LinkStream) -> None:
        self.out = out
        self.stream = stream
        self.written = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self.out.write(data)
        self.stream.write(data)
        before = self.written
        self.written += n
        if before < MEMORY_ENVELOPE <= self.written:
            crash_point("sender-streaming")  # an envelope half sealed, half sent
        if before // WRITEBACK_EVERY != self.written // WRITEBACK_EVERY:
            self.out.flush()
            start_writeback(self.out.fileno(), 0, 0)
        return n


def _container_id(last: str) -> str:
    """An id one above `last`: it sorts right after it, and is new (ids end in 80 random bits)."""
    return f"{(int(last, 16) + 1) % 2**128:032x}"


def _messages_in(meta: MessageMeta) -> int:
    return len(meta.extra.get("batch") or ()) or 1


def _approvals(meta: MessageMeta) -> tuple[dict, ...]:
    return tuple(meta.extra.get("approvals", ()))


def _level(cfg: object, zone: str) -> str:
    for z in cfg.zones:  # type: ignore[attr-defined]
        if z.name == zone:
            return z.level
    return ""
