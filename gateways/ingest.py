"""The ingest agent: claims complete files from outboxes, checks them, queues or quarantines.

Systems write into `outbox/<flow>/tmp/` and rename into `outbox/<flow>/new/` when a file is
complete (the Maildir rule), so ingest never sees half a file. A claim is one rename from
`new/` into the spool, made after its audit record is durable. From then on the message is in
exactly one spool state: `incoming` while it is hashed and checked, then `ready` or `quarantine`
(or `review`, for a flow that needs officers' approvals; see gateways/review.py).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from pathlib import Path

from ..transfer.durable import durable_rename, fsync_dir, write_durably
from ..transfer.ids import new_message_id
from ..transfer.policy import Candidate, Refusal, check
from ..transfer.spool import DATA, META, MessageMeta, SpoolError
from ..zones.config import Flow
from .agent import AgentContext, FailClosed, utc_now
from .review import expire_due, submitter_of

__all__ = ["IngestAgent", "outbox_dirs"]

log = logging.getLogger("zonegate.ingest")
_READ = 1024 * 1024


def outbox_dirs(root: Path, flow: str) -> tuple[Path, Path]:
    """The (tmp, new) pair of a flow's Maildir-style outbox."""
    return root / flow / "tmp", root / flow / "new"


class IngestAgent:
    def __init__(self, ctx: AgentContext, poll_interval: float = 0.2) -> None:
        self.ctx = ctx
        self.poll_interval = poll_interval
        self.flows = ctx.config.outgoing_flows()
        self.system = "outbox"
        self._last_expiry = 0.0
        for flow in self.flows:
            for d in outbox_dirs(ctx.config.outbox, flow.name):
                d.mkdir(parents=True, exist_ok=True)

    # -- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo what a crash interrupted; runs before the first claim."""
        spool = self.ctx.spool
        scratch = spool.dir("tmp/ingest")
        for entry in sorted(scratch.iterdir()):
            if (entry / DATA).exists() and (entry / META).exists():
                meta = MessageMeta.from_json((entry / META).read_bytes())
                self.ctx.record("recovered", meta, outcome="info", reason="claim completed")
                durable_rename(entry, spool.entry("incoming", entry.name))
            else:
                # The claim's rename never happened: the file is still in the outbox.
                shutil.rmtree(entry, ignore_errors=True)
                fsync_dir(scratch)
        for msg_id in spool.ids("incoming"):
            self.check_incoming(msg_id)

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
        self.ctx.record("agent-stopped", outcome="info")

    def poll_once(self) -> int:
        """Claim and check every complete file now waiting; returns how many were taken."""
        taken = 0
        self.expire_reviews()
        for flow in self.flows:
            _tmp, new = outbox_dirs(self.ctx.config.outbox, flow.name)
            try:
                names = sorted(os.listdir(new))
            except FileNotFoundError:
                continue
            for name in names:
                if self.ctx.stop.is_set():
                    return taken
                try:
                    msg_id = self.claim(flow, new, name)
                    self.ctx.metrics.disk_full.set(0)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        self.ctx.metrics.disk_full.set(1)
                    # Typically a full disk: the file stays in new/, nothing half-claimed is
                    # kept (recovery clears tmp/ingest), and ingest tries again shortly.
                    log.error("cannot claim %s from %s: %s; will retry", name, new, e)
                    self.ctx.metrics.rejections.labels(flow.name, "ingest", "claim-failed").inc()
                    self.ctx.sleep(1.0)
                    return taken
                if msg_id is not None:
                    self.check_incoming(msg_id)
                    taken += 1
        return taken

    def claim(self, flow: Flow, new: Path, name: str) -> str | None:
        src = new / name
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None
        msg_id = new_message_id()
        meta = MessageMeta(
            id=msg_id,
            flow=flow.name,
            system=self.system,
            original_name=name,
            size=st.st_size,
            created=utc_now(),
        )
        scratch = self.ctx.spool.dir("tmp/ingest") / msg_id
        scratch.mkdir(mode=0o700)
        safe_meta = meta
        try:
            meta.original_name.encode("utf-8")
        except UnicodeEncodeError:
            # Keep the raw bytes readable in metadata; the name check will refuse it.
            safe_meta = meta.replace(
                original_name=os.fsencode(name).decode("utf-8", "replace"),
                extra={"name_not_utf8": True},
            )
        write_durably(scratch / META, safe_meta.to_json())
        self.ctx.record("claimed", safe_meta)
        try:
            os.rename(src, scratch / DATA)
        except FileNotFoundError:  # another ingest took it between listdir and rename
            shutil.rmtree(scratch, ignore_errors=True)
            return None
        fsync_dir(scratch)
        fsync_dir(new)
        if not stat.S_ISREG(st.st_mode):
            # A link or device planted in the outbox: keep it (never follow it) and refuse.
            safe_meta = safe_meta.replace(extra={**safe_meta.extra, "not_regular": True})
            (scratch / META).unlink()
            write_durably(scratch / META, safe_meta.to_json())
        durable_rename(scratch, self.ctx.spool.entry("incoming", msg_id))
        self.ctx.metrics.messages.labels(flow.name, "ingest", "claimed").inc()
        return msg_id

    def check_incoming(self, msg_id: str) -> None:
        spool = self.ctx.spool
        try:
            meta = spool.read_meta("incoming", msg_id)
            flow = self.ctx.config.flow(meta.flow)
            data = spool.entry("incoming", msg_id) / DATA
            refusal: Refusal | None = None
            if meta.extra.get("not_regular"):
                refusal = Refusal("not-regular-file", "type", "not a regular file (link or device)")
            else:
                size, digest = _hash_file(data)
                meta = meta.replace(size=size, sha256=digest)
                if meta.extra.get("name_not_utf8"):
                    # meta.json holds a readable copy of the name, which would pass the check
                    refusal = Refusal("bad-name", "name", "the file name is not valid UTF-8")
                else:
                    refusal = check(Candidate(meta.original_name, size, str(data)), flow.policy)
        except (SpoolError, OSError, KeyError) as e:
            # Damaged on disk, or a flow no longer configured: set it aside, keep going.
            reason = f"cannot check the claimed file: {e}"
            self.ctx.record("corrupt", {"id": msg_id}, outcome="error", reason=reason)
            spool.move(msg_id, "incoming", "corrupt")
            self.ctx.metrics.rejections.labels("unknown", "ingest", "corrupt").inc()
            log.error("moved %s to corrupt/: %s", msg_id, reason)
            return
        if refusal is None:
            self.ctx.record("checked", meta)
            state = "review" if flow.approval.required else "ready"
            if state == "review":
                meta = meta.replace(extra={**meta.extra, "review": self._review_record(meta)})
            spool.write_meta("incoming", msg_id, meta)
            self.ctx.record("accepted", meta, **({"review": True} if state == "review" else {}))
            spool.move(msg_id, "incoming", state)
            self.ctx.metrics.messages.labels(flow.name, "ingest", "accepted").inc()
            self.ctx.metrics.bytes.labels(flow.name, "ingest").inc(meta.size)
            self.ctx.metrics.observe_since(flow.name, "ingest", meta.created)
            return
        meta = meta.replace(reason_code=refusal.code, reason=refusal.reason, rule=refusal.rule)
        if refusal.terms:  # the quarantine record names what matched, for the officer
            meta = meta.replace(extra={**meta.extra, "terms": list(refusal.terms)})
        self.ctx.record("checked", meta, outcome="refused", reason=refusal.code)
        spool.write_meta("incoming", msg_id, meta)
        terms = {"terms": "; ".join(refusal.terms)[:1000]} if refusal.terms else {}
        self.ctx.record(
            "quarantined",
            meta,
            outcome="refused",
            reason=_reason(refusal),
            rule=refusal.rule,
            **terms,
        )
        spool.move(msg_id, "incoming", "quarantine")
        self.ctx.metrics.messages.labels(flow.name, "ingest", "refused").inc()
        self.ctx.metrics.rejections.labels(flow.name, "ingest", refusal.code).inc()
        log.warning("refused %s (%s): %s", meta.original_name, refusal.code, refusal.reason)

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


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        buf = bytearray(_READ)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()
