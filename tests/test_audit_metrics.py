"""Fail closed with an alert: when the audit log or a checkpoint cannot be written, the agent
stops moving messages and `zonegate_audit_write_failed` is 1; storage above the configured
threshold raises `zonegate_audit_storage_warning`. Real agent contexts on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import metric_value, wait_for
from prometheus_client import generate_latest

from zonegate.gateways.agent import AgentContext, FailClosed
from zonegate.gateways.demo import write_gateway_pair
from zonegate.zones.config import load_gateway_config


def _ctx(tmp_path: Path, extra: str = "") -> AgentContext:
    configs = write_gateway_pair(tmp_path, 1024**2, port=45999)
    path = configs["internal-gw"]
    if extra:
        path.write_text(path.read_text() + extra)
    return AgentContext.open(load_gateway_config(path), "receiver")


def _scrape(ctx: AgentContext) -> str:
    return generate_latest(ctx.metrics.registry).decode()


def test_unwritable_record_sets_the_alert_and_stops(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ctx.record("agent-started", outcome="info")
    assert metric_value(_scrape(ctx), "zonegate_audit_write_failed") == 0
    with open(ctx.config.audit_log, "ab") as f:
        f.write(b'{"torn": ')
    with pytest.raises(FailClosed, match="incomplete record"):
        ctx.record("delivered", {"id": "x"})
    text = _scrape(ctx)
    assert metric_value(text, "zonegate_audit_write_failed") == 1
    assert metric_value(text, "zonegate_audit_write_failures_total") == 1
    assert ctx.failed and ctx.stop.is_set()


def test_checkpoint_over_a_damaged_log_fails_closed(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ctx.record("agent-started", outcome="info")
    assert ctx.checkpoint() is True
    assert Path(f"{ctx.config.audit_log}.checkpoints").read_text().count("\n") == 1
    log = ctx.config.audit_log
    signed = log.read_bytes()
    ctx.record("agent-stopped", outcome="info")
    # A record the checkpointer has not read yet is edited: it must refuse to sign over it.
    log.write_bytes(signed + log.read_bytes()[len(signed) :].replace(b'"info"', b'"ok"'))
    assert ctx.checkpoint() is False
    assert ctx.failed and ctx.stop.is_set()
    assert metric_value(_scrape(ctx), "zonegate_audit_write_failed") == 1


def test_interval_checkpoints_and_the_copy(tmp_path: Path) -> None:
    copy = tmp_path / "ship" / "internal-gw.checkpoints"
    copy.parent.mkdir()
    ctx = _ctx(tmp_path, f"audit:\n  checkpoint_interval: 0.2s\n  checkpoint_copy: {copy}\n")
    ctx.record("agent-started", outcome="info")
    thread = ctx.start_checkpoints()
    assert thread is not None
    wait_for(
        lambda: copy.exists() and copy.read_text().count("\n") >= 3, 10, "interval checkpoints"
    )
    ctx.record("agent-stopped", outcome="info")
    ctx.stop.set()
    ctx.final_checkpoint()
    assert not thread.is_alive()
    primary = Path(f"{ctx.config.audit_log}.checkpoints").read_bytes()
    assert copy.read_bytes() == primary
    assert primary.splitlines()[-1].count(b'"size":2') == 1
    assert 0 <= metric_value(_scrape(ctx), "zonegate_audit_checkpoint_age_seconds") < 5


def test_storage_warning_fires_above_the_threshold(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "audit:\n  storage_warning: 3000\n")
    ctx.record("agent-started", outcome="info")
    text = _scrape(ctx)
    used = metric_value(text, "zonegate_audit_storage_bytes")
    assert 0 < used < 3000 and metric_value(text, "zonegate_audit_storage_warning") == 0
    while ctx.config.audit_log.stat().st_size < 3000:
        ctx.record("link-up", {"flow": "import"}, outcome="info")
    text = _scrape(ctx)
    assert metric_value(text, "zonegate_audit_storage_bytes") >= 3000
    assert metric_value(text, "zonegate_audit_storage_warning") == 1


def test_record_names_who_acted(tmp_path: Path) -> None:
    import json

    ctx = _ctx(tmp_path)
    who = {"system": "oa", "person": "李四", "role": "security-officer"}
    ctx.record("approved", {"id": "m1", "flow": "publish", "seq": 3}, who=who)
    rec = json.loads(ctx.config.audit_log.read_text(encoding="utf-8").splitlines()[-1])
    assert rec["who"] == who and rec["gateway"] == "internal-gw" and rec["zone"] == "internal"
    assert rec["event"] == "approved" and rec["message"]["seq"] == 3
