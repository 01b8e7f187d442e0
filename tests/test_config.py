"""Tests of the gateway config loader (zones/config.py, zones/yamlpos.py).

Each bad-config test starts from one valid config text, changes one thing, and checks every part
of the error: the file, the line (found by searching the text written, not guessed), the dotted
key and a distinctive part of the message. Key files are real files in tmp_path.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import yaml

from zonegate.zones.config import (
    DEFAULT_RESEND_WINDOW,
    TRANSPORT_KINDS,
    Address,
    ConfigError,
    Flow,
    GatewayConfig,
    Metrics,
    Peer,
    Policy,
    Transport,
    Zone,
    load_gateway_config,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "example-gateway.yaml"

PRIVATE_KEYS = ("keys/internet-gw.sign.key", "keys/internet-gw.kem.key")
PUBLIC_KEYS = (
    "keys/internal-gw.sign.pub",
    "keys/internal-gw.kem.pub",
    "keys/mirror-gw.sign.pub",
    "keys/mirror-gw.kem.pub",
)

VALID = """\
# a gateway config used by the tests
version: 1
gateway:
  name: internet-gw
  zone: internet
  node: municipal-bureau
zones:
  - name: internet
    level: public
  - name: internal
    level: classified
paths:
  spool: spool
  audit_log: audit/audit.jsonl
  inbox: /srv/zonegate/inbox
keys:
  signing: keys/internet-gw.sign.key
  encryption: keys/internet-gw.kem.key
peers:
  - name: internal-gw
    zone: internal
    signing_key: keys/internal-gw.sign.pub
    encryption_key: keys/internal-gw.kem.pub
metrics:
  ingest: 127.0.0.1:9101
  sender: "[::1]:9102"
flows:
  - name: import
    from: internet
    to: internal
    sender: internet-gw
    receiver: internal-gw
    transport:
      kind: zmq
      endpoint: tcp://127.0.0.1:5601
    policy:
      min_size: 1 KiB
      max_size: 1.5 GB
    resend_window: 60 MiB
  - name: publish
    from: internal
    to: internet
    sender: internal-gw
    receiver: internet-gw
    transport:
      kind: zmq
      endpoint: tcp://127.0.0.1:5602
"""

MIRROR_PEER = """\
  - name: mirror-gw
    zone: internet
    signing_key: keys/mirror-gw.sign.pub
    encryption_key: keys/mirror-gw.kem.pub
"""


def make_keys(directory: Path, private: tuple[str, ...], public: tuple[str, ...]) -> None:
    """Create key files: private ones 0600, public ones 0644 (content is irrelevant here)."""
    for name, mode in [(n, 0o600) for n in private] + [(n, 0o644) for n in public]:
        file = directory / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(os.urandom(32))
        file.chmod(mode)


@pytest.fixture
def gw(tmp_path: Path) -> Path:
    """A directory with all key files the VALID config (and its variants) name."""
    make_keys(tmp_path, PRIVATE_KEYS, PUBLIC_KEYS)
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def replace_once(text: str, old: str, new: str) -> str:
    """Replace text that must occur exactly once, so a test cannot edit the wrong spot."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the `occurrence`-th line that contains `needle`."""
    numbers = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(numbers) >= occurrence, f"{needle!r} found on {len(numbers)} lines"
    return numbers[occurrence - 1]


def expect_error(
    directory: Path, text: str, line: int | None, key: str, fragment: str
) -> ConfigError:
    """Load `text` and check that it fails with exactly this location and message."""
    path = write(directory, text)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    error = caught.value
    assert (error.file, error.line, error.key) == (str(path), line, key), str(error)
    assert fragment in error.message
    where = str(path) if line is None else f"{path}:{line}"
    assert str(error) == f"{where}: {key}: {error.message}"
    return error


# -- the valid config ------------------------------------------------------------------------


