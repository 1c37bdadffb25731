"""Turning an uploaded file into plain text: its type checked by name and by content, then extracted.

PDFs go through pypdf (a plain text extractor: unstructured's PDF path wants layout models from a
hub); the other types go through unstructured, with its spaCy model replaced by a blank English
pipeline so that nothing is downloaded at run time. File names are display metadata only: nothing
here opens a path, every parser reads the bytes it is given.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import logging
import os
import posixpath
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_email_policy
from enum import StrEnum
from html.parser import HTMLParser
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from inference_api.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    import spacy.language
    from unstructured.documents.elements import Element

logger = logging.getLogger(__name__)


class FileType(StrEnum):
    PDF = "pdf"
    TXT = "txt"
    DOCX = "docx"
    HTML = "html"
    MD = "md"
    CSV = "csv"
    EML = "eml"
    PPTX = "pptx"
    XLSX = "xlsx"
    JSON = "json"
    EPUB = "epub"


EXTENSIONS: dict[str, FileType] = {
    ".pdf": FileType.PDF,
    ".txt": FileType.TXT,
    ".docx": FileType.DOCX,
    ".html": FileType.HTML,
    ".htm": FileType.HTML,
    ".md": FileType.MD,
    ".csv": FileType.CSV,
    ".eml": FileType.EML,
    ".pptx": FileType.PPTX,
    ".xlsx": FileType.XLSX,
    ".json": FileType.JSON,
    ".epub": FileType.EPUB,
}
# ZIP containers: the member that says what the archive is, and the name of the kind of document it makes.
_CONTAINERS: dict[FileType, tuple[str, str]] = {
    FileType.DOCX: ("word/document.xml", "a Word document"),
    FileType.PPTX: ("ppt/presentation.xml", "a PowerPoint presentation"),
    FileType.XLSX: ("xl/workbook.xml", "an Excel workbook"),
    FileType.EPUB: ("META-INF/container.xml", "an EPUB book"),
}
SUPPORTED = ", ".join(EXTENSIONS)
MAX_FILENAME_CHARS = 255
DEFAULT_MAX_UNPACKED_BYTES = 256 * 1024 * 1024

# Signatures of formats a renamed file is most likely to really be, named in the refusal.
_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "an ELF executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office (OLE) document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
)
# C0 controls that do not occur in real text; \t \n \v \f \r and ESC (terminal logs) do.
_BINARY_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_EMAIL_HEADERS = frozenset(
    {"from", "to", "cc", "subject", "date", "message-id", "mime-version", "received", "return-path", "reply-to"}
)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


@dataclass(frozen=True)
class ParsedDocument:
    """The extracted text of one file; `page_starts` holds each page's first character (PDFs only), `places`
    where each part of the text begins and what a citation calls it: a page, a heading path, a row, a slide."""

    file_type: FileType
    text: str
    page_starts: tuple[int, ...] = ()
    places: tuple[tuple[int, str], ...] = ()

    @property
    def pages(self) -> int | None:
        return len(self.page_starts) or None


def sanitize_filename(name: str) -> str:
    """The name as it may be shown: no directories, no control characters, at most 255 characters."""
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    if not name:
        return "unnamed"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        # Keep a short extension (the type shows in lists), cut the stem.
        if dot and stem and len(ext) < 16:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


def file_type_from_name(filename: str) -> FileType:
    """The type a file name claims; UNSUPPORTED_MEDIA_TYPE when its extension is not one we read."""
    display = sanitize_filename(filename)
    _, dot, ext = display.rpartition(".")
    file_type = EXTENSIONS.get(f".{ext.lower()}") if dot else None
    if file_type is None:
        shown = f"'.{ext[:20]}'" if dot else "no extension"
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"{_quote(display)} has {shown}; supported types: {SUPPORTED}",
        )
    return file_type


def detect_file_type(filename: str, data: bytes, *, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> FileType:
    """The file's type when its name and its bytes agree; raise the error an upload should get otherwise."""
    file_type = file_type_from_name(filename)
    display = _quote(sanitize_filename(filename))
    if not data:
        raise ServiceError(ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display} is empty")
    if file_type is FileType.PDF:
        # Readers accept the header anywhere in the first KiB; anything else is not a PDF at all.
        if b"%PDF-" not in data[:1024]:
            raise _mismatch(display, file_type, data)
    elif file_type in _CONTAINERS:
        _check_container(display, file_type, data, max_unpacked_bytes)
    elif file_type is FileType.EML:
        if b"\x00" in data or not _looks_like_email(data):
            raise _mismatch(display, file_type, data)
    elif _binary_kind(data) is not None or decode_text(data) is None:
        raise _mismatch(display, file_type, data)
    return file_type


