"""What a file is and what it holds: type by magic bytes, ZIP container rules, text rules.

Why by hand and from the standard library only: every byte here comes from the other side of a
zone boundary, so each reader is bounded (a fixed sniff window, headers of ZIP containers read
without extracting anything to disk, decompression capped by the policy's budget) and none
parses XML with an entity-expanding parser or trusts a size a header declares. The PDF text
reader covers what Office, WPS and LibreOffice write (Flate-compressed content streams, UTF-16
strings and ToUnicode CMaps); a fuller PDF library would parse more, but would also load whole
streams into memory on hostile input, which is the one thing this module must never do.

Pure checks over a path: no audit, no spool. `transfer/policy.py` turns results into refusals.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..zones.config import ArchiveRules, TextRules

__all__ = [
    "EXTENSION_TYPES",
    "ArchiveProblem",
    "TextBudgetExceeded",
    "TextFindings",
    "archive_problem",
    "detect_type",
    "open_nofollow",
    "scan_text_of",
]

SNIFF = 64 * 1024
_CHUNK = 1024 * 1024
#: a nested archive is read into memory to be inspected: never more than this
_NESTED_MAX = 32 * 1024 * 1024
#: entries smaller than this may compress well beyond any ratio without doing harm
_RATIO_FLOOR = 64 * 1024
#: JSON is parsed in full to be sure it is JSON, up to this size (stdlib has no stream parser)
_JSON_FULL_CHECK = 32 * 1024 * 1024

#: Which extensions may carry which detected type; an extension not listed matches nothing.
EXTENSION_TYPES: dict[str, frozenset[str]] = {
    ".pdf": frozenset({"pdf"}),
    ".docx": frozenset({"ooxml"}),
    ".xlsx": frozenset({"ooxml"}),
    ".pptx": frozenset({"ooxml"}),
    ".odt": frozenset({"odf"}),
    ".ods": frozenset({"odf"}),
    ".odp": frozenset({"odf"}),
    ".odg": frozenset({"odf"}),
    ".png": frozenset({"png"}),
    ".jpg": frozenset({"jpeg"}),
    ".jpeg": frozenset({"jpeg"}),
    ".xml": frozenset({"xml"}),
    ".json": frozenset({"json"}),
    ".csv": frozenset({"csv"}),
    ".txt": frozenset({"text", "json", "xml"}),
    ".log": frozenset({"text"}),
    ".md": frozenset({"text"}),
    ".zip": frozenset({"zip"}),
}

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x7fELF", "executable"),
    (b"MZ", "executable"),
    (b"\xcf\xfa\xed\xfe", "executable"),
    (b"\xce\xfa\xed\xfe", "executable"),
    (b"\xca\xfe\xba\xbe", "executable"),
    (b"#!", "executable"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"GIF8", "gif"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
_ARCHIVE_MAGIC: tuple[bytes, ...] = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x1f\x8b",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
)
#: C0 controls other than tab, LF, FF and CR mark a file as binary.
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def open_nofollow(path: str) -> BinaryIO:
    """Open a regular file for reading without following a link at its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


# -- type ---------------------------------------------------------------------------------------


def detect_type(path: str, name: str) -> str:
    """The content type from magic bytes (and, for text, its first bytes and the extension).

    Returns one of zones.config.CONTENT_TYPES, or a name for something no policy may allow
    ("executable", "gzip", "unknown", ...), so a refusal can say what the file really is.
    """
    with open_nofollow(path) as f:
        head = f.read(SNIFF)
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            return _container_type(f)
        size = os.fstat(f.fileno()).st_size
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if not _is_utf8_text(head, complete=size <= SNIFF):
        return "unknown"
    body = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if body.startswith((b"{", b"[")) and _is_json(path, size):
        return "json"
    if body.startswith(b"<"):
        return "xml"
    if os.path.splitext(name)[1].lower() == ".csv":
        return "csv"
    return "text"


