"""Acceptance 3 and 5 on real gateways: reconcile, verify after deleting records, envelopes
dropped on the link, and the whole story of one message across both gateways.

Both gateways run as real processes (ingest, sender, receiver each its own). The link between
them is a small ZeroMQ relay in this test: the sender's config points at the relay, the
receiver's at its own port, and the relay forwards every frame unchanged except all frames of
the envelopes it was told to drop. So the sender really sealed and sent those envelopes, and
the receiver really never saw them: a lossy link, not a doctored log.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import zmq
from harness import GatewayPair, metric_value, wait_for, zg

from zonegate.gateways.demo_configs import free_port
from zonegate.transfer.linkframe import TAG_BEGIN, TAG_DATA, TAG_END, TAG_WHOLE


class LossyLink:
    """Forwards link frames from the sender to the receiver; drops the chosen envelopes.

    ``drop_begins`` are 1-based positions of envelopes (BEGIN or WHOLE frames) in arrival order;
    every frame of such an envelope is dropped and its message id noted in ``dropped``.
    """

    def __init__(self, listen: str, forward: str) -> None:
        self.ctx = zmq.Context.instance()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(listen)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(forward)
        self.drop_begins: set[int] = set()
        self.begins = 0
        self.dropped: list[str] = []
        self.forwarded: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        dropping: set[bytes] = set()
        while not self.stop.is_set():
            if not self.pull.poll(100):
                continue
            frames = self.pull.recv_multipart()
            tag = frames[0]
            if tag in (TAG_BEGIN, TAG_WHOLE):  # a small envelope is one WHOLE frame
                self.begins += 1
                transfer = json.loads(frames[1])["t"]
                if self.begins in self.drop_begins:
                    dropping.add(bytes.fromhex(transfer))
                    self.dropped.append(transfer)
                    continue
                self.forwarded.add(transfer)
            elif tag in (TAG_DATA, TAG_END) and frames[1] in dropping:
                continue
            self.push.send_multipart(frames)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pull.close()
        self.push.close()


def _split_link(pair: GatewayPair) -> tuple[str, str]:
    """Point the receiver at a new port; the sender keeps the old one, where the relay sits."""
    cfg = pair.configs["internal-gw"]
    text = cfg.read_text()
    old = text.split("endpoint: ")[1].split()[0]
    new = f"tcp://127.0.0.1:{free_port()}"
    cfg.write_text(text.replace(old, new))
    for gw in ("internet-gw", "internal-gw"):
        c = pair.configs[gw]
        c.write_text(c.read_text() + "audit:\n  checkpoint_interval: 2s\n")
    return old, new


def _submit(pair: GatewayPair, src: Path, start: int, n: int) -> None:
    src.mkdir(exist_ok=True)
    batch = src / f"batch-{start}"
    batch.mkdir()
    for i in range(start, start + n):
        (batch / f"letter-{i:05d}.txt").write_text(f"citizen letter {i}\n")
    r = zg("submit", "--config", str(pair.configs["internet-gw"]), "--flow", "import", str(batch))
    assert r.returncode == 0, r.stderr


def _reconcile(pair: GatewayPair, *extra: str) -> tuple[int, dict]:
    keys = pair.root / "keys"
    r = zg(
        "audit", "reconcile",
        str(pair.audit_log("internet-gw")), str(pair.audit_log("internal-gw")),
        "--sender-key", str(keys / "internet-gw.audit.pub"),
        "--receiver-key", str(keys / "internal-gw.audit.pub"),
        "--json", *extra,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout)


def _run(pair: GatewayPair, tmp_path: Path, n: int) -> None:
    listen, forward = _split_link(pair)
    link = LossyLink(listen, forward)
    try:
        pair.start()
        src = tmp_path / "src"
        _submit(pair, src, 0, n)
        wait_for(
            lambda: pair.receiver_spool.depth("delivered") == n,
            20 + n * 0.1,
            f"{n} deliveries\n{pair.logs()}",
        )
        # 1. Every message delivered: reconcile says so, message by message.
        code, rec = _reconcile(pair)
        assert code == 0, rec
        assert rec["ok"] is True and rec["missing"] == []
        assert rec["flows"] == {"import": {"sealed": n, "delivered": n, "missing": 0}}
        assert all(log["ok"] for log in rec["logs"])

        # 2. Five envelopes dropped on the link: reconcile lists exactly those five.
        link.drop_begins = {link.begins + k for k in (2, 5, 9, 14, 20)}
        _submit(pair, src, n, 25)
        wait_for(
            lambda: pair.receiver_spool.depth("delivered") == n + 20 and link.begins >= n + 25,
            40,
            f"the second batch\n{pair.logs()}",
        )
        assert len(link.dropped) == 5
        pair.stop()  # checkpoints on shutdown cover every record
        code, rec = _reconcile(pair)
        assert code == 1
        assert sorted(m["id"] for m in rec["missing"]) == sorted(link.dropped)
        assert rec["flows"]["import"] == {"sealed": n + 25, "delivered": n + 20, "missing": 5}
        assert all(m["stopped"].startswith("sender: last sent") for m in rec["missing"])
        assert all(log["ok"] for log in rec["logs"]), rec["logs"]

        # 3. Five delivered records deleted from the receiver's log: verify names the first.
        log = pair.audit_log("internal-gw")
        lines = log.read_bytes().splitlines(keepends=True)
        delivered_at = [i for i, raw in enumerate(lines) if json.loads(raw)["event"] == "delivered"]
        victims = [delivered_at[k] for k in (3, 100 % len(delivered_at), -40, -30, -25)]
        victim_ids = {json.loads(lines[i])["message"]["id"] for i in victims}
        assert len(victim_ids) == 5
        kept = [raw for i, raw in enumerate(lines) if i not in set(victims)]
        log.write_bytes(b"".join(kept))
        v = zg("audit", "verify", str(log), "--key", str(pair.root / "keys/internal-gw.audit.pub"),
               "--json")  # fmt: skip
        assert v.returncode == 1
        result = json.loads(v.stdout)["results"][0]
        assert result["first_bad_line"] == min(victims) + 1
        code, rec = _reconcile(pair)
        assert code == 1
        assert {m["id"] for m in rec["missing"]} == victim_ids | set(link.dropped)
        assert rec["logs"][1]["ok"] is False
    finally:
        link.close()
        pair.stop()


def test_reconcile_verify_and_lossy_link_short(pair: GatewayPair, tmp_path: Path) -> None:
    _run(pair, tmp_path, 150)


@pytest.mark.slow
def test_reconcile_verify_and_lossy_link_1000_messages(pair: GatewayPair, tmp_path: Path) -> None:
    _run(pair, tmp_path, 1000)


def test_show_tells_the_whole_story_across_two_gateways(pair: GatewayPair, tmp_path: Path) -> None:
    """Acceptance 5, and the metrics: checkpoint age is exported and no write failed."""
    for gw in ("internet-gw", "internal-gw"):
        c = pair.configs[gw]
        c.write_text(c.read_text() + "audit:\n  checkpoint_interval: 1s\n")
    pair.start()
    (tmp_path / "申请.txt").write_text("legal aid application\n")
    r = zg("submit", "--config", str(pair.configs["internet-gw"]), "--flow", "import",
           str(tmp_path / "申请.txt"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 30, "the delivery")
    wait_for(lambda: Path(str(pair.audit_log("internal-gw")) + ".checkpoints").exists(), 10,
             "a checkpoint")  # fmt: skip
    metrics = pair.metrics("receiver")
    assert metric_value(metrics, "zonegate_audit_write_failed") == 0
    assert 0 <= metric_value(metrics, "zonegate_audit_checkpoint_age_seconds") < 10
    assert metric_value(metrics, "zonegate_audit_storage_bytes") > 0
    assert metric_value(metrics, "zonegate_audit_storage_warning") == 0
    pair.stop()

    logs = [str(pair.audit_log("internet-gw")), str(pair.audit_log("internal-gw"))]
    delivered = [
        json.loads(x) for x in Path(logs[1]).read_text().splitlines()
        if json.loads(x)["event"] == "delivered"
    ]  # fmt: skip
    msg_id = delivered[0]["message"]["id"]
    r = zg("audit", "show", msg_id, *logs, "--json")
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)
    story = [(s["gateway"], s["event"]) for s in steps]
    assert story == [
        ("internet-gw", "claimed"),
        ("internet-gw", "checked"),
        ("internet-gw", "accepted"),
        ("internet-gw", "sealed"),
        ("internet-gw", "sent"),
        ("internal-gw", "received-on-link"),
        ("internal-gw", "verified"),
        ("internal-gw", "delivered"),
    ]
    assert {s["message"]["sha256"] for s in steps if s["message"].get("sha256")} == {
        delivered[0]["message"]["sha256"]
    }
    assert [s["time"] for s in steps] == sorted(s["time"] for s in steps)
    text = zg("audit", "show", msg_id, *logs)
    assert text.returncode == 0 and "申请.txt" in text.stdout
    assert len(text.stdout.splitlines()) == 1 + len(story)
    assert zg("audit", "show", "0" * 26, *logs).returncode == 1

    # Both logs verify with their audit keys, every record under a signed checkpoint.
    for gw, log in zip(("internet-gw", "internal-gw"), logs, strict=True):
        v = zg("audit", "verify", log, "--key", str(pair.root / f"keys/{gw}.audit.pub"),
               "--require-checkpoints", "--json")  # fmt: skip
        res = json.loads(v.stdout)["results"][0]
        assert v.returncode == 0, res
        assert res["signatures_checked"] and res["uncovered"] == 0

    # prove: an inclusion proof a third party checks with the key alone.
    p = zg("audit", "prove", msg_id, logs[1], "--json")
    assert p.returncode == 0, p.stderr
    bundles = json.loads(p.stdout)
    assert [json.loads(b["record"])["event"] for b in bundles] == [
        "received-on-link", "verified", "delivered"
    ]  # fmt: skip
    assert all(b["checkpoint"] is not None for b in bundles)
    saved = tmp_path / "proof.json"
    saved.write_text(json.dumps(bundles))
    key = str(pair.root / "keys/internal-gw.audit.pub")
    c = zg("audit", "prove", "--check", str(saved), "--key", key)
    assert c.returncode == 0 and "proof holds" in c.stdout
    bundles[1]["record"] = bundles[1]["record"].replace('"ok"', '"refused"')
    saved.write_text(json.dumps(bundles))
    c = zg("audit", "prove", "--check", str(saved), "--key", key)
    assert c.returncode == 1 and "does NOT hold" in c.stdout
    wrong_key = str(pair.root / "keys/internet-gw.audit.pub")
    bundles = json.loads(p.stdout)
    saved.write_text(json.dumps(bundles))
    c = zg("audit", "prove", "--check", str(saved), "--key", wrong_key)
    assert c.returncode == 1
