"""Names from another zone are made safe; the content policy fails closed."""

from __future__ import annotations

import functools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.transfer.names import MAX_NAME_BYTES, name_problem, safe_name
from zonegate.transfer.policy import CHECKS, Candidate, Refusal, check
from zonegate.zones.config import Policy

FALLBACK = "0123456789abcdef0123456789abcdef"


def assert_safe(name: str) -> None:
    """The properties every delivered name must have, whatever came in."""
    assert name
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name), repr(name)
    encoded = name.encode("utf-8")  # strict: valid UTF-8, no surrogates
    assert len(encoded) <= MAX_NAME_BYTES


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("a\\b", "b"),
        ("..", FALLBACK),
        (".", FALLBACK),
        ("...", FALLBACK),
        ("", FALLBACK),
        ("   ", FALLBACK),
        ("dir/", FALLBACK),
        (".hidden", "_hidden"),
        ("..hidden", "_hidden"),
        (" .bashrc", "_bashrc"),
        ("CON.txt", "_CON.txt"),
        ("con", "_con"),
        ("nul", "_nul"),
        ("NUL.tar.gz", "_NUL.tar.gz"),
        ("lpt1.doc", "_lpt1.doc"),
        ("Com9", "_Com9"),
        ("console.txt", "console.txt"),
        ("a\x00b.txt", "a_b.txt"),
        ("evil\n.txt", "evil_.txt"),
        ("\x1b[31mred.txt", "_[31mred.txt"),
        ("del\x7f\x85.txt", "del__.txt"),
        ("-rf.txt", "-rf.txt"),
        ("--help", "--help"),
        ("report 2026.pdf", "report 2026.pdf"),
        ("报告.docx", "报告.docx"),
    ],
)
def test_safe_name(original: str, expected: str) -> None:
    got = safe_name(original, fallback=FALLBACK)
    assert got == expected
    assert_safe(got)


def test_safe_name_truncates_long_chinese_names_to_valid_utf8() -> None:
    original = "关" * 100  # 300 UTF-8 bytes
    assert len(original.encode()) == 300
    got = safe_name(original, fallback=FALLBACK)
    encoded = got.encode("utf-8")
    assert len(encoded) <= MAX_NAME_BYTES
    assert len(encoded) > MAX_NAME_BYTES - 3  # cut at the last whole character, no more
    assert got == "关" * (MAX_NAME_BYTES // 3)
    encoded.decode("utf-8")  # strict decode: no half character left behind


def test_safe_name_truncates_mixed_width_names() -> None:
    original = "a" + "é" * 200 + ".txt"  # 1 + 400 + 4 bytes
    got = safe_name(original, fallback=FALLBACK)
    assert len(got.encode()) <= MAX_NAME_BYTES
    assert got.startswith("aé")
    assert_safe(got)


def test_safe_name_normalises_nfd_to_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "café résumé.txt")
    assert nfd != "café résumé.txt"
    got = safe_name(nfd, fallback=FALLBACK)
    assert got == "café résumé.txt"
    assert unicodedata.is_normalized("NFC", got)


@pytest.mark.parametrize("original", ["a\udcff.txt", "\udc80", "x\ud800y"])
def test_safe_name_survives_surrogate_escaped_names(original: str) -> None:
    got = safe_name(original, fallback=FALLBACK)
    assert_safe(got)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400))
def test_safe_name_property(original: str) -> None:
    assert_safe(safe_name(original, fallback=FALLBACK))


