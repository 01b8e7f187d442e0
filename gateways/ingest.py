"""The ingest agent: claims complete files from outboxes, checks them, queues or quarantines.

Systems write into `outbox/<flow>/tmp/` and rename into `outbox/<flow>/new/` when a file is
complete (the Maildir rule), so ingest never sees half a file. A claim is one rename from
`new/` into the spool, made after its audit record is durable. From then on the message is in
exactly one spool state: `incoming` while it is hashed and checked, then `ready` or `quarantine`
(or `review`, for a flow that needs officers' approvals; see gateways/review.py).

Ingest works in batches (group commit): it takes every file waiting in `new/` now, up to
`BATCH_FILES` files or `BATCH_BYTES` bytes, and never waits for more to arrive. A file in `new/`
is complete and no longer written (the Maildir rule), so ingest hashes and checks it where it is,
then claims and publishes it in one go; per batch:

1. for each file: hash and content policy; `tmp/ingest/<id>/meta.json` with the verdict (the
   hash, or the refusal and its reason);
2. the `claimed`, `checked` and `accepted`/`quarantined` records of every file, one audit write;
   one barrier makes every meta.json durable;
3. the renames `new/<name>` -> `tmp/ingest/<id>/data` (the claim) -> `ready|review|quarantine/<id>`
   (the publication); one barrier. A claimed file that is not the one that was checked (the name
   was reused meanwhile) goes to `incoming/` instead and is checked again there.

So every state change is preceded by its durable audit record and each message's metadata is
written once. A kill -9 anywhere leaves each file in exactly one place: still in `new/` (taken
again later, under a new id; the scratch entry of the attempt is removed and recorded), in
`tmp/ingest/<id>/` with its data (recovery completes the claim into `incoming/`), in `incoming/`
(checked again), or in its final state.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..transfer.durable import Barrier, durable_rename, fsync_dir, write_new
from ..transfer.ids import new_message_id
from ..transfer.policy import Candidate, Refusal, check
from ..transfer.spool import DATA, META, MessageMeta, SpoolError
from ..zones.config import Flow
from .agent import AgentContext, AuditEntry, FailClosed, crash_point, utc_now
from .review import expire_due, submitter_of

__all__ = ["BATCH_BYTES", "BATCH_FILES", "IngestAgent", "outbox_dirs"]

log = logging.getLogger("zonegate.ingest")
_READ = 1024 * 1024
#: The most files, and bytes, one batch takes (at least one file, however large).
BATCH_FILES = 256
BATCH_BYTES = 16 * 1024 * 1024
#: How often an idle ingest looks into its outboxes: bounds the wait of a file dropped then.
POLL_INTERVAL = 0.02


def outbox_dirs(root: Path, flow: str) -> tuple[Path, Path]:
    """The (tmp, new) pair of a flow's Maildir-style outbox."""
    return root / flow / "tmp", root / flow / "new"


@dataclass
class _Verdict:
    meta: MessageMeta
    state: str  # ready, review, quarantine or corrupt
    refusal: Refusal | None
    #: the file that was checked: (st_dev, st_ino, st_size, st_mtime_ns), or None
    checked: tuple[int, int, int, int] | None = None
    name: str = ""  # its name in new/ (before it is claimed)