def _is_utf8_text(head: bytes, complete: bool) -> bool:
    if _BINARY_BYTES.search(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut by the sniff window is fine; anything else is not text
        return not complete and e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


def _is_json(path: str, size: int) -> bool:
    if size > _JSON_FULL_CHECK:
        return True  # too big to parse here; the prefix looked like JSON
    with open_nofollow(path) as f:
        data = f.read(_JSON_FULL_CHECK + 1)
    try:
        json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return False
    return True


def _container_type(f: BinaryIO) -> str:
    """ZIP, or the OOXML/ODF document it is, from its central directory (read, not extracted)."""
    try:
        with zipfile.ZipFile(f) as zf:
            names = set(zf.namelist())
            if "mimetype" in names:
                info = zf.getinfo("mimetype")
                if info.file_size < 256:
                    mime = zf.read(info)
                    if mime.startswith(b"application/vnd.oasis.opendocument."):
                        return "odf"
            if "[Content_Types].xml" in names:
                return "ooxml"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError):
        pass  # the archive check says what is wrong with it
    return "zip"


# -- archives -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveProblem:
    """Why a ZIP container breaks the flow's archive rules."""

    code: str
    rule: str
    reason: str


@dataclass
class _Budget:
    entries: int = 0
    expanded: int = 0


def archive_problem(path: str, rules: ArchiveRules) -> ArchiveProblem | None:
    """Check a ZIP container against `rules` from its headers; None when it complies."""
    with open_nofollow(path) as f:
        return _check_zip(f, rules, depth=1, budget=_Budget(), where="")


def _central_directory(f: BinaryIO) -> tuple[int, int]:
    """(entry count, central directory size) from the end record, before zipfile reads it."""
    endrec = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # stdlib, stable since 2.x
    if not endrec:
        raise zipfile.BadZipFile("no end of central directory record")
    return int(endrec[zipfile._ECD_ENTRIES_TOTAL]), int(endrec[zipfile._ECD_SIZE])  # type: ignore[attr-defined]


def _check_zip(
    f: BinaryIO, rules: ArchiveRules, depth: int, budget: _Budget, where: str
) -> ArchiveProblem | None:
    try:
        entries, cd_size = _central_directory(f)
        if budget.entries + entries > rules.max_entries:
            return ArchiveProblem(
                "archive-entries",
                "archive.max_entries",
                f"{where}{budget.entries + entries} entries; the limit is {rules.max_entries}",
            )
        # A central directory entry is 46 bytes plus name, extra and comment (at most 3 x 64 KiB):
        # a directory larger than the entries can explain is refused before it is parsed.
        if cd_size > entries * (46 + 3 * 65535) + 22 or cd_size > 64 * 1024 * 1024:
            return ArchiveProblem(
                "archive-corrupt", "archive", f"{where}central directory of {cd_size} bytes"
            )
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            budget.entries += len(infos)
            if budget.entries > rules.max_entries:
                return ArchiveProblem(
                    "archive-entries",
                    "archive.max_entries",
                    f"{where}{budget.entries} entries; the limit is {rules.max_entries}",
                )
            return _check_entries(zf, infos, rules, depth, budget, where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error) as e:
        return ArchiveProblem("archive-corrupt", "archive", f"{where}damaged ZIP container: {e}")
    except NotImplementedError as e:
        return ArchiveProblem("archive-corrupt", "archive", f"{where}unsupported ZIP feature: {e}")


def _entry_path_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return f"entry {name!r} has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return f"entry {name!r} climbs out of the archive with '..'"
    return None


