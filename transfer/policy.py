"""Content policy: one linear pipeline of checks per flow that cannot be bypassed, fails closed.

Each check either passes or returns a `Refusal` with a stable reason code (for metrics and
scripts), the rule that fired and a sentence a person can act on. A check that raises refuses
the file: an error in a check must never let a file through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..zones.config import Policy
from .names import name_problem

__all__ = ["CHECKS", "Candidate", "Refusal", "check"]


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
    return None if problem is None else Refusal("bad-name", "name", problem)


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


CHECKS: tuple[Check, ...] = (_name, _size)


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
