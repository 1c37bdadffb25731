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
import logging
import os
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


EXTENSIONS: dict[str, FileType] = {
    ".pdf": FileType.PDF,
    ".txt": FileType.TXT,
    ".docx": FileType.DOCX,
    ".html": FileType.HTML,
    ".htm": FileType.HTML,
    ".md": FileType.MD,
    ".csv": FileType.CSV,
    ".eml": FileType.EML,
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
    """The extracted text of one file; `page_starts` holds each page's first character (PDFs only)."""

    file_type: FileType
    text: str
    page_starts: tuple[int, ...] = ()

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
    elif file_type is FileType.DOCX:
        _check_docx(display, data, max_unpacked_bytes)
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
        if file_type is FileType.DOCX:
            _check_docx_members(display, data, self.max_unpacked_bytes)
        try:
            if file_type is FileType.PDF:
                parsed = _parse_pdf(display, data)
            else:
                parsed = ParsedDocument(file_type, _parse_with_unstructured(file_type, data))
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
    return ParsedDocument(FileType.PDF, "\n\n".join(parts), tuple(starts))


def _parse_with_unstructured(file_type: FileType, data: bytes) -> str:
    partition = _partitioners()[file_type]
    elements = partition(data)
    text = "\n\n".join(t for t in (_element_text(e) for e in elements) if t)
    if file_type is FileType.EML:
        # unstructured gives the body only; the subject is what people search an email by.
        headers = BytesHeaderParser(policy=default_email_policy).parsebytes(data)
        subject = str(headers.get("subject", "") or "").strip()
        if subject:
            text = f"Subject: {subject}\n\n{text}" if text else f"Subject: {subject}"
    return _normalize(text)


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


def _check_docx(display: str, data: bytes, max_unpacked_bytes: int) -> None:
    if not data.startswith(b"PK\x03\x04"):
        raise _mismatch(display, FileType.DOCX, data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ServiceError(
            ErrorCode.DOCUMENT_PROCESSING_ERROR, f"{display} is a damaged DOCX (its ZIP container is broken)"
        ) from exc
    names = {info.filename for info in infos}
    if "word/document.xml" not in names:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"{display} is a ZIP archive but not a Word document (no word/document.xml)",
        )
    if sum(info.file_size for info in infos) > max_unpacked_bytes:
        raise ServiceError(
            ErrorCode.DOCUMENT_PROCESSING_ERROR,
            f"{display} unpacks to more than {max_unpacked_bytes // (1024 * 1024)} MiB",
        )


def _check_docx_members(display: str, data: bytes, max_unpacked_bytes: int) -> None:
    """Inflate every member in bounded pieces, as far as its header says, and check it against its checksum.

    The sizes `_check_docx` adds up are what the headers claim. zipfile stops a member at its claimed size,
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
            f"{display} is a damaged DOCX: its ZIP entry {_quote(name)} does not match its header (size or checksum)",
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
    if isinstance(exc, UnicodeError):
        return "its text encoding is broken"
    # Anything else is an internal error of some parser (a KeyError, an AttributeError...): the log has it.
    return f"the file is damaged or not valid {file_type.upper()}"