def _check_entries(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    rules: ArchiveRules,
    depth: int,
    budget: _Budget,
    where: str,
) -> ArchiveProblem | None:
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if problem := _entry_path_problem(name):
            return ArchiveProblem("archive-path", "archive.paths", where + problem)
        if name in seen:
            return ArchiveProblem(
                "archive-path",
                "archive.paths",
                f"{where}entry {name!r} appears twice (readers would disagree on its content)",
            )
        seen.add(name)
        if info.flag_bits & 0x41:
            return ArchiveProblem(
                "archive-encrypted",
                "archive.encrypted",
                f"{where}entry {name!r} is encrypted and cannot be checked",
            )
        budget.expanded += info.file_size
        if budget.expanded > rules.max_expanded_size:
            return ArchiveProblem(
                "archive-expanded-size",
                "archive.max_expanded_size",
                f"{where}expands to more than {rules.max_expanded_size} bytes",
            )
        if info.file_size > _RATIO_FLOOR and (
            info.compress_size == 0 or info.file_size / info.compress_size > rules.max_ratio
        ):
            ratio = info.file_size / max(info.compress_size, 1)
            return ArchiveProblem(
                "archive-ratio",
                "archive.max_ratio",
                f"{where}entry {name!r} compresses {ratio:.0f}:1; the limit is {rules.max_ratio}:1",
            )
    for info in infos:
        if info.is_dir() or info.file_size < 2:
            continue
        with zf.open(info) as member:
            head = member.read(8)
        if not head.startswith(_ARCHIVE_MAGIC):
            continue
        inner = f"{where}{info.filename}: "
        if depth + 1 > rules.max_depth:
            return ArchiveProblem(
                "archive-nesting",
                "archive.max_depth",
                f"{inner}an archive nested {depth + 1} deep; the limit is {rules.max_depth}",
            )
        if not head.startswith(b"PK") or info.file_size > _NESTED_MAX:
            return ArchiveProblem(
                "archive-nesting",
                "archive.max_depth",
                f"{inner}a nested archive that cannot be inspected here",
            )
        with zf.open(info) as member:
            data = member.read(_NESTED_MAX + 1)
        problem = _check_zip(io.BytesIO(data), rules, depth + 1, budget, inner)
        if problem is not None:
            return problem
    return None


# -- text ---------------------------------------------------------------------------------------

_LEVEL = "绝密|机密|秘密"
#: Marking forms on text with spaces and invisible characters removed: 机密★, 机密★1年,
#: ★机密, 【机密】, [机密], (机密), 〔机密〕, 密级:机密.
_MARKING_FORMS = re.compile(
    rf"(?:(?:{_LEVEL})★(?:\d+年|\d+个?月|长期|启用前)?)|(?:★(?:{_LEVEL}))"
    rf"|(?:[【\[(〔〖](?:{_LEVEL})[】\])〕〗])|(?:密级[:：]?(?:{_LEVEL}))"
)
#: A line that is a marking and nothing else, as at the top of a document.
_MARKING_LINE = re.compile(rf"(?:{_LEVEL})(?:级)?")
_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u2060-\u2064\ufeff\u00ad]+")
_LINE_CAP = 64 * 1024


class TextBudgetExceeded(Exception):
    """More text to extract than the policy allows: the file is refused, not half-checked."""


@dataclass
class TextFindings:
    """Markings and keywords found; terms in the order first seen, each once."""

    markings: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)


class _Scanner:
    """Looks for markings and keywords in text fed in pieces, line by line, in bounded memory."""

    def __init__(self, rules: TextRules) -> None:
        self.rules = rules
        self.found = TextFindings()
        self.keywords = [
            (k, _INVISIBLE.sub("", unicodedata.normalize("NFKC", k)).casefold())
            for k in rules.keywords
        ]
        self.pending = ""

    def feed(self, text: str) -> None:
        text = self.pending + text
        lines = text.split("\n")
        self.pending = lines.pop()
        if len(self.pending) > _LINE_CAP:
            # one endless line: scan what is there, keep an overlap for a term cut in two
            lines.append(self.pending)
            self.pending = self.pending[-256:]
        for line in lines:
            self._line(line)

    def finish(self) -> TextFindings:
        self._line(self.pending)
        self.pending = ""
        return self.found

    def _line(self, line: str) -> None:
        compact = _INVISIBLE.sub("", unicodedata.normalize("NFKC", line))
        if not compact:
            return
        if self.rules.markings:
            terms = [m.group(0) for m in _MARKING_FORMS.finditer(compact)]
            if _MARKING_LINE.fullmatch(compact):
                terms.append(compact)
            for term in terms:
                if term not in self.found.markings:
                    self.found.markings.append(term)
        folded = compact.casefold()
        for original, key in self.keywords:
            if key and key in folded and original not in self.found.keywords:
                self.found.keywords.append(original)


