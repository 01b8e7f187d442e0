"""Acceptance 1: the README's commands, and `zonegate demo` on the samples and on a user's files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

from harness import make_file, zg

ROOT = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_demo_with_samples_exits_0_and_explains_itself() -> None:
    r = zg("demo", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Result: OK" in out
    assert "Delivered (5)" in out and "Refused (1)" in out
    assert "too-large:" in out and "over this flow's limit" in out
    assert out.count("hash chain verifies") == 2
    assert "http://127.0.0.1:" in out


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
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout)
    assert summary["ok"] is True
    assert summary["refused"] == []
    assert summary["workdir"] == str(work.resolve())
    assert all(Path(p).is_file() for p in summary["configs"] + summary["audit_logs"])
    assert len(summary["metrics"]) == 3
    by_name = {d["name"]: d for d in summary["delivered"]}
    assert sorted(by_name) == sorted(Path(n).name for n in files)
    for name in files:
        source = src / name
        d = by_name[source.name]
        assert d["flow"] == "import"
        assert d["sha256"] == _sha256(source)
        delivered = Path(d["path"])
        assert delivered.read_bytes() == source.read_bytes()
        assert delivered.name == source.name
    for cfg in summary["configs"]:  # the demo's link is CurveZMQ-encrypted
        assert "curve_key:" in Path(cfg).read_text()
    for log in summary["audit_logs"]:
        v = zg("audit", "verify", log)
        assert v.returncode == 0, v.stderr


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
