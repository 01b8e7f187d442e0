"""If the audit log cannot be written, nothing moves: the agent stops (exit 3) and says why."""

from __future__ import annotations

import json

from harness import GatewayPair, wait_for, zg


def test_ingest_stops_and_claims_nothing_when_its_audit_log_is_damaged(
    pair: GatewayPair, tmp_path
) -> None:
    pair.start()
    (tmp_path / "first.txt").write_text("before the damage\n")
    r = zg("submit", "--config", str(pair.configs["internet-gw"]), "--flow", "import",
           str(tmp_path / "first.txt"), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["outbox"].endswith("outbox/import/new/first.txt")
    wait_for(lambda: pair.receiver_spool.depth("delivered") == 1, 30, "the first delivery")

    log = pair.audit_log("internet-gw")
    with open(log, "ab") as f:
        f.write(b'{"torn": ')  # a record cut off mid-write: the log must not be extended
    records_before = log.read_bytes()

    (tmp_path / "second.txt").write_text("after the damage\n")
    r = zg("submit", "--config", str(pair.configs["internet-gw"]), "--flow", "import",
           str(tmp_path / "second.txt"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not pair.alive("ingest"), 20, "ingest to stop fail-closed")
    assert pair.procs["ingest"].returncode == 3
    # The file was not claimed, the log was not touched, nothing reached the other side.
    assert (pair.outbox / "import" / "new" / "second.txt").exists()
    assert log.read_bytes() == records_before
    assert pair.receiver_spool.depth("delivered") == 1
    ingest_log = (pair.root / "ingest.log").read_text()
    assert "audit log cannot be written, stopping transfers" in ingest_log
    assert "incomplete record" in ingest_log
    v = zg("audit", "verify", str(log))
    assert v.returncode == 1 and "incomplete last record" in v.stderr


def test_submit_refuses_a_flow_this_gateway_does_not_send(pair: GatewayPair, tmp_path) -> None:
    (tmp_path / "x.txt").write_text("x")
    r = zg("submit", "--config", str(pair.configs["internal-gw"]), "--flow", "import",
           str(tmp_path / "x.txt"))  # fmt: skip
    assert r.returncode == 2
    assert "submit on internet-gw" in r.stderr
    r = zg("submit", "--config", str(pair.configs["internet-gw"]), "--flow", "publish",
           str(tmp_path / "x.txt"))  # fmt: skip
    assert r.returncode == 2
    assert "sends no flow 'publish' (it sends: import)" in r.stderr
