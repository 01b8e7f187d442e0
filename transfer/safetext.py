"""Text from a file or a name, made harmless for a terminal.

A file under review may be hostile: ANSI escape sequences in it could clear the reviewer's screen,
rewrite the lines above, set the window title, or hide text (CSI, OSC, C1 controls). A reviewer
must see what is there, so nothing is dropped: every control character becomes a visible escape
(``\\x1b``, ``\\u009b``, ``\\u202e``) and only newline and tab pass as they are.
"""

from __future__ import annotations

import unicodedata

__all__ = ["preview", "safe_text"]

#: Format characters that change how text displays (bidirectional overrides and isolates, line
#: and paragraph separators): shown escaped, because they can make text read as something else.
_DISPLAY_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def safe_text(text: str, keep_newlines: bool = True) -> str:
    """`text` with every control (C0, DEL, C1) and display-control character escaped."""
    out = []
    for ch in text:
        if ch in "\n\t" and keep_newlines:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cs") or ch in _DISPLAY_CONTROLS:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def preview(data: bytes, limit: int = 4096) -> str:
    """The first `limit` bytes as safe text; bytes that are not UTF-8 become U+FFFD."""
    text = data[:limit].decode("utf-8", errors="replace")
    return safe_text(text)
