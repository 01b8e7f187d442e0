"""Approvals and roles without processes: the signed payload (docs test vector), what binds it,
the config's people and approval rules, person keys, and terminal-safe text."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import zg

from zonegate.transfer.approvals import (
    ApprovalRefused,
    Directory,
    Identity,
    Subject,
    approval_payload,
    check_approval,
    check_approvals,
    signed_bytes,
)
from zonegate.transfer.envelope import key_id
from zonegate.transfer.safetext import preview, safe_text
from zonegate.zones.config import Approval, ConfigError, load_gateway_config

ROOT = Path(__file__).resolve().parent.parent
VECTOR = ROOT / "tests" / "vectors" / "approvals" / "01-approve.json"


def test_docs_test_vector_reproduces_byte_for_byte() -> None:
    vec = json.loads(VECTOR.read_text(encoding="utf-8"))
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["private_seed_hex"]))
    subject = Subject(**vec["subject"])
    payload = approval_payload(subject, "approve", key_id(key.public_key()), vec["time"])
    assert signed_bytes(payload).decode() == vec["signed_bytes_utf8"]
    assert key.sign(signed_bytes(payload)).hex() == vec["item"]["sig"]
    # and the page documents exactly these values
    doc = (ROOT / "docs" / "approvals.md").read_text(encoding="utf-8")
    assert vec["item"]["sig"] in doc and vec["public_raw_hex"] in doc
    assert vec["signed_bytes_utf8"].split("\n", 1)[1] in doc


def _officers() -> tuple[Directory, dict[str, Ed25519PrivateKey]]:
    keys = {n: Ed25519PrivateKey.generate() for n in ("ann", "bo", "cy", "admin", "aud")}
    roles = {"admin": "administrator", "aud": "auditor"}
    people = [
        Identity(
            n, roles.get(n, "security-officer"), key_id(k.public_key()), k.public_key(),
            ("oa-system",) if n == "cy" else (),
        )
        for n, k in keys.items()
    ]  # fmt: skip
    return Directory(people), keys


SUBJECT = Subject(**json.loads(VECTOR.read_text(encoding="utf-8"))["subject"])
RULE = Approval(required=2, expires=3600.0)


def _item(key: Ed25519PrivateKey, subject: Subject = SUBJECT, time: str | None = None) -> dict:
    from zonegate.transfer.approvals import sign_statement

    return sign_statement(subject, key, time or "2026-11-25T10:00:00.000000Z")


@pytest.mark.parametrize(
    "field, value",
    [
        ("message_id", "ffffffffffffffffffffffffffffffff"),
        ("flow", "import"),
        ("sender", "other-gw"),
        ("recipient", "mirror-gw"),
        ("system", "person:" + "0" * 32),
        ("original_name", "other.txt"),
        ("content_type", "text/html"),
        ("size", 136),
        ("sha256", "0" * 64),
        ("created", "2026-11-25T09:41:56.123457Z"),
        ("classification", "public"),
    ],
)
def test_an_approval_cannot_be_transplanted(field: str, value: object) -> None:
    directory, keys = _officers()
    item = _item(keys["ann"])
    assert check_approval(SUBJECT, item, directory, RULE).officer.name == "ann"
    other = dataclasses.replace(SUBJECT, **{field: value})
    with pytest.raises(ApprovalRefused) as e:
        check_approval(other, item, directory, RULE)
    assert e.value.code == "approval-bad-signature"


def test_edited_items_are_refused() -> None:
    directory, keys = _officers()
    item = _item(keys["ann"])
    for edit in (
        {"time": "2026-11-25T10:00:00.000001Z"},
        {"approver": key_id(keys["bo"].public_key())},
        {"sig": item["sig"][:-1] + ("0" if item["sig"][-1] != "0" else "1")},
    ):
        with pytest.raises(ApprovalRefused) as e:
            check_approval(SUBJECT, {**item, **edit}, directory, RULE)
        assert e.value.code == "approval-bad-signature", edit
    for bad in ({**item, "extra": 1}, {"approver": item["approver"]}, [], "x"):
        with pytest.raises(ApprovalRefused) as e:
            check_approval(SUBJECT, bad, directory, RULE)
        assert e.value.code == "approval-malformed"


def test_roles_submitter_eligibility_expiry_and_counting() -> None:
    directory, keys = _officers()
    cases = {
        "admin": "approval-not-officer",
        "aud": "approval-not-officer",
    }
    for who, code in cases.items():
        with pytest.raises(ApprovalRefused) as e:
            check_approval(SUBJECT, _item(keys[who]), directory, RULE)
        assert e.value.code == code and who in e.value.reason
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(ApprovalRefused, match="approval-unknown-key"):
        check_approval(SUBJECT, _item(stranger), directory, RULE)
    by_account = dataclasses.replace(SUBJECT, system="oa-system")
    with pytest.raises(ApprovalRefused, match="approval-by-submitter"):
        check_approval(by_account, _item(keys["cy"], by_account), directory, RULE)
    by_person = dataclasses.replace(SUBJECT, system="person:" + key_id(keys["ann"].public_key()))
    with pytest.raises(ApprovalRefused, match="approval-by-submitter"):
        check_approval(by_person, _item(keys["ann"], by_person), directory, RULE)
    assert check_approval(by_person, _item(keys["bo"], by_person), directory, RULE)
    with pytest.raises(ApprovalRefused, match="approval-not-eligible"):
        check_approval(SUBJECT, _item(keys["bo"]), directory, Approval(2, ("ann", "cy")))
    late = _item(keys["ann"], time="2026-11-25T10:41:56.123457Z")  # created + 1h + 1 µs
    with pytest.raises(ApprovalRefused, match="approval-expired"):
        check_approval(SUBJECT, late, directory, RULE)
    in_time = _item(keys["ann"], time="2026-11-25T10:41:56.123456Z")
    assert check_approval(SUBJECT, in_time, directory, RULE)

    twice = [_item(keys["ann"]), _item(keys["ann"], time="2026-11-25T10:01:00.000000Z")]
    with pytest.raises(ApprovalRefused, match="approvals-too-few"):
        check_approvals(SUBJECT, twice, directory, RULE)
    ok = check_approvals(SUBJECT, [*twice, _item(keys["bo"])], directory, RULE)
    assert [v.officer.name for v in ok] == ["ann", "bo"]
    with pytest.raises(ApprovalRefused, match="approval-not-officer"):
        check_approvals(SUBJECT, [*twice, _item(keys["bo"]), _item(keys["aud"])], directory, RULE)


def test_one_key_cannot_hold_two_roles() -> None:
    k = Ed25519PrivateKey.generate()
    kid = key_id(k.public_key())
    with pytest.raises(ValueError, match="same key"):
        Directory(
            [
                Identity("ann", "security-officer", kid, k.public_key()),
                Identity("ann-admin", "administrator", kid, k.public_key()),
            ]
        )


# -- config ------------------------------------------------------------------------------------


def _config(tmp_path: Path, people: str, approval: str) -> Path:
    for name in ("gw.sign.key", "gw.kem.key"):
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).chmod(0o600)
    for name in ("peer.sign.pub", "peer.kem.pub"):
        (tmp_path / name).write_bytes(b"x")
    for i, name in enumerate(("ann", "bo", "cy", "dee")):
        (tmp_path / f"{name}.pub").write_text(f"key of {name} {i}\n")
    text = f"""\
