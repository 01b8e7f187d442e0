"""bench/run's pure parts: result schema, ratios and targets, stage shares and latency matching.

The stage shares and the latency matching are computed from the audit logs of a real gateway
pair (bench's own Pair: each agent its own process) that moves a few files; everything else is
checked on small hand-made inputs. No timing assertion anywhere: only that the numbers computed
are consistent with each other and with what the records say.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from zgbench import cli, results
from zgbench.latency import delivery_latencies, percentile
from zgbench.pair import FLOW, Pair
from zgbench.profile import top_frames
from zgbench.stage_rows import stage_results
from zgbench.stages import (
    STAGES,
    busy_shares,
    counter_values,
    histogram_sums,
    stage_shares,
    timelines,
)
from zgbench.udp import parse_udp_results

# ------------------------------------------------------------------- results, ratios, targets


def test_measured_computes_ratio_and_json_schema() -> None:
    r = results.measured("large_file_vs_limit", 120.0, "MB/s", "2 copies", 200.0)
    assert r.ratio == pytest.approx(0.6)
    doc = r.to_json()
    for key in ("name", "value", "unit", "baseline", "baseline_value", "ratio"):
        assert key in doc
    assert doc["ratio"] == pytest.approx(0.6)
    assert doc["better"] == "higher"
    assert doc["target"] == "ratio >= 0.7"
    assert doc["met"] is False
    assert "error" not in doc


def test_target_met_from_value_or_ratio() -> None:
    ok = results.measured("large_file_vs_limit", 150.0, "MB/s", "b", 200.0)  # 0.75
    assert ok.met() is True
    fast = results.measured("small_p99_ms", 120.0, "ms", "p99 create", 2.0)  # value < 250
    slow = results.measured("small_p99_ms", 250.0, "ms", "p99 create", 2.0)  # not < 250
    assert fast.met() is True and slow.met() is False
    assert fast.to_json()["better"] == "lower"
    assert results.measured("peak_rss_mib", 150.0, "MiB", "idle", 50.0).met() is True
    assert results.measured("peak_rss_mib", 150.5, "MiB", "idle", 50.0).met() is False
    assert results.measured("stage_share_seal", 40.0, "%", "e2e", 100.0).met() is None


def test_no_ratio_without_positive_baseline() -> None:
    assert results.measured("x", 5.0, "MB/s", "none", None).ratio is None
    assert results.measured("x", 5.0, "MB/s", "zero", 0.0).ratio is None


def test_failed_result_has_no_numbers_and_fails_the_exit_code() -> None:
    bad = results.failed("udp_vs_udpcast", "udp_compare.py exited 2")
    doc = bad.to_json()
    assert doc["value"] is None and doc["ratio"] is None and doc["met"] is None
    assert doc["error"] == "udp_compare.py exited 2"
    good = results.measured("small_files_per_s", 10.0, "files/s", "creates", 100.0)
    assert results.exit_code([good]) == 0
    assert results.exit_code([good, bad]) == 1


def test_table_shows_targets_and_whether_met() -> None:
    rows = [
        results.measured("large_file_vs_limit", 150.0, "MB/s", "2 copies", 200.0),
        results.measured("small_files_vs_limit", 50.0, "files/s", "creates", 1000.0),
        results.failed("udp_vs_pydiode", "no JSON"),
    ]
    text = results.table(rows)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert lines["large_file_vs_limit"].rstrip().endswith("yes")
    assert "ratio >= 0.7" in lines["large_file_vs_limit"]
    assert lines["small_files_vs_limit"].rstrip().endswith("NO")
    assert "FAILED" in lines["udp_vs_pydiode"]
    assert "FAILED udp_vs_pydiode: no JSON" in text


def test_select_by_family_or_result_name() -> None:
    assert [f.name for f in cli.select(None)] == ["large", "tmpfs", "small", "udp"]
    assert [f.name for f in cli.select(["small_p99_ms", "large"])] == ["large", "small"]
    assert [f.name for f in cli.select(["stage_share_link"])] == ["large"]
    with pytest.raises(ValueError, match="bogus"):
        cli.select(["bogus"])


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--only", "bogus"])
    assert e.value.code == 2
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--workdir", str(tmp_path)])  # not empty: it would mix two runs
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--json", str(tmp_path / "x" / "results.json")])
    assert e.value.code == 2
    args = cli.parse_args(["--quick", "--only", "udp", "--json", str(tmp_path / "r.json")])
    assert [f.name for f in args.families] == ["udp"]


# ------------------------------------------------------------------------- udp_compare's JSON


def test_udp_results_taken_from_either_schema_ratio_recomputed() -> None:
    listed = {
        "results": [
            {"name": "udp_vs_udpcast", "value": 100, "unit": "MB/s", "baseline": "udpcast",
             "baseline_value": 125, "ratio": 9.9},
            {"name": "udp_vs_pydiode", "value": 100, "unit": "MB/s", "baseline": "pydiode",
             "baseline_value": 40},
        ]
    }  # fmt: skip
    got = {r.name: r for r in parse_udp_results(listed, "f.json")}
    assert got["udp_vs_udpcast"].ratio == pytest.approx(0.8)  # not the 9.9 it claimed
    assert got["udp_vs_pydiode"].ratio == pytest.approx(2.5)
    keyed = {"udp_vs_udpcast": {"value": 50.0, "unit": "MB/s", "baseline_value": 100.0}}
    got = {r.name: r for r in parse_udp_results(keyed, "f.json")}
    assert got["udp_vs_udpcast"].ratio == pytest.approx(0.5)
    assert "no result named udp_vs_pydiode" in (got["udp_vs_pydiode"].error or "")
    assert "udp_vs_pydiode_shipped" not in got  # an extra row is shown only when measured


def test_udp_extra_row_for_pydiode_as_shipped_is_kept_when_measured() -> None:
    doc = {
        "results": [
            {"name": "udp_vs_udpcast", "value": 90, "baseline_value": 30},
            {"name": "udp_vs_pydiode", "value": 90, "baseline_value": 300},
            {"name": "udp_vs_pydiode_shipped", "value": 90, "baseline": "pydiode dflt",
             "baseline_value": 45},
        ]
    }  # fmt: skip
    got = {r.name: r for r in parse_udp_results(doc, "f.json")}
    assert got["udp_vs_pydiode_shipped"].ratio == pytest.approx(2.0)
    assert got["udp_vs_pydiode_shipped"].baseline == "pydiode dflt"
    assert got["udp_vs_pydiode"].ratio == pytest.approx(0.3)


def test_udp_results_never_invented() -> None:
    doc = {
        "results": [
            {"name": "udp_vs_udpcast", "value": "fast", "baseline_value": 100},
            {"name": "udp_vs_pydiode", "error": "pydiode not installed"},
        ]
    }
    got = {r.name: r for r in parse_udp_results(doc, "f.json")}
    assert got["udp_vs_udpcast"].value is None and got["udp_vs_udpcast"].error
    assert got["udp_vs_pydiode"].error == "udp_compare.py: pydiode not installed"
    assert all(r.error for r in parse_udp_results(["not", "an", "object"], "f.json"))


# ------------------------------------------------------------------------ profile summaries


def test_top_frames_separates_waiting_from_work(tmp_path: Path) -> None:
    doc = {
        "shared": {
            "frames": [
                {"name": "run", "file": "a.py", "line": 1},
                {"name": "_hash_file", "file": "ingest.py", "line": 240},
                {"name": "Condition.wait", "file": "threading.py", "line": 331},
            ]
        },
        "profiles": [
            {"type": "sampled", "samples": [[0, 1], [0, 1], [0, 1], [0, 2]], "weights": [1] * 4}
        ],
    }
    path = tmp_path / "p.speedscope.json"
    path.write_text(json.dumps(doc))
    got = top_frames(path)
    assert got["waiting_share"] == pytest.approx(0.25)
    assert got["top"][0]["function"] == "_hash_file"
    assert got["top"][0]["share"] == pytest.approx(0.75)
    assert got["top"][0]["where"] == "ingest.py:240"


# ------------------------------------------------- stage shares and latency, from real agents


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three files through a real pair; its audit records, rename times and scraped metrics."""
    pair = Pair(tmp_path_factory.mktemp("bench") / "pair", 1 << 20)
    submitted: dict[str, float] = {}
    began = time.monotonic()
    try:
        pair.start("test")
        for i in range(3):
            name = f"report-{i}.txt"
            (pair.outbox_tmp / name).write_bytes(b"case file %d\n" % i * 50)
            os.rename(pair.outbox_tmp / name, pair.outbox_new / name)
            submitted[name] = time.time()
        pair.wait_delivered(3, 60, "test")
        metrics = pair.scrape("sender")
        seal = pair.stage_seconds("sender", "seal")
        busy = pair.busy_seconds()
        receiver_metrics = pair.scrape("receiver")
    finally:
        pair.stop()
    return {
        "records": pair.audit_records(),
        "submitted": submitted,
        "metrics": metrics,
        "seal": seal,
        "busy": busy,
        "seconds": time.monotonic() - began,
        "receiver_metrics": receiver_metrics,
    }


