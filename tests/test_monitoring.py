"""Monitoring: promtool checks the shipped config and rules and runs the alert unit tests; a real
Prometheus server scrapes a running gateway pair; promtool lints every agent's /metrics.

Prometheus here always listens on 127.0.0.1 and a free port, with its data in tmp_path.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import GatewayPair, metric_value, wait_for

from zonegate.gateways.demo_configs import free_port
from zonegate.gateways.metrics import AgentMetrics
from zonegate.gateways.probe import ProbeMetrics
from zonegate.gateways.submit import submit_files
from zonegate.transfer.spool import Spool

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ISSUE_ALERTS = {
    "ZonegateLinkDown",
    "ZonegateHeartbeatMissing",
    "ZonegateBacklog",
    "ZonegateOldestMessageTooOld",
    "ZonegateQuarantineSpike",
    "ZonegateAuditWriteFailure",
    "ZonegateAuditVerifyFailure",
    "ZonegateEndpointDown",
    "ZonegateDiskNearlyFull",
    "ZonegateUdpDecoderBehind",  # issue 4: datagrams the UDP receiver itself had to drop
}
FILES = 3


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
        cwd=CONFIGS,
    )


# -- the shipped assets -----------------------------------------------------------------------


def test_promtool_check_config() -> None:
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ISSUE_ALERTS)} rules found" in r.stdout


def test_promtool_test_rules() -> None:
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_from_the_issue_exists_and_has_a_firing_unit_test() -> None:
    rules = yaml.safe_load((CONFIGS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == ISSUE_ALERTS
    tests = yaml.safe_load((CONFIGS / "alerts_test.yml").read_text())["tests"]
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for test in tests:
        for case in test.get("alert_rule_test", []):
            bucket = firing if case["exp_alerts"] else quiet
            bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
    assert set(firing) == ISSUE_ALERTS, "every alert needs a test where it fires"
    assert set(quiet) == ISSUE_ALERTS, "every alert needs a test where it stays quiet"


def test_scrape_config_covers_every_gateway_of_the_example_topology() -> None:
    from zonegate.zones.topology import load_topology

    topology = load_topology(CONFIGS / "topology.yaml")
    config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        "zonegate-ingest",
        "zonegate-sender",
        "zonegate-receiver",
        "zonegate-probe",
    }
    for job, port in (("zonegate-ingest", 9101), ("zonegate-sender", 9102)):
        targets = {
            group["labels"]["gateway"]: group["targets"][0] for group in jobs[job]["static_configs"]
        }
        for gateway in topology.gateways():
            assert targets[gateway.name] == f"{gateway.address}:{port}"


def _exported_names() -> set[str]:
    """Every series name the agents and the probe can export, as Prometheus will see it."""
    names: set[str] = set()
    registries = [ProbeMetrics().registry]
    metrics = AgentMetrics("ingest", "gw", Spool(Path("/nonexistent-spool")))
    metrics.watch_audit(Path("/nonexistent-audit.jsonl"), 1024**3)
    registries.append(metrics.registry)
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
            else:
                names.add(family.name)
    # Collectors that read the disk yield nothing for a missing spool; add them by name.
    names |= {"zonegate_spool_filesystem_avail_bytes", "zonegate_spool_filesystem_size_bytes"}
    names |= {"zonegate_audit_checkpoint_age_seconds"}
    return names


def test_alerts_and_dashboard_use_only_metrics_the_agents_export() -> None:
    exported = _exported_names()
    rules = (CONFIGS / "alerts.yml").read_text()
    dashboard = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"zonegate_[a-z_]+", rules + "\n".join(exprs)))
    assert used, "no metric names found"
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"
    # The dashboard shows what the issue lists.
    for needed in (
        "zonegate_messages_total", "zonegate_bytes_total", "zonegate_queue_depth",
        "zonegate_queue_oldest_age_seconds", "zonegate_end_to_end_latency_seconds_bucket",
        "zonegate_stage_duration_seconds_bucket", "zonegate_link_up",
        "zonegate_link_last_heartbeat_timestamp_seconds", "zonegate_fec_repaired_packets_total",
        "zonegate_fec_lost_packets_total", "zonegate_rejections_total",
        "zonegate_audit_records_total", "zonegate_audit_checkpoint_age_seconds",
        "zonegate_probe_up", "zonegate_probe_duration_seconds",
        "zonegate_probe_last_seen_timestamp_seconds",
    ):  # fmt: skip
        assert any(needed in e for e in exprs), needed


# -- a running gateway pair --------------------------------------------------------------------


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayPair]:
    """A gateway pair that has moved FILES files from internet-gw to internal-gw."""
    root = tmp_path_factory.mktemp("pair")
    pair = GatewayPair(root)
    src = root / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"report-{i}.txt").write_text(f"report {i}\n" * (i + 1))
    try:
        pair.start()
        submit_files(pair.outbox, "import", [src])
        wait_for(lambda: pair.receiver_spool.depth("delivered") >= FILES, 60, "deliveries")
        yield pair
    finally:
        pair.stop()


def _metrics_urls(pair: GatewayPair) -> dict[str, str]:
    pair.metrics("receiver")  # waits for the runtime files
    from zonegate.gateways.agent import AgentContext

    urls = {}
    for agent, spool in (
        ("ingest", pair.sender_spool),
        ("sender", pair.sender_spool),
        ("receiver", pair.receiver_spool),
    ):
        runtime = json.loads(AgentContext.runtime_file(spool.root, agent).read_text())
        urls[agent] = runtime["metrics"]
    return urls


def test_agents_export_latency_histograms_and_audit_state(delivered: GatewayPair) -> None:
    receiver = delivered.metrics("receiver")
    assert (
        metric_value(receiver, "zonegate_end_to_end_latency_seconds_count", flow="import") == FILES
    )
    assert (
        metric_value(
            receiver, "zonegate_stage_duration_seconds_count", flow="import", stage="deliver"
        )
        == FILES
    )
    sender = delivered.metrics("sender")
    for stage in ("seal", "send"):
        assert (
            metric_value(
                sender, "zonegate_stage_duration_seconds_count", flow="import", stage=stage
            )
            == FILES
        )
    ingest = delivered.metrics("ingest")
    assert (
        metric_value(ingest, "zonegate_stage_duration_seconds_count", flow="import", stage="ingest")
        == FILES
    )
    assert metric_value(ingest, "zonegate_audit_verify_ok") == 1
    assert metric_value(ingest, "zonegate_spool_filesystem_size_bytes") > 0
    assert 0 <= metric_value(ingest, "zonegate_audit_checkpoint_age_seconds") < 300


@pytest.mark.parametrize("agent", ["ingest", "sender", "receiver"])
def test_promtool_check_metrics_on_each_agent(delivered: GatewayPair, agent: str) -> None:
    """Acceptance 5: the exposition of every agent lints clean."""
    text = delivered.metrics(agent)
    assert "zonegate_" in text
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", (
        r.stdout + r.stderr
    )


def test_promtool_check_metrics_on_the_probe_agent(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    h323_port = listener.getsockname()[1]
    sip_port = free_port()  # nothing answers: the SIP endpoint shows as down
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        "version: 1\n"
        "zones: [{name: government, level: classified, zh: 公务网, en: Government network}]\n"
        "tiers: [{tier: 1, zh: 一级网, en: Tier 1}]\n"
        "nodes:\n"
        "  - {name: hq, zh: 总部, en: HQ, tier: 1, kind: municipal-bureau, zones: [government],\n"
        "     gateways: [{name: hq-gov-gw, zone: government, address: 127.0.1.1}],\n"
        "     endpoints: [\n"
        f"       {{name: mcu, role: mcu, protocol: h323, address: 127.0.0.1, port: {h323_port},"
        " zone: government},\n"
        f"       {{name: bridge, role: phone-bridge, protocol: sip, address: 127.0.0.1,"
        f" port: {sip_port}, zone: government}}]}}\n",
        encoding="utf-8",
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zonegate.bin.cli", "probe", "--topology", str(topology),
         "--interval", "1", "--timeout", "0.3", "--metrics", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def scraped() -> str:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                return ""

        wait_for(
            lambda: (
                metric_value(scraped(), "zonegate_probes_total", endpoint="bridge", outcome="down")
                >= 1
            ),
            15,
            "a probe round",
        )
        text = scraped()
    finally:
        proc.terminate()
        proc.wait(10)
        listener.close()
    assert metric_value(text, "zonegate_probe_up", endpoint="mcu") == 1
    assert metric_value(text, "zonegate_probe_up", endpoint="bridge") == 0
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", (
        r.stdout + r.stderr
    )


def _query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_gateway(delivered: GatewayPair, tmp_path: Path) -> None:
    """Acceptance 2: a real server scrapes the running agents; a query returns the count."""
    urls = _metrics_urls(delivered)
    jobs = []
    for agent, url in urls.items():
        parsed = urllib.parse.urlparse(url)
        jobs.append(
            {
                "job_name": f"zonegate-{agent}",
                "metrics_path": parsed.path,
                "static_configs": [{"targets": [parsed.netloc]}],
            }
        )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(CONFIGS / "alerts.yml")],
        "scrape_configs": jobs,
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    started = time.monotonic()
    try:

        def transferred() -> float | None:
            try:
                result = _query(
                    base,
                    'sum(zonegate_messages_total{job="zonegate-receiver",'
                    'flow="import",stage="deliver",outcome="delivered"})',
                )
            except OSError:
                return None
            return float(result[0]["value"][1]) if result else None

        wait_for(lambda: transferred() == FILES, 25, "Prometheus to scrape the delivered count")
        sent = 'sum(zonegate_messages_total{job="zonegate-sender",outcome="sent"})'
        wait_for(
            lambda: [float(r["value"][1]) for r in _query(base, sent)] == [FILES],
            10,
            "the sent count",
        )

        def jobs_up() -> set[str]:
            return {r["metric"]["job"] for r in _query(base, "up") if r["value"][1] == "1"}

        everyone = {"zonegate-ingest", "zonegate-sender", "zonegate-receiver"}
        wait_for(lambda: jobs_up() == everyone, 10, "every agent's target to be up")
        assert time.monotonic() - started < 30
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
