"""Builders of real files for the content-policy tests: PDF, OOXML, ODF, PNG, JPEG, ZIP.

Written by hand from the formats' specs so each hostile case is exactly the one thing it tests.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterable

Entry = tuple[str, bytes]


def zip_bytes(entries: Iterable[Entry], encrypted: tuple[str, ...] = ()) -> bytes:
    """A ZIP with the given entries (deflated); names in `encrypted` get the encryption flag."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return set_encrypted(buf.getvalue(), encrypted)


def set_encrypted(data: bytes, names: Iterable[str]) -> bytes:
    """Set the 'encrypted' flag of entries in both headers (zipfile writes no encrypted ZIPs)."""
    out = bytearray(data)
    for name in names:
        raw = name.encode()
        for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
            pos = out.find(sig)
            while pos >= 0:
                if out[pos + name_at : pos + name_at + len(raw)] == raw:
                    out[pos + flag_at] |= 0x1
                pos = out.find(sig, pos + 4)
    return bytes(out)


def duplicate_zip(entries: Iterable[Entry]) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
    b'package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/>'
    b"</Types>"
)


def docx_entries(paragraphs: Iterable[str]) -> list[Entry]:
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.'
        f'openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>'
    )
    return [
        ("[Content_Types].xml", CONTENT_TYPES),
        ("_rels/.rels", b'<?xml version="1.0"?><Relationships/>'),
        ("word/document.xml", doc.encode()),
    ]


def docx(paragraphs: Iterable[str] = ("Hello",), extra: Iterable[Entry] = (), **kw) -> bytes:
    return zip_bytes([*docx_entries(paragraphs), *extra], **kw)


def docx_raw(document_xml: str) -> bytes:
    entries = docx_entries(())
    entries[-1] = ("word/document.xml", document_xml.encode())
    return zip_bytes(entries)


def xlsx(strings: Iterable[str], extra: Iterable[Entry] = (), **kw) -> bytes:
    shared = "".join(f"<si><t>{s}</t></si>" for s in strings)
    entries = [
        ("[Content_Types].xml", CONTENT_TYPES),
        ("xl/workbook.xml", b'<?xml version="1.0"?><workbook/>'),
        ("xl/sharedStrings.xml", f'<?xml version="1.0"?><sst>{shared}</sst>'.encode()),
    ]
    return zip_bytes([*entries, *extra], **kw)


def odt(
    paragraphs: Iterable[str] = ("Hello",),
    styles_text: str = "",
    extra: Iterable[Entry] = (),
    **kw,
) -> bytes:
    body = "".join(f"<text:p>{p}</text:p>" for p in paragraphs)
    content = (
        '<?xml version="1.0" encoding="UTF-8"?><office:document-content '
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0">'
        f"<office:body><office:text>{body}</office:text></office:body></office:document-content>"
    )
    styles = (
        '<?xml version="1.0"?><office:document-styles><style:header>'
        f"<text:p>{styles_text}</text:p></style:header></office:document-styles>"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            zipfile.ZipInfo("mimetype"), b"application/vnd.oasis.opendocument.text"
        )  # stored, first, as ODF requires
        entries = [
            ("content.xml", content.encode()),
            ("styles.xml", styles.encode()),
            ("META-INF/manifest.xml", b'<?xml version="1.0"?><manifest:manifest/>'),
            *extra,
        ]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return set_encrypted(buf.getvalue(), kw.get("encrypted", ()))


def _pdf(objects: list[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def _stream(content: bytes, compress: bool, extra: bytes = b"") -> bytes:
    data = zlib.compress(content) if compress else content
    filt = b" /Filter /FlateDecode" if compress else b""
    return b"<< /Length %d%s%s >>\nstream\n" % (len(data), filt, extra) + data + b"\nendstream"


def pdf(content: bytes, compress: bool = True, tounicode: bytes | None = None) -> bytes:
    """A one-page PDF whose page content stream is `content` (PDF operators)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        _stream(content, compress),
        b"<< /Type /Font /Subtype /Type0 /BaseFont /SimSun /Encoding /Identity-H"
        + (b" /ToUnicode 6 0 R" if tounicode else b"")
        + b" >>",
    ]
    if tounicode:
        objects.append(_stream(tounicode, compress))
    return _pdf(objects)


def pdf_text(text: str, compress: bool = True) -> bytes:
    """A PDF showing `text` as a UTF-16BE hex string (how many generators write CJK text)."""
    hexed = ("feff" + text.encode("utf-16-be").hex()).encode()
    return pdf(b"BT /F1 12 Tf 72 720 Td <" + hexed + b"> Tj ET", compress)


def pdf_cid(text: str) -> bytes:
    """A PDF with glyph ids for `text` and a ToUnicode CMap, as Word and WPS write Chinese."""
    cids = {ch: 0x0100 + i for i, ch in enumerate(dict.fromkeys(text))}
    shown = b"".join(cids[ch].to_bytes(2, "big") for ch in text).hex().encode()
    bfchar = b"".join(
        b"<%04x> <%s>\n" % (cid, ch.encode("utf-16-be").hex().encode()) for ch, cid in cids.items()
    )
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        b"1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        b"%d beginbfchar\n" % len(cids) + bfchar + b"endbfchar\nendcmap end end"
    )
    return pdf(b"BT /F1 12 Tf 72 720 Td <" + shown + b"> Tj ET", True, tounicode=cmap)


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    """The JFIF header and end marker of a JPEG (the policy reads magic bytes, not pixels)."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + app0 + b"\xff\xd9"
