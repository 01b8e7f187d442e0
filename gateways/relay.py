"""The relay agent: store-and-forward of envelopes it cannot open, one hop of a longer route.

A tier-2 gateway sits between a tier-3 unit and the bureau. It receives a relayed flow's
envelopes on the link into it, checks them as far as a gateway without the payload key can (the
originator's signature over every byte, the hop records of the relays before it, the route its
own config gives the flow, replays and duplicates by id), adds its own signed hop record and
sends the result on the link to the next gateway (docs/relay.md). It holds no key that opens the
envelope, so its spool never holds plaintext.

Its own spool (``spool/relay/``), apart from the gateway's receiver and sender, so a gateway that
is both a final receiver and a relay never mixes the two: ``received/`` (whole and durable off
the link) -> ``relaying/`` (verified, wrapped with our hop record, being sent) -> ``sent/``, and
``quarantine/`` for what it refuses. Audit events: ``received-on-link``, ``duplicate``,
``quarantined`` or ``replay``, ``verified`` (signature and hops checked, our hop record added:
``relaying/``), ``relayed`` (one per hop, when handed to the next link), ``resent``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..transfer import envelope as env
from ..transfer import hops as hop_records
from ..transfer.durable import durable_rename, fsync_dir, replace_durably, write_durably
from ..transfer.ids import new_message_id
from ..transfer.keys import load_encryption_public, load_signing_private, load_signing_public
from ..transfer.link import Arrival, LinkSender, materialize, open_receiver, open_sender
from ..transfer.spool import ENVELOPE, META, MessageMeta, Spool
from ..zones.config import Flow
from .agent import AgentContext, FailClosed, utc_now

__all__ = ["RelayAgent"]

log = logging.getLogger("zonegate.relay")
ENVELOPE_OVERHEAD = 1024 * 1024 + hop_records.MAX_HOPS_LENGTH
RESEND_RECENT = 8
FORWARD = "forward"


class Refused(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class RelayAgent:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.name = cfg.name
        self.signing_key = load_signing_private(cfg.signing_key)
        self.flows: dict[str, Flow] = {f.name: f for f in cfg.relayed_flows()}
        self.spool = Spool(cfg.spool / "relay")
        self.spool.create()
        #: signing keys of every gateway before us on each route (originator and relays)
        self.keys: dict[str, Ed25519PublicKey] = {}
        #: key id of each final receiver's X25519 key, when configured: what it must be sealed for
        self.recipient_keys: dict[str, str] = {}
        for flow in self.flows.values():
            route = flow.route
            for gateway in route[: route.index(self.name)]:
                self.keys[gateway] = load_signing_public(cfg.peer(gateway).signing_key)
            self.recipient_keys[flow.name] = env.key_id(
                load_encryption_public(cfg.peer(flow.receiver).encryption_key)
            )
        self.links: dict[str, LinkSender] = {
            f.name: open_sender(f.link_from(self.name)) for f in self.flows.values()
        }
        self.recent: dict[str, deque[str]] = {n: deque(maxlen=RESEND_RECENT) for n in self.flows}
        self.resend: dict[str, list[str]] = {n: [] for n in self.flows}
        self.lock = threading.Lock()
        self.ctx.metrics.up.labels("relay", cfg.name).set(1)

    # -- running ------------------------------------------------------------------------
    def run(self) -> None:
        self.ctx.record("agent-started", outcome="info")
        scratch = self.spool.dir("tmp/link")
        for entry in scratch.iterdir():  # partial transfers of a previous run
            shutil.rmtree(entry, ignore_errors=True)
        for msg_id in self.spool.ids("relaying"):  # may have gone out in part: send again
            with contextlib.suppress(Exception):
                meta = self.spool.read_meta("relaying", msg_id)
                self.spool.write_meta("relaying", msg_id, meta.replace(resent=1))
        stages = [(f"relay-in-{f.name}", partial(self.link_loop, f)) for f in self.flows.values()]
        self.ctx.run_stages([*stages, ("forward", self.forward_loop)])
        for link in self.links.values():
            link.close()
        self.ctx.record_stopped()

    # -- inbound: the link into us ------------------------------------------------------
    def link_loop(self, flow: Flow) -> None:
        hop = flow.link_into(self.name)
        link = open_receiver(
            hop, self.spool.dir("tmp/link"), flow.policy.max_size + ENVELOPE_OVERHEAD
        )
        self.ctx.metrics.link_up.labels(flow.name).set(1)
        try:
            while not self.ctx.stop.is_set():
                for item in link.poll(200):
                    if isinstance(item, Arrival):
                        self.ctx.metrics.bytes.labels(flow.name, "link").inc(item.size)
                        # A relay keeps what it forwards on disk before anything else.
                        self._accept(flow, hop.sender, materialize(item))
                    elif item.kind != "heartbeat":
                        self.ctx.metrics.rejections.labels(flow.name, "relay", item.kind).inc()
                        log.warning("flow %s: %s: %s", flow.name, item.kind, item.reason)
        finally:
            link.close()

    def _accept(self, flow: Flow, previous: str, arrival: Arrival) -> None:
        """The receiver's rules, per hop: a re-send of what we hold is dropped as a duplicate,
        anything else with an id we hold is a replay and goes to quarantine."""
        msg_id, work = arrival.transfer, arrival.directory
        meta = MessageMeta(id=msg_id, flow=flow.name, system=previous, original_name="")
        meta = meta.replace(
            resent=int(arrival.resend),
            created=utc_now(),
            extra={"link_sha256": arrival.sha256, "from": previous},
        )
        with self.lock:
            known = any(
                self.spool.entry(s, msg_id).exists() for s in ("received", "relaying", "sent")
            )
            if known and arrival.resend:
                self.ctx.record(
                    "duplicate", meta, outcome="info", reason="re-send of a relayed message"
                )
                self.ctx.metrics.messages.labels(flow.name, "relay", "duplicate").inc()
                shutil.rmtree(work, ignore_errors=True)
                return
            write_durably(work / META, meta.to_json())
            if known:
                self._quarantine(work, meta, "replay", "message id was already relayed", "replay")
                return
            self.ctx.record("received-on-link", meta, hop_from=previous)
            durable_rename(work, self.spool.entry("received", msg_id))
        self.ctx.metrics.messages.labels(flow.name, "relay", "received").inc()

    # -- forwarding ---------------------------------------------------------------------
    def forward_loop(self) -> None:
        while not self.ctx.stop.is_set():
            busy = False
            self._service_links()
            for msg_id in self.spool.ids("received"):
                if self.ctx.stop.is_set():
                    return
                self._step(self.prepare, msg_id, "received")
                busy = True
            for msg_id in self.spool.ids("relaying"):
                if self.ctx.stop.is_set():
                    return
                busy = bool(self._step(self.send, msg_id, "relaying")) or busy
            if not busy:
                self.ctx.sleep(0.05)

    def _step(self, fn: Callable[[str], object], msg_id: str, state: str) -> object:
        try:
            return fn(msg_id)
        except FailClosed:
            raise
        except Exception as e:
            log.exception("cannot relay %s/%s; moving it to corrupt/", state, msg_id)
            meta = MessageMeta(id=msg_id, flow="unknown", system="", original_name="")
            with contextlib.suppress(Exception):
                meta = self.spool.read_meta(state, msg_id)
            self.ctx.record("corrupt", meta, outcome="error", reason=f"{type(e).__name__}: {e}")
            with self.lock, contextlib.suppress(FileNotFoundError):
                durable_rename(
                    self.spool.entry(state, msg_id), self.spool.entry("corrupt", new_message_id())
                )
            return False

    def prepare(self, msg_id: str) -> None:
        """Verify what came in, add our hop record, move it to relaying/."""
        entry = self.spool.entry("received", msg_id)
        meta = self.spool.read_meta("received", msg_id)
        flow = self.flows.get(meta.flow)
        try:
            if flow is None:
                raise Refused("unknown-flow", f"flow {meta.flow!r} is not relayed here")
            header, hops, offset = self._verify(entry / ENVELOPE, flow, msg_id)
        except Refused as r:
            with self.lock:
                self._quarantine(entry, meta, r.code, r.reason)
            return
        route = flow.route
        me = route.index(self.name)
        meta = meta.replace(
            system=header.system,
            original_name=header.original_name,
            size=header.size,
            sha256=header.sha256,
            seq=header.sequence,
            content_type=header.content_type,
            classification=header.classification,
        )
        out = entry / (FORWARD + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        with open(entry / ENVELOPE, "rb") as src, open(out, "xb") as dst:
            digest = hop_records.envelope_digest(src, offset)
            record = hop_records.make_hop(
                self.signing_key,
                gateway=self.name,
                came_from=route[me - 1],
                goes_to=route[me + 1],
                header=header,
                envelope_sha256=digest,
                previous=hops,
                at=utc_now(),
            )
            src.seek(offset)
            hop_records.write_wrapper(dst, (*hops, record), src)
            dst.flush()
            os.fsync(dst.fileno())
        # The envelope as it arrived stays beside it, so a crash here just prepares it again.
        os.replace(out, entry / FORWARD)
        fsync_dir(entry)
        meta = meta.replace(extra={**meta.extra, "hops": hop_records.summary((*hops, record))})
        self.ctx.record(
            "verified", meta, hop_from=route[me - 1], hop_to=route[me + 1], hop_record=record["sig"]
        )
        self.spool.write_meta("received", msg_id, meta)
        with self.lock:
            self.spool.move(msg_id, "received", "relaying")

    def _verify(
        self, path: Path, flow: Flow, msg_id: str
    ) -> tuple[env.Header, tuple[dict, ...], int]:
        """As much as a gateway without the payload key can check, before forwarding."""
        route = flow.route
        with open(path, "rb") as src:
            try:
                hops, offset = hop_records.read_wrapper(src)
                header = env.verify_envelope(src, self._key)
            except (env.EnvelopeError, hop_records.HopError) as e:
                raise Refused(e.reason, e.detail) from None
            if header.message_id != msg_id:
                raise Refused("malformed", "the envelope's id differs from its link transfer id")
            if (
                header.flow != flow.name
                or header.sender != flow.sender
                or header.recipient != flow.receiver
            ):
                raise Refused(
                    "wrong-flow",
                    f"envelope of flow {header.flow!r} from {header.sender!r} to "
                    f"{header.recipient!r} does not follow flow {flow.name!r}'s route",
                )
            if header.recipient_key != self.recipient_keys[flow.name]:
                raise Refused("wrong-recipient", "not sealed for the final receiver's key")
            if header.size > flow.policy.max_size:
                raise Refused("policy-size", f"{header.size} bytes is over this hop's limit")
            try:
                digest = hop_records.envelope_digest(src, offset)
                upto = route[: route.index(self.name) + 1]
                hop_records.check_hops(hops, header, digest, upto, self._key)
            except hop_records.HopError as e:
                raise Refused(e.reason, e.detail) from None
        return header, hops, offset

    def _key(self, gateway: str, key: str) -> Ed25519PublicKey | None:
        public = self.keys.get(gateway)
        if public is None or env.key_id(public) != key:
            return None
        return public

    # -- outbound: the link to the next gateway -----------------------------------------
    def send(self, msg_id: str) -> bool:
        meta = self.spool.read_meta("relaying", msg_id)
        link = self.links[meta.flow]
        if not link.connected:
            return False
        path = self.spool.entry("relaying", msg_id) / FORWARD
        resend = meta.resent > 0
        if not link.send_envelope(path, msg_id, meta.flow, self.name, resend, self.ctx.stop):
            return False
        flow = self.flows[meta.flow]
        route = flow.route
        me = route.index(self.name)
        meta = meta.replace(sent_at=utc_now())
        self.ctx.record(
            "relayed",
            meta,
            hop_from=route[me - 1],
            hop_to=route[me + 1],
            hops=meta.extra.get("hops", "[]"),
        )
        self.spool.write_meta("relaying", msg_id, meta)
        with self.lock:
            self.spool.move(msg_id, "relaying", "sent")
        self.recent[meta.flow].append(msg_id)
        self.ctx.metrics.messages.labels(meta.flow, "relay", "relayed").inc()
        return True

    def _service_links(self) -> None:
        """After a reconnect, the last few relayed envelopes go again (nothing acknowledges)."""
        for name, link in self.links.items():
            for event in link.link_events():
                self.ctx.metrics.link_up.labels(name).set(1 if event == "up" else 0)
                self.ctx.record(f"link-{event}", {"flow": name}, outcome="info")
                if event == "up":
                    self.resend[name].extend(self.recent[name])
            while self.resend[name] and link.connected and not self.ctx.stop.is_set():
                msg_id = self.resend[name].pop(0)
                entry = self.spool.entry("sent", msg_id)
                if not entry.exists():
                    continue
                meta = self.spool.read_meta("sent", msg_id)
                if link.send_envelope(
                    entry / FORWARD, msg_id, name, self.name, True, self.ctx.stop
                ):
                    self.ctx.record("resent", meta, outcome="info", reason="link re-established")

    # -- refusals -----------------------------------------------------------------------
    def _quarantine(
        self, work: Path, meta: MessageMeta, code: str, reason: str, event: str = "quarantined"
    ) -> None:
        qid = new_message_id()
        meta = meta.replace(
            reason_code=code, reason=reason, extra={**meta.extra, "claimed_id": meta.id}
        )
        self.ctx.record(event, meta, outcome="refused", reason=f"{code}: {reason}", quarantine=qid)
        replace_durably(work / META, meta.to_json())
        durable_rename(work, self.spool.entry("quarantine", qid))
        self.ctx.metrics.messages.labels(meta.flow, "relay", "refused").inc()
        self.ctx.metrics.rejections.labels(meta.flow, "relay", code).inc()
        log.warning("relay refused %s as %s: %s: %s", meta.id, qid, code, reason)
