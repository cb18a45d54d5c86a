"""Google Docs import and export, as far as a standard-library server can take them.

Import keeps the text of the uploaded content (plain text and Markdown as they are; HTML, docx,
ODT and RTF reduced to their text). PDFs and images are accepted, as on Drive, but there is no
OCR here: their documents export as empty text. Export gives `text/plain` the way Drive does
(UTF-8 with a byte-order mark, CRLF line ends), `text/markdown` as the plain text, and
`application/pdf` as a minimal valid PDF of the text.
"""

from __future__ import annotations

import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

DOCUMENT_MIME = "application/vnd.google-apps.document"

# Drive's import formats for Google Docs (about.get importFormats).
IMPORTABLE_TO_DOCUMENT = frozenset(
    {
        "text/plain", "text/markdown", "text/x-markdown", "text/html", "text/richtext",
        "application/rtf", "text/rtf",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.template",
        "application/vnd.ms-word.document.macroenabled.12",
        "application/vnd.ms-word.template.macroenabled.12",
        "application/vnd.oasis.opendocument.text", "application/x-vnd.oasis.opendocument.text",
        "application/pdf",
        "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/gif", "image/bmp",
        "image/x-bmp",
    }
)
# A Google Sheet is imported from CSV and exported as CSV (its first sheet, as Drive does).
SPREADSHEET_MIME = "application/vnd.google-apps.spreadsheet"
IMPORTABLE_TO_SPREADSHEET = frozenset({"text/csv", "text/comma-separated-values"})
EXPORT_CSV = "text/csv"
EXPORT_TEXT = "text/plain"
EXPORT_MARKDOWN = "text/markdown"
EXPORT_PDF = "application/pdf"
EXPORTABLE = (EXPORT_TEXT, EXPORT_MARKDOWN, EXPORT_PDF)

_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml"
_ODT = "opendocument.text"


def imported_text(path: Path, content_type: str) -> str:
    """The text a Google Doc keeps from uploaded content of `content_type`."""
    if content_type.startswith(_DOCX) or content_type.startswith("application/vnd.ms-word"):
        return _zip_xml_text(path, "word/document.xml", "p", "t")
    if content_type.endswith(_ODT):
        return _zip_xml_text(path, "content.xml", "p", None)
    if content_type.startswith("image/") or content_type in ("application/pdf", "application/msword"):
        return ""
    text = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    if content_type in ("text/html", "text/richtext"):
        return _html_text(text)
    if content_type in ("application/rtf", "text/rtf"):
        return _rtf_text(text)
    return text.replace("\r\n", "\n")


def export_text(text: str) -> bytes:
    """`text/plain` export as Drive gives it: a UTF-8 BOM and CRLF line ends."""
    return ("\ufeff" + text.replace("\r\n", "\n").replace("\n", "\r\n")).encode("utf-8")


def export_pdf(text: str) -> bytes:
    """A minimal, valid PDF showing `text` in Helvetica, 60 lines a page."""
    lines = text.replace("\r\n", "\n").split("\n") or [""]
    pages = [lines[i : i + 60] for i in range(0, len(lines), 60)] or [[""]]
    objects: list[bytes] = []
    page_ids = [3 + 2 * n for n in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for pid, page in zip(page_ids, pages):
        shown = "".join(f"({_pdf_escape(line)}) Tj T* " for line in page)
        stream = f"BT /F1 11 Tf 14 TL 50 790 Td {shown}ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {pid + 1} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _pdf_escape(line: str) -> str:
    line = line.encode("latin-1", errors="replace").decode("latin-1")
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _zip_xml_text(path: Path, member: str, paragraph: str, run: str | None) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            root = ElementTree.fromstring(archive.read(member))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError):
        return ""
    paragraphs = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != paragraph:
            continue
        if run is None:
            paragraphs.append("".join(element.itertext()))
        else:
            paragraphs.append(
                "".join(t.text or "" for t in element.iter() if t.tag.rsplit("}", 1)[-1] == run)
            )
    return "\n".join(paragraphs)


class _TextExtractor(HTMLParser):
    _BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "title"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def _html_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return "\n".join(line for line in lines if line)


def _rtf_text(rtf: str) -> str:
    text = re.sub(r"\\par[d]?\s?", "\n", rtf)
    text = re.sub(r"\{\\\*[^{}]*\}|\\[a-z]+-?\d* ?|[{}]", "", text)
    return text.strip()
