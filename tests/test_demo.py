"""Acceptance 1 and 7: the README's commands, and `zonegate demo` as a user runs it.

The demo is the bureau's three-zone, three-tier network (configs/topology.yaml): five gateways,
each its own process; four flows (import, publish after review, report relayed up the tiers,
dispatch relayed down); every link of the kind `--transport` names. The tests run the real
command and check what it reports against the files on disk and the topology, computed here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import make_file, zg

from zonegate.zones.topology import load_topology, route

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = load_topology(ROOT / "configs" / "topology.yaml")
BUREAU, DISTRICT, OFFICE = "municipal-bureau", "district-huangpu", "waitan-jo"
IMPORT_SAMPLES = [
    "approval-form-2026-0173.csv",
    "citizen-letter.json",
    "empty-receipt.txt",
    "legal-aid-application 法律援助申请.txt",
    "site-photo.bin",
]
#: events every gateway on a relayed route records for the message (its audit trail)
REQUIRED = {
    "originator": {"sealed", "sent"},
    "relay": {"received-on-link", "verified", "relayed"},
    "receiver": {"verified", "delivered"},
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _gateway(node: str, zone: str) -> str:
    g = TOPOLOGY.node(node).gateway_in(zone)
    assert g is not None
    return g.name


def _expected_routes() -> dict[str, list[str]]:
    """Each flow's gateways, from the topology: the nodes `route` visits, the government
    gateway at each, and the bureau's own zones at the bureau."""
    up = [_gateway(n.name, "government") for n in route(TOPOLOGY, OFFICE, BUREAU)]
    inet, intra = _gateway(BUREAU, "internet"), _gateway(BUREAU, "internal")
    return {
        "import": [inet, intra],
        "publish": [intra, inet],
        "report": [*up, intra],
        "dispatch": [intra, *reversed(up)],
    }


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block is not None, "Quick start needs a fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[0].split()[-1] == "demo" and "zonegate" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci], ".ci/run must call the test command"


