"""`zonegate status`: queues per flow and state, link state and rates, for people and scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness import GatewayPair, wait_for, zg

from zonegate.gateways.submit import submit_files

FILES = 3


def _deliver(pair: GatewayPair, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"notice-{i}.txt").write_text(f"notice {i}\n")
    pair.start()
    submit_files(pair.outbox, "import", [src])
    wait_for(lambda: pair.receiver_spool.depth("delivered") >= FILES, 60, "deliveries")
    pair.metrics("receiver")  # the receiver's runtime file and endpoint are there


def _json_documents(text: str) -> list[dict]:
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while pos < len(text.rstrip()):
        while text[pos].isspace():
            pos += 1
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
    return docs


def test_status_json_has_flow_queues_links_and_counters(pair: GatewayPair, tmp_path: Path) -> None:
    _deliver(pair, tmp_path)
    r = zg("status", "--config", str(pair.configs["internal-gw"]), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["flow_queues"]["import"]["delivered"]["depth"] == FILES
    assert data["links"]["import"]["up"] is True
    assert data["agents"]["receiver"]["messages"]["import/deliver/delivered"] == FILES
    assert data["rates"] is None  # one sample: no rate yet
    r = zg("status", "--config", str(pair.configs["internet-gw"]), "--json")
    data = json.loads(r.stdout)
    assert data["flow_queues"]["import"]["sent"]["depth"] == FILES
    assert data["links"]["import"]["heartbeat_age_s"] < 30
    assert data["agents"]["sender"]["messages"]["import/send/sent"] == FILES


def test_status_watch_refreshes_with_rates(pair: GatewayPair, tmp_path: Path) -> None:
    _deliver(pair, tmp_path)
    cmd = [sys.executable, "-m", "zonegate.bin.cli", "status", "--watch", "--interval", "0.5"]
    cmd += ["--config", str(pair.configs["internal-gw"])]
    for extra in ([], ["--json"]):
        proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2.5)
        proc.terminate()
        out, err = proc.communicate(10)
        text = out.decode()
        if extra:
            docs = _json_documents(text)
            assert len(docs) >= 2, err.decode()
            assert docs[0]["rates"] is None
            assert docs[-1]["rates"] is not None
            assert docs[-1]["rates"]["import/deliver/delivered"] == 0
        else:
            assert text.count("\x1b[2J\x1b[H") >= 2, err.decode()
            last = text.rsplit("\x1b[2J\x1b[H", 1)[1]
            assert "queues per flow:" in last and "import" in last
            assert "links:" in last and "rates (messages/s):" in last
