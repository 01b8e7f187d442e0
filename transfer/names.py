"""File names that came from another zone: made safe before they touch our file system.

The receiving side trusts no name the sending side chose. A delivered file's name is derived
from the original name (kept verbatim in the metadata and audit log) by these rules, so an
attacker's name can never escape the inbox, hide as a dotfile, or name a device.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_NAME_BYTES", "name_problem", "name_rule_problem", "safe_name"]

MAX_NAME_BYTES = 255
_RESERVED = {
    "con", "prn", "aux", "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}  # fmt: skip
#: C0/C1 controls, DEL, separators, lone surrogates (surrogate-escaped bytes that are not
#: UTF-8: safe_name must turn them into "_" rather than fail to encode the result), and the
#: bidirectional-text controls that make a name display as another (U+202E turns "gpj.exe").
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\\ud800-\udfff\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def name_problem(name: str) -> str | None:
    """Why an original name is refused at ingest, or None when it is acceptable as is."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8"
    if not name or name in (".", ".."):
        return "the file name is empty or a directory reference"
    if len(encoded) > MAX_NAME_BYTES:
        return f"the file name is {len(encoded)} bytes long; the limit is {MAX_NAME_BYTES}"
    if _UNSAFE.search(name):
        return "the file name holds a control, bidirectional-override or path-separator character"
    return None


def name_rule_problem(name: str, max_bytes: int = MAX_NAME_BYTES) -> tuple[str, str] | None:
    """The flow policy's stricter name rules: (rule, why) for a refused name, else None.

    Why refuse rather than repair at ingest: the sender learns its name is wrong (and can fix
    its system) instead of finding a file delivered under a name it never chose.
    """
    if unicodedata.normalize("NFC", name) != name:
        return "nfc", "the file name is not in Unicode normal form NFC"
    for ch in name:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp") or (
            category == "Zs" and ch != " "
        ):
            return "characters", f"the file name holds the character U+{ord(ch):04X} ({category})"
    if ".." in name:
        return "dotdot", "the file name contains '..'"
    stem = name.split(".", 1)[0].rstrip(" ").lower()
    if stem in _RESERVED:
        return "reserved", f"{stem.upper()} is a reserved device name"
    if name != name.strip(" ") or name.endswith("."):
        return "characters", "the file name starts or ends with a space, or ends with a dot"
    size = len(name.encode("utf-8"))
    if size > max_bytes:
        return "max_bytes", f"the file name is {size} bytes long; this flow allows {max_bytes}"
    return None


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", errors="ignore")


def safe_name(original: str, fallback: str) -> str:
    """A name safe to create in an inbox: NFC, one path component, no control characters."""
    name = unicodedata.normalize("NFC", original)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip()
    if name.startswith("."):
        name = "_" + name.lstrip(".")
    stem = name.split(".", 1)[0].lower()
    if stem in _RESERVED:
        name = "_" + name
    if not name or name == "_":
        name = fallback
    return _truncate_utf8(name, MAX_NAME_BYTES)
