"""Acceptance 3: a hostile-file corpus through the real ingest agent, and the allowed samples.

Every file is written into a real outbox and claimed by the real `IngestAgent` with its real
spool and audit log. Each hostile file must land in quarantine/ with the expected reason code,
its bytes unchanged and its record (reason, rule, terms) in meta.json and in the audit log;
every allowed sample must land in ready/.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from pathlib import Path

import pytest
import samples as S

from zonegate.audit.verify import verify
from zonegate.gateways.agent import AgentContext
from zonegate.gateways.ingest import IngestAgent, outbox_dirs
from zonegate.transfer.keys import generate_gateway_keys
from zonegate.transfer.policy import REASON_CODES, Candidate, check
from zonegate.transfer.spool import DATA
from zonegate.zones.config import load_gateway_config

SCANNER = """\
import sys
data = sys.stdin.buffer.read()
sys.exit(1 if b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE" in data else 0)
"""

CONFIG = """\
version: 1
gateway: {{name: internal-gw, zone: internal}}
zones:
  - {{name: internal, level: classified}}
  - {{name: internet, level: public}}
  - {{name: government, level: classified}}
paths: {{spool: spool, audit_log: audit/audit.jsonl, outbox: outbox, inbox: inbox}}
keys: {{signing: keys/internal-gw.sign.key, encryption: keys/internal-gw.kem.key}}
peers:
  - {{name: internet-gw, zone: internet, signing_key: keys/internet-gw.sign.pub,
     encryption_key: keys/internet-gw.kem.pub}}
  - {{name: gov-gw, zone: government, signing_key: keys/gov-gw.sign.pub,
     encryption_key: keys/gov-gw.kem.pub}}
flows:
  - name: publish
    from: internal
    to: internet
    sender: internal-gw
    receiver: internet-gw
    transport: {{kind: zmq, endpoint: "tcp://127.0.0.1:5999"}}
    policy:
      min_size: 1
      max_size: 1 MiB
      types: [pdf, ooxml, odf, png, jpeg, xml, json, csv, text]
      names: {{max_bytes: 200}}
      archive: {{max_entries: 200, max_expanded_size: 4 MiB, max_ratio: 100, max_depth: 2}}
      text:
        markings: true
        keywords: [内部资料, internal use only]
        max_extracted: 512 KiB
      scanner: {{command: ["{python}", "{scanner}"], input: stdin, timeout: 30s}}
  - name: dispatch
    from: internal
    to: government
    sender: internal-gw
    receiver: gov-gw
    transport: {{kind: zmq, endpoint: "tcp://127.0.0.1:5998"}}
    policy:
      scanner:
        command: ["{python}", "-c", "import time; time.sleep(30)", "{{path}}"]
        input: path
        timeout: 1s
"""

ZEROS = bytes(3 * 1024 * 1024)
SMALL_ZEROS = bytes(60 * 1024)


def _nested(depth: int) -> bytes:
    inner = S.zip_bytes([("deep.txt", b"hello")])
    for _ in range(depth):
        inner = S.zip_bytes([("inner.zip", inner)])
    return inner


_DOCX_FONT = "BT /F1 12 Tf 72 720 Td "

#: (file name, bytes, expected reason code). Names as str or raw bytes (invalid UTF-8).
HOSTILE: list[tuple[str | bytes, bytes, str]] = [
    # size
    ("empty.txt", b"", "too-small"),
    ("too-big.txt", b"a" * (1024 * 1024 + 1), "too-large"),
    # type by magic bytes, not by extension
    ("invoice.pdf", b"\x7fELF\x02\x01\x01" + bytes(200), "type-not-allowed"),
    ("setup.docx", b"MZ\x90\x00" + bytes(200), "type-not-allowed"),
    ("run.txt", b"#!/bin/sh\nrm -rf /\n", "type-not-allowed"),
    ("bundle.zip", S.zip_bytes([("a.txt", b"hello")]), "type-not-allowed"),
    ("notes.txt", zlib.compress(b"x" * 100)[:2] + b"\x1f\x8b\x08" + bytes(50), "type-not-allowed"),
    ("gzipped.txt", b"\x1f\x8b\x08\x00" + bytes(60), "type-not-allowed"),
    ("random.bin", bytes(range(256)) * 4, "type-not-allowed"),
    ("gbk.txt", "机密文件".encode("gb18030") * 10, "type-not-allowed"),
    ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), "type-not-allowed"),
    ("broken.docx", S.docx()[:-30], "type-not-allowed"),
    ("photo.jpg", S.png(), "type-mismatch"),
    ("report.txt", S.pdf_text("hello"), "type-mismatch"),
    ("data.csv", b'{"a": 1}', "type-mismatch"),
    ("tool.exe", b"plain text\n", "type-mismatch"),
    ("letter.odt", S.docx(), "type-mismatch"),
    ("noextension", b"plain text\n", "type-mismatch"),
    # names
    ("ctrl\x01char.txt", b"hello\n", "bad-name"),
    ("line\nbreak.txt", b"hello\n", "bad-name"),
    ("esc\x1b[31m.txt", b"hello\n", "bad-name"),
    ("a" * 251 + ".txt", b"hello\n", "bad-name"),
    ("关" * 85, b"hello\n", "bad-name"),
    (b"bad-\xff\xfe-utf8.txt", b"hello\n", "bad-name"),
    ("e\u0301cole.txt", b"hello\n", "bad-name"),
    ("CON.txt", b"hello\n", "bad-name"),
    ("lpt1.csv", b"a,b\n", "bad-name"),
    ("a..b.txt", b"hello\n", "bad-name"),
    ("invoice\u202egpj.txt", b"hello\n", "bad-name"),
    ("ideographic\u3000space.txt", b"hello\n", "bad-name"),
    ("zero\u200bwidth.txt", b"hello\n", "bad-name"),
    ("trailing-dot.txt.", b"hello\n", "bad-name"),
    # archive rules inside OOXML and ODF containers
    ("traversal.docx", S.docx(extra=[("../../evil.xml", b"<x/>")]), "archive-path"),
    ("absolute.odt", S.odt(extra=[("/etc/cron.d/evil", b"* * * * * root sh")]), "archive-path"),
    ("winabs.xlsx", S.xlsx(["a"], extra=[("C:\\evil.bat", b"x")]), "archive-path"),
    (
        "dup.docx",
        S.duplicate_zip([*S.docx_entries(["a"]), ("word/document.xml", b"<x/>")]),
        "archive-path",
    ),
    (
        "encrypted.docx",
        S.docx(extra=[("word/secret.xml", b"<x/>")], encrypted=("word/secret.xml",)),
        "archive-encrypted",
    ),
    (
        "encrypted.odt",
        S.odt(extra=[("Pictures/x.png", S.png())], encrypted=("Pictures/x.png",)),
        "archive-encrypted",
    ),
    ("bomb.docx", S.docx(extra=[("word/media/bomb.bin", ZEROS)]), "archive-ratio"),
    ("bomb.ods", S.odt(extra=[("Thumbnails/bomb.png", ZEROS)]), "archive-ratio"),
    (
        "wide.docx",
        S.docx(extra=[(f"word/m{i}.bin", SMALL_ZEROS) for i in range(80)]),
        "archive-expanded-size",
    ),
    (
        "many.xlsx",
        S.xlsx(["a"], extra=[(f"xl/e{i}.xml", b"<x/>") for i in range(300)]),
        "archive-entries",
    ),
    ("nested.docx", S.docx(extra=[("word/embeddings/x.zip", _nested(1))]), "archive-nesting"),
    (
        "nested-gz.odt",
        S.odt(extra=[("Objects/data.gz", b"\x1f\x8b\x08\x00" + bytes(40))]),
        "archive-nesting",
    ),
    (
        "nested-enc.docx",
        S.docx(
            extra=[
                (
                    "word/embeddings/chart.xlsx",
                    S.xlsx(["1"], extra=[("xl/x.bin", b"x")], encrypted=("xl/x.bin",)),
                )
            ]
        ),
        "archive-encrypted",
    ),
    (
        "nested-path.pptx",
        S.docx(extra=[("ppt/embeddings/e.xlsx", S.xlsx(["1"], extra=[("../x", b"x")]))]),
        "archive-path",
    ),
    # markings and keywords, in text and in documents' text
    ("secret-flate.pdf", S.pdf_text("内部通知 机密★1年 请勿外传"), "marking"),
    ("secret-raw.pdf", S.pdf_text("【秘密】会议纪要", compress=False), "marking"),
    ("secret-cid.pdf", S.pdf_cid("绝密★启用前"), "marking"),
    (
        "secret-runs.docx",
        S.docx_raw(
            "<w:document><w:body><w:p><w:r><w:t>机</w:t></w:r><w:r><w:t>密★</w:t></w:r>"
            "<w:r><w:t>10年</w:t></w:r></w:p></w:body></w:document>"
        ),
        "marking",
    ),
    ("header.odt", S.odt(["会议通知"], styles_text="秘密★启用前"), "marking"),
    ("strings.xlsx", S.xlsx(["名单", "〔绝密〕"]), "marking"),
    ("top-line.txt", "绝密\n关于某事项的通知\n".encode(), "marking"),
    ("fullwidth.txt", "文件标注 ［机密］ 如下\n".encode(), "marking"),
    ("spaced.txt", "机 密 ★ 长期\n".encode(), "marking"),
    ("level.json", json.dumps({"密级": "密级：机密"}, ensure_ascii=False).encode(), "marking"),
    ("charrefs.xml", b"<doc><t>&#26426;&#23494;&#9733;</t></doc>", "marking"),
    ("keyword.csv", "名称,备注\n报告,内部资料\n".encode(), "keyword"),
    ("keyword-en.json", b'{"note": "For INTERNAL   USE ONLY"}', "keyword"),
    ("keyword.docx", S.docx(["Internal Use Only — do not forward"]), "keyword"),
    ("huge-text.pdf", S.pdf(b"BT (" + b"a" * (900 * 1024) + b") Tj ET"), "text-too-large"),
    # the site's scanner
    (
        "eicar.txt",
        b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
        "scanner-refused",
    ),
]

ALLOWED: list[tuple[str, bytes]] = [
    ("申请 表.pdf", S.pdf_cid("法律援助申请表 商业秘密保护条款")),
    ("press-release.pdf", S.pdf_text("新闻发布：公证流程说明")),
    ("letter.docx", S.docx(["致市民的一封信", "保守商业秘密是企业的责任"])),
    ("chart.docx", S.docx(["图表"], extra=[("word/embeddings/Sheet1.xlsx", S.xlsx(["1", "2"]))])),
    ("names.xlsx", S.xlsx(["张三", "李四"])),
    ("notes.odt", S.odt(["会议纪要", "下次会议时间"])),
    ("photo.png", S.png()),
    ("scan.jpeg", S.jpeg()),
    ("form.xml", '<?xml version="1.0"?><form><name>王五</name></form>'.encode()),
    ("letter.json", json.dumps({"from": "王五", "subject": "咨询公证流程"}).encode()),
    ("table.csv", "编号,姓名\n1,张三\n".encode()),
    ("readme.txt", "普通文本，没有标记。\n".encode()),
    ("a" * 196 + ".txt", b"a name at the limit\n"),
]


@pytest.fixture
def agent(tmp_path: Path) -> IngestAgent:
    for name in ("internal-gw", "internet-gw", "gov-gw"):
        generate_gateway_keys(tmp_path / "keys", name)
    scanner = tmp_path / "scanner.py"
    scanner.write_text(SCANNER)
    text = CONFIG.format(python=sys.executable, scanner=scanner)
    (tmp_path / "gateway.yaml").write_text(text)
    config = load_gateway_config(tmp_path / "gateway.yaml")
    return IngestAgent(AgentContext.open(config, "ingest"))


def _drop(agent: IngestAgent, flow: str, name: str | bytes, data: bytes) -> None:
    tmp, new = outbox_dirs(agent.ctx.config.outbox, flow)
    staging = tmp / hashlib.sha256(os.fsencode(name)).hexdigest()
    staging.write_bytes(data)
    os.rename(staging, os.path.join(os.fsencode(new), os.fsencode(name)))


def _by_name(agent: IngestAgent, state: str) -> dict[str, tuple[dict, bytes]]:
    out = {}
    for _msg_id, path in agent.ctx.spool.iter_entries(state):
        meta = json.loads((path / "meta.json").read_bytes())
        out[meta["original_name"]] = (meta, (path / DATA).read_bytes())
    return out


def test_hostile_corpus_is_quarantined_with_reason_byte_identical(agent: IngestAgent) -> None:
    assert len(HOSTILE) >= 40
    for name, data, _code in HOSTILE:
        _drop(agent, "publish", name, data)
    _drop(agent, "dispatch", "slow-scan.txt", b"hello\n")
    agent.poll_once()
    quarantined = _by_name(agent, "quarantine")
    passed = sorted(_by_name(agent, "ready"))
    assert passed == [], f"hostile files passed: {passed}"
    expected = [*HOSTILE, ("slow-scan.txt", b"hello\n", "scanner-timeout")]
    problems = []
    for name, data, code in expected:
        shown = name if isinstance(name, str) else os.fsdecode(name).encode(
            "utf-8", "surrogateescape").decode("utf-8", "replace")  # fmt: skip
        meta, stored = quarantined[shown]
        if meta["reason_code"] != code:
            problems.append(f"{shown[:40]!r}: {meta['reason_code']} ({meta['reason']}), not {code}")
        assert stored == data, f"{shown[:40]!r} changed in quarantine"
        assert meta["reason"] and meta["rule"]
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["reason_code"] in REASON_CODES
    assert not problems, "\n".join(problems)
    # the matched terms are recorded for an officer to see
    assert "机密★1年" in quarantined["secret-flate.pdf"][0]["extra"]["terms"]
    assert quarantined["keyword.csv"][0]["extra"]["terms"] == ["内部资料"]
    assert quarantined["keyword-en.json"][0]["extra"]["terms"] == ["internal use only"]
    # and every refusal is in a verifying audit log, with its reason code and rule
    log = agent.ctx.config.audit_log
    assert verify(log).ok
    records = [json.loads(line) for line in log.read_text().splitlines()]
    refused = [r for r in records if r["event"] == "quarantined"]
    assert len(refused) == len(expected)
    assert {r["reason"].split(":")[0] for r in refused} == {c for _n, _d, c in expected}
    marking = next(r for r in refused if r["message"]["name"] == "secret-cid.pdf")
    assert marking["extra"]["rule"] == "text.markings"
    assert "绝密★启用前" in marking["extra"]["terms"]


def test_allowed_samples_pass(agent: IngestAgent) -> None:
    for name, data in ALLOWED:
        _drop(agent, "publish", name, data)
    agent.poll_once()
    refused = _by_name(agent, "quarantine")
    assert not refused, {n: (m["reason_code"], m["reason"]) for n, (m, _d) in refused.items()}
    ready = _by_name(agent, "ready")
    assert sorted(ready) == sorted(n for n, _d in ALLOWED)
    for name, data in ALLOWED:
        assert ready[name][1] == data


def test_a_scanner_that_cannot_start_refuses(tmp_path: Path, agent: IngestAgent) -> None:
    import dataclasses

    from zonegate.zones.config import Scanner

    policy = agent.ctx.config.flow("dispatch").policy
    broken = dataclasses.replace(policy, scanner=Scanner(command=(str(tmp_path / "nope"),)))
    sample = tmp_path / "x.txt"
    sample.write_bytes(b"hello\n")
    refusal = check(Candidate("x.txt", 6, str(sample)), broken)
    assert refusal is not None and refusal.code == "scanner-failed"


def test_a_file_that_vanishes_mid_check_refuses_fail_closed(tmp_path: Path) -> None:
    from zonegate.zones.config import Policy

    refusal = check(Candidate("x.txt", 6, str(tmp_path / "gone.txt")), Policy(types=("text",)))
    assert refusal is not None and refusal.code == "check-failed"
