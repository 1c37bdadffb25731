"""Real files of every supported type, made in memory for the tests (and the ingestion benchmark)."""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Sequence
from email.message import EmailMessage

from bench.rag_eval.files import epub_bytes, pdf_bytes, pptx_bytes, xlsx_bytes

FACT = "The access code of the Zanzibar vault is 4471."
QUERY = "access code of the Zanzibar vault"

_FILLER = [
    "Quarterly revenue grew in every region, led by strong demand for industrial pumps.",
    "The committee will meet again in March to review the revised budget proposal.",
    "Our hiking club walked twelve kilometres along the river before lunch.",
    "Tomatoes need plenty of sunlight and should be watered early in the morning.",
    "The library extended its opening hours during the examination period.",
]


def make_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """A minimal valid PDF: one Helvetica text line per string, one page per list of lines (the eval's writer)."""
    return pdf_bytes(pages)


def make_docx(paragraphs: Sequence[str], *, heading: str = "Vault notes") -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "site", "status"
    table.cell(1, 0).text, table.cell(1, 1).text = "north gate", "open"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_eml(body: str, *, subject: str = "Vault procedures") -> bytes:
    message = EmailMessage()
    message["From"] = "security@example.com"
    message["To"] = "staff@example.com"
    message["Subject"] = subject
    message["Date"] = "Mon, 02 Mar 2026 09:00:00 +0000"
    message.set_content(body)
    message.add_attachment(b"not read", maintype="application", subtype="octet-stream", filename="blob.bin")
    return message.as_bytes()


def sample(file_type: str, fact: str = FACT) -> tuple[str, bytes]:
    """A file name and real bytes of `file_type` whose text states `fact` among filler."""
    before, after = " ".join(_FILLER[:2]), " ".join(_FILLER[2:])
    if file_type == "pdf":
        return "vault.pdf", make_pdf([["Vault notes", before], [fact, after]])
    if file_type == "docx":
        return "vault.docx", make_docx([before, fact, after])
    if file_type == "eml":
        return "vault.eml", make_eml(f"Hello team,\n\n{before}\n\n{fact}\n\n{after}\n\nRegards")
    if file_type in ("html", "htm"):
        page = (
            "<!doctype html><html><head><title>Vault</title><script>var x = 1;</script></head><body>"
            f"<h1>Vault notes</h1><p>{before}</p><p>{fact}</p><ul><li>{after}</li></ul></body></html>"
        )
        return f"vault.{file_type}", page.encode()
    if file_type == "md":
        return "vault.md", f"# Vault notes\n\n{before}\n\n**Important:** {fact}\n\n- {after}\n".encode()
    if file_type == "csv":
        rows = ["topic,note", f'budget,"{_FILLER[1]}"', f'vault,"{fact}"', f'garden,"{_FILLER[3]}"']
        return "vault.csv", ("\n".join(rows) + "\n").encode()
    if file_type == "txt":
        return "vault.txt", f"Vault notes\n\n{before}\n\n{fact}\n\n{after}\n".encode()
    if file_type == "pptx":
        return "vault.pptx", pptx_bytes([["Vault notes", before], ["Codes", fact, after]])
    if file_type == "xlsx":
        rows = [["topic", "note"], ["budget", _FILLER[1]], ["vault", fact], ["garden", _FILLER[3]]]
        return "vault.xlsx", xlsx_bytes({"Notes": rows})
    if file_type == "json":
        return "vault.json", json.dumps(
            {"title": "Vault notes", "notes": [before, fact], "extra": {"x": after}}
        ).encode()
    if file_type == "epub":
        return "vault.epub", epub_bytes("Vault notes", [("Chapter 1", [before]), ("Chapter 2", [fact, after])])
    raise ValueError(file_type)


def distractors() -> list[tuple[str, bytes]]:
    """Other documents of the same owner, one of them about a different vault and code."""
    return [
        ("garden.txt", "\n\n".join(_FILLER).encode()),
        ("bank.md", b"# Bank\n\nThe bank vault in Geneva opens at nine. Its alarm code changes weekly.\n"),
        ("trip.txt", b"Zanzibar is an archipelago off the coast of Tanzania, known for spices and beaches.\n"),
    ]


def text_pages(count: int, *, lines: int = 40, seed: int = 7) -> list[list[str]]:
    """`count` pages of varied English-like prose, about 3,000 characters each."""
    rng = random.Random(seed)
    words = " ".join(_FILLER).lower().replace(".", "").replace(",", "").split()
    pages = []
    for _ in range(count):
        page = []
        for _ in range(lines):
            line = " ".join(rng.choice(words) for _ in range(rng.randint(10, 14)))
            page.append(line.capitalize() + ".")
        pages.append(page)
    return pages


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# A Windows executable's first bytes: "MZ", the DOS stub, NULs.
EXE = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"\x00" * 48
    + b"This program cannot be run in DOS mode."
)


def many_paragraphs_html(paragraphs: int) -> bytes:
    """A page of `paragraphs` one-word paragraphs: unstructured's HTML parse takes about 75 µs for each
    (200,000: seconds), a slow parse for the sandbox's limits to stop."""
    return ("<html><body>" + "<p>word</p>" * paragraphs + "</body></html>").encode()


def wide_csv(columns: int) -> bytes:
    """One header line of `columns` columns: unstructured's CSV parse grows with the square of the columns."""
    return (",".join(f"c{i}" for i in range(columns)) + "\n").encode()


def lying_docx(real_bytes: int = 100 * 1024 * 1024, claimed_bytes: int = 1000) -> bytes:
    """A DOCX whose word/document.xml holds `real_bytes` but whose ZIP headers claim `claimed_bytes`."""
    import struct

    body = b"A" * (1024 * 1024)
    head = b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _LYING_TYPES)
        archive.writestr("_rels/.rels", _LYING_RELS)
        with archive.open("word/document.xml", "w", force_zip64=False) as member:
            member.write(head)
            for _ in range(real_bytes // len(body)):
                member.write(body)
    data = bytearray(buffer.getvalue())
    name = b"word/document.xml"
    # The local header (uncompressed size at offset 22) and the central directory entry (offset 24).
    local = data.find(b"PK\x03\x04")
    while local >= 0:
        name_length = struct.unpack("<H", data[local + 26 : local + 28])[0]
        if data[local + 30 : local + 30 + name_length] == name:
            data[local + 22 : local + 26] = struct.pack("<I", claimed_bytes)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        name_length = struct.unpack("<H", data[central + 28 : central + 30])[0]
        if data[central + 46 : central + 46 + name_length] == name:
            data[central + 24 : central + 28] = struct.pack("<I", claimed_bytes)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


_LYING_TYPES = (
    '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_LYING_RELS = (
    '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="word/document.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>'
)
