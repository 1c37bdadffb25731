"""Parsing real files of each supported type, and refusing what is not one (no model needed)."""

from __future__ import annotations

import codecs
import time

import pytest

from inference_api.documents.parsing import (
    DocumentParser,
    FileType,
    decode_text,
    detect_file_type,
    sanitize_filename,
)
from inference_api.errors import ErrorCode, ServiceError
from tests.documents.samples import EXE, FACT, lying_docx, make_docx, make_pdf, sample, zip_bytes

ALL_TYPES = ["pdf", "txt", "docx", "html", "htm", "md", "csv", "eml", "pptx", "xlsx", "json", "epub"]


@pytest.fixture(scope="module")
def parser() -> DocumentParser:
    return DocumentParser()


def refused(parser: DocumentParser, name: str, data: bytes) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        parser.parse(name, data)
    return caught.value


@pytest.mark.parametrize("file_type", ALL_TYPES)
def test_every_type_is_extracted_offline(parser: DocumentParser, file_type: str) -> None:
    name, data = sample(file_type)
    parsed = parser.parse(name, data)
    assert parsed.file_type == FileType("html" if file_type == "htm" else file_type)
    assert FACT in parsed.text
    # Markup, scripts and attachments stay out of the text.
    assert "<" not in parsed.text and "var x" not in parsed.text and "not read" not in parsed.text


def test_pdf_pages_are_recorded(parser: DocumentParser) -> None:
    parsed = parser.parse("two.pdf", make_pdf([["first page"], ["second page"]]))
    assert parsed.pages == 2
    assert parsed.text[parsed.page_starts[1] :].startswith("second page")


def test_tables_keep_their_rows(parser: DocumentParser) -> None:
    # Each row of a table is a line, each cell named by its column's header.
    assert "topic: vault | note: The access code of the Zanzibar vault is 4471." in parser.parse(*sample("csv")).text
    assert "topic: vault | note: The access code of the Zanzibar vault is 4471." in parser.parse(*sample("xlsx")).text
    assert "north gate | open" in parser.parse(*sample("docx")).text


def test_email_subject_is_part_of_the_text(parser: DocumentParser) -> None:
    assert parser.parse(*sample("eml")).text.startswith("Subject: Vault procedures")


def test_text_encodings(parser: DocumentParser) -> None:
    assert parser.parse("a.txt", "Café crème at the vault".encode("cp1252")).text == "Café crème at the vault"
    utf16 = codecs.BOM_UTF16_LE + "Zanzibar façade".encode("utf-16-le")
    assert parser.parse("a.txt", utf16).text == "Zanzibar façade"
    assert decode_text(b"ok\x00binary") is None


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("setup.pdf", EXE, "Windows executable"),
        ("notes.txt", EXE, "Windows executable"),
        ("report.docx", EXE, "Windows executable"),
        ("mail.eml", EXE, "Windows executable"),
        ("report.pdf", b"just some text pretending", "plain text"),
        ("notes.txt", make_pdf([["hello"]]), "PDF document"),
        ("report.docx", make_pdf([["hello"]]), "PDF document"),
        ("page.html", b"\x7fELF\x02\x01\x01" + bytes(range(256)), "ELF executable"),
        ("sheet.csv", bytes(range(256)) * 4, "binary data"),
        ("report.docx", zip_bytes({"xl/workbook.xml": b"<x/>"}), "not a Word document"),
        ("mail.eml", b"Hello there, this is not an email at all.\n", "no email headers"),
    ],
)
def test_content_must_match_the_name(parser: DocumentParser, name: str, data: bytes, says: str) -> None:
    error = refused(parser, name, data)
    assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert says in error.message


@pytest.mark.parametrize("name", ["tool.exe", "archive.zip", "README", "photo.png", "notes.PDF.exe", "x." + "y" * 40])
def test_unsupported_extensions(parser: DocumentParser, name: str) -> None:
    error = refused(parser, name, b"hello")
    assert error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert ".pdf" in error.message  # it lists what is supported