def scan_text_of(path: str, kind: str, rules: TextRules) -> TextFindings:
    """Markings and keywords in a text file or in the text of a PDF, OOXML or ODF document."""
    scanner = _Scanner(rules)
    if kind in ("text", "csv", "json", "xml"):
        pieces: Iterable[str] = _utf8_pieces(path)
        if kind == "xml":
            pieces = _strip_markup(pieces)
    elif kind in ("ooxml", "odf"):
        pieces = _container_text(path, rules.max_extracted)
    elif kind == "pdf":
        pieces = _pdf_text(path, rules.max_extracted)
    else:
        return scanner.finish()
    for piece in pieces:
        scanner.feed(piece)
    return scanner.finish()


def _utf8_pieces(path: str) -> Iterator[str]:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open_nofollow(path) as f:
        while chunk := f.read(_CHUNK):
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


_BREAK_TAGS = re.compile(r"<(?:/(?:w:p|a:p|text:p|text:h|si|row|p)|w:br|text:line-break)\b[^>]*>")
_TAG = re.compile(r"<[^>]*>")


def _strip_markup(pieces: Iterable[str]) -> Iterator[str]:
    """Text of XML without an XML parser (no entities expanded but the predefined and numeric)."""
    carry = ""
    for piece in pieces:
        text = carry + piece
        cut = text.rfind("<")
        if cut > text.rfind(">") and len(text) - cut < _LINE_CAP:
            text, carry = text[:cut], text[cut:]
        else:
            carry = ""
        text = _TAG.sub("", _BREAK_TAGS.sub("\n", text))
        yield html.unescape(text)
    if carry:
        yield html.unescape(_TAG.sub("", carry))


def _container_text(path: str, limit: int) -> Iterator[str]:
    """The text of every XML part of an OOXML/ODF document, decompressed within `limit` bytes."""
    budget = [limit]
    with open_nofollow(path) as f, zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            if info.filename.lower().endswith(".xml"):
                yield from _strip_markup(_member_text(zf, info, budget))
                yield "\n"