def test_valid_config_loads_into_expected_objects(gw: Path) -> None:
    path = write(gw, VALID)
    config = load_gateway_config(str(path))
    expected = GatewayConfig(
        path=path,
        name="internet-gw",
        zone="internet",
        node="municipal-bureau",
        zones=(Zone("internet", "public"), Zone("internal", "classified")),
        spool=gw / "spool",
        audit_log=gw / "audit" / "audit.jsonl",
        outbox=gw / "outbox",
        inbox=Path("/srv/zonegate/inbox"),
        signing_key=gw / "keys/internet-gw.sign.key",
        encryption_key=gw / "keys/internet-gw.kem.key",
        peers=(
            Peer(
                "internal-gw",
                "internal",
                gw / "keys/internal-gw.sign.pub",
                gw / "keys/internal-gw.kem.pub",
            ),
        ),
        metrics=Metrics(
            ingest=Address("127.0.0.1", 9101), sender=Address("::1", 9102), receiver=None
        ),
        flows=(
            Flow(
                name="import",
                source="internet",
                destination="internal",
                sender="internet-gw",
                receiver="internal-gw",
                transport=Transport("zmq", "tcp://127.0.0.1:5601"),
                policy=Policy(min_size=1024, max_size=1_500_000_000),
                resend_window=60 * 1024 * 1024,
            ),
            Flow(
                name="publish",
                source="internal",
                destination="internet",
                sender="internal-gw",
                receiver="internet-gw",
                transport=Transport("zmq", "tcp://127.0.0.1:5602"),
                policy=Policy(min_size=0, max_size=64 * 1024 * 1024),
                resend_window=DEFAULT_RESEND_WINDOW,
            ),
        ),
    )
    assert config == expected
    assert all(p.is_absolute() for p in (config.path, config.spool, config.signing_key))
    assert config.flow("publish") is config.flows[1]
    assert config.peer("internal-gw") is config.peers[0]
    assert config.outgoing_flows() == (config.flows[0],)
    assert config.incoming_flows() == (config.flows[1],)
    with pytest.raises(KeyError):
        config.flow("export")
    with pytest.raises(KeyError):
        config.peer("internet-gw")