def test_demo_with_samples_explains_itself_on_screen() -> None:
    r = zg("demo", timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    out = r.stdout
    routes = _expected_routes()
    # five gateways, each its own process
    pids = re.findall(r"^    (\S+-gw) .*\(pid (\d+): ", out, re.M)
    assert sorted(g for g, _ in pids) == sorted({g for r in routes.values() for g in r})
    assert len({pid for _, pid in pids}) == 5
    for flow, gateways in routes.items():
        assert " -> ".join(gateways) in out, flow
    assert "Delivered (5) into the internal zone, flow 'import'" in out
    assert "Published (1) into the internet zone, after review" in out
    assert (
        "Delivered (2) into the bureau's internal zone, relayed up the tiers, flow 'report'" in out
    )
    assert "flow 'dispatch'" in out and "Delivered (2) into the judicial office's" in out
    assert "Refused (1), kept in quarantine with the reason:" in out
    assert "too-large:" in out and "over this flow's limit" in out
    # review before release, on screen
    assert "[REFUSED] approval by li-wei: approval-by-submitter" in out
    assert "cannot approve it (two-person rule)" in out
    assert "[ok ] approval by zhang-min" in out and "[ok ] approval by wang-fang" in out
    assert "approved by zhang-min, wang-fang" in out and "signed manifest: valid" in out
    # each relayed message's trail, hop by hop, in route order
    trails = out.split("Relayed messages, audit trail hop by hop")[1].split("\nAudit logs")[0]
    blocks = re.split(r"\n  (?=report |dispatch )", trails)[1:]
    assert len(blocks) == 4
    for block in blocks:
        flow = block.split()[0]
        shown = re.findall(r"^    \d\. (\S+)", block, re.M)
        assert shown == routes[flow], block
        assert block.count("hop record: ") == 2 and "trail: every hop shown" in block
    assert out.count("plaintext of") == 2 and out.count(": none found") == 2
    assert out.count("hash chain verifies") == 5
    assert "http://127.0.0.1:" in out
    assert "Result: OK" in out


def _delivered(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in flow["delivered"]}


def _check_flow(summary: dict, name: str, sources: Path, refused: dict[str, str]) -> None:
    flow = summary["flows"][name]
    assert flow["route"] == _expected_routes()[name]
    receiver = flow["route"][-1]
    sent = {p.name: p for p in sources.iterdir()}
    got = _delivered(flow)
    assert sorted(got) == sorted(set(sent) - set(refused)), name
    for file_name, d in got.items():
        assert d["identical"] is True
        assert d["sha256"] == _sha256(sent[file_name])
        path = Path(d["path"])
        assert path.parent == Path(summary["workdir"]) / receiver / "inbox" / name / "new"
        assert path.read_bytes() == sent[file_name].read_bytes()
    assert {r["name"]: r["reason_code"] for r in flow["refused"]} == refused
    for r in flow["refused"]:  # the original is kept in quarantine, with its reason
        entry = Path(r["quarantine_path"])
        assert (entry / "data").read_bytes() == sent[r["name"]].read_bytes()
        meta = json.loads((entry / "meta.json").read_text())
        assert meta["reason_code"] == r["reason_code"] and r["reason"].startswith(r["reason_code"])


def _check_trails(summary: dict) -> None:
    routes = _expected_routes()
    relayed = {
        d["message_id"]: (name, d["name"])
        for name in ("report", "dispatch")
        for d in summary["flows"][name]["delivered"]
    }
    assert sorted(t["message_id"] for t in summary["trails"]) == sorted(relayed)
    for t in summary["trails"]:
        flow, file_name = relayed[t["message_id"]]
        assert (t["flow"], t["name"]) == (flow, file_name)
        gateways = routes[flow]
        assert [h["gateway"] for h in t["hops"]] == gateways
        roles = ["originator"] + ["relay"] * (len(gateways) - 2) + ["receiver"]
        assert [h["role"] for h in t["hops"]] == roles
        for hop in t["hops"]:
            assert REQUIRED[hop["role"]] <= {e["event"] for e in hop["events"]}, hop
        # in time, hop after hop: sealed, verified at each relay, verified at the receiver
        marks = [
            next(e["time"] for e in h["events"] if e["event"] in ("sealed", "verified"))
            for h in t["hops"]
        ]
        assert marks == sorted(marks)
        records = t["hop_records"]["records"]
        assert t["hop_records"]["verified"] is True
        assert [(r["gateway"], r["from"], r["to"]) for r in records] == [
            (gateways[i], gateways[i - 1], gateways[i + 1]) for i in range(1, len(gateways) - 1)
        ]
        assert [h["gateway"] for h in t["delivered_record_hops"]] == gateways[1:-1]
        assert t["complete"] is True and t["problems"] == []
    for p in summary["plaintext"]:
        assert p["ok"] is True and p["found"] == [] and p["files_scanned"] > 0


def _link_kinds(summary: dict) -> set[str]:
    kinds = set()
    for cfg in summary["configs"]:
        for flow in yaml.safe_load(Path(cfg).read_text())["flows"]:
            kinds |= {
                flow["transport"]["kind"],
                *(h["transport"]["kind"] for h in flow.get("via", [])),
            }
    return kinds


@pytest.mark.parametrize("transport", ["zmq", "udp", "ferry", "sftp"])
def test_demo_json_over_each_transport(transport: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    r = zg("demo", "--json", "--transport", transport, "--workdir", str(work), timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["ok"] is True and summary["problems"] == [], summary["problems"]
    assert summary["result"].startswith("OK") and summary["transport"] == transport
    assert _link_kinds(summary) == {transport}
    assert len({g["pid"] for g in summary["gateways"]}) == 5
    assert all(g["exit_code"] == 0 for g in summary["gateways"])
    samples = work / "samples"
    _check_flow(
        summary, "import", samples / "import", {"scanned-case-file-too-big.pdf": "too-large"}
    )
    assert sorted(_delivered(summary["flows"]["import"])) == IMPORT_SAMPLES
    _check_flow(summary, "publish", samples / "publish", {})
    _check_flow(summary, "report", samples / "report", {})
    _check_flow(summary, "dispatch", samples / "dispatch", {})
    _check_trails(summary)
    # review before release: the submitter refused, two officers, a signed manifest that verifies
    steps = summary["publication"]["steps"]
    assert [(s["person"], s["ok"]) for s in steps] == [
        ("li-wei", False),
        ("zhang-min", True),
        ("wang-fang", True),
    ]
    assert steps[0]["code"] == "approval-by-submitter"
    [release] = summary["flows"]["publish"]["delivered"]
    assert sorted(release["approvers"]) == ["wang-fang", "zhang-min"]
    inet = summary["flows"]["publish"]["route"][-1]
    v = zg("verify", release["path"], "--key", str(work / "keys" / f"{inet}.sign.pub"))
    assert v.returncode == 0, v.stderr
    for gw in summary["flows"]["publish"]["route"]:  # both ends audited the two approvals
        log = work / gw / "audit" / "audit.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        approved = {
            r["who"]["person"] for r in records if r["event"] == "approved" and r["outcome"] == "ok"
        }
        assert approved == {"zhang-min", "wang-fang"}, gw
    # every audit log verifies: records, Merkle tree, checkpoints signed by the audit key
    assert sorted(a["gateway"] for a in summary["audit"]) == sorted(
        g["name"] for g in summary["gateways"]
    )
    for a in summary["audit"]:
        assert a["ok"] is True and a["signatures_checked"] is True and a["checkpoints"] >= 1, a
    # every agent's metrics endpoint was scraped; the final receivers counted what they delivered
    agents = sum(len(g["agents"]) for g in summary["gateways"])
    assert len(summary["metrics"]) == agents == 11
    by_agent = {
        (m["gateway"], m["agent"]): "\n".join(m["messages"]) for m in summary["metrics_samples"]
    }
    intra = summary["flows"]["import"]["route"][-1]
    for flow, n in (("import", 5), ("report", 2)):
        line = f'zonegate_messages_total{{flow="{flow}",outcome="delivered",stage="deliver"}} {n}.0'
        assert line in by_agent[(intra, "receiver")]
    if transport == "sftp":
        assert sorted(d["gateway"] for d in summary["drop_points"]) == sorted(
            {g for f in summary["flows"].values() for g in f["route"][1:]}
        )
        for d in summary["drop_points"]:
            assert d["pid"] not in {g["pid"] for g in summary["gateways"]}
    if transport == "zmq":
        for cfg in summary["configs"]:  # the demo's zmq links are CurveZMQ-encrypted
            assert "curve_key:" in Path(cfg).read_text()
        # the same answers from the auditor's own tools
        logs = summary["audit_logs"]
        for log in logs:
            gw = Path(log).parent.parent.name
            key = work / "keys" / f"{gw}.audit.pub"
            v = zg("audit", "verify", log, "--key", str(key), "--require-checkpoints")
            assert v.returncode == 0, v.stdout + v.stderr
        t = summary["trails"][0]
        shown = zg("audit", "show", t["message_id"], *logs, "--json")
        assert shown.returncode == 0, shown.stderr
        steps = [(s["gateway"], s["event"]) for s in json.loads(shown.stdout)]
        for gw in t["route"]:
            assert any(g == gw for g, _ in steps), gw


def test_demo_json_delivers_a_users_files_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    (src / "sub dir").mkdir(parents=True)
    files = {
        "empty.txt": 0,
        "one byte": 1,
        "名单 2026.csv": 4096,
        "-leading-dash.pdf": 1024 * 1024 + 3,
        "sub dir/卷宗 scan.bin": 5 * 1024 * 1024,
    }
    for i, (name, size) in enumerate(files.items()):
        make_file(src / name, size, i)
    work = tmp_path / "work"
    r = zg("demo", "--files", str(src), "--json", "--workdir", str(work), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["ok"] is True
    assert summary["workdir"] == str(work.resolve())
    assert all(Path(p).is_file() for p in summary["configs"] + summary["audit_logs"])
    imported = summary["flows"]["import"]
    assert imported["refused"] == [] and imported["sent"] == len(files)
    by_name = _delivered(imported)
    assert sorted(by_name) == sorted(Path(n).name for n in files)
    for name in files:
        source = src / name
        d = by_name[source.name]
        assert d["sha256"] == _sha256(source) and d["identical"] is True
        delivered = Path(d["path"])
        assert delivered.read_bytes() == source.read_bytes()
        assert delivered.name == source.name
    # the other flows ran with their samples, relayed hop by hop as always
    assert [len(summary["flows"][f]["delivered"]) for f in ("publish", "report", "dispatch")] == [
        1,
        2,
        2,
    ]
    assert len(summary["trails"]) == 4 and all(t["complete"] for t in summary["trails"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--transport", "pigeon"], "invalid choice: 'pigeon'"),
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "soon"], "expected a number of seconds"),
        (["--files", "/nonexistent/zonegate-demo-input"], "no such file or directory"),
        (["--workdir", "NONEMPTY"], "is not an empty directory"),
        (["--topology", "/nonexistent/topology.yaml"], "the demo's topology"),
    ],
)
def test_demo_refuses_bad_options_with_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    if "NONEMPTY" in args:
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "something").write_text("mine")
        args = [str(tmp_path / "full") if a == "NONEMPTY" else a for a in args]
    r = zg("demo", *args, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    if "--workdir" in args:
        assert (tmp_path / "full" / "something").read_text() == "mine"


def test_readme_first_command_works_on_a_fresh_clone(tmp_path: Path) -> None:
    """Clone the committed tree and run the README's first command exactly as written."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    r = subprocess.run(
        ["bash", "-c", quick_start_commands()[0]],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Result: OK" in r.stdout
    assert (clone / ".venv" / "bin" / "zonegate").exists()


def test_the_demos_checks_catch_what_went_wrong(tmp_path: Path) -> None:
    """The summary's checks, run again on a kept workdir after damage, each say so: a delivery
    that is not what was sent, a forged or missing hop record, an edited audit log, plaintext
    at a relay."""
    from zonegate.gateways import demo_summary as check
    from zonegate.gateways.demo_network import demo_network

    work = tmp_path / "work"
    r = zg("demo", "--json", "--workdir", str(work), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout)
    network = demo_network(TOPOLOGY)
    report, dispatch = network.flow("report"), network.flow("dispatch")
    samples = sorted((work / "samples" / "report").iterdir())
    assert check.flow_results(work, report, samples, {})["ok"] is True

    first = summary["flows"]["report"]["delivered"][0]
    with open(first["path"], "ab") as f:
        f.write(b"!")
    damaged = check.flow_results(work, report, samples, {})
    assert damaged["ok"] is False
    assert [d["identical"] for d in damaged["delivered"] if d["name"] == first["name"]] == [False]

    one = summary["flows"]["dispatch"]["delivered"][0]
    assert check.trail(work, network, dispatch, one)["complete"] is True
    # the wrapper the last relay sent on: change one hex digit of a hop record's signature
    copy = work / dispatch.relays[-1] / "spool" / "relay" / "sent" / one["message_id"] / "forward"
    data = bytearray(copy.read_bytes())
    sig = data.index(b'"sig":"') + len(b'"sig":"')
    data[sig] = ord("0") if data[sig] != ord("0") else ord("1")
    copy.write_bytes(bytes(data))
    forged = check.trail(work, network, dispatch, one)
    assert forged["complete"] is False and "hop records: bad-hop" in " ".join(forged["problems"])
    shutil.rmtree(copy.parent)
    gone = check.trail(work, network, dispatch, one)
    assert gone["complete"] is False and "no longer keeps" in " ".join(gone["problems"])

    log = work / report.relays[0] / "audit" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    edited = next(i for i, line in enumerate(lines) if '"outcome":"ok"' in line)
    lines[edited] = lines[edited].replace('"outcome":"ok"', '"outcome":"info"', 1)
    log.write_text("".join(lines))
    audits = {a["gateway"]: a for a in check.audit_results(work, network)}
    assert audits[report.relays[0]]["ok"] is False and audits[report.relays[0]]["problem"]
    assert all(a["ok"] for g, a in audits.items() if g != report.relays[0])

    assert check.plaintext_at_relays(work, report, samples, [])["ok"] is True
    shutil.copy(samples[0], work / report.relays[-1] / "left-behind")
    leak = check.plaintext_at_relays(work, report, samples, [])
    assert leak["ok"] is False and leak["found"] == [str(work / report.relays[-1] / "left-behind")]
