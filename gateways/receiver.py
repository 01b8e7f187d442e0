"""The receiver agent: takes envelopes off the link, verifies, decrypts and delivers them.

Two stages, each its own thread so a slow disk write never stalls the socket: the link stage
takes what the link brings, the deliver stage checks (flow, recipient, sender, replay,
sequence), opens, applies this side's own policy and delivers atomically into
`inbox/<flow>/new/`, with a `delivered/<id>` marker that makes delivery idempotent by message id.
It writes nothing to the link. Anything refused is kept in `quarantine/`, as it came, with its
reason. An envelope takes one of three ways in:

- stored first (any transport; relayed flows): `tmp/link/<id>/envelope` -> `received/<id>/`
  once the END frame's digest matches, durable before anything else happens to it; the deliver
  stage opens it from there;
- in memory (zmq, at most 1 MiB, one WHOLE frame): handed to the deliver stage, never stored;
- streamed (zmq, larger): decrypted as it comes into `inbox/<flow>/tmp/<id>.part` (`_Streamed`,
  transfer/envelope_stream.py), the envelope itself never stored: one durable write (the
  plaintext) instead of three (envelope, then plaintext after reading it twice).

Why the last two lose nothing: until its marker in `received/` is durable a message is neither
visible nor acknowledged anywhere; if the receiver dies before, the link drops with it and the
sender re-sends its resend window on reconnect (gateways/sender.py). That window holds the
newest messages, so the receiver must never let an older message wait undurable while newer
ones pile up: the link stage stops taking (and the socket, then the sender, waits) when
MEMORY_BACKLOG bytes of memory arrivals are not yet durable, and takes no new streamed envelope
before every earlier one is durable; what can then be lost, that plus what sits in the link
(`zmqlink.in_flight_bound()`), is less than the default window (64 MiB).

Both stages work in batches (group commit) of whatever is waiting now, never waiting for more:
the link stage takes every envelope the link has delivered in one poll, the deliver stage up to
`BATCH_MESSAGES` (or `BATCH_BYTES`). Each step of the one-message path is done for the whole
batch with one audit write and one durability barrier (`_deliver_opened`): the plaintexts
durable; the records and each message's marker naming the file it becomes; barrier; the links
into the inbox; barrier; the moves to `delivered/`; barrier. Every state change is still preceded
by its durable audit record, and a file appears in `new/` only once its marker is durable, so a
crash anywhere finishes the delivery once (`_finish_delivery`) and never makes a second copy.

Approvals are checked against this gateway's own people: an envelope of a flow that needs them is
refused when one does not verify, when there are too few, or when one is from someone who is not a
security officer here. A flow with `signed_delivery` gets a signed manifest beside each delivered
file (transfer/publication.py) so the publishing step can verify it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import io
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..transfer import batch as containers
from ..transfer import envelope as env
from ..transfer import hops as hop_records
from ..transfer.approvals import ApprovalRefused, Directory, Subject, Verified, check_approvals
from ..transfer.durable import (
    Barrier,
    durable_rename,
    fsync_dir,
    open_exclusive,
    replace_durably,
    replace_file,
    start_writeback,
    write_durably,
    write_new,
)
from ..transfer.envelope_stream import StreamOpener, reencrypt_chunks
from ..transfer.ids import new_message_id
from ..transfer.keys import load_encryption_private, load_signing_private, load_signing_public
from ..transfer.link import Arrival, LinkNote, StreamSink, materialize, open_receiver
from ..transfer.linkframe import Begin
from ..transfer.names import safe_name
from ..transfer.publication import companion_paths, make_manifest, sign_manifest
from ..transfer.spool import ENVELOPE, META, MessageMeta, SpoolError
from ..transfer.udp_recv import kernel_rcvbuf_errors
from ..zones.config import Flow
from .agent import AgentContext, AuditEntry, FailClosed, crash_point, utc_now
from .metrics import AgentMetrics

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "ReceiverAgent", "inbox_dirs"]

log = logging.getLogger("zonegate.receiver")
ENVELOPE_OVERHEAD = 1024 * 1024  # header, wrapped key, per-chunk tags, signature: generous
#: The largest container plaintext taken (a sender makes them under 1 MiB): opened in memory.
MAX_CONTAINER_BYTES = 4 * 1024 * 1024
#: The most messages, and envelope bytes, one delivery batch takes (at least one message).
BATCH_MESSAGES = 256
BATCH_BYTES = 16 * 1024 * 1024
#: How long an idle deliver stage waits before it looks into received/ again.
POLL_INTERVAL = 0.02
#: Envelopes that came in memory and are not durable yet, at most: the link stage waits (and
#: the socket fills, and the sender slows) when it is this far ahead of the deliver stage. What
#: a receiver may lose in a crash is this plus what sits in the link (zmqlink.in_flight_bound),
#: and the sender's resend window (64 MiB by default) must cover both.
MEMORY_BACKLOG = 8 * 1024 * 1024


@functools.lru_cache(maxsize=64)
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
        #: envelopes that arrived in memory, from the link stage to the deliver stage
        self._queue: queue.Queue[_Handed] = queue.Queue()
        self._backlog = 0  # bytes of those not durable yet (under _backlog_cv)
        self._backlog_cv = threading.Condition()
        #: ids queued or being delivered from memory (under `lock`): held, for the dedup check
        self._in_flight: set[str] = set()
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
        if not flow.via and hasattr(link, "stream_to"):
            # Large envelopes are opened as they come instead of stored first (_Streamed).
            link.stream_to = partial(self._stream_to, flow)
        self.ctx.metrics.link_up.labels(flow.name).set(1)
        barrier = Barrier()
        dropped = 0
        try:
            while not self.ctx.stop.is_set():
                if flow.transport.kind == "udp":
                    self.ctx.metrics.rcvbuf_errors.set(kernel_rcvbuf_errors())
                    dropped = export_queue_drops(self.ctx.metrics, flow.name, link, dropped)
                arrivals: list[Arrival] = []
                for item in link.poll(200):
                    if isinstance(item, Arrival):
                        self.ctx.metrics.bytes.labels(flow.name, "link").inc(item.size)
                        if item.streamed:
                            with self.ctx.metrics.busy("receive"):
                                if arrivals:  # in order: what came before it first
                                    self._accept_from_link(flow, arrivals, barrier)
                                    arrivals = []
                                self._streamed_complete(flow, item)
                        else:
                            arrivals.append(item)
                    else:
                        self._on_note(flow, item)
                if arrivals:
                    with self.ctx.metrics.busy("receive"):
                        self._accept_from_link(flow, arrivals, barrier)
        finally:
            link.close()
            barrier.close()

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

    def _accept_from_link(self, flow: Flow, arrivals: list[Arrival], barrier: Barrier) -> None:
        """Take a poll's envelopes: into received/, each after its durable record, or (those
        that came in memory) straight to the deliver stage.

        A re-send of a message held here is dropped as a duplicate; any other envelope with an
        id we hold (or one seen earlier in the same batch) is a replay, kept in quarantine/.
        """
        spool = self.ctx.spool
        records: list[AuditEntry] = []
        keep: list[tuple[Path, MessageMeta, Path]] = []  # work dir, meta, target
        drop: list[Arrival] = []
        refused: list[tuple[MessageMeta, str]] = []
        direct: list[Arrival] = []
        with self.lock:
            seen: set[str] = set()
            for arrival in arrivals:
                msg_id, resend = arrival.transfer, arrival.resend
                meta = _link_meta(flow, arrival)
                known = (
                    msg_id in seen
                    or msg_id in self._in_flight
                    or spool.entry("delivered", msg_id).exists()
                    or spool.entry("received", msg_id).exists()
                )
                seen.add(msg_id)
                if known and resend:
                    # The sender could not know this arrived: drop the copy, say so.
                    records.append(
                        self.ctx.entry(
                            "duplicate", meta, outcome="info", reason="re-send of a held message"
                        )
                    )
                    drop.append(arrival)
                    continue
                if not known and arrival.payload is not None:
                    # Delivered from memory by the deliver stage: its records come with it.
                    self._in_flight.add(msg_id)
                    direct.append(arrival)
                    continue
                work = materialize(arrival).directory  # a replay is kept as it came
                if known:
                    qid = new_message_id()
                    reason = "message id was already received or delivered"
                    meta = _refused_meta(meta, "replay", reason)
                    records.append(
                        self.ctx.entry(
                            "replay",
                            meta,
                            outcome="refused",
                            reason=f"replay: {reason}",
                            quarantine=qid,
                        )
                    )
                    keep.append((work, meta, spool.entry("quarantine", qid)))
                    refused.append((meta, qid))
                else:
                    records.append(self.ctx.entry("received-on-link", meta))
                    keep.append((work, meta, spool.entry("received", msg_id)))
                write_new(work / META, meta.to_json(), barrier)
            self.ctx.record_many(records)
            if drop:  # counted with their records (a duplicate changes no state)
                self.ctx.metrics.messages.labels(flow.name, "receive", "duplicate").inc(len(drop))
            barrier.commit()  # metadata and records before any envelope enters a state
            crash_point("receiver-recorded")
            for work, _meta, target in keep:
                os.rename(work, target)
                barrier.dir(target.parent)
            if keep:
                barrier.dir(spool.dir("tmp/link"))
            barrier.commit()
        for arrival in drop:
            if arrival.payload is None:
                shutil.rmtree(arrival.directory, ignore_errors=True)
        for meta, qid in refused:
            self._count_refusal(meta, "replay", qid)
        accepted = len(keep) - len(refused) + len(direct)
        if accepted:
            self.ctx.metrics.messages.labels(flow.name, "receive", "received").inc(accepted)
        for arrival in direct:
            with self._backlog_cv:  # a full backlog holds the link back, and with it the sender
                while self._backlog and self._backlog + arrival.size > MEMORY_BACKLOG:
                    if self.ctx.stop.is_set():
                        return  # not durable anywhere: the sender re-sends it on reconnect
                    self._backlog_cv.wait(0.2)
                self._backlog += arrival.size
            self._queue.put((flow, arrival))

    # -- large envelopes, opened as they come ---------------------------------------------
    def _stream_to(self, flow: Flow, begin: Begin) -> StreamSink:
        """The link offers a transfer's bytes as they come (zmq, a flow not relayed).

        A re-send of a message held here is dropped as it comes; a replay is kept as it came,
        for quarantine; anything else is decrypted on the fly into the inbox's tmp/ (_Streamed).
        Before a new one is taken, every envelope that came before it must be durable: a crash
        during a long transfer then loses only what the sender re-sends on reconnect (this one
        and what follows it), never something earlier it no longer holds in its window.
        """
        msg_id = begin.transfer
        with self.lock:
            known = (
                msg_id in self._in_flight
                or self.ctx.spool.entry("delivered", msg_id).exists()
                or self.ctx.spool.entry("received", msg_id).exists()
            )
            mode = "drop" if known and begin.resend else "raw" if known else "open"
            if mode == "open":
                self._in_flight.add(msg_id)
        if mode == "open":
            with self._backlog_cv:
                while self._backlog and not self.ctx.stop.is_set():
                    self._backlog_cv.wait(0.2)
        return _Streamed(self, flow, msg_id, begin.length, begin.resend, mode)

    def _streamed_complete(self, flow: Flow, arrival: Arrival) -> None:
        """The last bytes of a streamed envelope came: hand it on, or keep it as refused."""
        sink = arrival.sink
        assert isinstance(sink, _Streamed)
        link_meta = _link_meta(flow, arrival)
        if sink.mode == "drop":
            entry = self.ctx.entry(
                "duplicate", link_meta, outcome="info", reason="re-send of a held message"
            )
            self.ctx.record_many([entry])
            self.ctx.metrics.messages.labels(flow.name, "receive", "duplicate").inc()
            return
        opened = sink.complete(link_meta, arrival.sha256)
        if opened is None:  # refused: the envelope as it came is in sink.work
            assert sink.refused is not None
            r = sink.refused
            event = "replay" if sink.replay else r.event
            with self.lock:
                if event != "replay":
                    self.ctx.record("received-on-link", link_meta)
                self._quarantine_dir(sink.work, link_meta, r.code, r.reason, event)
                if sink.owns_id:
                    self._in_flight.discard(arrival.transfer)
            return
        self.ctx.metrics.messages.labels(flow.name, "receive", "received").inc()
        with self._backlog_cv:
            self._backlog += arrival.size
        self._queue.put((flow, opened))

    # -- deliver stage ------------------------------------------------------------------
    def deliver_loop(self) -> None:
        barrier = Barrier()
        try:
            while not self.ctx.stop.is_set():
                items = self._from_memory(POLL_INTERVAL)
                if items:
                    self._deliver_memory_guarded(items, barrier)
                ids = self.ctx.spool.ids("received")
                while ids and not self.ctx.stop.is_set():
                    batch, ids = self._take(ids)
                    self._deliver_batch_guarded(batch, barrier)
        finally:
            barrier.close()

    def _from_memory(self, timeout: float) -> list[_Handed]:
        """What the link stage handed over: wait up to `timeout` for the first, then take
        everything already there (up to a batch)."""
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        size = _handed_size(items[0])
        while len(items) < BATCH_MESSAGES and size < BATCH_BYTES:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
            size += _handed_size(items[-1])
        return items

    def _take(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """The next batch: at most BATCH_MESSAGES, and BATCH_BYTES after the first message."""
        total = 0
        for i, msg_id in enumerate(ids[:BATCH_MESSAGES]):
            with contextlib.suppress(OSError):
                total += (self.ctx.spool.entry("received", msg_id) / ENVELOPE).stat().st_size
            if total > BATCH_BYTES and i > 0:
                return ids[:i], ids[i:]
        return ids[:BATCH_MESSAGES], ids[BATCH_MESSAGES:]

    def _deliver_batch_guarded(self, ids: list[str], barrier: Barrier) -> None:
        """A batch that fails as a whole is delivered message by message, so the one message
        that breaks it goes to corrupt/ and the others go on (`_deliver_guarded`)."""
        if len(ids) == 1:
            self._deliver_guarded(ids[0], barrier)
            return
        try:
            self.deliver_batch(ids, barrier)
            self.ctx.metrics.disk_full.set(0)
            return
        except FailClosed:
            raise
        except OSError as e:
            barrier.discard()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("disk full while delivering; waiting for space: %s", e)
                self.ctx.metrics.disk_full.set(1)
                self.ctx.sleep(1.0)
                return
            log.exception("a delivery batch of %d failed; taking them one by one", len(ids))
        except Exception:
            barrier.discard()
            log.exception("a delivery batch of %d failed; taking them one by one", len(ids))
        for msg_id in ids:
            if self.ctx.stop.is_set():
                return
            if self.ctx.spool.entry("received", msg_id).exists():
                self._deliver_guarded(msg_id, barrier)

    def _deliver_guarded(self, msg_id: str, barrier: Barrier) -> None:
        """A message that breaks delivery goes to corrupt/; the ones behind it go on."""
        try:
            self.deliver_batch([msg_id], barrier)
            self.ctx.metrics.disk_full.set(0)
            return
        except FailClosed:
            raise
        except OSError as e:
            barrier.discard()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("disk full while delivering %s; waiting for space: %s", msg_id, e)
                self.ctx.metrics.disk_full.set(1)
                self.ctx.sleep(1.0)
                return
            reason = f"{type(e).__name__}: {e}"
        except Exception as e:
            barrier.discard()
            reason = f"{type(e).__name__}: {e}"
        log.exception("cannot deliver received/%s; moving it to corrupt/", msg_id)
        if self.ctx.spool.entry("received", msg_id).exists():
            meta = MessageMeta(id=msg_id, flow="unknown", system="", original_name="")
            with contextlib.suppress(Exception):
                meta = self.ctx.spool.read_meta("received", msg_id)
            self._corrupt_received(msg_id, meta, f"internal error: {reason}")

    def deliver_batch(self, ids: list[str], barrier: Barrier) -> None:
        """Verify, open and deliver a batch of received/ messages (see `_deliver_opened`)."""
        opened: list[_Opened] = []
        done: list[str] = []  # containers, removed once each of their messages has its marker
        try:
            for msg_id in ids:
                if self.ctx.stop.is_set():
                    break
                with self.ctx.metrics.busy("open"):
                    got, container = self._open_one(msg_id, barrier)
                opened += got
                if container:
                    done.append(msg_id)
            with self.ctx.metrics.busy("deliver"):
                self._deliver_opened(opened, barrier)
        finally:  # a container's messages were in flight from its opening (`_open_container`)
            self._release(*(o.meta.id for o in opened if o.new_marker))
        for o in opened:
            with contextlib.suppress(FileNotFoundError):
                (self.ctx.spool.entry("delivered", o.meta.id) / ENVELOPE).unlink()
        for cid in done:
            # Its messages are delivered or refused, each on its own; a crash before this
            # line opens it again and skips them (`_held`).
            with self.lock:
                self.ctx.spool.remove("received", cid)

    def _deliver_opened(
        self, opened: list[_Opened], barrier: Barrier, progress: _Progress | None = None
    ) -> None:
        """Deliver decrypted messages, in the order that makes a crash anywhere finish once:

        1. barrier: every plaintext (`inbox/<flow>/tmp/<id>.part`) is durable and complete;
        2. the `verified`/`delivered` records (and `received-on-link` for those that came in
           memory), the sequence counter, and each message's marker in received/ naming the
           file it becomes (`delivering_to`, `delivered_as`); barrier;
        3. the links into `inbox/<flow>/new/`, each plaintext's tmp name removed; barrier;
        4. the moves to `delivered/`; barrier.

        After 2 a message is finished by `_finish_delivery` (a plaintext still in tmp/ is linked;
        one gone from there was linked), so the file appears once in the inbox, never twice.
        `progress` (memory batches) records which markers were made, and when they are durable.
        """
        if not opened:
            return
        spool = self.ctx.spool
        barrier.commit()
        records: list[AuditEntry] = []
        highest: dict[str, int] = {}
        taken: set[Path] = set()
        for o in opened:
            cid = o.meta.extra.get("batch")
            in_batch = {"batch": cid} if cid else {}
            if progress is not None:  # came in memory: its link record comes with it
                records.append(self.ctx.entry("received-on-link", o.link_meta, **in_batch))
            records += o.records
            records += self._sequence(o.flow, o.meta.seq, highest)
            hops = o.meta.extra.get("hops")
            extra = {"hops": hops} if hops else {}
            extra.update(in_batch)
            records.append(self.ctx.entry("delivered", o.meta, path=o.want.name, **extra))
            o.target = _free_name(o.want, o.meta.id, taken)
            taken.add(o.target)
            link_sha256 = o.link_meta.extra.get("link_sha256", "") if o.link_meta else ""
            o.meta = o.meta.replace(
                extra={
                    **o.meta.extra,
                    "link_sha256": link_sha256,
                    "delivering_to": str(o.target),
                    "delivered_as": str(o.target),
                    "delivered_at": utc_now(),
                }
            )
            if progress is None and not o.new_marker:
                spool.write_meta("received", o.meta.id, o.meta, barrier)
            else:
                entry = spool.entry("received", o.meta.id)
                entry.mkdir(mode=0o700)
                if progress is not None:
                    progress.created.append(o.meta.id)
                write_new(entry / META, o.meta.to_json(), barrier)
        barrier.dir(spool.dir("received"))
        for flow, seq in highest.items():
            replace_file(self._seq_path(flow), str(seq).encode(), barrier)
        self.ctx.record_many(records)
        barrier.commit()
        if progress is not None:
            progress.committed = True
        crash_point("receiver-opened")
        self._link_into_inboxes(opened, barrier)
        crash_point("receiver-marked")
        with self.lock:
            for o in opened:
                spool.move(o.meta.id, "received", "delivered", barrier)
            barrier.commit()
        for o in opened:
            self._count_delivered(o.meta)
            self.ctx.metrics.observe_interval(o.flow.name, "open", o.started, o.opened)
            self.ctx.metrics.observe_stage(o.flow.name, "deliver", o.opened)

    def _deliver_memory_guarded(self, items: list[_Handed], barrier: Barrier) -> None:
        """Deliver envelopes that came in memory; should the batch fail as a whole, whatever of
        it is not yet durable is stored in received/ and delivered from there, one by one."""
        progress = _Progress()
        try:
            self.deliver_memory_batch(items, barrier, progress)
            self.ctx.metrics.disk_full.set(0)
        except FailClosed:
            raise
        except Exception as e:
            barrier.discard()
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("disk full while delivering from memory; storing the batch: %s", e)
                self.ctx.metrics.disk_full.set(1)
            else:
                log.exception("a delivery from memory failed; storing the batch in received/")
            self._store_unfinished(items, progress, barrier)
        finally:
            with self.lock:
                self._in_flight.difference_update(_handed_id(item) for item in items)
            with self._backlog_cv:  # durable now (or stored): room for what comes next
                self._backlog -= sum(_handed_size(item) for item in items)
                self._backlog_cv.notify_all()

    def _store_unfinished(
        self, items: list[_Handed], progress: _Progress, barrier: Barrier
    ) -> None:
        """The file path for what a failed memory batch did not make durable (if this fails
        too, the stage stops: the agent ends, and the sender re-sends on reconnect)."""
        spool = self.ctx.spool
        with self.lock:  # no longer in flight: stored now, or delivered already
            self._in_flight.difference_update(_handed_id(item) for item in items)
        if not progress.committed:
            for msg_id in progress.created:  # begun, but not durable: start again from the file
                shutil.rmtree(spool.entry("received", msg_id), ignore_errors=True)
        by_flow: dict[str, list[Arrival]] = {}
        for flow, handed in items:
            msg_id = _handed_id((flow, handed))
            if msg_id in progress.settled or any(
                spool.entry(s, msg_id).exists() for s in ("received", "delivered")
            ):
                continue
            if isinstance(handed, _Opened):  # streamed: its envelope is rebuilt from plaintext
                assert handed.rebuild is not None
                arrival = handed.rebuild()
            else:
                shutil.rmtree(handed.directory, ignore_errors=True)
                arrival = materialize(handed)
            by_flow.setdefault(flow.name, []).append(arrival)
        for name, arrivals in by_flow.items():
            self._accept_from_link(self.flows[name], arrivals, barrier)

    def deliver_memory_batch(
        self, items: list[_Handed], barrier: Barrier, progress: _Progress
    ) -> None:
        """Verify, open and deliver envelopes that came in memory: the envelope itself is never
        written (a refused one is, as it came, into quarantine/).

        The steps are those of `_deliver_opened`; its marker in `received/<id>/` is the first
        thing of such a message that is stored. Until that marker is durable (step 2) nothing
        of the batch is visible or acknowledged: a crash loses it on this side only, the link
        drops with the process, and the sender re-sends its resend window on reconnect. Once
        it is durable, the plaintext is too, and `_finish_delivery` completes the delivery.
        """
        opened: list[_Opened] = []
        try:
            for flow, handed in items:
                if isinstance(handed, _Opened):  # streamed, opened as it came
                    barrier.file(handed.part)
                    barrier.dir(handed.part.parent)
                    opened.append(handed)
                    continue
                with self.ctx.metrics.busy("open"):
                    got = self._open_memory(flow, handed, barrier)
                if not got:
                    progress.settled.add(handed.transfer)  # refused, or held: nothing to deliver
                opened += got
            with self.ctx.metrics.busy("deliver"):
                self._deliver_opened(opened, barrier, progress)
        finally:  # a container's messages were in flight from its opening (`_open_container`)
            self._release(*(o.meta.id for o in opened if o.new_marker))

    def _link_into_inboxes(self, opened: list[_Opened], barrier: Barrier) -> None:
        """Each plaintext under the name its durable marker gives (rewritten, durably, in the
        rare case another file took that name meanwhile); then its publication signature."""
        spool = self.ctx.spool
        for o in opened:
            actual = _link_no_clobber(o.part, o.target, o.meta.id)
            crash_point("receiver-linked")
            o.part.unlink()
            barrier.dir(actual.parent)
            barrier.dir(o.part.parent)
            if actual != o.target:
                o.target = actual
                o.meta = o.meta.replace(
                    extra={
                        **o.meta.extra,
                        "delivering_to": str(actual),
                        "delivered_as": str(actual),
                    }
                )
                spool.write_meta("received", o.meta.id, o.meta, barrier)
        barrier.commit()
        for o in opened:
            if o.flow.signed_delivery:
                self._sign_publication(o.target, o.meta)

    def _open_memory(self, flow: Flow, arrival: Arrival, barrier: Barrier) -> list[_Opened]:
        """Verify and decrypt an envelope held in memory: its messages (none if it is refused:
        then quarantined, kept exactly as it came off the link)."""
        started = time.monotonic()
        assert arrival.payload is not None
        link_meta = _link_meta(flow, arrival)
        try:
            src = io.BytesIO(arrival.payload)
            return self._open_src(src, flow, link_meta, barrier, started, stored=False)
        except Refused as r:
            work = materialize(arrival).directory
            with self.lock:
                self.ctx.record("received-on-link", link_meta)
                self._quarantine_dir(work, link_meta, r.code, r.reason, r.event)
            return []

    def _opened(
        self,
        flow: Flow,
        header: env.Header,
        approvals: tuple[Verified, ...],
        records: list[AuditEntry],
        part: Path,
        started: float,
        resent: int,
    ) -> _Opened:
        meta = _meta_from_header(header, resent=resent)
        if header.message_id in self._hops:  # the delivered record lists every hop
            meta = meta.replace(extra={"hops": self._hops.pop(header.message_id)})
        if approvals:
            meta = meta.replace(
                extra={**meta.extra, "approvers": [_approver(v) for v in approvals]}
            )
        _tmp, new = inbox_dirs(self.ctx.config.inbox, flow.name)
        want = new / safe_name(meta.original_name, fallback=header.message_id)
        return _Opened(meta, flow, records, part, want, started)

    def _open_one(self, msg_id: str, barrier: Barrier) -> tuple[list[_Opened], bool]:
        """Verify and decrypt what received/<id> holds into its inbox's tmp/: its messages
        (none if it went elsewhere: quarantine, corrupt, or a delivery interrupted by a crash,
        finished now), and whether it was a container (removed once they are delivered)."""
        started = time.monotonic()
        spool = self.ctx.spool
        entry = spool.entry("received", msg_id)
        try:
            meta = spool.read_meta("received", msg_id)
        except Exception as e:
            if not (entry / ENVELOPE).exists() and not (entry / META).exists():
                # Begun by a delivery from memory that died before its barrier: never durable,
                # never acknowledged; the sender re-sent it when the connection came back.
                log.warning("removing received/%s: a delivery from memory never completed", msg_id)
                shutil.rmtree(entry, ignore_errors=True)
                return [], False
            meta = MessageMeta(id=msg_id, flow="unknown", system="", original_name="")
            self._corrupt_received(msg_id, meta, f"unreadable metadata: {e}")
            return [], False
        if meta.extra.get("delivering_to") or meta.extra.get("delivered_as"):
            self._finish_delivery(msg_id, meta)  # a crash interrupted it: finish, never redo
            return [], False
        flow = self.flows.get(meta.flow)
        try:
            if flow is None:
                raise Refused("unknown-flow", f"flow {meta.flow!r} is not received here")
            with open(entry / ENVELOPE, "rb") as src:
                opened = self._open_src(src, flow, meta, barrier, started, stored=True)
        except Refused as r:
            if self._damaged_on_disk(entry, meta):
                self._corrupt_received(
                    msg_id, meta, f"envelope changed on disk since it arrived ({r})"
                )
            else:
                self._quarantine_received(msg_id, meta, r.code, r.reason, r.event)
            return [], False
        container = not opened or opened[0].meta.id != msg_id
        return opened, container

    def _open_src(
        self,
        src: BinaryIO,
        flow: Flow,
        link_meta: MessageMeta,
        barrier: Barrier,
        started: float,
        stored: bool,
    ) -> list[_Opened]:
        """The messages an envelope holds, each decrypted into its inbox's tmp/: one, or a
        container's (`_open_container`); `Refused` when the envelope itself is refused."""
        records: list[AuditEntry] = []
        header, part = self._verify_and_open_src(src, flow, link_meta, records, barrier)
        if part is None:
            return self._open_container(src, flow, link_meta, header, barrier, started, stored)
        try:
            approvals = self._check_approvals(flow, header, records)
        except Refused:
            part.unlink()
            raise
        o = self._opened(flow, header, approvals, records, part, started, link_meta.resent)
        o.link_meta = link_meta
        return [o]

    # -- containers: many small messages in one envelope (docs/batch.md) ------------------
    def _open_container(
        self,
        src: BinaryIO,
        flow: Flow,
        link_meta: MessageMeta,
        header: env.Header,
        barrier: Barrier,
        started: float,
        stored: bool,
    ) -> list[_Opened]:
        """Open a container and take each message in it as if it had come alone.

        The container is checked whole (the sender's signature, then the batch format): any
        fault there refuses all of it. Then each message on its own: a message held here
        already is a duplicate when the container is a re-send, else a replay; this side's size
        limits and approvals; a refused one goes to quarantine alone (with a copy of the
        container as it came, naming which message it was), the others go on. `stored`: the
        container was taken from received/, where a crash may have left it after some of its
        messages were delivered; those are skipped, their delivery is finished on its own.
        """
        start = src.tell()
        raw = src.read(MAX_CONTAINER_BYTES + ENVELOPE_OVERHEAD)
        plaintext = io.BytesIO()
        try:
            env.open_envelope(
                io.BytesIO(raw), plaintext, self.private_key, self._sender_key, header=header
            )
            items = containers.decode(plaintext.getbuffer(), header)
        except env.EnvelopeError as e:
            raise Refused(e.reason, e.detail) from None
        finally:
            src.seek(start)
        self.ctx.metrics.containers.labels(flow.name).inc()
        opened: list[_Opened] = []
        taken: list[str] = []  # ids this container put in flight
        try:
            self._open_items(items, flow, header.message_id, link_meta, raw, barrier, started,
                             stored, opened, taken)  # fmt: skip
        except BaseException:
            self._release(*taken)
            raise
        return opened

    def _open_items(
        self,
        items: list[containers.BatchItem],
        flow: Flow,
        cid: str,
        link_meta: MessageMeta,
        raw: bytes,
        barrier: Barrier,
        started: float,
        stored: bool,
        opened: list[_Opened],
        taken: list[str],
    ) -> None:
        """`_open_container`'s second half: each message, into `opened` as it is taken (and
        its id into `taken` as it is put in flight)."""
        inbox_tmp, _new = inbox_dirs(self.ctx.config.inbox, flow.name)
        duplicates: list[AuditEntry] = []
        for index, item in enumerate(items):
            h = item.header
            item_link = link_meta.replace(id=h.message_id, extra={**link_meta.extra, "batch": cid})
            records: list[AuditEntry] = []
            with self.lock:  # checked and taken at once, as the link stage does (_in_flight)
                held = self._held(h.message_id, cid)
                if not held:
                    self._in_flight.add(h.message_id)
                    taken.append(h.message_id)
            if held == "ours" and stored:
                continue  # delivered, or being finished, from this very container
            if held and link_meta.resent:
                duplicates.append(
                    self.ctx.entry(
                        "duplicate",
                        _meta_from_header(h, resent=1),
                        outcome="info",
                        reason="re-send of a held message",
                        batch=cid,
                    )
                )
                continue
            try:
                if held:
                    raise Refused(
                        "replay", "message id was already received or delivered", "replay"
                    )
                self._check_size(h, flow)
                approvals = self._check_approvals(flow, h, records)
            except Refused as r:
                self._release(h.message_id)
                self._quarantine_item(raw, item_link, h, index, r)
                continue
            part = inbox_tmp / f"{h.message_id}.part"
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            with open_exclusive(part) as dst:
                dst.write(item.body)
            barrier.file(part)
            barrier.dir(part.parent)
            verified = _meta_from_header(h, resent=link_meta.resent)
            records.insert(0, self.ctx.entry("verified", verified, batch=cid))
            o = self._opened(flow, h, approvals, records, part, started, link_meta.resent)
            o.meta = o.meta.replace(extra={**o.meta.extra, "batch": cid})
            o.link_meta = item_link
            o.new_marker = True
            opened.append(o)
        if duplicates:
            self.ctx.record_many(duplicates)
            self.ctx.metrics.messages.labels(flow.name, "receive", "duplicate").inc(len(duplicates))

    def _release(self, *msg_ids: str) -> None:
        """Ids no longer in flight: delivered (their markers say so now) or refused."""
        with self.lock:
            self._in_flight.difference_update(msg_ids)

    def _held(self, msg_id: str, cid: str) -> str:
        """Whether a message of a container is held here: "" if not, "ours" if by this very
        container (its marker names it), "other" if by anything else."""
        spool = self.ctx.spool
        if msg_id in self._in_flight:
            return "other"
        for state in ("received", "delivered"):
            entry = spool.entry(state, msg_id)
            if not entry.exists():
                continue
            try:
                meta = spool.read_meta(state, msg_id)
            except SpoolError:
                if state == "received" and not (entry / ENVELOPE).exists():
                    # A marker begun by a delivery that failed before it was written: nothing.
                    shutil.rmtree(entry, ignore_errors=True)
                    continue
                return "other"
            return "ours" if meta.extra.get("batch") == cid else "other"
        return ""

    def _quarantine_item(
        self, raw: bytes, link_meta: MessageMeta, header: env.Header, index: int, r: Refused
    ) -> None:
        """Keep one refused message of a container: the container as it came (the original,
        signed by the sender), with a meta.json naming the message and why it was refused."""
        work = self.ctx.spool.dir("tmp/deliver") / f"item-{new_message_id()}"
        work.mkdir(mode=0o700)
        write_durably(work / ENVELOPE, raw)
        meta = _meta_from_header(header, resent=link_meta.resent).replace(
            extra={**link_meta.extra, "batch_index": index}
        )
        with self.lock:
            self._quarantine_dir(
                work, meta, r.code, r.reason, r.event, batch=link_meta.extra["batch"], index=index
            )

    def _verify_and_open_src(
        self,
        src: BinaryIO,
        flow: Flow,
        meta: MessageMeta,
        records: list[AuditEntry],
        barrier: Barrier,
    ) -> tuple[env.Header, Path | None]:
        try:
            hops, offset = hop_records.read_wrapper(src)
            if hops and not flow.via:
                raise Refused("bad-hop", f"flow {flow.name!r} is not relayed here")
            header, _length = env.read_header(src)
        except (env.EnvelopeError, hop_records.HopError) as e:
            raise Refused(e.reason, e.detail) from None
        self._check_header(header, flow, meta.id)
        if containers.is_batch(header):
            src.seek(offset)
            return header, None  # opened in memory by _open_src, its messages one by one
        if flow.via:
            self._check_hops(src, flow, header, hops, offset)
        inbox_tmp, _new = inbox_dirs(self.ctx.config.inbox, flow.name)
        part = inbox_tmp / f"{header.message_id}.part"
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        try:
            src.seek(offset)
            with open_exclusive(part) as dst:
                env.open_envelope(src, dst, self.private_key, self._sender_key, header=header)
            barrier.file(part)
            barrier.dir(part.parent)
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
            records.append(self.ctx.entry("verified", verified, hops=hop_records.summary(hops)))
            self._hops[header.message_id] = hop_records.summary(hops)
        else:
            records.append(self.ctx.entry("verified", verified))
        return header, part

    def _check_header(self, header: env.Header, flow: Flow, msg_id: str) -> None:
        """This side's checks of a header, before anything of the body is decrypted."""
        if header.message_id != msg_id:
            raise Refused("malformed", "the envelope's id differs from its link transfer id")
        if header.flow != flow.name or header.sender != flow.sender:
            raise Refused(
                "wrong-flow",
                f"envelope for flow {header.flow!r} from {header.sender!r} "
                f"arrived on flow {flow.name!r}",
            )
        if header.recipient != self.ctx.config.name:
            raise Refused("wrong-recipient", f"addressed to {header.recipient!r}, not us")
        if containers.is_batch(header):
            # Its messages are checked one by one once it is open (_open_container).
            if not flow.batch or flow.via:
                raise Refused(
                    "unexpected-batch",
                    f"a container on flow {flow.name!r}, which is not a direct flow with "
                    "`batch: true` here",
                )
            if header.size > MAX_CONTAINER_BYTES:
                raise Refused(
                    "policy-size",
                    f"a container of {header.size} bytes; at most {MAX_CONTAINER_BYTES} taken",
                )
            return
        self._check_size(header, flow)

    @staticmethod
    def _check_size(header: env.Header, flow: Flow) -> None:
        if header.size > flow.policy.max_size or header.size < flow.policy.min_size:
            raise Refused(
                "policy-size",
                f"{header.size} bytes is outside this side's limits "
                f"{flow.policy.min_size}..{flow.policy.max_size}",
            )

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

    def _check_approvals(
        self, flow: Flow, header: env.Header, records: list[AuditEntry]
    ) -> tuple[Verified, ...]:
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
            raise Refused(r.code, r.reason) from None
        meta = _meta_from_header(header, resent=0)
        for v in verified:
            records.append(
                self.ctx.entry(
                    "approved",
                    meta,
                    reason="approval verified against this gateway's officers",
                    who={"person": v.officer.name, "role": v.officer.role},
                    fingerprint=v.officer.key_id,
                    approved_at=v.time,
                )
            )
        return verified

    def _sender_key(self, sender: str, key: str) -> Ed25519PublicKey | None:
        public = self.sender_keys.get(sender)
        if public is None or env.key_id(public) != key:
            return None
        return public

    def _seq_path(self, flow: str) -> Path:
        return self.ctx.spool.dir("state") / f"{flow}.received-seq"

    def _sequence(self, flow: Flow, seq: int, highest: dict[str, int]) -> list[AuditEntry]:
        """A `gap` record if `seq` skips numbers; `highest` is the batch's running maximum
        per flow (the caller writes it to the counter file, durable with the batch)."""
        if flow.name not in highest:
            last = 0
            with contextlib.suppress(FileNotFoundError, ValueError):
                last = int(self._seq_path(flow.name).read_text())
            highest[flow.name] = last
        last = highest[flow.name]
        out = []
        if seq > last + 1:
            missing = seq - last - 1
            out.append(
                self.ctx.entry(
                    "gap",
                    {"flow": flow.name, "seq": seq},
                    outcome="info",
                    reason=f"sequence {last + 1}..{seq - 1} not seen before {seq}",
                )
            )
            self.ctx.metrics.gaps.labels(flow.name).inc(missing)
        highest[flow.name] = max(last, seq)
        return out

    def _finish_delivery(self, msg_id: str, meta: MessageMeta) -> None:
        """Link the plaintext into the inbox, then mark the message delivered.

        Every step can be repeated after a crash without a second copy. The marker names the
        file (`delivering_to`); the plaintext leaves `inbox/<flow>/tmp/` only once it is linked,
        so a plaintext still there is linked now (recognised by its inode if the link was made
        already) and one gone from there was linked (`delivered_as`, written with the marker;
        a marker of an older version without it has the delivered file found by its hash).
        """
        spool = self.ctx.spool
        extra = meta.extra
        if extra.get("delivering_to"):
            target = Path(extra["delivering_to"])
            part = target.parent.parent / "tmp" / f"{msg_id}.part"
            if part.exists():
                hops = extra.get("hops")
                more = {"hops": hops} if hops else {}
                self.ctx.record("delivered", meta, path=target.name, **more)
                target = _link_no_clobber(part, target, msg_id)
                part.unlink()
                fsync_dir(target.parent)
                fsync_dir(part.parent)
            elif extra.get("delivered_as"):
                target = Path(extra["delivered_as"])
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
            kept = {k: v for k, v in extra.items() if k != "delivering_to"}
            marker = meta.replace(
                extra={**kept, "delivered_as": str(target), "delivered_at": utc_now()}
            )
            spool.write_meta("received", msg_id, marker)
        with self.lock:
            spool.move(msg_id, "received", "delivered")
        with contextlib.suppress(FileNotFoundError):
            (spool.entry("delivered", msg_id) / ENVELOPE).unlink()
        self._count_delivered(meta)

    def _count_delivered(self, meta: MessageMeta) -> None:
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
        try:
            digest = _sha256_of(entry / ENVELOPE)
        except OSError:
            return True
        return not hmac.compare_digest(digest, expected)

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
        self, work: Path, meta: MessageMeta, code: str, reason: str, event: str, **fields: object
    ) -> None:
        """Keep a refused envelope under a fresh id (a replay reuses an id we already hold)."""
        qid = new_message_id()
        meta = _refused_meta(meta, code, reason)
        self.ctx.record(
            event, meta, outcome="refused", reason=f"{code}: {reason}", quarantine=qid, **fields
        )
        replace_durably(work / META, meta.to_json())
        durable_rename(work, self.ctx.spool.entry("quarantine", qid))
        self._count_refusal(meta, code, qid)

    def _count_refusal(self, meta: MessageMeta, code: str, qid: str) -> None:
        self.ctx.metrics.messages.labels(meta.flow, "receive", "refused").inc()
        self.ctx.metrics.rejections.labels(meta.flow, "receive", code).inc()
        log.warning("quarantined envelope %s as %s: %s: %s", meta.id, qid, code, meta.reason)