def test_relative_config_path_resolves_against_config_directory(
    gw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(gw, VALID)
    monkeypatch.chdir(gw.parent)
    config = load_gateway_config(Path(gw.name) / "gateway.yaml")
    assert config.path == gw / "gateway.yaml"
    assert config.spool == gw / "spool"
    assert config.spool.is_absolute()


def test_defaults_when_optional_keys_are_absent(gw: Path) -> None:
    text = replace_once(VALID, "  node: municipal-bureau\n", "")
    text = replace_once(text, "  inbox: /srv/zonegate/inbox\n", "")
    text = text[: text.index("peers:")] + "flows: []\n"
    config = load_gateway_config(write(gw, text))
    assert (config.node, config.peers, config.flows) == ("local", (), ())
    assert config.metrics == Metrics(None, None, None)
    assert config.inbox == gw / "inbox"
    assert config.outbox == gw / "outbox"


def test_objects_are_immutable(gw: Path) -> None:
    config = load_gateway_config(write(gw, VALID))
    assert isinstance(config.zones, tuple)
    assert isinstance(config.peers, tuple)
    assert isinstance(config.flows, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other-gw"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.flows[0].policy.max_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.metrics.ingest.port = 1  # type: ignore[union-attr,misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.zones[0].level = "classified"  # type: ignore[misc]
    assert hash(config.flows[0]) == hash(load_gateway_config(write(gw, VALID)).flows[0])


def test_address_str_brackets_ipv6() -> None:
    assert str(Address("::1", 9100)) == "[::1]:9100"
    assert str(Address("127.0.0.1", 0)) == "127.0.0.1:0"
    assert str(Address("metrics.example", 9102)) == "metrics.example:9102"


def test_transport_kinds_constant() -> None:
    assert frozenset({"zmq", "udp", "ferry", "sftp"}) == TRANSPORT_KINDS


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "example-gateway.yaml"
    shutil.copyfile(EXAMPLE, path)
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    private = tuple(raw["keys"].values())
    public = tuple(peer[key] for peer in raw["peers"] for key in ("signing_key", "encryption_key"))
    public += tuple(person["key"] for person in raw.get("people", ()))
    make_keys(tmp_path, private, public)
    config = load_gateway_config(path)
    assert (config.name, config.zone, config.node) == (
        "internet-gw",
        "internet",
        "municipal-bureau",
    )
    assert [flow.name for flow in config.flows] == ["import", "publish"]
    assert config.flow("import").policy == Policy(min_size=1, max_size=256 * 1024**2)
    assert config.flow("publish").policy.max_size == 1_500_000_000
    assert config.signing_key == tmp_path / "keys/internet-gw.sign.key"
    assert config.outgoing_flows() == (config.flow("import"),)
    assert config.incoming_flows() == (config.flow("publish"),)
    assert str(config.metrics.receiver) == "127.0.0.1:9103"


def test_example_config_without_key_files_fails_on_first_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    error = expect_error(
        tmp_path, text, line_of(text, "  signing: keys/"), "keys.signing", "does not exist"
    )
    assert str(tmp_path / "keys/internet-gw.sign.key") in error.message


# -- structure errors --------------------------------------------------------------------------


def test_unknown_top_level_key(gw: Path) -> None:
    text = replace_once(VALID, "version: 1\n", "version: 1\ncolour: blue\n")
    error = expect_error(gw, text, line_of(text, "colour: blue"), "colour", "unknown key 'colour'")
    assert "expected one of: version, gateway, zones" in error.message


def test_unknown_nested_key(gw: Path) -> None:
    text = replace_once(
        VALID,
        "    transport:\n      kind: zmq\n      endpoint: tcp://127.0.0.1:5601\n",
        "    transprot:\n      kind: zmq\n      endpoint: tcp://127.0.0.1:5601\n",
    )
    error = expect_error(
        gw, text, line_of(text, "transprot:"), "flows[0].transprot", "unknown key 'transprot'"
    )
    assert "transport" in error.message


def test_missing_key_points_at_parent(gw: Path) -> None:
    text = replace_once(VALID, "  zone: internet\n", "")
    expect_error(gw, text, line_of(text, "gateway:"), "gateway.zone", "missing required key 'zone'")


def test_missing_key_in_list_item_points_at_item(gw: Path) -> None:
    text = replace_once(VALID, "    receiver: internet-gw\n", "")
    expect_error(
        gw,
        text,
        line_of(text, "- name: publish"),
        "flows[1].receiver",
        "missing required key 'receiver'",
    )


@pytest.mark.parametrize(
    ("old", "new", "needle", "key", "fragment"),
    [
        (
            "zones:\n  - name: internet\n    level: public\n  - name: internal\n"
            "    level: classified\n",
            "zones: foo\n",
            "zones: foo",
            "zones",
            "expected a list, got a string",
        ),
        ("version: 1\n", "version: true\n", "version: true", "version", "got a boolean"),
        ("version: 1\n", "version: 2\n", "version: 2", "version", "unsupported version 2"),
        (
            "gateway:\n  name: internet-gw\n",
            "gateway:\n  name: 42\n",
            "name: 42",
            "gateway.name",
            "expected a string, got an integer",
        ),
        (
            'metrics:\n  ingest: 127.0.0.1:9101\n  sender: "[::1]:9102"\n',
            "metrics: [127.0.0.1:9101]\n",
            "metrics: [",
            "metrics",
            "expected a mapping, got a list",
        ),
        (
            "    level: public\n",
            "    level: secret\n",
            "level: secret",
            "zones[0].level",
            "unknown level 'secret' (expected one of: public, sensitive, classified)",
        ),
        (
            "  node: municipal-bureau\n",
            "  node: Municipal_Bureau\n",
            "Municipal_Bureau",
            "gateway.node",
            "invalid name 'Municipal_Bureau'",
        ),
        (
            "      kind: zmq\n      endpoint: tcp://127.0.0.1:5601\n",
            "      kind: carrier-pigeon\n      endpoint: tcp://127.0.0.1:5601\n",
            "carrier-pigeon",
            "flows[0].transport.kind",
            "unknown transport kind 'carrier-pigeon' (expected one of: ferry, sftp, udp, zmq)",
        ),
        (
            "    resend_window: 60 MiB\n",
            "    resend_window: 2.5\n",
            "resend_window: 2.5",
            "flows[0].resend_window",
            "got a number with a fraction",
        ),
        (
            "    resend_window: 60 MiB\n",
            "    resend_window: 8 MiB\n",
            "resend_window: 8 MiB",
            "flows[0].resend_window",
            "less than the 56 MiB a ZeroMQ link can hold in flight",
        ),
    ],
)
def test_wrong_types_and_values(
    gw: Path, old: str, new: str, needle: str, key: str, fragment: str
) -> None:
    text = replace_once(VALID, old, new)
    expect_error(gw, text, line_of(text, needle), key, fragment)


def test_empty_zone_list(gw: Path) -> None:
    text = replace_once(
        VALID,
        "zones:\n  - name: internet\n    level: public\n  - name: internal\n"
        "    level: classified\n",
        "zones: []\n",
    )
    expect_error(gw, text, line_of(text, "zones: []"), "zones", "at least one zone")


def test_duplicate_zone_names(gw: Path) -> None:
    text = replace_once(VALID, "  - name: internal\n    level:", "  - name: internet\n    level:")
    first = line_of(text, "  - name: internet")
    expect_error(
        gw,
        text,
        line_of(text, "  - name: internet", occurrence=2),
        "zones[1].name",
        f"duplicate zone name 'internet' (first at line {first})",
    )


def test_duplicate_peer_names(gw: Path) -> None:
    text = replace_once(VALID, "metrics:\n", MIRROR_PEER.replace("mirror-gw", "internal-gw", 1))
    text = text.replace("metrics:\n", "")
    text = replace_once(text, "  ingest: 127.0.0.1:9101\n", "")
    text = replace_once(text, '  sender: "[::1]:9102"\n', "")
    first = line_of(text, "- name: internal-gw")
    expect_error(
        gw,
        text,
        line_of(text, "- name: internal-gw", occurrence=2),
        "peers[1].name",
        f"duplicate peer name 'internal-gw' (first at line {first})",
    )


def test_two_flows_with_one_name(gw: Path) -> None:
    text = replace_once(VALID, "  - name: publish\n", "  - name: import\n")
    error = expect_error(
        gw,
        text,
        line_of(text, "- name: import", occurrence=2),
        "flows[1].name",
        "duplicate flow name 'import'",
    )
    assert error.message.endswith(f"(first at line {line_of(text, '- name: import')})")


def test_duplicate_yaml_mapping_keys(gw: Path) -> None:
    text = replace_once(VALID, "    to: internal\n", "    to: internal\n    sender: internal-gw\n")
    # The inserted key comes first; the original `sender:` is the duplicate that is refused.
    first = line_of(text, "    sender: internal-gw")
    error = expect_error(
        gw,
        text,
        line_of(text, "    sender: internet-gw"),
        "flows[0].sender",
        "duplicate key 'sender'",
    )
    assert f"(first at line {first})" in error.message


def test_yaml_syntax_error(gw: Path) -> None:
    text = replace_once(VALID, "  name: internet-gw\n", "  name: internet-gw: extra\n")
    expect_error(
        gw, text, line_of(text, "internet-gw: extra"), "(top)", "mapping values are not allowed"
    )


def test_yaml_unclosed_flow_sequence_reports_a_line(gw: Path) -> None:
    text = replace_once(VALID, "flows:\n", "flows: [\n")
    path = write(gw, text)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert caught.value.key == "(top)"
    assert caught.value.message.startswith("invalid YAML")
    assert caught.value.line is not None
    assert caught.value.line >= line_of(text, "flows: [")


def test_empty_file(gw: Path) -> None:
    expect_error(gw, "# nothing here\n", None, "(top)", "the file is empty")


def test_top_level_not_a_mapping(gw: Path) -> None:
    text = "# a list\n- version: 1\n"
    expect_error(gw, text, line_of(text, "- version"), "(top)", "expected a mapping, got a list")


def test_missing_top_level_key(gw: Path) -> None:
    text = VALID[: VALID.index("flows:")]
    expect_error(gw, text, line_of(text, "version: 1"), "flows", "missing required key 'flows'")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(path), None, "(top)")
    assert "cannot read the file" in caught.value.message
    assert str(caught.value) == f"{path}: (top): {caught.value.message}"


def test_not_utf8(gw: Path) -> None:
    path = gw / "gateway.yaml"
    path.write_bytes(VALID.encode("utf-8") + b"# \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert (caught.value.line, caught.value.key) == (None, "(top)")
    assert "not UTF-8" in caught.value.message


# -- sizes -------------------------------------------------------------------------------------


def test_bad_size_string(gw: Path) -> None:
    text = replace_once(VALID, "max_size: 1.5 GB", "max_size: 10k")
    error = expect_error(
        gw, text, line_of(text, "max_size: 10k"), "flows[0].policy.max_size", "unknown size unit"
    )
    assert "'k'" in error.message
    assert "MiB" in error.message


def test_max_size_below_min_size(gw: Path) -> None:
    text = replace_once(VALID, "max_size: 1.5 GB", "max_size: 100")
    expect_error(
        gw,
        text,
        line_of(text, "max_size: 100"),
        "flows[0].policy.max_size",
        "max_size (100) is smaller than min_size (1024)",
    )


def test_min_size_above_default_max_size(gw: Path) -> None:
    text = replace_once(VALID, "      max_size: 1.5 GB\n", "")
    text = replace_once(text, "min_size: 1 KiB", "min_size: 1 GiB")
    expect_error(
        gw,
        text,
        line_of(text, "min_size: 1 GiB"),
        "flows[0].policy.min_size",
        f"max_size ({64 * 1024**2}) is smaller than min_size ({1024**3})",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("17 B", 17),
        ("1 KB", 1000),
        ("1KiB", 1024),
        ("64 MiB", 64 * 1024**2),
        ("1.5 GB", 1_500_000_000),
        ("1.5 KiB", 1536),
        ("2 TB", 2 * 1000**4),
        ("1 TiB", 1024**4),
        (" 3 GiB ", 3 * 1024**3),
    ],
)
def test_parse_size_accepts(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10k", "unknown size unit 'k'"),
        ("5 mb", "unknown size unit 'mb'"),
        ("-1", "cannot read '-1' as a size"),
        (-1, "cannot be negative"),
        ("", "cannot read '' as a size"),
        ("MiB", "cannot read 'MiB' as a size"),
        ("1.5 B", "not a whole number of bytes"),
        ("1.0001 KB", "not a whole number of bytes"),
        (True, "got a boolean"),
        (1.5, "got a number with a fraction"),
        (None, "got null"),
    ],
)
def test_parse_size_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