def test_timelines_from_real_audit_records(real_run: dict) -> None:
    lines = timelines(real_run["records"], FLOW)
    by_name = {t.name: t for t in lines.values()}
    assert set(by_name) == set(real_run["submitted"])
    for tl in by_name.values():
        for event in ("claimed", "accepted", "sealed", "sent", "received-on-link", "delivered"):
            assert event in tl.times, f"{tl.name} has no {event} record"
        assert tl.times["claimed"] <= tl.times["accepted"] <= tl.times["delivered"]


def test_stage_shares_add_up_to_end_to_end(real_run: dict) -> None:
    lines = timelines(real_run["records"], FLOW).values()
    seal = real_run["seal"]
    assert seal is not None and seal > 0
    shares = stage_shares(lines, real_run["submitted"], seal)
    assert shares.messages == 3
    assert shares.notes == []
    assert sum(shares.seconds.values()) == pytest.approx(shares.end_to_end)
    assert sum(shares.intervals.values()) == pytest.approx(shares.end_to_end)
    assert all(v >= 0 for v in shares.seconds.values())
    pct = shares.shares()
    assert sum(pct.values()) == pytest.approx(100.0)
    assert shares.slowest() == max(pct, key=lambda s: pct[s])
    # the seal histogram's time is moved from link into seal, not invented
    without = stage_shares(lines, real_run["submitted"], 0.0)
    assert shares.seconds["seal"] - without.seconds["seal"] == pytest.approx(seal)
    e2e = sum(max(0.0, t.times["delivered"] - real_run["submitted"][t.name]) for t in lines)
    assert shares.end_to_end == pytest.approx(e2e)
    rows = {r.name: r for r in stage_results(shares, "test")}
    assert rows["slowest_stage"].note == shares.slowest()
    assert rows[f"stage_share_{shares.slowest()}"].value == rows["slowest_stage"].value


