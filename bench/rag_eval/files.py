"""Real files of every type the eval uploads, written from corpus.py's data at run time.

PDF: one page per section (Helvetica text, a minimal valid file); DOCX: python-docx, a heading per section;
HTML/MD/TXT/EML: text forms; CSV/XLSX: rows; PPTX: a slide per section; JSON: nested fields; EPUB: a chapter
per section. The OOXML and EPUB packages are the minimal standard parts (content types, relationships,
the package document), written with zipfile.
"""

from __future__ import annotations

import html
import io
import json
import zipfile
from collections.abc import Sequence
from email.message import EmailMessage
from xml.sax.saxutils import escape

from bench.rag_eval.corpus import DEVICE_CONFIG, INVENTORY_ROWS, VOLUNTEER_ROWS, Doc

# Sentences that make each document longer than one short chunk, without touching any question.
_FILLER = (
    "This page was reviewed by the office staff and is kept for reference.",
    "Please tell the secretary about any mistakes so they can be corrected in the next edition.",
    "Printed copies are available at the front desk on request.",
)


def render(doc: Doc) -> bytes:
    kind = doc.file_type
    if doc.filename == "volunteer-roster.csv":
        return csv_bytes(VOLUNTEER_ROWS)
    if doc.filename == "warehouse-inventory.xlsx":
        return xlsx_bytes({"Stock": [list(r) for r in INVENTORY_ROWS]})
    if doc.filename == "device-config.json":
        return json.dumps(DEVICE_CONFIG, indent=2).encode()
    sections = [(s.heading, [*s.sentences]) for s in doc.sections]
    if kind == "pdf":
        return pdf_bytes([[doc.title if i == 0 else "", h, *s, *_FILLER] for i, (h, s) in enumerate(sections)])
    if kind == "docx":
        return docx_bytes(doc.title, sections)
    if kind == "html":
        body = "".join(
            f"<h2>{html.escape(h)}</h2>" + "".join(f"<p>{html.escape(x)}</p>" for x in s) for h, s in sections
        )
        title = html.escape(doc.title)
        head = f"<!doctype html><html><head><title>{title}</title></head>"
        return f"{head}<body><h1>{title}</h1>{body}<p>{' '.join(_FILLER)}</p></body></html>".encode()
    if kind == "md":
        body = "\n\n".join(f"## {h}\n\n" + " ".join(s) for h, s in sections)
        return f"# {doc.title}\n\n{body}\n\n{' '.join(_FILLER)}\n".encode()
    if kind == "txt":
        body = "\n\n".join(f"{h}\n\n" + " ".join(s) for h, s in sections)
        return f"{doc.title}\n\n{body}\n\n{' '.join(_FILLER)}\n".encode()
    if kind == "eml":
        return eml_bytes(doc.title, "\n\n".join(s for _, ss in sections for s in ss))
    if kind == "pptx":
        return pptx_bytes([[h, *s] for h, s in sections])
    if kind == "epub":
        return epub_bytes(doc.title, sections)
    raise ValueError(f"no writer for {doc.filename}")


