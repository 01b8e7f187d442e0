"""sent/ keeps envelopes for re-sends and inspection, then the retention policy removes them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from zonegate.gateways.agent import AgentContext
from zonegate.gateways.demo import write_gateway_pair
from zonegate.gateways.sender import SenderAgent
from zonegate.transfer.ids import new_message_id
from zonegate.transfer.spool import MessageMeta
from zonegate.zones.config import load_gateway_config


def _sent_entry(ctx: AgentContext, age_s: float) -> str:
    msg_id = new_message_id()
    entry = ctx.spool.entry("sent", msg_id)
    entry.mkdir()
    meta = MessageMeta(id=msg_id, flow="import", system="t", original_name="x", seq=1)
    (entry / "meta.json").write_bytes(meta.to_json())
    (entry / "envelope").write_bytes(b"sealed")
    t = time.time() - age_s
    os.utime(entry / "meta.json", (t, t))
    return msg_id


def test_old_sent_envelopes_are_removed_and_audited(tmp_path: Path) -> None:
    cfg = load_gateway_config(write_gateway_pair(tmp_path, 1024)["internet-gw"])
    assert cfg.flow("import").sent_retention == 7 * 86400
    ctx = AgentContext.open(cfg, "sender")
    agent = SenderAgent(ctx)
    try:
        old = _sent_entry(ctx, 8 * 86400)
        young = _sent_entry(ctx, 86400)
        assert agent.prune_sent() == 1
        assert ctx.spool.ids("sent") == [young]
        records = [json.loads(x) for x in cfg.audit_log.read_text().splitlines()]
        expired = [r for r in records if r["event"] == "expired"]
        assert [r["message"]["id"] for r in expired] == [old]
    finally:
        for state in agent.links.values():
            state.link.close()


def test_the_resend_window_is_never_pruned(tmp_path: Path) -> None:
    cfg = load_gateway_config(write_gateway_pair(tmp_path, 1024)["internet-gw"])
    ctx = AgentContext.open(cfg, "sender")
    first = SenderAgent(ctx)
    for state in first.links.values():
        state.link.close()
    old = _sent_entry(ctx, 30 * 86400)
    agent = SenderAgent(ctx)  # a restart loads the newest sent messages as its resend window
    try:
        assert agent.prune_sent() == 0
        assert ctx.spool.ids("sent") == [old]
    finally:
        for state in agent.links.values():
            state.link.close()
