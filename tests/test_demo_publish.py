"""The demo shows review before release: the publish flow, two officers, the submitter refused."""

from __future__ import annotations

import json
from pathlib import Path

from harness import zg


def test_demo_publishes_a_release_two_officers_approved(tmp_path: Path) -> None:
    work = tmp_path / "work"
    r = zg("demo", "--json", "--workdir", str(work), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["ok"] is True
    for d in summary["delivered"]:
        if d["flow"] == "publish":
            assert sorted(d["approvers"]) == ["wang-fang", "zhang-min"]
            assert Path(d["path"]).parent == work / "internet-gw" / "inbox" / "publish" / "new"
        else:
            assert "approvers" not in d, "import needs no approvals"
    assert [d["flow"] for d in summary["delivered"]].count("publish") == 1
    steps = summary["publication"]["steps"]
    assert steps[0]["person"] == "li-wei" and steps[0]["code"] == "approval-by-submitter"
    assert [s["ok"] for s in steps] == [False, True, True]
    [release] = [d for d in summary["delivered"] if d["flow"] == "publish"]
    v = zg("verify", release["path"], "--key", str(work / "keys" / "internet-gw.sign.pub"))
    assert v.returncode == 0, v.stderr
    for log in summary["audit_logs"]:
        records = [json.loads(line) for line in Path(log).read_text().splitlines()]
        approved = {
            r["who"]["person"] for r in records if r["event"] == "approved" and r["outcome"] == "ok"
        }
        assert approved == {"zhang-min", "wang-fang"}, log


def test_demo_screen_shows_the_submitters_approval_refused() -> None:
    r = zg("demo", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "[REFUSED] approval by li-wei: approval-by-submitter" in out
    assert "cannot approve it (two-person rule)" in out
    assert "[ok ] approval by zhang-min" in out and "[ok ] approval by wang-fang" in out
    assert "Published (1) into the internet zone" in out
    assert "approved by zhang-min, wang-fang" in out and "signed manifest: valid" in out
    assert "Delivered (5) into the internal zone" in out and "Result: OK" in out