# -- key files ---------------------------------------------------------------------------------


def test_missing_private_key_file(gw: Path) -> None:
    (gw / "keys/internet-gw.kem.key").unlink()
    error = expect_error(
        gw, VALID, line_of(VALID, "encryption: keys/"), "keys.encryption", "does not exist"
    )
    assert str(gw / "keys/internet-gw.kem.key") in error.message


def test_missing_public_key_file(gw: Path) -> None:
    (gw / "keys/internal-gw.sign.pub").unlink()
    expect_error(
        gw,
        VALID,
        line_of(VALID, "signing_key: keys/internal-gw"),
        "peers[0].signing_key",
        "does not exist",
    )


def test_private_key_file_too_open(gw: Path) -> None:
    key = gw / "keys/internet-gw.sign.key"
    key.chmod(0o644)
    expect_error(
        gw,
        VALID,
        line_of(VALID, "  signing: keys/"),
        "keys.signing",
        f"permissions 0644 are too open; chmod 600 {key}",
    )


def test_private_key_file_group_readable(gw: Path) -> None:
    key = gw / "keys/internet-gw.kem.key"
    key.chmod(0o640)
    expect_error(
        gw,
        VALID,
        line_of(VALID, "encryption: keys/"),
        "keys.encryption",
        "permissions 0640 are too open",
    )