def pdf_bytes(pages: Sequence[Sequence[str]]) -> bytes:
    """A minimal valid PDF: one Helvetica text line per string, one page per list of lines."""
    count = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (" ".join(f"{4 + 2 * i} 0 R" for i in range(count)).encode(), count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        escaped = (line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines if line)
        shown = " ".join(f"({line}) Tj T*" for line in escaped)
        content = f"BT /F1 10 Tf 13 TL 40 800 Td {shown} ET".encode("latin-1")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def docx_bytes(title: str, sections: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(title, level=1)
    for heading, sentences in sections:
        document.add_heading(heading, level=2)
        for sentence in sentences:
            document.add_paragraph(sentence)
    document.add_paragraph(" ".join(_FILLER))
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def csv_bytes(rows: Sequence[Sequence[str]]) -> bytes:
    return ("\n".join(",".join(f'"{c}"' if "," in c else c for c in row) for row in rows) + "\n").encode()


def eml_bytes(subject: str, body: str) -> bytes:
    message = EmailMessage()
    message["From"] = "committee@example.org"
    message["To"] = "members@example.org"
    message["Subject"] = subject
    message["Date"] = "Tue, 03 Mar 2026 10:00:00 +0000"
    message.set_content(body)
    return message.as_bytes()


def _zip(parts: dict[str, str | bytes], *, stored_first: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if stored_first is not None:
            archive.writestr(zipfile.ZipInfo(stored_first), parts[stored_first], zipfile.ZIP_STORED)
        for name, data in parts.items():
            if name != stored_first:
                archive.writestr(name, data)
    return buffer.getvalue()


_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_OFFICE = "application/vnd.openxmlformats-officedocument"


def pptx_bytes(slides: Sequence[Sequence[str]]) -> bytes:
    """A presentation with one slide per list: its first string the title, the rest body paragraphs."""
    p = "http://schemas.openxmlformats.org/presentationml/2006/main"
    a = "http://schemas.openxmlformats.org/drawingml/2006/main"
    parts: dict[str, str | bytes] = {}
    overrides = [
        f'<Override PartName="/ppt/presentation.xml" ContentType="{_OFFICE}.presentationml.presentation.main+xml"/>'
    ]
    ids, rels = [], []
    for n, lines in enumerate(slides, 1):
        paragraphs = "".join(f"<a:p><a:r><a:t>{escape(line)}</a:t></a:r></a:p>" for line in lines[1:])
        shapes = (
            '<p:sp><p:nvSpPr><p:cNvPr id="2" name="Title"/><p:cNvSpPr/>'
            '<p:nvPr><p:ph type="title"/></p:nvPr></p:nvSpPr>'
            f"<p:spPr/><p:txBody><a:bodyPr/><a:p><a:r><a:t>{escape(lines[0])}</a:t></a:r></a:p></p:txBody></p:sp>"
            f'<p:sp><p:nvSpPr><p:cNvPr id="3" name="Body"/><p:cNvSpPr/><p:nvPr/></p:nvSpPr>'
            f"<p:spPr/><p:txBody><a:bodyPr/>{paragraphs}</p:txBody></p:sp>"
        )
        parts[f"ppt/slides/slide{n}.xml"] = (
            f'{_XML}<p:sld xmlns:p="{p}" xmlns:a="{a}" xmlns:r="{_REL}"><p:cSld><p:spTree>'
            f'<p:nvGrpSpPr><p:cNvPr id="1" name=""/><p:cNvGrpSpPr/><p:nvPr/></p:nvGrpSpPr><p:grpSpPr/>'
            f"{shapes}</p:spTree></p:cSld></p:sld>"
        )
        overrides.append(
            f'<Override PartName="/ppt/slides/slide{n}.xml" ContentType="{_OFFICE}.presentationml.slide+xml"/>'
        )
        ids.append(f'<p:sldId id="{255 + n}" r:id="rId{n}"/>')
        rels.append(f'<Relationship Id="rId{n}" Type="{_REL}/slide" Target="slides/slide{n}.xml"/>')
    parts["[Content_Types].xml"] = (
        f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>' + "".join(overrides) + "</Types>"
    )
    parts["_rels/.rels"] = (
        f'{_XML}<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" '
        f'Type="{_REL}/officeDocument" Target="ppt/presentation.xml"/></Relationships>'
    )
    parts["ppt/presentation.xml"] = (
        f'{_XML}<p:presentation xmlns:p="{p}" xmlns:a="{a}" xmlns:r="{_REL}"><p:sldIdLst>{"".join(ids)}</p:sldIdLst>'
        '<p:sldSz cx="9144000" cy="6858000"/><p:notesSz cx="6858000" cy="9144000"/></p:presentation>'
    )
    parts["ppt/_rels/presentation.xml.rels"] = (
        f'{_XML}<Relationships xmlns="{_PKG_REL}">{"".join(rels)}</Relationships>'
    )
    return _zip(parts)


def xlsx_bytes(sheets: dict[str, Sequence[Sequence[str]]]) -> bytes:
    """A workbook with a sheet per entry; text cells in the shared string table, numbers as numbers."""
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    strings: list[str] = []
    parts: dict[str, str | bytes] = {}
    sheet_entries, rels, overrides = [], [], []
    for n, (name, rows) in enumerate(sheets.items(), 1):
        xml_rows = []
        for r, row in enumerate(rows, 1):
            cells = []
            for c, value in enumerate(row):
                ref = f"{chr(ord('A') + c)}{r}"
                if value.isdigit():
                    cells.append(f'<c r="{ref}"><v>{value}</v></c>')
                else:
                    strings.append(value)
                    cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
        parts[f"xl/worksheets/sheet{n}.xml"] = (
            f'{_XML}<worksheet xmlns="{main}"><sheetData>{"".join(xml_rows)}</sheetData></worksheet>'
        )
        sheet_entries.append(f'<sheet name="{escape(name)}" sheetId="{n}" r:id="rId{n}"/>')
        rels.append(f'<Relationship Id="rId{n}" Type="{_REL}/worksheet" Target="worksheets/sheet{n}.xml"/>')
        overrides.append(
            f'<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType="{_OFFICE}.spreadsheetml.worksheet+xml"/>'
        )
    rels.append(f'<Relationship Id="rIdS" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/>')
    parts["xl/sharedStrings.xml"] = (
        f'{_XML}<sst xmlns="{main}" count="{len(strings)}" uniqueCount="{len(strings)}">'
        + "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
        + "</sst>"
    )
    parts["xl/workbook.xml"] = (
        f'{_XML}<workbook xmlns="{main}" xmlns:r="{_REL}"><sheets>{"".join(sheet_entries)}</sheets></workbook>'
    )
    parts["xl/_rels/workbook.xml.rels"] = f'{_XML}<Relationships xmlns="{_PKG_REL}">{"".join(rels)}</Relationships>'
    parts["_rels/.rels"] = (
        f'{_XML}<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" '
        f'Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    )
    parts["[Content_Types].xml"] = (
        f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_OFFICE}.spreadsheetml.sheet.main+xml"/>'
        f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_OFFICE}.spreadsheetml.sharedStrings+xml"/>'
        + "".join(overrides)
        + "</Types>"
    )
    return _zip(parts)


def epub_bytes(title: str, chapters: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """An EPUB 3 book: the stored `mimetype` first, the container, the package document, a chapter per entry."""
    parts: dict[str, str | bytes] = {"mimetype": "application/epub+zip"}
    parts["META-INF/container.xml"] = (
        '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
        '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
        "</rootfiles></container>"
    )
    manifest, spine = [], []
    for n, (heading, sentences) in enumerate(chapters, 1):
        body = "".join(f"<p>{escape(s)}</p>" for s in sentences)
        parts[f"OEBPS/chapter{n}.xhtml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head>'
            f"<title>{escape(heading)}</title></head><body><h1>{escape(heading)}</h1>{body}</body></html>"
        )
        manifest.append(f'<item id="c{n}" href="chapter{n}.xhtml" media-type="application/xhtml+xml"/>')
        spine.append(f'<itemref idref="c{n}"/>')
    parts["OEBPS/content.opf"] = (
        '<?xml version="1.0" encoding="UTF-8"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" '
        'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f'<dc:identifier id="id">urn:uuid:eval</dc:identifier><dc:title>{escape(title)}</dc:title>'
        "<dc:language>en</dc:language>"
        f"</metadata><manifest>{''.join(manifest)}</manifest><spine>{''.join(spine)}</spine></package>"
    )
    return _zip(parts, stored_first="mimetype")
