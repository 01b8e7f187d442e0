"""The audit log's cheap size bound must never be below a record's real canonical length:
it decides whether a record is encoded to be measured before it is written."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zonegate.audit.log import _size_bound
from zonegate.audit.record import canonical_bytes

# Every kind of character: control ones (6 bytes escaped), quotes and backslashes (2),
# non-ASCII (2 to 4 bytes in UTF-8), astral (4), surrogate-free.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
scalar = st.one_of(text, st.integers(-(2**63), 2**63), st.booleans(), st.none())
flat = st.dictionaries(text, scalar, max_size=8)


@settings(max_examples=400, deadline=None)
@given(top=st.dictionaries(text, st.one_of(scalar, flat), max_size=12))
def test_the_bound_is_never_below_the_canonical_length(top: dict) -> None:
    assert _size_bound(top) >= len(canonical_bytes(top))


def test_the_bound_on_a_record_of_escapes_only() -> None:
    worst = {"reason": "\x1f" * 5000, "message": {"name": "\u00e9" * 3000, "size": 10**18}}
    assert _size_bound(worst) >= len(canonical_bytes(worst))