def test_private_key_read_only_is_fine(gw: Path) -> None:
    (gw / "keys/internet-gw.kem.key").chmod(0o400)
    config = load_gateway_config(write(gw, VALID))
    assert config.encryption_key == gw / "keys/internet-gw.kem.key"


def test_key_path_is_a_directory(gw: Path) -> None:
    text = replace_once(VALID, "signing: keys/internet-gw.sign.key", "signing: keys")
    expect_error(gw, text, line_of(text, "signing: keys"), "keys.signing", "not a regular file")


# -- cross references --------------------------------------------------------------------------


def test_flow_zone_does_not_exist(gw: Path) -> None:
    text = replace_once(VALID, "    to: internal\n", "    to: intranet\n")
    expect_error(
        gw,
        text,
        line_of(text, "to: intranet"),
        "flows[0].to",
        "unknown zone 'intranet' (expected one of: internet, internal)",
    )


def test_gateway_zone_does_not_exist(gw: Path) -> None:
    text = replace_once(VALID, "  zone: internet\n", "  zone: dmz\n")
    expect_error(gw, text, line_of(text, "zone: dmz"), "gateway.zone", "unknown zone 'dmz'")


def test_flow_from_a_zone_to_itself(gw: Path) -> None:
    text = replace_once(VALID, "    to: internal\n", "    to: internet\n")
    expect_error(
        gw,
        text,
        line_of(text, "    to: internet"),
        "flows[0].to",
        "a flow cannot go from a zone to itself",
    )