def decode_text(data: bytes) -> str | None:
    """`data` as text (UTF-8, UTF-16 with a BOM, else Windows-1252 free of control bytes), or None if binary."""
    if data.startswith(codecs.BOM_UTF8):
        candidates: Sequence[str] = ("utf-8-sig",)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ("utf-16",)
    else:
        # Windows-1252 decodes almost any byte string, so it is only a fallback for text with no controls.
        candidates = ("utf-8", "cp1252")
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        allowed = 0 if encoding == "cp1252" else len(text) // 100
        if "\x00" in text or len(_BINARY_CONTROLS.findall(text)) > allowed:
            return None
        return text
    return None


class DocumentParser:
    """Extracts the text of uploaded files of the supported types; blocking, so callers run it in a thread."""

    def __init__(self, *, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> None:
        # A DOCX is a ZIP: a few KiB can claim gigabytes, so unpacked size is capped before any read.
        self.max_unpacked_bytes = max_unpacked_bytes

    def parse(self, filename: str, data: bytes) -> ParsedDocument:
        """Check the file's type by name and content, then extract its text."""
        file_type = detect_file_type(filename, data, max_unpacked_bytes=self.max_unpacked_bytes)
        display = _quote(sanitize_filename(filename))
        if file_type in _CONTAINERS:
            _check_zip_members(display, file_type, data, self.max_unpacked_bytes)
        try:
            if file_type is FileType.PDF:
                parsed = _parse_pdf(display, data)
            elif file_type in _OWN_PARSERS:
                text, places = _OWN_PARSERS[file_type](data)
                parsed = ParsedDocument(file_type, text, places=places)
            else:
                text, places = _parse_with_unstructured(file_type, data)
                parsed = ParsedDocument(file_type, text, places=places)
        except (ServiceError, MemoryError):
            raise  # a MemoryError is the sandbox's memory limit: it reports that, not a damaged file
        except Exception as exc:
            logger.info("parsing a %s upload failed", file_type, exc_info=True)
            raise ServiceError(
                ErrorCode.DOCUMENT_PROCESSING_ERROR,
                f"{display} could not be read as {file_type.upper()}: {_reason(exc, file_type)}",
            ) from exc
        if not parsed.text.strip():
            hint = " (scanned PDFs are not OCR'd)" if file_type is FileType.PDF else ""
            raise ServiceError(ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display} contains no extractable text{hint}")
        return parsed


def _parse_pdf(display: str, data: bytes) -> ParsedDocument:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ServiceError(ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display} is password-protected")
    if len(reader.pages) == 0:
        raise ServiceError(ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display} has no pages")
    parts: list[str] = []
    starts: list[int] = []
    offset = 0
    for page in reader.pages:
        text = _normalize(page.extract_text() or "")
        starts.append(offset)
        parts.append(text)
        offset += len(text) + 2
    places = tuple((start, f"page {n}") for n, start in enumerate(starts, start=1))
    return ParsedDocument(FileType.PDF, "\n\n".join(parts), tuple(starts), places)


Places = tuple[tuple[int, str], ...]


def _join(parts: Sequence[tuple[str, str]]) -> tuple[str, Places]:
    """The parts' texts, normalized and joined by blank lines, and where each new place (label) begins."""
    texts: list[str] = []
    places: list[tuple[int, str]] = []
    offset = 0
    for label, raw in parts:
        text = _normalize(raw)
        if not text:
            continue
        if not places or places[-1][1] != label:
            places.append((offset, label))
        texts.append(text)
        offset += len(text) + 2
    return "\n\n".join(texts), tuple(places)


def _parse_with_unstructured(file_type: FileType, data: bytes) -> tuple[str, Places]:
    partition = _partitioners()[file_type]
    if file_type is FileType.CSV:
        return _join(_row_parts(_csv_rows(decode_text(data) or ""), "row"))
    parts = _element_parts(partition(data))
    if file_type is FileType.EML:
        # unstructured gives the body only; the subject is what people search an email by.
        headers = BytesHeaderParser(policy=default_email_policy).parsebytes(data)
        subject = str(headers.get("subject", "") or "").strip()
        parts = [("body", text) for _, text in parts]
        if subject:
            parts.insert(0, ("subject", f"Subject: {subject}"))
    return _join(parts)


def _element_parts(elements: Sequence[Element]) -> list[tuple[str, str]]:
    """Each element's text, labelled with the path of the headings above it ("Guide > Baking")."""
    headings: list[tuple[int, str]] = []
    parts: list[tuple[str, str]] = []
    for element in elements:
        text = _element_text(element)
        if not text:
            continue
        if element.category == "Title":
            depth = getattr(element.metadata, "category_depth", None) or 0
            headings = [h for h in headings if h[0] < depth]
            headings.append((depth, " ".join(text.split())[:80]))
        path = " > ".join(h for _, h in headings)
        parts.append((f"section {path}" if path else "start", text))
    return parts


def _csv_rows(text: str) -> list[list[str]]:
    import csv

    return [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]


def _row_parts(rows: Sequence[Sequence[str]], prefix: str) -> list[tuple[str, str]]:
    """One line per row, each cell named by its column's header (the first row): "name: Ada | role: keeper"."""
    if not rows:
        return []
    header = [" ".join(cell.split()) for cell in rows[0]]
    parts = [(f"{prefix} 1", " | ".join(c for c in header if c))]
    for number, row in enumerate(rows[1:], start=2):
        cells = []
        for i, cell in enumerate(row):
            value = " ".join(str(cell).split())
            if not value:
                continue
            name = header[i] if i < len(header) and header[i] else ""
            cells.append(f"{name}: {value}" if name else value)
        parts.append((f"{prefix} {number}", " | ".join(cells)))
    return parts


def warm_up_partitioners() -> None:
    """Import unstructured's partitioners now (seconds), so that a later parse does not pay for it."""
    _partitioners()


@functools.cache
def _partitioners() -> dict[FileType, Callable[[bytes], list[Element]]]:
    """unstructured's partition functions, imported once, after telemetry is off and spaCy is offline."""
    # unstructured pings its telemetry host (and runs nvidia-smi) at import unless told not to.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "1")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    from unstructured.nlp import tokenize

    # Its text heuristics load en_core_web_sm, downloading it from GitHub on first use: offline that
    # fails, so a blank English pipeline with a rule-based sentencizer stands in (no weights at all).
    tokenize._get_nlp = functools.cache(_blank_english)

    from unstructured.partition.csv import partition_csv
    from unstructured.partition.docx import partition_docx
    from unstructured.partition.email import partition_email
    from unstructured.partition.html import partition_html
    from unstructured.partition.md import partition_md
    from unstructured.partition.text import partition_text

    # Naming the language skips detecting it: it only fills metadata this service does not keep.
    eng = ["eng"]
    return {
        FileType.TXT: lambda data: partition_text(text=decode_text(data) or "", languages=eng),
        FileType.MD: lambda data: partition_md(text=decode_text(data) or "", languages=eng),
        FileType.HTML: lambda data: partition_html(text=decode_text(data) or "", languages=eng),
        FileType.CSV: lambda data: partition_csv(
            file=io.BytesIO((decode_text(data) or "").encode()), include_header=True, languages=eng
        ),
        # Attachments could be any type (PDFs would take unstructured's layout-model path): body only.
        FileType.EML: lambda data: partition_email(
            file=io.BytesIO(data), process_attachments=False, content_source="text/plain", languages=eng
        ),
        FileType.DOCX: lambda data: partition_docx(file=io.BytesIO(data), strategy="fast", languages=eng),
    }


def _blank_english() -> spacy.language.Language:
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def _element_text(element: Element) -> str:
    html = getattr(element.metadata, "text_as_html", None)
    if element.category == "Table" and html:
        # A table's plain text runs every cell together; one line per row keeps rows apart.
        rows = _TableRows.parse(html)
        if rows:
            return "\n".join(" | ".join(cells) for cells in rows)
    return str(element.text).strip()


class _TableRows(HTMLParser):
    """The cell texts of an HTML table, row by row."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    @classmethod
    def parse(cls, html: str) -> list[list[str]]:
        parser = cls()
        parser.feed(html)
        parser.close()
        return [row for row in parser.rows if any(row)]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            if not self.rows:
                self.rows.append([])
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _check_container(display: str, file_type: FileType, data: bytes, max_unpacked_bytes: int) -> None:
    if not data.startswith(b"PK\x03\x04"):
        raise _mismatch(display, file_type, data)
    kind = file_type.upper()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ServiceError(
            ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display} is a damaged {kind} (its ZIP container is broken)"
        ) from exc
    names = {info.filename for info in infos}
    member, what = _CONTAINERS[file_type]
    if member not in names:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"{display} is a ZIP archive but not {what} (no {member})",
        )
    if sum(info.file_size for info in infos) > max_unpacked_bytes:
        raise ServiceError(
            ErrorCode.DOCUMENT_PROCESSING_ERROR,
            f"{display} unpacks to more than {max_unpacked_bytes // (1024 * 1024)} MiB",
        )


def _check_zip_members(display: str, file_type: FileType, data: bytes, max_unpacked_bytes: int) -> None:
    """Inflate every member in bounded pieces, as far as its header says, and check it against its checksum.

    The sizes `_check_container` adds up are what the headers claim. zipfile stops a member at its claimed size,
    but a whole-member read (python-docx's) first inflates everything the compressed stream holds, in one
    call: a member claiming 1 KB that really holds 300 MB cost seconds of CPU and that much memory before
    its checksum failed. Read a piece at a time, the lie shows as soon as the claimed size is reached.
    """
    total = 0
    name = "(its directory)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                name = info.filename
                with archive.open(info) as member:
                    while piece := member.read(1024 * 1024):
                        total += len(piece)
                        if total > max_unpacked_bytes:
                            raise ServiceError(
                                ErrorCode.DOCUMENT_PROCESSING_ERROR,
                                f"{display} unpacks to more than {max_unpacked_bytes // (1024 * 1024)} MiB",
                            )
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise ServiceError(
            ErrorCode.DOCUMENT_PROCESSING_ERROR,
            f"{display} is a damaged {file_type.upper()}: its ZIP entry {_quote(name)} does not match its header "
            "(size or checksum)",
        ) from exc


def _looks_like_email(data: bytes) -> bool:
    """RFC 5322 headers first (after an optional mbox 'From ' line), at least one of them a message header."""
    head = data[:65536].replace(b"\r\n", b"\n")
    lines = head.split(b"\n")
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    known = 0
    for line in lines:
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue
        if not _HEADER_LINE.match(line):
            return False
        if line.split(b":", 1)[0].decode("ascii").lower() in _EMAIL_HEADERS:
            known += 1
    return known > 0


def _binary_kind(data: bytes) -> str | None:
    for signature, kind in _BINARY_SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


def _mismatch(display: str, claimed: FileType, data: bytes) -> ServiceError:
    kind = _binary_kind(data)
    if kind is None and claimed is FileType.EML:
        actual = "its content has no email headers" if decode_text(data) is not None else "its content is binary data"
    else:
        actual = f"its content is {kind or ('binary data' if decode_text(data) is None else 'plain text')}"
    return ServiceError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"{display} is named as {claimed.upper()} but {actual}",
    )


def _normalize(text: str) -> str:
    """Unix line ends and no NULs: offsets into this text are what chunks record."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()


def _quote(display: str) -> str:
    return repr(display if len(display) <= 80 else display[:77] + "...")


def _reason(exc: Exception, file_type: FileType) -> str:
    """Why a parser failed, in words for the uploader: the parser's own words only where they are meant for people."""
    from pypdf.errors import PyPdfError

    if isinstance(exc, PyPdfError):
        message = " ".join(str(exc).split())
        return message[:200] or "the PDF is damaged"
    if isinstance(exc, zipfile.BadZipFile):
        return "its ZIP container is damaged"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, ElementTree.ParseError):
        return "one of its XML parts is malformed"
    if isinstance(exc, ValueError) and str(exc).startswith("nested"):
        return f"its JSON is {exc}"
    if isinstance(exc, KeyError) and file_type in _CONTAINERS:
        return "a part it refers to is missing"
    if isinstance(exc, UnicodeError):
        return "its text encoding is broken"
    # Anything else is an internal error of some parser (a KeyError, an AttributeError...): the log has it.
    return f"the file is damaged or not valid {file_type.upper()}"


# PPTX, XLSX, EPUB and JSON are read here, with the standard library: the OOXML and EPUB parts needed are a
# few XML files in a ZIP whose members `_check_zip_members` has already inflated within the cap. ElementTree's
# expat resolves no external entities, and the sandbox bounds what an entity expansion could cost.
_MAX_JSON_DEPTH = 64
_NS = {
    "p": "http://schemas.openxmlformats.org/presentationml/2006/main",
    "a": "http://schemas.openxmlformats.org/drawingml/2006/main",
    "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "rel": "http://schemas.openxmlformats.org/package/2006/relationships",
    "x": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
    "opf": "http://www.idpf.org/2007/opf",
    "c": "urn:oasis:names:tc:opendocument:xmlns:container",
}


def _xml(archive: zipfile.ZipFile, name: str) -> ElementTree.Element:
    return ElementTree.fromstring(archive.read(name))


def _targets(archive: zipfile.ZipFile, part: str) -> dict[str, str]:
    """A part's relationships: id -> the target's member name (resolved against the part's folder)."""
    folder, _, base = part.rpartition("/")
    rels = f"{folder}/_rels/{base}.rels" if folder else f"_rels/{base}.rels"
    if rels not in archive.namelist():
        return {}
    resolved = {}
    for rel in _xml(archive, rels).findall("rel:Relationship", _NS):
        target = rel.get("Target", "")
        path = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
        resolved[rel.get("Id", "")] = path
    return resolved


def _parse_pptx(data: bytes) -> tuple[str, Places]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        presentation = "ppt/presentation.xml"
        targets = _targets(archive, presentation)
        order = [
            targets.get(slide.get(f"{{{_NS['r']}}}id", ""), "")
            for slide in _xml(archive, presentation).iterfind("p:sldIdLst/p:sldId", _NS)
        ]
        names = set(archive.namelist())
        parts: list[tuple[str, str]] = []
        for number, slide in enumerate((s for s in order if s in names), start=1):
            for paragraph in _xml(archive, slide).iter(f"{{{_NS['a']}}}p"):
                text = "".join(t.text or "" for t in paragraph.iter(f"{{{_NS['a']}}}t"))
                parts.append((f"slide {number}", text))
    return _join(parts)


def _parse_xlsx(data: bytes) -> tuple[str, Places]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            for item in _xml(archive, "xl/sharedStrings.xml").iterfind("x:si", _NS):
                shared.append("".join(t.text or "" for t in item.iter(f"{{{_NS['x']}}}t")))
        workbook = "xl/workbook.xml"
        targets = _targets(archive, workbook)
        parts: list[tuple[str, str]] = []
        for sheet in _xml(archive, workbook).iterfind("x:sheets/x:sheet", _NS):
            member = targets.get(sheet.get(f"{{{_NS['r']}}}id", ""), "")
            if member not in names:
                continue
            rows: list[list[str]] = []
            for row in _xml(archive, member).iterfind("x:sheetData/x:row", _NS):
                cells: list[str] = []
                for cell in row.iterfind("x:c", _NS):
                    column = _column_index(cell.get("r", ""), len(cells))
                    cells.extend([""] * (column - len(cells)))
                    cells.append(_cell_text(cell, shared))
                rows.append(cells)
            parts += _row_parts([r for r in rows if any(c.strip() for c in r)], f"sheet {sheet.get('name', '')} row")
    return _join(parts)


def _column_index(reference: str, default: int) -> int:
    letters = "".join(ch for ch in reference if ch.isalpha()).upper()
    if not letters:
        return default
    index = 0
    for ch in letters:
        index = index * 26 + ord(ch) - ord("A") + 1
    return min(index - 1, default + 1024)  # a far reference does not make a megabyte of empty cells


def _cell_text(cell: ElementTree.Element, shared: Sequence[str]) -> str:
    kind = cell.get("t")
    if kind == "inlineStr":
        return "".join(t.text or "" for t in cell.iter(f"{{{_NS['x']}}}t"))
    value = cell.findtext("x:v", default="", namespaces=_NS)
    if kind == "s":
        index = int(value) if value.isdigit() else -1
        return shared[index] if 0 <= index < len(shared) else ""
    if kind == "b":
        return "TRUE" if value == "1" else "FALSE"
    return value


def _parse_epub(data: bytes) -> tuple[str, Places]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        rootfile = _xml(archive, "META-INF/container.xml").find("c:rootfiles/c:rootfile", _NS)
        package = rootfile.get("full-path", "") if rootfile is not None else ""
        if package not in archive.namelist():
            raise ServiceError(ErrorCode.DOCUMENT_PROCESSING_ERROR, "the EPUB names no package document")
        opf = _xml(archive, package)
        folder = posixpath.dirname(package)
        manifest = {
            item.get("id", ""): posixpath.normpath(posixpath.join(folder, item.get("href", "")))
            for item in opf.iterfind("opf:manifest/opf:item", _NS)
        }
        names = set(archive.namelist())
        partition = _partitioners()[FileType.HTML]
        parts: list[tuple[str, str]] = []
        for number, ref in enumerate(opf.iterfind("opf:spine/opf:itemref", _NS), start=1):
            member = manifest.get(ref.get("idref", ""), "")
            if member not in names:
                continue
            chapter = _element_parts(partition(archive.read(member)))
            parts += [(label if label != "start" else f"chapter {number}", text) for label, text in chapter]
    return _join(parts)


def _parse_json(data: bytes) -> tuple[str, Places]:
    try:
        value = json.loads(decode_text(data) or "")
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    parts: list[tuple[str, str]] = []
    _json_lines(value, "", parts, 0)
    return _join(parts)


def _json_lines(value: object, path: str, parts: list[tuple[str, str]], depth: int) -> None:
    """One "path: value" line per leaf; each line's place is its top-level key."""
    if depth > _MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            _json_lines(item, f"{path}.{key}" if path else str(key), parts, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_lines(item, f"{path}[{index}]", parts, depth + 1)
    else:
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        top = re.split(r"[.\[]", path, maxsplit=1)[0] if path else "value"
        parts.append((f"field {top}", f"{path}: {shown}" if path else shown))


_OWN_PARSERS: dict[FileType, Callable[[bytes], tuple[str, Places]]] = {
    FileType.PPTX: _parse_pptx,
    FileType.XLSX: _parse_xlsx,
    FileType.EPUB: _parse_epub,
    FileType.JSON: _parse_json,
}