version: 1
gateway: {{name: internal-gw, zone: internal}}
zones: [{{name: internal, level: classified}}, {{name: internet, level: public}}]
paths: {{spool: spool, audit_log: audit.jsonl}}
keys: {{signing: gw.sign.key, encryption: gw.kem.key}}
peers:
  - {{name: internet-gw, zone: internet, signing_key: peer.sign.pub, encryption_key: peer.kem.pub}}
people:
{people}
flows:
  - name: publish
    from: internal
    to: internet
    sender: internal-gw
    receiver: internet-gw
    transport: {{kind: zmq, endpoint: "tcp://127.0.0.1:5602"}}
    signed_delivery: true
    approval:
{approval}
"""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


PEOPLE = """\
  - {name: ann, role: security-officer, key: ann.pub}
  - {name: bo, role: security-officer, key: bo.pub, accounts: [outbox]}
  - {name: cy, role: administrator, key: cy.pub}
  - {name: dee, role: auditor, key: dee.pub}"""


def test_config_reads_people_and_the_approval_rule(tmp_path: Path) -> None:
    cfg = load_gateway_config(_config(tmp_path, PEOPLE, "      required: 2\n      expires: 30m"))
    flow = cfg.flow("publish")
    assert flow.approval == Approval(required=2, officers=(), expires=1800.0)
    assert flow.signed_delivery is True
    assert [(p.name, p.role, p.accounts) for p in cfg.people] == [
        ("ann", "security-officer", ()),
        ("bo", "security-officer", ("outbox",)),
        ("cy", "administrator", ()),
        ("dee", "auditor", ()),
    ]


@pytest.mark.parametrize(
    "people, approval, key, fragment",
    [
        (PEOPLE, "      required: 3", "flows[0].approval.required", "expected 0..2"),
        (PEOPLE, "      required: 2\n      officers: [ann, cy]",
         "flows[0].approval.officers[1]", "'cy' is administrator"),
        (PEOPLE, "      required: 1\n      officers: [zed]",
         "flows[0].approval.officers[0]", "unknown person 'zed'"),
        (PEOPLE, "      required: 2\n      officers: [ann]",
         "flows[0].approval.required", "only 1 security officer"),
        (PEOPLE, "      required: 1\n      expires: 0", "flows[0].approval.expires", "longer"),
        (PEOPLE.replace("auditor", "root"), "      required: 1", "people[3].role",
         "unknown role 'root'"),
        (PEOPLE.replace("dee.pub", "ann.pub"), "      required: 1", "people[3].key",
         "a person holds exactly one role"),
        (PEOPLE.replace("name: dee", "name: ann"), "      required: 1", "people[3].name",
         "duplicate person name"),
        (PEOPLE, "      required: 1\n      aproved_by: 2", "flows[0].approval.aproved_by",
         "unknown key"),
    ],
)  # fmt: skip
def test_config_errors_name_file_line_and_key(
    tmp_path: Path, people: str, approval: str, key: str, fragment: str
) -> None:
    path = _config(tmp_path, people, approval)
    with pytest.raises(ConfigError) as e:
        load_gateway_config(path)
    assert e.value.key == key, str(e.value)
    assert fragment in e.value.message, str(e.value)
    assert e.value.file == str(path) and e.value.line is not None


def test_example_config_publish_flow_needs_two_officers(tmp_path: Path) -> None:
    import shutil

    import yaml

    example = ROOT / "configs" / "example-gateway.yaml"
    raw = yaml.safe_load(example.read_text(encoding="utf-8"))
    shutil.copyfile(example, tmp_path / "gw.yaml")
    files = [*raw["keys"].values()]
    files += [p[k] for p in raw["peers"] for k in ("signing_key", "encryption_key")]
    files += [p["key"] for p in raw["people"]]
    for i, f in enumerate(files):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(f"key {i}\n")
        (tmp_path / f).chmod(0o600)
    cfg = load_gateway_config(tmp_path / "gw.yaml")
    assert cfg.flow("publish").approval.required == 2
    assert cfg.flow("import").approval.required == 0
    assert {p.role for p in cfg.people} == {"administrator", "security-officer", "auditor"}


# -- person keys and safe text ---------------------------------------------------------------


def test_keys_generate_person_writes_an_ed25519_pair_private_0600(tmp_path: Path) -> None:
    r = zg("keys", "generate", "--person", "zhang-min", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    private, public = tmp_path / "zhang-min.person.key", tmp_path / "zhang-min.person.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in public.read_bytes() and b"PRIVATE KEY" in private.read_bytes()
    assert "PRIVATE" not in r.stdout and "PRIVATE" not in r.stderr
    from zonegate.transfer.keys import load_signing_private, load_signing_public

    key = load_signing_private(private)
    assert key_id(key.public_key()) == key_id(load_signing_public(public))
    again = zg("keys", "generate", "--person", "zhang-min", "--dir", str(tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr
    both = zg("keys", "generate", "--person", "x", "--name", "y", "--dir", str(tmp_path))
    assert both.returncode == 2
    assert zg("keys", "generate", "--person", "Bad Name", "--dir", str(tmp_path)).returncode == 2


def test_safe_text_escapes_every_control_and_keeps_the_rest() -> None:
    assert safe_text("申请 ok\tx\n") == "申请 ok\tx\n"
    assert safe_text("\x1b[2J\x9b\u202e\r\x00\x7f") == "\\x1b[2J\\u009b\\u202e\\x0d\\x00\\x7f"
    assert safe_text("a\nb", keep_newlines=False) == "a\\x0ab"
    shown = preview(b"\x1b]0;title\x07\xff\xfe" + "文".encode() * 3000, limit=64)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown)
    assert shown.startswith("\\x1b]0;title\\x07\ufffd\ufffd文")