def test_sender_zone_does_not_match_from(gw: Path) -> None:
    text = replace_once(
        VALID,
        "    from: internet\n    to: internal\n",
        "    from: internal\n    to: internet\n",
    )
    expect_error(
        gw,
        text,
        line_of(text, "sender: internet-gw"),
        "flows[0].sender",
        "sender 'internet-gw' is in zone 'internet', but from is 'internal'",
    )


def test_receiver_zone_does_not_match_to(gw: Path) -> None:
    text = replace_once(VALID, "metrics:\n", MIRROR_PEER + "metrics:\n")
    text = replace_once(text, "    receiver: internal-gw\n", "    receiver: mirror-gw\n")
    expect_error(
        gw,
        text,
        line_of(text, "receiver: mirror-gw"),
        "flows[0].receiver",
        "receiver 'mirror-gw' is in zone 'internet', but to is 'internal'",
    )


def test_unknown_sender(gw: Path) -> None:
    text = replace_once(VALID, "    sender: internal-gw\n", "    sender: ghost-gw\n")
    expect_error(
        gw,
        text,
        line_of(text, "sender: ghost-gw"),
        "flows[1].sender",
        "unknown gateway 'ghost-gw' (expected this gateway 'internet-gw' or a peer: internal-gw)",
    )


def test_gateway_neither_sender_nor_receiver(gw: Path) -> None:
    text = replace_once(VALID, "metrics:\n", MIRROR_PEER + "metrics:\n")
    text = replace_once(text, "    receiver: internet-gw\n", "    receiver: mirror-gw\n")
    expect_error(
        gw,
        text,
        line_of(text, "- name: publish"),
        "flows[1]",
        "this gateway (internet-gw) is neither sender nor receiver of flow 'publish'",
    )


def test_peer_with_own_name(gw: Path) -> None:
    text = replace_once(VALID, "metrics:\n", MIRROR_PEER + "metrics:\n")
    text = replace_once(text, "  - name: mirror-gw\n", "  - name: internet-gw\n")
    expect_error(
        gw,
        text,
        line_of(text, "  - name: internet-gw"),
        "peers[1].name",
        "a peer cannot have this gateway's own name 'internet-gw'",
    )


def test_peer_zone_does_not_exist(gw: Path) -> None:
    text = replace_once(VALID, "    zone: internal\n", "    zone: government\n")
    expect_error(
        gw, text, line_of(text, "zone: government"), "peers[0].zone", "unknown zone 'government'"
    )


def test_cross_reference_errors_come_in_document_order(gw: Path) -> None:
    # Two independent errors: flows[1] names an unknown zone, and flows[0] has a bad sender.
    # Moving `flows` above `zones` must not change which one is reported: the earliest line.
    text = replace_once(VALID, "    from: internal\n", "    from: intranet\n")
    text = replace_once(text, "    sender: internet-gw\n", "    sender: ghost-gw\n")
    expect_error(gw, text, line_of(text, "sender: ghost-gw"), "flows[0].sender", "ghost-gw")
    flows = text[text.index("flows:") :]
    reordered = flows + text[: text.index("flows:")]
    expect_error(
        gw, reordered, line_of(reordered, "sender: ghost-gw"), "flows[0].sender", "ghost-gw"
    )