def _member_text(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int]) -> Iterator[str]:
    """One member decoded as UTF-8 in chunks; `budget[0]` is what may still be read."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with zf.open(info) as member:
        while chunk := member.read(_CHUNK):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise TextBudgetExceeded("more XML to read than the text budget allows")
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


# -- PDF ----------------------------------------------------------------------------------------

_STREAM = re.compile(rb"(?<!end)stream\r?\n")
_DICT_BEFORE = 4096
_PDF_STRING = re.compile(rb"\((?:\\.|[^\\()])*\)|<([0-9A-Fa-f\s]*)>(?!>)", re.DOTALL)
_SHOW_OPS = re.compile(rb"T[jJ*]|'|\"|ET")
_BFCHAR = re.compile(rb"beginbfchar(.*?)endbfchar", re.DOTALL)
_BFRANGE = re.compile(rb"beginbfrange(.*?)endbfrange", re.DOTALL)
_HEX = re.compile(rb"<([0-9A-Fa-f]+)>")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _pdf_text(path: str, limit: int) -> Iterator[str]:
    """Strings of a PDF's objects and content streams (Flate or uncompressed), within `limit`.

    A PDF is read whole, so one larger than `limit` is refused rather than read in part; each
    stream is decompressed with a cap on its output, and all output counts against `limit`.
    """
    used = 0
    streams: list[bytes] = []
    raw_parts: list[bytes] = []
    with open_nofollow(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise TextBudgetExceeded(f"a PDF of {size} bytes is over the {limit} byte text budget")
        data = f.read(limit + 1)
    pos = 0
    for m in _STREAM.finditer(data):
        if m.start() < pos:
            continue
        head = data[max(pos, m.start() - _DICT_BEFORE) : m.start()]
        end = data.find(b"endstream", m.end())
        if end < 0:
            end = len(data)
        raw_parts.append(data[pos : m.start()])
        body = data[m.end() : end]
        dict_start = head.rfind(b"<<")
        info = head[dict_start:] if dict_start >= 0 else b""
        if b"/FlateDecode" in info or b"/Fl " in info or b"/Fl]" in info:
            out = _inflate(body, limit - used)
        elif b"/Filter" in info:
            out = b""  # images and other codecs hold no text we can read
        else:
            out = body
        used += len(out)
        if used > limit:
            raise TextBudgetExceeded(f"more than {limit} bytes of PDF streams to read")
        streams.append(out)
        pos = end + len(b"endstream")
    raw_parts.append(data[pos:])
    cmap = _to_unicode(streams)
    for part in (*raw_parts, *streams):
        yield from _pdf_strings(part, cmap)


def _inflate(body: bytes, room: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, max(room, 0) + 1)
    except zlib.error:
        return b""  # damaged stream: nothing readable in it
    return out


def _to_unicode(streams: list[bytes]) -> dict[bytes, str]:
    """Codes to text from every ToUnicode CMap (merged: good enough to find a marking)."""
    cmap: dict[bytes, str] = {}
    for s in streams:
        if b"begincmap" not in s:
            continue
        for block in _BFCHAR.findall(s):
            hexes = _HEX.findall(block)
            for src, dst in zip(hexes[0::2], hexes[1::2], strict=False):
                cmap[bytes.fromhex(src.decode())] = _utf16(bytes.fromhex(dst.decode()))
        for block in _BFRANGE.findall(s):
            hexes = _HEX.findall(block)
            for lo, hi, dst in zip(hexes[0::3], hexes[1::3], hexes[2::3], strict=False):
                a, b = int(lo, 16), int(hi, 16)
                base = bytes.fromhex(dst.decode())
                width = len(lo) // 2
                for i, code in enumerate(range(a, min(b, a + 65535) + 1)):
                    target = int.from_bytes(base, "big") + i
                    try:
                        cmap[code.to_bytes(width, "big")] = _utf16(
                            target.to_bytes(len(base), "big")
                        )
                    except OverflowError:
                        break
    return cmap


def _utf16(data: bytes) -> str:
    return data.decode("utf-16-be", errors="replace")


def _pdf_unescape(literal: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(literal):
        c = literal[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = literal[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif nxt.isdigit():
            digits = re.match(rb"[0-7]{1,3}", literal[i + 1 : i + 4])
            if digits:
                out.append(int(digits.group(0), 8) & 0xFF)
                i += 1 + len(digits.group(0))
            else:
                i += 2
        elif nxt in (b"\r", b"\n"):
            i += 2
        else:
            out += nxt
            i += 2
    return bytes(out)


def _decode_pdf_string(raw: bytes, cmap: dict[bytes, str]) -> list[str]:
    """Every plausible reading of a PDF string: UTF-16 with BOM, UTF-8, through the CMap."""
    if raw.startswith(b"\xfe\xff"):
        return [_utf16(raw[2:])]
    readings = []
    try:
        readings.append(raw.decode("utf-8"))
    except UnicodeDecodeError:
        readings.append(raw.decode("latin-1"))
    if cmap:
        for width in (2, 1):
            if len(raw) % width == 0:
                codes = [raw[i : i + width] for i in range(0, len(raw), width)]
                if all(c in cmap for c in codes):
                    readings.append("".join(cmap[c] for c in codes))
    return readings


def _pdf_strings(data: bytes, cmap: dict[bytes, str]) -> Iterator[str]:
    """The strings of a content stream or object text; a text-showing operator ends a line."""
    line: list[list[str]] = []
    last = 0
    for m in _PDF_STRING.finditer(data):
        if line and _SHOW_OPS.search(data, last, m.start()):
            yield from _join(line)
            line = []
        token = m.group(0)
        if token.startswith(b"("):
            raw = _pdf_unescape(token[1:-1])
        else:
            digits = re.sub(rb"\s", b"", m.group(1) or b"")
            if len(digits) % 2:
                digits += b"0"
            raw = bytes.fromhex(digits.decode())
        line.append(_decode_pdf_string(raw, cmap))
        last = m.end()
    if line:
        yield from _join(line)


def _join(line: list[list[str]]) -> Iterator[str]:
    width = max(len(r) for r in line)
    for k in range(width):
        yield "".join(r[min(k, len(r) - 1)] for r in line) + "\n"