@pytest.mark.parametrize(
    "name",
    [
        "report.pdf",
        "my report 2026 (final).docx",
        "关于印发《2026年工作要点》的通知.docx",
        "-rf.txt",
        "a" * MAX_NAME_BYTES,
        "关" * (MAX_NAME_BYTES // 3),
    ],
)
def test_name_problem_accepts_ordinary_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        (".", "directory reference"),
        ("..", "directory reference"),
        ("a/b", "path-separator"),
        ("../etc/passwd", "path-separator"),
        ("a\\b", "path-separator"),
        ("a\x00b", "control"),
        ("line\nbreak", "control"),
        ("tab\there", "control"),
        ("\x1b[31mred", "control"),
        ("del\x7f", "control"),
        ("c1\x9b", "control"),
        ("a" * (MAX_NAME_BYTES + 1), "256 bytes"),
        ("关" * 86, "258 bytes"),
        ("bad\udcff.txt", "not valid UTF-8"),
        ("\ud800", "not valid UTF-8"),
    ],
)
def test_name_problem_refuses(name: str, words: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert words in problem


# --- policy --------------------------------------------------------------------------------


def cand(size: int, name: str = "report.pdf") -> Candidate:
    return Candidate(original_name=name, size=size, path=__file__)


POLICY = Policy(min_size=10, max_size=1000)


@pytest.mark.parametrize("size", [10, 500, 1000])
def test_policy_passes_sizes_in_bounds(size: int) -> None:
    assert check(cand(size), POLICY) is None


def test_policy_too_large() -> None:
    r = check(cand(1001), POLICY)
    assert isinstance(r, Refusal)
    assert (r.code, r.rule) == ("too-large", "size.max_size")
    assert "1001" in r.reason and "1000" in r.reason


def test_policy_too_small() -> None:
    r = check(cand(9), POLICY)
    assert isinstance(r, Refusal)
    assert (r.code, r.rule) == ("too-small", "size.min_size")
    assert "9" in r.reason and "10" in r.reason


def test_policy_bad_name_comes_first() -> None:
    r = check(cand(10_000, name="../x"), POLICY)
    assert r is not None
    assert (r.code, r.rule) == ("bad-name", "name")


def test_policy_default_checks_are_name_then_size_then_content() -> None:
    names = [c.__name__.strip("_") for c in CHECKS]
    assert names == ["name", "size", "type", "archive", "text", "scanner"]


def _explodes(c: Candidate, p: Policy) -> Refusal | None:
    raise RuntimeError("scanner unreachable")


def test_a_crashing_check_refuses_fail_closed() -> None:
    r = check(cand(100), POLICY, checks=(_explodes,))
    assert r is not None
    assert r.code == "check-failed"
    assert r.rule == "explodes"
    assert "scanner unreachable" in r.reason


def test_a_crashing_check_after_passing_checks_still_refuses() -> None:
    r = check(cand(100), POLICY, checks=(*CHECKS, _explodes))
    assert r is not None and r.code == "check-failed"


def test_first_refusal_wins_and_later_checks_do_not_run() -> None:
    ran: list[str] = []

    def refuse(c: Candidate, p: Policy) -> Refusal | None:
        ran.append("refuse")
        return Refusal("custom", "custom.rule", "no")

    def later(c: Candidate, p: Policy) -> Refusal | None:
        ran.append("later")
        return None

    r = check(cand(100), POLICY, checks=(refuse, later))
    assert r == Refusal("custom", "custom.rule", "no")
    assert ran == ["refuse"]


class CallableCheck:
    def __call__(self, c: Candidate, p: Policy) -> Refusal | None:
        raise ValueError("broken")


@pytest.mark.parametrize(
    "broken",
    [CallableCheck(), functools.partial(_explodes)],
    ids=["callable-object", "partial"],
)
def test_a_crashing_check_without_a_name_still_refuses(broken) -> None:
    r = check(cand(100), POLICY, checks=(broken,))
    assert r is not None
    assert r.code == "check-failed"


def test_bidirectional_overrides_are_refused_and_replaced() -> None:
    spoof = "invoice\u202egpj.exe"  # displays as "invoiceexe.jpg"
    assert name_problem(spoof) is not None
    assert "bidirectional" in (name_problem(spoof) or "")
    assert "\u202e" not in safe_name(spoof, "x")
    assert safe_name(spoof, "x") == "invoice_gpj.exe"