def test_structure_errors_come_in_document_order(gw: Path) -> None:
    text = replace_once(VALID, "  node: municipal-bureau\n", "  nodes: municipal-bureau\n")
    text = replace_once(text, "    level: public\n", "    level: 1\n")
    expect_error(gw, text, line_of(text, "nodes:"), "gateway.nodes", "unknown key 'nodes'")


# -- endpoints and addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("udp://127.0.0.1:5601", "expected tcp://HOST:PORT for a zmq transport"),
        ("tcp://127.0.0.1", "expected HOST:PORT"),
        ("tcp://127.0.0.1:70000", "port 70000 is out of range (expected 1..65535)"),
        ("tcp://127.0.0.1:0", "port 0 is out of range"),
        ("tcp://300.0.0.1:5601", "'300.0.0.1' is not an IPv4 address"),
        ("tcp://::1:5601", "put an IPv6 address in brackets"),
        ("tcp://[fe80::zz]:5601", "is not an IPv6 address"),
        ("tcp://bad_host:5601", "'bad_host' is not a host name"),
    ],
)
def test_bad_endpoint(gw: Path, endpoint: str, fragment: str) -> None:
    text = replace_once(VALID, "tcp://127.0.0.1:5601", endpoint)
    expect_error(gw, text, line_of(text, endpoint), "flows[0].transport.endpoint", fragment)


def test_ipv6_and_hostname_endpoints_are_accepted(gw: Path) -> None:
    text = replace_once(VALID, "tcp://127.0.0.1:5601", "tcp://[::1]:5601")
    text = replace_once(text, "tcp://127.0.0.1:5602", "tcp://gw.internal.example:5602")
    config = load_gateway_config(write(gw, text))
    assert config.flows[0].transport.endpoint == "tcp://[::1]:5601"
    assert config.flows[1].transport.endpoint == "tcp://gw.internal.example:5602"


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("localhost", "expected HOST:PORT"),
        ("127.0.0.1:65536", "port 65536 is out of range (expected 0..65535)"),
        ("::1:9100", "put an IPv6 address in brackets"),
        ("[127.0.0.1]:9100", "is not an IPv6 address"),
        (":9100", "'' is not a host name"),
    ],
)
def test_bad_metrics_address(gw: Path, address: str, fragment: str) -> None:
    text = replace_once(VALID, "ingest: 127.0.0.1:9101", f'ingest: "{address}"')
    error = expect_error(gw, text, line_of(text, "ingest:"), "metrics.ingest", fragment)
    assert repr(address) in error.message


def test_unknown_metrics_key(gw: Path) -> None:
    text = replace_once(VALID, "  ingest: 127.0.0.1:9101\n", "  review: 127.0.0.1:9101\n")
    error = expect_error(gw, text, line_of(text, "review:"), "metrics.review", "unknown key")
    assert "ingest, sender, receiver" in error.message


def test_metrics_port_zero_is_allowed(gw: Path) -> None:
    text = replace_once(VALID, "ingest: 127.0.0.1:9101", "ingest: 127.0.0.1:0")
    assert load_gateway_config(write(gw, text)).metrics.ingest == Address("127.0.0.1", 0)


# -- yaml tricks -------------------------------------------------------------------------------


def test_alias_bomb_is_handled_without_blowup(gw: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    text = replace_once(VALID, "version: 1\n", "version: 1\n" + bomb)
    expect_error(gw, text, line_of(text, "a: &a"), "a", "unknown key 'a'")


def test_quoted_key_still_counts_as_duplicate(gw: Path) -> None:
    text = replace_once(VALID, "version: 1\n", 'version: 1\n"version": 1\n')
    expect_error(
        gw, text, line_of(text, '"version"'), "version", "duplicate key 'version' (first at line 2)"
    )


def test_python_tags_are_refused_not_constructed(gw: Path) -> None:
    text = replace_once(VALID, "version: 1\n", "version: !!python/object/apply:os.getpid []\n")
    expect_error(gw, text, line_of(text, "!!python"), "(top)", "could not determine a constructor")


def test_second_yaml_document_is_refused(gw: Path) -> None:
    text = VALID + "---\nversion: 1\n"
    expect_error(gw, text, line_of(text, "---"), "(top)", "expected a single document")