#: while a large plaintext is written, the disk is started on it every this many bytes
WRITEBACK_EVERY = 32 * 1024 * 1024


class _Streamed:
    """One large envelope taken off the link as it comes: the StreamSink the receiver gives.

    `mode` "open": decrypted chunk by chunk into `inbox/<flow>/tmp/<id>.part` (StreamOpener);
    "raw": kept as it came in the scratch dir, for quarantine (a replay, or one refused on the
    way: what was decrypted is encrypted again, giving back exactly the bytes that came);
    "drop": a re-send of a message held here, of which nothing is kept.

    Nothing here is durable: the deliver stage makes the plaintext durable with its marker
    (`_deliver_opened`); a quarantined copy is fsynced before it is moved there.
    """

    def __init__(
        self, agent: ReceiverAgent, flow: Flow, msg_id: str, length: int, resend: bool, mode: str
    ) -> None:
        self.agent = agent
        self.flow = flow
        self.msg_id = msg_id
        self.length = length
        self.resend = resend
        self.mode = mode
        self.replay = mode == "raw"
        self.owns_id = mode == "open"  # its id was put in flight for it (see _stream_to)
        # Checked end to end by the opener; a kept copy is checked against the sender's digest.
        self.verifies_envelope = mode == "open"
        self.refused: Refused | None = Refused("replay", "message id was already received or "
                                               "delivered") if self.replay else None  # fmt: skip
        self.work = agent.ctx.spool.dir("tmp/link") / f"{msg_id}.{id(self):x}"
        inbox_tmp, _new = inbox_dirs(agent.ctx.config.inbox, flow.name)
        self.part_path = inbox_tmp / f"{msg_id}.part"
        self.part: BinaryIO | None = None
        self.raw: BinaryIO | None = None
        self.records: list[AuditEntry] = []
        self.written = 0
        self.started = time.monotonic()
        self.opener = StreamOpener(
            length,
            agent.private_key,
            agent._sender_key,
            check_header=partial(_check_streamed_header, agent, flow, msg_id),
        )
        if mode == "open":
            with contextlib.suppress(FileNotFoundError):
                self.part_path.unlink()
            self.part = open_exclusive(self.part_path)
        elif mode == "raw":
            self._open_raw()

    def _open_raw(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(mode=0o700)
        self.raw = open_exclusive(self.work / ENVELOPE)

    def write(self, data: bytes) -> None:
        if self.mode == "raw":
            assert self.raw is not None
            self.raw.write(data)
        elif self.mode == "open":
            try:
                with self.agent.ctx.metrics.busy("open"):
                    self.opener.feed(data, self._plaintext)
            except env.EnvelopeError as e:
                self._refuse(Refused(e.reason, e.detail))
            except Refused as r:
                self._refuse(r)

    def _plaintext(self, pt: bytes) -> None:
        assert self.part is not None
        if self.written:
            crash_point("receiver-streamed")  # a transfer half in, half decrypted
        self.part.write(pt)
        before = self.written
        self.written += len(pt)
        if before // WRITEBACK_EVERY != self.written // WRITEBACK_EVERY:
            self.part.flush()
            start_writeback(self.part.fileno(), 0, 0)

    def _refuse(self, r: Refused) -> None:
        """From now on keep the envelope as it came: what was decrypted, encrypted again."""
        self.refused = r
        self._open_raw()
        assert self.raw is not None and self.part is not None
        o = self.opener
        if o.header is not None:
            self.raw.write(o.prefix)
            self.part.flush()
            with open(self.part_path, "rb") as plaintext:
                reencrypt_chunks(plaintext, self.raw, o.header, o.content_key, o.chunks_opened)
        self.raw.write(o.pending)
        self._drop_part()
        self.mode = "raw"

    def _drop_part(self) -> None:
        if self.part is not None:
            self.part.close()
            self.part = None
        with contextlib.suppress(FileNotFoundError):
            self.part_path.unlink()

    def abort(self, reason: str) -> None:
        self._drop_part()
        if self.raw is not None:
            self.raw.close()
        shutil.rmtree(self.work, ignore_errors=True)
        if self.owns_id:
            with self.agent.lock:
                self.agent._in_flight.discard(self.msg_id)

    def complete(self, link_meta: MessageMeta, link_sha256: str) -> _Opened | None:
        """All bytes came (their digest checked by the link): the opened message, or None when
        it is refused (then `refused` says why and `work` holds it as it came, fsynced)."""
        if self.mode == "open":
            try:
                header = self.opener.finish()
                approvals = self.agent._check_approvals(self.flow, header, self.records)
            except env.EnvelopeError as e:
                self._refuse(Refused(e.reason, e.detail))
            except Refused as r:
                self._refuse(r)
        if self.mode == "raw":
            assert self.raw is not None and self.refused is not None
            self.raw.flush()
            os.fsync(self.raw.fileno())
            self.raw.close()
            if _sha256_of(self.work / ENVELOPE) != link_sha256:
                # What came is kept exactly (rebuilt where it decrypted); a difference from the
                # digest the sender gave says the bytes were damaged on the way.
                self.refused = Refused(
                    self.refused.code,
                    f"{self.refused.reason} (the copy kept differs from the digest the sender "
                    "gave for it: damaged on the link?)",
                    self.refused.event,
                )
            return None
        assert self.part is not None
        self.part.close()
        self.part = None
        verified = _meta_from_header(header, resent=link_meta.resent)
        self.records.insert(0, self.agent.ctx.entry("verified", verified))
        o = self.agent._opened(
            self.flow, header, approvals, self.records, self.part_path, self.started,
            link_meta.resent,
        )  # fmt: skip
        o.link_meta = link_meta
        o.size = self.length
        o.rebuild = self.rebuild
        return o

    def rebuild(self) -> Arrival:
        """The envelope as it came, from its plaintext, durable in the scratch dir (for a
        delivery that failed before its marker was durable: it then goes the file way)."""
        o = self.opener
        assert o.header is not None
        self._open_raw()
        assert self.raw is not None
        self.raw.write(o.prefix)
        with open(self.part_path, "rb") as plaintext:
            reencrypt_chunks(plaintext, self.raw, o.header, o.content_key, o.chunks_opened)
        self.raw.write(o.pending)  # the signature
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        self._drop_part()
        fsync_dir(self.work)
        fsync_dir(self.work.parent)
        digest = _sha256_of(self.work / ENVELOPE)
        return Arrival(self.msg_id, self.work, self.resend, self.length, digest)


def _check_streamed_header(agent: ReceiverAgent, flow: Flow, msg_id: str, h: env.Header) -> None:
    agent._check_header(h, flow, msg_id)
    if containers.is_batch(h):  # a sender seals them small, to go whole, in one frame
        raise Refused("malformed", "a container must come whole, not streamed")


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class _Opened:
    """A message of a delivery batch, decrypted into `part`, on its way to `want`."""

    meta: MessageMeta
    flow: Flow
    records: list[AuditEntry]
    part: Path
    want: Path
    started: float  # when opening began (for a streamed one: its first bytes)
    target: Path = Path()
    #: when it was verified and decrypted: `open` is started..opened, `deliver` opened..delivered
    opened: float = field(default_factory=time.monotonic)
    link_meta: MessageMeta | None = None  # of one that came in memory: what the link said
    #: of one streamed: its envelope, rebuilt into the scratch dir as it came (a fallback)
    rebuild: Callable[[], Arrival] | None = None
    size: int = 0  # of one streamed: its envelope's length (what the backlog counts)
    #: of one from a container: no received/<id>/ of its own yet, its marker makes one
    new_marker: bool = False


#: what the link stage hands the deliver stage: an envelope in memory, or one opened as it came
_Handed = tuple[Flow, "Arrival | _Opened"]


def _handed_id(item: _Handed) -> str:
    handed = item[1]
    return handed.meta.id if isinstance(handed, _Opened) else handed.transfer


def _handed_size(item: _Handed) -> int:
    return item[1].size  # an envelope's length, in memory or streamed


@dataclass
class _Progress:
    """How far a memory batch got, for its guard: which markers exist, whether durable."""

    created: list[str] = field(default_factory=list)
    settled: set[str] = field(default_factory=set)
    committed: bool = False


def _link_meta(flow: Flow, arrival: Arrival) -> MessageMeta:
    """What the link tells of an envelope before it is opened."""
    meta = MessageMeta(id=arrival.transfer, flow=flow.name, system=flow.sender, original_name="")
    return meta.replace(
        resent=int(arrival.resend), created=utc_now(), extra={"link_sha256": arrival.sha256}
    )


def _free_name(want: Path, msg_id: str, taken: set[Path]) -> Path:
    """The name a delivery will take: `want`, or `name (id12).ext` if a file or another
    message of the batch holds it (as `_link_no_clobber` decides, ahead of the link)."""
    stem, dot, ext = want.name.partition(".")
    alt = want.with_name(f"{stem} ({msg_id[:12]}){dot}{ext}")
    for candidate in (want, alt):
        if candidate not in taken and not os.path.lexists(candidate):
            return candidate
    return alt


def _refused_meta(meta: MessageMeta, code: str, reason: str) -> MessageMeta:
    return meta.replace(
        reason_code=code, reason=reason, extra={**meta.extra, "claimed_id": meta.id}
    )


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
        if candidate.exists() and _sha256_of(candidate) == sha256:
            return candidate
    return None


def export_queue_drops(metrics: AgentMetrics, flow: str, link: object, seen: int) -> int:
    """Add what the UDP link's drain dropped since `seen` to its counter; the new total.

    The kernel's RcvbufErrors say the socket overflowed; these say the socket was emptied in
    time but the decoder was behind: the cure is a lower sender bandwidth, not a bigger buffer.
    """
    total = int(getattr(link, "queue_drops", 0))
    if total > seen:
        metrics.udp_queue_drops.labels(flow).inc(total - seen)
    return max(total, seen)
