"""The audit settings of a gateway config (`audit:` and `keys.audit`): defaults, values, and
errors that name the file, line and key like every other config error."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import (
    PRIVATE_KEYS,
    PUBLIC_KEYS,
    VALID,
    expect_error,
    line_of,
    make_keys,
    replace_once,
    write,
)

from zonegate.zones.config import Audit, load_gateway_config

AUDIT = """audit:
  checkpoint_interval: 30s
  rotate_size: 16 MiB
  rotate_daily: false
  retention: 400d
  storage_warning: 2 GiB
  checkpoint_copy: /var/ship/gw.checkpoints
  syslog: true
  syslog_address: 127.0.0.1:514
"""


@pytest.fixture
def gw(tmp_path: Path) -> Path:
    make_keys(tmp_path, (*PRIVATE_KEYS, "keys/internet-gw.audit.key"), PUBLIC_KEYS)
    return tmp_path


def with_audit(block: str = AUDIT, key: bool = True) -> str:
    text = VALID + "\n" + block
    if key:
        text = replace_once(
            text,
            "  encryption: keys/internet-gw.kem.key\n",
            "  encryption: keys/internet-gw.kem.key\n  audit: keys/internet-gw.audit.key\n",
        )
    return text


def test_defaults_keep_six_months_and_sign_nothing_without_a_key(gw: Path) -> None:
    config = load_gateway_config(write(gw, VALID))
    assert config.audit == Audit()
    assert config.audit.retention >= 182 * 86400
    assert config.audit.checkpoint_interval == 60.0
    assert config.audit.rotate_daily is True and config.audit.syslog is False
    assert config.audit_key is None


def test_every_audit_setting_is_read(gw: Path) -> None:
    config = load_gateway_config(write(gw, with_audit()))
    assert config.audit == Audit(
        checkpoint_interval=30.0,
        rotate_size=16 * 1024**2,
        rotate_daily=False,
        retention=400 * 86400.0,
        storage_warning=2 * 1024**3,
        checkpoint_copy=Path("/var/ship/gw.checkpoints"),
        syslog=True,
        syslog_address="127.0.0.1:514",
    )
    assert config.audit_key == gw / "keys/internet-gw.audit.key"


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("checkpoint_interval: 30s", "checkpoint_interval: 0", "audit.checkpoint_interval",
         "longer than 0"),
        ("checkpoint_interval: 30s", "checkpoint_interval: soon", "audit.checkpoint_interval",
         "expected a duration"),
        ("rotate_size: 16 MiB", "rotate_size: 10 KiB", "audit.rotate_size", "too small"),
        ("rotate_daily: false", "rotate_daily: daily", "audit.rotate_daily",
         "expected true or false, got a string"),
        ("retention: 400d", "retention: -5d", "audit.retention", "expected a duration"),
        ("storage_warning: 2 GiB", "storage_warning: lots", "audit.storage_warning",
         "cannot read 'lots' as a size"),
        ("syslog: true", "syslog: 1", "audit.syslog", "expected true or false, got an integer"),
        ("syslog_address: 127.0.0.1:514", "syslog_address: loghost", "audit.syslog_address",
         "unix socket path"),
        ("checkpoint_copy: /var/ship/gw.checkpoints", "checkpoint_copy: 7",
         "audit.checkpoint_copy", "expected a string"),
        ("storage_warning: 2 GiB", "storage_warnings: 2 GiB", "audit.storage_warnings",
         "unknown key 'storage_warnings'"),
    ],
)  # fmt: skip
def test_bad_audit_values_name_file_line_and_key(
    gw: Path, old: str, new: str, key: str, fragment: str
) -> None:
    text = replace_once(with_audit(), old, new)
    expect_error(gw, text, line_of(text, new), key, fragment)


def test_audit_section_must_be_a_mapping(gw: Path) -> None:
    text = with_audit("audit: yes\n")
    expect_error(gw, text, line_of(text, "audit: yes"), "audit", "expected a mapping")


def test_audit_key_must_exist_and_be_private(gw: Path) -> None:
    text = with_audit()
    key = gw / "keys/internet-gw.audit.key"
    key.chmod(0o644)
    expect_error(gw, text, line_of(text, "  audit: keys/"), "keys.audit", "too open")
    key.unlink()
    expect_error(gw, text, line_of(text, "  audit: keys/"), "keys.audit", "does not exist")