def test_stage_shares_survive_missing_records(real_run: dict) -> None:
    records = [r for r in real_run["records"] if r.get("event") != "verified"]
    shares = stage_shares(timelines(records, FLOW).values(), real_run["submitted"], None)
    assert shares.messages == 3
    assert shares.seconds["open"] == 0.0  # its time falls into deliver
    assert sum(shares.seconds.values()) == pytest.approx(shares.end_to_end)
    assert any("'verified'" in n for n in shares.notes)
    assert any("no seal histogram" in n for n in shares.notes)


def test_histogram_sums_from_real_metrics(real_run: dict) -> None:
    sums = histogram_sums(real_run["metrics"], flow=FLOW)
    assert sums["seal"][1] == 3  # one observation per message sealed
    assert sums["send"][1] == 3
    assert sums["seal"][0] == pytest.approx(real_run["seal"])
    assert histogram_sums(real_run["metrics"], flow="no-such-flow") == {}


def test_latency_matches_each_file_by_name(real_run: dict) -> None:
    submitted = real_run["submitted"]
    lat = delivery_latencies(submitted, real_run["records"])
    assert lat.missing == [] and lat.duplicated == []
    delivered = {
        r["message"]["name"]: r for r in real_run["records"] if r.get("event") == "delivered"
    }
    for name, seconds in lat.seconds.items():
        record_time = timelines([delivered[name]])[delivered[name]["message"]["id"]]
        assert seconds == pytest.approx(record_time.times["delivered"] - submitted[name])
    assert percentile(lat.values(), 99) == max(lat.values())


