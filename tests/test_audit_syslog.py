"""Acceptance 4: `zonegate audit export --format rfc5424` lines are accepted by a real rsyslog.

rsyslogd (Debian's package, listed in bin/system-packages.txt) runs in the foreground with its
own config: UDP input on a free loopback port, and a template that writes the fields rsyslog
*parsed* from each line, one per column. So a line that rsyslog could only take as free text
(for instance an RFC 3164 fallback) shows up with empty MSGID and structured data and fails.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from harness import wait_for, zg

from zonegate.audit import AuditLog
from zonegate.gateways.demo_configs import free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

TEMPLATE = (
    "%hostname%\\t%app-name%\\t%procid%\\t%msgid%\\t%syslogfacility%\\t%syslogseverity%\\t"
    "%timereported:::date-rfc3339%\\t%structured-data%\\t%msg%\\n"
)


@pytest.fixture
def rsyslog(tmp_path: Path):
    port = free_port(socket.SOCK_DGRAM)
    work = tmp_path / "rsyslog-work"
    work.mkdir()
    out = tmp_path / "received.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{work}" maxMessageSize="64k")\n'
        'module(load="imudp")\n'
        f'template(name="fields" type="string" string="{TEMPLATE}")\n'
        f'input(type="imudp" address="127.0.0.1" port="{port}" ruleset="zg")\n'
        'ruleset(name="zg") {\n'
        f'  action(type="omfile" file="{out}" template="fields")\n'
        "}\n"
    )
    check = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = open(tmp_path / "rsyslogd.stderr", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe = "<110>1 2026-01-01T00:00:00.000001Z probe zonegate - probe - ready"

    def ready() -> bool:
        sock.sendto(probe.encode(), ("127.0.0.1", port))
        time.sleep(0.05)
        return out.exists() and "probe" in out.read_text()

    try:
        wait_for(ready, 20, "rsyslogd to listen")
        yield sock, port, out
    finally:
        sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_rfc5424_export_is_parsed_by_rsyslog(rsyslog, tmp_path: Path) -> None:
    sock, port, out = rsyslog
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, gateway="internal-gw", agent="receiver", zone="internal") as log:
        log.append("agent-started", outcome="info")
        log.append(
            "delivered",
            message={"id": "01JDAAAAAAAAAAAAAAAAAAAAAA", "flow": "import", "seq": 7,
                     "sha256": "ab" * 32, "size": 42, "name": "法律援助申请.txt"},
            who={"system": "oa", "person": "王五", "role": "officer"},
        )  # fmt: skip
        log.append(
            "quarantined",
            message={"id": "01JDBBBBBBBBBBBBBBBBBBBBBB", "flow": "import", "seq": 8},
            outcome="refused",
            reason='bad-type: "zip" inside ] and \\ too',
        )
    exported = tmp_path / "export.log"
    r = zg("audit", "export", str(path), "--format", "rfc5424", "--out", str(exported))
    assert r.returncode == 0, r.stderr
    lines = exported.read_text(encoding="utf-8").splitlines()
    records = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    for line in lines:
        sock.sendto(line.encode("utf-8"), ("127.0.0.1", port))

    def got() -> list[list[str]]:
        rows = [r.split("\t") for r in out.read_text(encoding="utf-8").splitlines()]
        return [r for r in rows if r[3] != "probe"]

    wait_for(lambda: len(got()) == 3, 10, "rsyslog to write the three lines")
    for row, rec in zip(got(), records, strict=True):
        host, app, procid, msgid, facility, severity, when, sd, msg = row
        assert (host, app, procid, msgid) == ("internal-gw", "zonegate", "receiver", rec["event"])
        assert facility == "13"  # log audit
        assert severity == {"info": "6", "ok": "6", "refused": "5"}[rec["outcome"]]
        parsed = datetime.fromisoformat(when)
        assert parsed == datetime.fromisoformat(rec["time"].replace("Z", "+00:00"))
        assert sd.startswith("[zonegate@32473 ") and f'seq="{rec["seq"]}"' in sd
        assert f'hash="{rec["hash"]}"' in sd
        assert json.loads(msg.removeprefix("\ufeff")) == rec
    delivered_sd = got()[1][7]
    assert 'sha256="' + "ab" * 32 + '"' in delivered_sd and 'person="王五"' in delivered_sd
    refused_sd = got()[2][7]
    assert 'reason="bad-type: \\"zip\\" inside \\] and \\\\ too"' in refused_sd


def test_jsonl_export_round_trips_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, gateway="gw", agent="ingest") as log:
        for i in range(1, 11):
            log.append("sealed" if i % 2 else "sent", message={"id": f"m{i}", "flow": "import",
                       "seq": i}, who={"person": "li" if i < 4 else "wang"})  # fmt: skip
    r = zg("audit", "export", str(path), "--format", "jsonl", "--event", "sealed")
    assert r.returncode == 0
    got = [json.loads(x) for x in r.stdout.splitlines()]
    originals = [json.loads(x) for x in path.read_text().splitlines()]
    assert got == [o for o in originals if o["event"] == "sealed"]
    s = zg("audit", "search", str(path), "--seq", "3:6", "--person", "wang", "--json")
    assert s.returncode == 0
    assert [x["message"]["seq"] for x in json.loads(s.stdout)] == [4, 5, 6]
    s = zg("audit", "search", str(path), "--id", "nope")
    assert s.returncode == 1 and "no matching records" in s.stdout
    s = zg("audit", "search", str(path), "--seq", "x:y")
    assert s.returncode == 2
    for action in ("verify", "search", "show", "export", "prove", "reconcile"):
        h = zg("audit", action, "--help")
        assert h.returncode == 0 and "usage: zonegate audit " + action in h.stdout