class IngestAgent:
    def __init__(self, ctx: AgentContext, poll_interval: float = POLL_INTERVAL) -> None:
        self.ctx = ctx
        self.poll_interval = poll_interval
        self.flows = ctx.config.outgoing_flows()
        self.system = "outbox"
        self._last_expiry = 0.0
        self._recheck = False
        self.barrier = Barrier()
        for flow in self.flows:
            for d in outbox_dirs(ctx.config.outbox, flow.name):
                d.mkdir(parents=True, exist_ok=True)

    # -- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo what a crash interrupted; runs before the first claim."""
        spool = self.ctx.spool
        scratch = spool.dir("tmp/ingest")
        for entry in sorted(scratch.iterdir()):
            try:
                meta = MessageMeta.from_json((entry / META).read_bytes())
            except (OSError, ValueError, TypeError):
                meta = None
            if (entry / DATA).exists() and meta is not None:
                self.ctx.record("recovered", meta, outcome="info", reason="claim completed")
                durable_rename(entry, spool.entry("incoming", entry.name))
            else:
                # The claim's rename never happened: the file is still in the outbox, and is
                # taken again under a new id.
                if meta is not None:
                    self.ctx.record(
                        "recovered",
                        meta,
                        outcome="info",
                        reason="claim not completed; the file stays in the outbox",
                    )
                shutil.rmtree(entry, ignore_errors=True)
                fsync_dir(scratch)
        incoming = spool.ids("incoming")
        for start in range(0, len(incoming), BATCH_FILES):
            self.check_batch(incoming[start : start + BATCH_FILES])

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        self.ctx.record("agent-started", outcome="info")
        try:
            self.recover()
            while not self.ctx.stop.is_set():
                if not self.poll_once():
                    self.ctx.sleep(self.poll_interval)
        except FailClosed:
            return
        finally:
            self.barrier.close()
        self.ctx.record("agent-stopped", outcome="info")

    def poll_once(self) -> int:
        """Claim and check every complete file now waiting; returns how many were taken."""
        taken = 0
        self.expire_reviews()
        try:
            if self._recheck:  # left in incoming/ by a check that hit a full disk
                self._recheck = False
                incoming = self.ctx.spool.ids("incoming")
                for start in range(0, len(incoming), BATCH_FILES):
                    with self.ctx.metrics.busy("ingest"):
                        self.check_batch(incoming[start : start + BATCH_FILES])
            for flow in self.flows:
                taken += self._poll_flow(flow)
            self.ctx.metrics.disk_full.set(0)
        except OSError as e:
            self.barrier.discard()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.ctx.metrics.disk_full.set(1)
            # Typically a full disk: files stay in new/ or incoming/, nothing half-claimed is
            # kept, and ingest tries again shortly.
            log.error("cannot claim or check: %s; will retry", e)
            self.ctx.sleep(1.0)
            self._recheck = True
        return taken

    def _poll_flow(self, flow: Flow) -> int:
        _tmp, new = outbox_dirs(self.ctx.config.outbox, flow.name)
        try:
            names = sorted(os.listdir(new))
        except FileNotFoundError:
            return 0
        taken = 0
        while names and not self.ctx.stop.is_set():
            batch, names = self._next_batch(new, names)
            try:
                with self.ctx.metrics.busy("ingest"):
                    taken += self.take_batch(flow, new, batch)
            except OSError:
                self.ctx.metrics.rejections.labels(flow.name, "ingest", "claim-failed").inc()
                raise
        return taken

    def _next_batch(
        self, new: Path, names: list[str]
    ) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        """The next files to take, at most BATCH_FILES and (after the first) BATCH_BYTES."""
        batch: list[tuple[str, os.stat_result]] = []
        total = 0
        for i, name in enumerate(names):
            if len(batch) >= BATCH_FILES:
                return batch, names[i:]
            try:
                st = os.lstat(new / name)
            except FileNotFoundError:
                continue
            total += st.st_size
            if total > BATCH_BYTES and batch:
                return batch, names[i:]
            batch.append((name, st))
        return batch, []

    # -- claiming ----------------------------------------------------------------------
    def take_batch(self, flow: Flow, new: Path, files: list[tuple[str, os.stat_result]]) -> int:
        """Check files in new/, then claim and publish them, each after its durable records."""
        spool = self.ctx.spool
        barrier = self.barrier
        scratch_root = spool.dir("tmp/ingest")
        verdicts: list[_Verdict] = []
        records: list[AuditEntry] = []
        try:
            for name, st in files:
                meta = self._claim_meta(flow, name, st)
                verdict = self._verdict(meta, new / name)
                if verdict is None:
                    continue  # gone from new/ meanwhile
                verdict.name = name
                scratch = scratch_root / meta.id
                scratch.mkdir(mode=0o700)
                verdicts.append(verdict)
                write_new(scratch / META, verdict.meta.to_json(), barrier)
                records.append(self.ctx.entry("claimed", verdict.meta))
                records += self._records(verdict)
            if not verdicts:
                return 0
            barrier.dir(scratch_root)
            self.ctx.record_many(records)
            barrier.commit()  # each message's meta.json and its records before its claim
            crash_point("ingest-recorded")
        except OSError:
            # Nothing was claimed yet (the files are all still in new/): leave no scratch behind.
            barrier.discard()
            for v in verdicts:
                shutil.rmtree(scratch_root / v.meta.id, ignore_errors=True)
            raise
        published: list[_Verdict] = []
        changed: list[str] = []
        for v in verdicts:
            scratch = scratch_root / v.meta.id
            try:
                os.rename(new / v.name, scratch / DATA)
            except FileNotFoundError:  # another ingest took it, or its system took it back
                shutil.rmtree(scratch, ignore_errors=True)
                self.ctx.record(
                    "recovered",
                    v.meta,
                    outcome="info",
                    reason="not claimed: the file left the outbox before its claim",
                )
                continue
            crash_point("ingest-claimed")
            if v.checked is not None and _identity(os.lstat(scratch / DATA)) != v.checked:
                # Not the file that was checked (its name was reused): check it again.
                os.rename(scratch, spool.entry("incoming", v.meta.id))
                barrier.dir(spool.entry("incoming", v.meta.id))
                barrier.dir(spool.dir("incoming"))
                changed.append(v.meta.id)
                continue
            target = spool.entry(v.state, v.meta.id)
            os.rename(scratch, target)
            barrier.dir(target)
            barrier.dir(target.parent)
            published.append(v)
        crash_point("ingest-published")
        barrier.dir(new)
        barrier.dir(scratch_root)
        barrier.commit()
        if verdicts:
            self.ctx.metrics.messages.labels(flow.name, "ingest", "claimed").inc(len(verdicts))
        for v in published:
            self._count(v)
        if changed:
            self.check_batch(changed)
        return len(published) + len(changed)

    def _claim_meta(self, flow: Flow, name: str, st: os.stat_result) -> MessageMeta:
        meta = MessageMeta(
            id=new_message_id(),
            flow=flow.name,
            system=self.system,
            original_name=name,
            size=st.st_size,
            created=utc_now(),
        )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # Keep the raw bytes readable in metadata; the name check will refuse it.
            meta = meta.replace(
                original_name=os.fsencode(name).decode("utf-8", "replace"),
                extra={"name_not_utf8": True},
            )
        return meta

    # -- checking -----------------------------------------------------------------------
    def check_incoming(self, msg_id: str) -> None:
        self.check_batch([msg_id])

    def check_batch(self, ids: list[str]) -> None:
        """Check messages claimed into incoming/; move them on, each after its durable records."""
        spool = self.ctx.spool
        barrier = self.barrier
        verdicts: list[_Verdict] = []
        records: list[AuditEntry] = []
        for msg_id in ids:
            try:
                meta = spool.read_meta("incoming", msg_id)
            except SpoolError as e:
                meta = MessageMeta(id=msg_id, flow="unknown", system="", original_name="")
                verdict: _Verdict | None = self._unreadable(meta, e)
            else:
                verdict = self._verdict(meta, spool.entry("incoming", msg_id) / DATA)
            if verdict is None:  # nothing there to check: set aside as damaged
                verdict = self._unreadable(meta, FileNotFoundError("no data"))
            verdicts.append(verdict)
            records += self._records(verdict)
            if verdict.state != "corrupt" or verdict.meta.flow != "unknown":
                spool.write_meta("incoming", msg_id, verdict.meta, barrier)
        if not verdicts:
            return
        self.ctx.record_many(records)
        barrier.commit()  # every final meta.json and record before any message moves on
        crash_point("ingest-checked")
        for v in verdicts:
            spool.move(v.meta.id, "incoming", v.state, barrier)
        barrier.commit()
        for v in verdicts:
            self._count(v)

    def _verdict(self, meta: MessageMeta, data: Path) -> _Verdict | None:
        """What the checks say of the file at `data`; None if there is no such file."""
        try:
            flow = self.ctx.config.flow(meta.flow)
            st = os.lstat(data)
            refusal: Refusal | None = None
            checked = None
            if not stat.S_ISREG(st.st_mode) or meta.extra.get("not_regular"):
                # A link or device planted in the outbox: kept (never followed) and refused.
                meta = meta.replace(extra={**meta.extra, "not_regular": True})
                refusal = Refusal("not-regular-file", "type", "not a regular file (link or device)")
                checked = _identity(st)
            else:
                size, digest, checked = _hash_file(data)
                meta = meta.replace(size=size, sha256=digest)
                if meta.extra.get("name_not_utf8"):
                    # meta.json holds a readable copy of the name, which would pass the check
                    refusal = Refusal("bad-name", "name", "the file name is not valid UTF-8")
                else:
                    refusal = check(Candidate(meta.original_name, size, str(data)), flow.policy)
        except FileNotFoundError:
            return None
        except (OSError, KeyError) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Unreadable, or a flow no longer configured: set it aside, keep going.
            return self._unreadable(meta, e)
        if refusal is None:
            state = "review" if flow.approval.required else "ready"
            if state == "review":
                meta = meta.replace(extra={**meta.extra, "review": self._review_record(meta)})
            return _Verdict(meta, state, None, checked)
        meta = meta.replace(reason_code=refusal.code, reason=refusal.reason, rule=refusal.rule)
        if refusal.terms:  # the quarantine record names what matched, for the officer
            meta = meta.replace(extra={**meta.extra, "terms": list(refusal.terms)})
        return _Verdict(meta, "quarantine", refusal, checked)

    def _unreadable(self, meta: MessageMeta, e: Exception) -> _Verdict:
        reason = f"cannot check the claimed file: {e}"
        return _Verdict(meta.replace(reason_code="corrupt", reason=reason), "corrupt", None)

    def _records(self, v: _Verdict) -> list[AuditEntry]:
        entry = self.ctx.entry
        if v.state == "corrupt":
            fields = v.meta if v.meta.flow != "unknown" else {"id": v.meta.id}
            return [entry("corrupt", fields, outcome="error", reason=v.meta.reason)]
        if v.refusal is None:
            review = {"review": True} if v.state == "review" else {}
            return [entry("checked", v.meta), entry("accepted", v.meta, **review)]
        r = v.refusal
        terms = {"terms": "; ".join(r.terms)[:1000]} if r.terms else {}
        return [
            entry("checked", v.meta, outcome="refused", reason=r.code),
            entry(
                "quarantined", v.meta, outcome="refused", reason=_reason(r), rule=r.rule, **terms
            ),
        ]

    def _count(self, v: _Verdict) -> None:
        meta = v.meta
        metrics = self.ctx.metrics
        if v.state == "corrupt":
            metrics.rejections.labels("unknown", "ingest", "corrupt").inc()
            log.error("moved %s to corrupt/: %s", meta.id, meta.reason)
            return
        if v.refusal is None:
            metrics.messages.labels(meta.flow, "ingest", "accepted").inc()
            metrics.bytes.labels(meta.flow, "ingest").inc(meta.size)
            metrics.observe_since(meta.flow, "ingest", meta.created)
            return
        metrics.messages.labels(meta.flow, "ingest", "refused").inc()
        metrics.rejections.labels(meta.flow, "ingest", v.refusal.code).inc()
        log.warning("refused %s (%s): %s", meta.original_name, v.refusal.code, v.refusal.reason)

    def _review_record(self, meta: MessageMeta) -> dict[str, str]:
        """Who collected the message, for the review record (officers add theirs)."""
        return {
            "submitter": submitter_of(meta),
            "collected_by": f"{self.ctx.config.name}/ingest",
            "collected_at": meta.created,
        }

    def expire_reviews(self, interval: float = 1.0) -> None:
        """Messages not approved in time leave review/ for quarantine (at most once a second)."""
        if time.monotonic() - self._last_expiry < interval:
            return
        self._last_expiry = time.monotonic()
        for meta in expire_due(self.ctx.spool, self.ctx.config, self.ctx.record):
            self.ctx.metrics.rejections.labels(meta.flow, "review", "review-expired").inc()
            log.warning("review of %s (%s) expired; quarantined", meta.id, meta.original_name)


def _reason(refusal: Refusal) -> str:
    return f"{refusal.code}: {refusal.reason}"


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _hash_file(path: Path) -> tuple[int, str, tuple[int, int, int, int]]:
    """Size and SHA-256 of a regular file, and the identity of the file that was read."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        buf = bytearray(min(_READ, max(st.st_size, 1)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
        before, after = _identity(st), _identity(os.fstat(fd))
    # A file that changed while it was read matches no file: the claim checks it again.
    return size, h.hexdigest(), before if before == after else (-1, -1, -1, -1)