def test_latency_reports_missing_and_second_copies(real_run: dict) -> None:
    records = list(real_run["records"])
    first = next(r for r in records if r.get("event") == "delivered")
    twice = json.loads(json.dumps(first))
    twice["message"]["id"] = "f" * 32
    lat = delivery_latencies(
        {**real_run["submitted"], "never-sent.txt": time.time()}, [*records, twice]
    )
    assert lat.missing == ["never-sent.txt"]
    assert lat.duplicated == [first["message"]["name"]]


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_busy_shares_from_every_agents_counters(real_run: dict) -> None:
    busy = real_run["busy"]
    assert set(busy) == set(STAGES)
    assert all(busy[s] is not None and busy[s] > 0 for s in STAGES), busy
    receiver = counter_values(real_run["receiver_metrics"])
    assert set(receiver) >= {"receive", "open", "deliver"}
    assert busy["open"] == pytest.approx(receiver["open"], rel=0.5)  # scraped a moment apart
    # batches are counted once: the receiver cannot have worked longer than the run took
    assert sum(receiver.values()) < real_run["seconds"]
    shares = busy_shares(busy, 3)
    pct = shares.shares()
    assert sum(pct.values()) == pytest.approx(100.0)
    assert shares.end_to_end == pytest.approx(sum(busy.values()))
    rows = {r.name: r for r in stage_results(shares, "test")}
    assert rows["slowest_stage"].note == max(pct, key=lambda s: pct[s])


def test_busy_shares_name_a_missing_counter() -> None:
    shares = busy_shares({"ingest": 1.0, "seal": 3.0, "link": None, "open": 0.5, "deliver": 0.5}, 1)
    assert shares.seconds["link"] == 0.0
    assert shares.shares()["seal"] == pytest.approx(60.0)
    assert shares.slowest() == "seal"
    assert any("stage link: counted as 0" in n for n in shares.notes)


def test_counter_values_read_the_exposition_format() -> None:
    text = (
        "# TYPE zonegate_stage_busy_seconds_total counter\n"
        'zonegate_stage_busy_seconds_total{stage="open"} 1.5\n'
        'zonegate_stage_busy_seconds_created{stage="open"} 1.7e9\n'
        'zonegate_stage_busy_seconds_total{stage="deliver"} 0.25\n'
    )
    assert counter_values(text) == {"open": 1.5, "deliver": 0.25}


def test_prefault_writes_what_it_is_asked_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zgbench import tmpfs

    sizes: list[int] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:  # the size just before it goes
        sizes.append(self.stat().st_size)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    seconds = tmpfs.prefault(tmp_path, tmpfs.CHUNK + 1)
    assert sizes == [2 * tmpfs.CHUNK]  # rounded up to whole chunks
    assert seconds > 0
    assert list(tmp_path.iterdir()) == []
