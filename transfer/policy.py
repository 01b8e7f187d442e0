"""Content policy: one linear pipeline of checks per flow that cannot be bypassed, fails closed.

Each check either passes or returns a `Refusal` with a stable reason code (for metrics and
scripts), the rule that fired and a sentence a person can act on. A check that raises refuses
the file: an error in a check must never let a file through.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..zones.config import Policy
from .content import (
    EXTENSION_TYPES,
    TextBudgetExceeded,
    archive_problem,
    detect_type,
    open_nofollow,
    scan_text_of,
)
from .names import name_problem, name_rule_problem

__all__ = ["CHECKS", "REASON_CODES", "Candidate", "Refusal", "check"]

#: Every reason code the pipeline can give, for metrics, scripts and `zonegate policy test`.
REASON_CODES: tuple[str, ...] = (
    "bad-name",
    "too-large",
    "too-small",
    "type-not-allowed",
    "type-mismatch",
    "archive-entries",
    "archive-expanded-size",
    "archive-ratio",
    "archive-nesting",
    "archive-path",
    "archive-encrypted",
    "archive-corrupt",
    "marking",
    "keyword",
    "text-too-large",
    "scanner-refused",
    "scanner-timeout",
    "scanner-failed",
    "check-failed",
)


@dataclass(frozen=True)
class Candidate:
    """What the checks see of a file: its name and size (content checks read `path`)."""

    original_name: str
    size: int
    path: str


@dataclass(frozen=True)
class Refusal:
    code: str
    rule: str
    reason: str
    terms: tuple[str, ...] = field(default_factory=tuple)


Check = Callable[[Candidate, Policy], "Refusal | None"]


def _name(c: Candidate, p: Policy) -> Refusal | None:
    problem = name_problem(c.original_name)
    if problem is not None:
        return Refusal("bad-name", "name", problem)
    found = name_rule_problem(c.original_name, p.max_name_bytes)
    return None if found is None else Refusal("bad-name", f"name.{found[0]}", found[1])


def _size(c: Candidate, p: Policy) -> Refusal | None:
    if c.size > p.max_size:
        return Refusal(
            "too-large",
            "size.max_size",
            f"{c.size} bytes is over this flow's limit of {p.max_size} bytes",
        )
    if c.size < p.min_size:
        return Refusal(
            "too-small",
            "size.min_size",
            f"{c.size} bytes is under this flow's minimum of {p.min_size} bytes",
        )
    return None


_CONTAINERS = ("zip", "ooxml", "odf")


def _type(c: Candidate, p: Policy) -> Refusal | None:
    """Type from magic bytes against the allow-list, and the extension must agree with it."""
    if p.types is None:
        return None
    kind = detect_type(c.path, c.original_name)
    if kind not in p.types:
        return Refusal(
            "type-not-allowed",
            "types",
            f"the content is {kind}; this flow accepts: {', '.join(p.types)}",
            (kind,),
        )
    ext = os.path.splitext(unicodedata.normalize("NFC", c.original_name))[1].lower()
    if kind not in EXTENSION_TYPES.get(ext, frozenset()):
        shown = ext or "(none)"
        return Refusal(
            "type-mismatch",
            "types.extension",
            f"the extension {shown} does not match the content ({kind})",
            (kind, shown),
        )
    return None


def _archive(c: Candidate, p: Policy) -> Refusal | None:
    """Archive rules for every ZIP container, whatever the type list says."""
    if detect_type(c.path, c.original_name) not in _CONTAINERS:
        return None
    problem = archive_problem(c.path, p.archive)
    return None if problem is None else Refusal(problem.code, problem.rule, problem.reason)


def _text(c: Candidate, p: Policy) -> Refusal | None:
    """Markings and keywords in the text, or in the text a document holds."""
    rules = p.text
    if not rules.markings and not rules.keywords:
        return None
    kind = detect_type(c.path, c.original_name)
    try:
        found = scan_text_of(c.path, kind, rules)
    except TextBudgetExceeded as e:
        return Refusal("text-too-large", "text.max_extracted", f"cannot check all its text: {e}")
    if found.markings:
        return Refusal(
            "marking",
            "text.markings",
            f"classification marking found: {', '.join(found.markings)}",
            tuple(found.markings + found.keywords),
        )
    if found.keywords:
        return Refusal(
            "keyword",
            "text.keywords",
            f"keyword found: {', '.join(found.keywords)}",
            tuple(found.keywords),
        )
    return None


def _scanner(c: Candidate, p: Policy) -> Refusal | None:
    """The site's external scanner: argv without a shell, a time limit, exit status decides."""
    scanner = p.scanner
    if scanner is None:
        return None
    argv = [arg.replace("{path}", c.path) for arg in scanner.command]
    use_stdin = scanner.input == "stdin"
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if use_stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # so a timeout kills whatever the scanner started, too
            close_fds=True,
        )
    except OSError as e:
        return Refusal("scanner-failed", "scanner", f"cannot start {argv[0]}: {e.strerror}")
    feeder = None
    if use_stdin:
        feeder = threading.Thread(target=_feed, args=(c.path, proc), daemon=True)
        feeder.start()
    try:
        code = proc.wait(timeout=scanner.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return Refusal(
            "scanner-timeout", "scanner.timeout", f"no verdict within {scanner.timeout:g}s"
        )
    finally:
        if feeder is not None:
            feeder.join(5)
    if code != 0:
        return Refusal("scanner-refused", "scanner", f"{argv[0]} exited with status {code}")
    return None


def _feed(path: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    try:
        with open_nofollow(path) as f:
            while chunk := f.read(1024 * 1024):
                proc.stdin.write(chunk)
    except (BrokenPipeError, OSError, ValueError):
        pass  # the scanner stopped reading: its exit status decides
    finally:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()


#: The pipeline, in order: cheap checks on what the sender claims first, content after.
CHECKS: tuple[Check, ...] = (_name, _size, _type, _archive, _text, _scanner)


def check(candidate: Candidate, policy: Policy, checks: Sequence[Check] = CHECKS) -> Refusal | None:
    """Run every check in order; the first refusal wins; a crashing check refuses."""
    for step in checks:
        try:
            refusal = step(candidate, policy)
        except Exception as e:  # fail closed: a broken check must not pass a file
            # a partial or callable object has no __name__; the refusal must not depend on it
            rule = getattr(step, "__name__", type(step).__name__).strip("_")
            return Refusal("check-failed", rule, f"check crashed: {e}")
        if refusal is not None:
            return refusal
    return None
