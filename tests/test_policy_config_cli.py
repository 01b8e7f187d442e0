"""The policy and sftp config sections (each new error: file, line, key), `zonegate policy test`,
`zonegate quarantine` and `zonegate keys generate --ssh-host-key`, through the real CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import samples as S
from harness import zg
from test_config import PRIVATE_KEYS, PUBLIC_KEYS, VALID, line_of, make_keys

from zonegate.audit.verify import verify
from zonegate.gateways.agent import AgentContext
from zonegate.gateways.ingest import IngestAgent, outbox_dirs
from zonegate.zones.config import (
    ArchiveRules,
    ConfigError,
    Scanner,
    TextRules,
    load_gateway_config,
)

POLICY = """\
    policy:
      min_size: 1
      max_size: 1 MiB
      types: [pdf, text, csv]
      names: {max_bytes: 100}
      archive: {max_entries: 10, max_expanded_size: 1 MiB, max_ratio: 50, max_depth: 1}
      text: {markings: true, keywords: [内部资料, confidential]}
      scanner: {command: [/bin/true, "{path}"], input: path, timeout: 5s}
"""
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ1bGx5LXZhbGlkLWxvb2tpbmcta2V5LWJ5dGVzISE= oa"


def _config(tmp_path: Path, policy: str = POLICY, sftp: str = "") -> Path:
    make_keys(tmp_path, PRIVATE_KEYS, PUBLIC_KEYS)
    head, _, _ = VALID.partition("    policy:\n")
    tail = VALID.split("    policy:\n", 1)[1]
    rest = tail[tail.index("\n", tail.index("max_size")) + 1 :]
    text = head + policy + rest + sftp
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_a_full_policy_loads(tmp_path: Path) -> None:
    policy = load_gateway_config(_config(tmp_path)).flow("import").policy
    assert policy.types == ("pdf", "text", "csv")
    assert policy.max_name_bytes == 100
    assert policy.archive == ArchiveRules(10, 1024**2, 50, 1)
    assert policy.text == TextRules(True, ("内部资料", "confidential"))
    assert policy.scanner == Scanner(("/bin/true", "{path}"), "path", 5.0)


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("types: [pdf, text, csv]", "types: [pdf, exe]", "types[1]", "unknown content type 'exe'"),
        ("types: [pdf, text, csv]", "types: []", "types", "at least one type"),
        ("names: {max_bytes: 100}", "names: {max_bytes: 300}", "names.max_bytes", "out of range"),
        ("names: {max_bytes: 100}", "names: {max_len: 3}", "names.max_len", "unknown key"),
        ("max_entries: 10", "max_entries: 0", "archive.max_entries", "out of range"),
        ("max_ratio: 50", "max_ratio: fifty", "archive.max_ratio", "expected an integer"),
        ("max_depth: 1", "max_depth: 17", "archive.max_depth", "out of range"),
        (
            "max_expanded_size: 1 MiB",
            "max_expanded_size: 1 MB!",
            "archive.max_expanded_size",
            "cannot read",
        ),
        ("markings: true", "markings: yes please", "text.markings", "expected true or false"),
        (
            "keywords: [内部资料, confidential]",
            "keywords: [内部资料, '']",
            "text.keywords[1]",
            "non-empty keyword",
        ),
        (
            "keywords: [内部资料, confidential]",
            "keywords: 内部资料",
            "text.keywords",
            "expected a list",
        ),
        ('command: [/bin/true, "{path}"]', "command: []", "scanner.command", "argv"),
        (
            'command: [/bin/true, "{path}"]',
            "command: [/bin/true]",
            "scanner.command",
            "'{path}'",
        ),
        ("input: path", "input: pipe", "scanner.input", "unknown scanner input"),
        ("timeout: 5s", "timeout: 0", "scanner.timeout", "above 0"),
        ("timeout: 5s", "timeout: soon", "scanner.timeout", "duration"),
    ],
)
def test_each_policy_error_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    assert old in POLICY
    path = _config(tmp_path, POLICY.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    e = info.value
    assert e.file == str(path)
    assert e.key == f"flows[0].policy.{key}"
    assert message in e.message
    assert e.line == line_of(path.read_text(), new)


SFTP = f"""\
sftp:
  listen: 127.0.0.1:2222
  host_key: keys/internet-gw.sign.key
  login_timeout: 20s
  accounts:
    - name: oa
      authorized_keys: ["{ED25519}"]
      flows: [import]
      max_file_size: 1 GiB
      max_in_flight: 2
      bytes_per_day: 10 GiB