def test_extension_case_does_not_matter(parser: DocumentParser) -> None:
    assert detect_file_type("NOTES.TXT", b"hello") is FileType.TXT
    assert detect_file_type("Page.HTM", b"<p>hello</p>") is FileType.HTML


@pytest.mark.parametrize("file_type", ALL_TYPES)
def test_empty_files(parser: DocumentParser, file_type: str) -> None:
    error = refused(parser, f"empty.{file_type}", b"")
    assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "empty" in error.message


def test_corrupt_pdf(parser: DocumentParser) -> None:
    good = make_pdf([["hello"]])
    for data in (b"%PDF-1.7\n" + b"\xde\xad\xbe\xef" * 64, good[: len(good) // 2], b"%PDF-1.4\n%%EOF\n"):
        error = refused(parser, "broken.pdf", data)
        assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR, data[:40]
        assert "broken.pdf" in error.message


def test_pdf_without_text(parser: DocumentParser) -> None:
    error = refused(parser, "scan.pdf", make_pdf([[], []]))
    assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "no extractable text" in error.message


def test_encrypted_pdf(parser: DocumentParser) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["secret"]]))))
    writer.encrypt("hunter2", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    error = refused(parser, "locked.pdf", buffer.getvalue())
    assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "password" in error.message


def test_corrupt_docx(parser: DocumentParser) -> None:
    good = make_docx(["hello"])
    truncated = refused(parser, "cut.docx", good[: len(good) // 2])
    assert truncated.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    broken_xml = zip_bytes({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document><unclosed"})
    error = refused(parser, "bad.docx", broken_xml)
    assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "bad.docx" in error.message


def test_docx_that_unpacks_too_far() -> None:
    bomb = zip_bytes({"word/document.xml": b"<w:document/>", "word/media/pad.bin": b"\x00" * (4 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024
    with pytest.raises(ServiceError) as caught:
        DocumentParser(max_unpacked_bytes=1024 * 1024).parse("bomb.docx", bomb)
    assert caught.value.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "unpacks to more than" in caught.value.message


@pytest.mark.parametrize("file_type", ["txt", "md", "html", "csv"])
def test_whitespace_only(parser: DocumentParser, file_type: str) -> None:
    error = refused(parser, f"blank.{file_type}", b" \n\n\t \n")
    assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("..\\..\\windows\\system32\\notes.txt", "notes.txt"),
        ("/abs/path/report.pdf", "report.pdf"),
        ("evil\x00name.txt", "evilname.txt"),
        ("bell\x07and\nnewline.md", "bellandnewline.md"),
        ("right\u202eto-left.txt", "rightto-left.txt"),
        ("", "unnamed"),
        ("..", "unnamed"),
        ("../", "unnamed"),
        ("  spaced name.csv  ", "spaced name.csv"),
    ],
)
def test_hostile_file_names_are_sanitized(name: str, shown: str) -> None:
    assert sanitize_filename(name) == shown


def test_long_file_names_keep_their_extension(parser: DocumentParser) -> None:
    name = "a" * 300 + ".txt"
    shown = sanitize_filename(name)
    assert len(shown) == 255 and shown.endswith(".txt")
    assert parser.parse(name, b"hello there").text == "hello there"


def test_docx_whose_zip_headers_lie_is_refused_cheaply(parser: DocumentParser) -> None:
    # Issue 19: a member claiming 1000 bytes but holding 100 MB was inflated whole (seconds of CPU, and
    # the memory) before its checksum failed; read a piece at a time, the lie shows at the claimed size.
    data = lying_docx()
    started = time.process_time()
    error = refused(parser, "lying.docx", data)
    assert time.process_time() - started < 1.0
    assert error.code is ErrorCode.DOCUMENT_PROCESSING_ERROR
    assert "does not match its header" in error.message
