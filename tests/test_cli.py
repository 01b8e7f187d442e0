"""The command line as a person uses it: --help everywhere, meaningful exit codes, --json."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from harness import zg

from zonegate.audit.log import AuditLog

SUBCOMMANDS = [
    [],
    ["demo"],
    ["run"],
    ["submit"],
    ["status"],
    ["audit"],
    ["audit", "verify"],
    ["keys"],
    ["keys", "generate"],
    ["config"],
    ["config", "check"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "zonegate")
def test_help_everywhere(words: list[str]) -> None:
    r = zg(*words, "--help")
    assert r.returncode == 0
    assert "usage: zonegate" in r.stdout


def test_usage_error_exits_2_with_a_message() -> None:
    r = zg("audit", "verify")
    assert r.returncode == 2
    assert "the following arguments are required" in r.stderr


def test_keys_generate_writes_0600_private_keys(tmp_path: Path) -> None:
    r = zg("keys", "generate", "--name", "gw-a", "--dir", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)
    for field in ("signing_private", "encryption_private"):
        mode = stat.S_IMODE(Path(files[field]).stat().st_mode)
        assert mode == 0o600, (field, oct(mode))
    again = zg("keys", "generate", "--name", "gw-a", "--dir", str(tmp_path))
    assert again.returncode == 1
    assert "already exists" in again.stderr


def _log(path: Path, n: int) -> list[bytes]:
    log = AuditLog(path, gateway="gw", agent="cli")
    for i in range(n):
        log.append("claimed", message={"id": f"{i:032x}", "flow": "import", "size": i})
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def test_audit_verify_ok(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _log(log, 5)
    r = zg("audit", "verify", str(log), "--json")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["results"][0]["records"] == 5


@pytest.mark.parametrize("line", [1, 4, 8])
@pytest.mark.parametrize("damage", ["edit", "delete", "swap"])
def test_audit_verify_names_the_bad_line(tmp_path: Path, damage: str, line: int) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _log(log, 8)
    i = line - 1
    if damage == "edit":
        lines[i] = lines[i].replace(f'"size":{i}'.encode(), f'"size":{i + 1}'.encode())
        expected = line
    elif damage == "delete":
        del lines[i]
        expected = line  # the last line too: the head file beside the log names seq 8
    else:
        j = i + 1 if i + 1 < len(lines) else i - 1
        lines[i], lines[j] = lines[j], lines[i]
        expected = min(i, j) + 1
    log.write_bytes(b"".join(lines))
    r = zg("audit", "verify", str(log), "--json")
    assert r.returncode == 1, r.stdout
    result = json.loads(r.stdout)["results"][0]
    assert result["first_bad_line"] == expected
    text = zg("audit", "verify", str(log))
    assert text.returncode == 1
    assert f"line {expected}" in text.stderr


def test_config_check_reports_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("version: 1\nbogus: true\n")
    r = zg("config", "check", str(bad))
    assert r.returncode == 1
    assert f"{bad}:2: bogus: unknown key 'bogus'" in r.stderr
    rj = zg("config", "check", str(bad), "--json")
    result = json.loads(rj.stdout)["results"][0]
    assert (result["ok"], result["line"], result["key"]) == (False, 2, "bogus")


def test_run_with_a_bad_config_exits_2_and_says_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("version: 2\n")
    r = zg("run", "--config", str(bad))
    assert r.returncode == 2
    assert "zonegate config check" in r.stderr


def test_config_check_accepts_generated_configs(tmp_path: Path) -> None:
    from zonegate.gateways.demo import write_gateway_pair

    configs = write_gateway_pair(tmp_path, 1024)
    r = zg("config", "check", *map(str, configs.values()))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ok") == 2