"""


def test_the_sftp_section_loads(tmp_path: Path) -> None:
    config = load_gateway_config(_config(tmp_path, sftp=SFTP))
    assert config.sftp is not None
    assert config.sftp.login_timeout == 20.0
    (account,) = config.sftp.accounts
    assert (account.name, account.flows, account.max_in_flight) == ("oa", ("import",), 2)
    assert account.authorized_keys == (" ".join(ED25519.split()[:2]),)


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("listen: 127.0.0.1:2222", "listen: nowhere", "sftp.listen", "bad address"),
        (
            "host_key: keys/internet-gw.sign.key",
            "host_key: keys/missing",
            "sftp.host_key",
            "does not exist",
        ),
        ("login_timeout: 20s", "login_timeout: 0", "sftp.login_timeout", "above 0"),
        (
            f'["{ED25519}"]',
            '["ssh-ed25519 notbase64!"]',
            "sftp.accounts[0].authorized_keys[0]",
            "OpenSSH public key",
        ),
        (
            f'["{ED25519}"]',
            '["ssh-dss AAAAB3NzaC1kc3M="]',
            "sftp.accounts[0].authorized_keys[0]",
            "OpenSSH public key",
        ),
        (f'["{ED25519}"]', "[]", "sftp.accounts[0].authorized_keys", "at least one"),
        (
            "flows: [import]",
            "flows: [publish]",
            "sftp.accounts[0].flows[0]",
            "not sent by this gateway",
        ),
        ("max_in_flight: 2", "max_in_flight: 0", "sftp.accounts[0].max_in_flight", "range"),
        (
            "bytes_per_day: 10 GiB",
            "bytes_per_day: lots",
            "sftp.accounts[0].bytes_per_day",
            "cannot read",
        ),
        ("    - name: oa", "    - name: OA", "sftp.accounts[0].name", "invalid name"),
        (
            "      max_file_size: 1 GiB",
            "      max_size: 1 GiB",
            "sftp.accounts[0].max_size",
            "unknown key",
        ),
    ],
)
def test_each_sftp_error_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    assert old in SFTP
    path = _config(tmp_path, sftp=SFTP.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    e = info.value
    assert (e.file, e.key) == (str(path), key)
    assert message in e.message
    assert e.line == line_of(path.read_text(), new)


def test_a_host_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, sftp=SFTP)
    os.chmod(tmp_path / "keys" / "internet-gw.sign.key", 0o644)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    assert info.value.key in ("keys.signing", "sftp.host_key")
    assert "too open" in info.value.message


# -- zonegate policy test ----------------------------------------------------------------------


def test_policy_test_exit_codes_and_json(tmp_path: Path) -> None:
    config = _config(tmp_path)
    good = tmp_path / "ok.txt"
    good.write_text("普通文本\n")
    marked = tmp_path / "notice.pdf"
    marked.write_bytes(S.pdf_text("机密★1年"))
    exe = tmp_path / "setup.pdf"
    exe.write_bytes(b"MZ" + bytes(100))

    result = zg("policy", "test", "--config", str(config), "--flow", "import", str(good))
    assert result.returncode == 0, result.stderr
    assert "accepted" in result.stdout

    args = ["policy", "test", "--config", str(config), "--flow", "import", "--json"]
    result = zg(*args, str(good), str(marked), str(exe))
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert [(r["verdict"], r["reason"], r["rule"]) for r in out] == [
        ("accepted", None, None),
        ("refused", "marking", "text.markings"),
        ("refused", "type-not-allowed", "types"),
    ]
    assert out[1]["terms"] == ["机密★1年"]
    assert set(out[0]) >= {"path", "verdict", "reason", "rule", "terms"}

    assert zg(*args[:-1], "--flow", "nope", str(good)).returncode == 2
    assert zg(*args, str(tmp_path / "missing.txt")).returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    assert zg("policy", "test", "--config", str(bad), "--flow", "import", str(good)).returncode == 2


# -- zonegate quarantine -----------------------------------------------------------------------


def test_quarantine_list_show_release_purge_are_audited(tmp_path: Path) -> None:
    config_path = _config(tmp_path)
    config = load_gateway_config(config_path)
    agent = IngestAgent(AgentContext.open(config, "ingest"))
    _tmp, new = outbox_dirs(config.outbox, "import")
    payloads = {"a.pdf": S.pdf_text("【机密】"), "b.txt": "内部资料\n".encode()}
    for name, data in payloads.items():
        (new / name).write_bytes(data)
    agent.poll_once()

    cfg = ["--config", str(config_path)]
    listed = json.loads(zg("quarantine", "list", *cfg, "--json").stdout)
    assert {e["name"]: e["reason"] for e in listed} == {"a.pdf": "marking", "b.txt": "keyword"}
    by_name = {e["name"]: e["id"] for e in listed}

    shown = json.loads(zg("quarantine", "show", *cfg, by_name["a.pdf"], "--json").stdout)
    assert shown["terms"] == ["【机密】"] and shown["rule"] == "text.markings"
    assert Path(shown["data"]).read_bytes() == payloads["a.pdf"]
    missing = zg("quarantine", "show", *cfg, "0" * 32)
    assert missing.returncode == 1 and "no message" in missing.stderr

    released = zg("quarantine", "release", *cfg, by_name["a.pdf"], "--person", "officer-li")
    assert released.returncode == 0, released.stderr
    assert agent.ctx.spool.ids("ready") == [by_name["a.pdf"]]
    ready = agent.ctx.spool.entry("ready", by_name["a.pdf"]) / "data"
    assert ready.read_bytes() == payloads["a.pdf"]

    assert zg("quarantine", "purge", *cfg, "--older-than", "1d").stdout.startswith("purged 0")
    purged = zg("quarantine", "purge", *cfg, "--older-than", "0s", "--person", "officer-li")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert agent.ctx.spool.ids("quarantine") == []
    assert zg("quarantine", "purge", *cfg, "--older-than", "soon").returncode == 2

    assert verify(config.audit_log).ok
    records = [json.loads(line) for line in config.audit_log.read_text().splitlines()]
    events = {r["event"]: r for r in records if r["event"] in ("released", "purged")}
    assert events["released"]["who"] == {"person": "officer-li", "role": "security-officer"}
    assert events["released"]["message"]["name"] == "a.pdf"
    assert events["purged"]["message"]["name"] == "b.txt"


# -- keys generate --ssh-host-key --------------------------------------------------------------


def test_keys_generate_writes_an_ssh_host_key_0600(tmp_path: Path) -> None:
    import asyncssh

    result = zg("keys", "generate", "--name", "gw", "--dir", str(tmp_path), "--ssh-host-key")
    assert result.returncode == 0, result.stderr
    private = tmp_path / "gw.ssh_host_ed25519_key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = asyncssh.read_private_key(str(private))
    public = (tmp_path / "gw.ssh_host_ed25519_key.pub").read_text()
    assert public.startswith("ssh-ed25519 ")
    assert key.export_public_key().decode().split()[1] == public.split()[1]
    again = zg("keys", "generate", "--name", "gw", "--dir", str(tmp_path), "--ssh-host-key")
    assert again.returncode == 1 and "already exists" in again.stderr
