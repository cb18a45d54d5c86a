"""PDF and Google-Doc renditions of a therapist's upload.

PDFs pass through (after checking they open and are not encrypted); images go through img2pdf
(lossless) or Pillow; office and text documents through LibreOffice headless, each conversion in
its own profile directory because concurrent LibreOffice instances sharing one profile fail.
A file that cannot be rendered raises RenditionError with the reason; the caller keeps the
original and records the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

LIBREOFFICE_TIMEOUT_SECONDS = 180

GOOGLE_DOC_MIME_TYPE = "application/vnd.google-apps.document"

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif", ".gif", ".bmp",
                  ".webp"}
OFFICE_SUFFIXES = {".doc", ".docx", ".odt", ".rtf", ".txt", ".text", ".html", ".htm"}

# What Drive imports as a Google Doc (Drive's import formats for documents).
GOOGLE_DOC_SOURCES = {
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".rtf": "application/rtf",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
}

MIME_TYPES = {
    ".pdf": "application/pdf",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    **GOOGLE_DOC_SOURCES,
}


class RenditionError(Exception):
    """This file has no rendition of this kind; the message says why."""


def mime_type_of(name: str) -> str:
    return MIME_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def google_doc_source_type(name: str) -> str:
    """The MIME type to upload for conversion to a Google Doc, or RenditionError why not."""
    suffix = Path(name).suffix.lower()
    if suffix not in GOOGLE_DOC_SOURCES:
        raise RenditionError(
            f"Drive does not import {suffix or 'files without an extension'} as a Google Doc"
        )
    return GOOGLE_DOC_SOURCES[suffix]


def render_pdf(source: Path, output_dir: Path) -> Path:
    """Write a PDF rendition of `source` into `output_dir` and return its path."""
    kind = _kind(source)
    target = output_dir / f"{source.stem}.pdf"
    if kind == "pdf":
        _check_pdf(source, what="the upload")
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        return target
    if kind == "image":
        _image_to_pdf(source, target)
    elif kind == "office":
        _office_to_pdf(source, output_dir, target)
    else:
        raise RenditionError(
            f"unknown file type {source.suffix or '(no extension)'}: no PDF rendition"
        )
    _check_pdf(target, what="the converted PDF")
    return target


def _kind(source: Path) -> str:
    with open(source, "rb") as handle:
        head = handle.read(8)
    suffix = source.suffix.lower()
    if head.startswith(b"%PDF") or suffix == ".pdf":
        return "pdf"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in OFFICE_SUFFIXES:
        return "office"
    return "unknown"


def _check_pdf(path: Path, *, what: str) -> None:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise RenditionError(f"{what} is an encrypted PDF and cannot be opened")
        if len(reader.pages) < 1:
            raise RenditionError(f"{what} is a PDF with no pages")
    except RenditionError:
        raise
    except (PdfReadError, ValueError, OSError, KeyError, TypeError) as error:
        raise RenditionError(f"{what} is not a readable PDF: {error}") from None


def _image_to_pdf(source: Path, target: Path) -> None:
    import img2pdf
    from PIL import Image, UnidentifiedImageError

    if source.suffix.lower() in {".heic", ".heif"}:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    try:
        # img2pdf embeds JPEG, PNG and TIFF without re-encoding; images it refuses (alpha
        # channels, HEIC, palettes) are flattened to RGB by Pillow instead.
        with open(target, "wb") as out:
            out.write(img2pdf.convert(str(source)))
        return
    except Exception:
        target.unlink(missing_ok=True)
    try:
        with Image.open(source) as image:
            image.load()
            image.convert("RGB").save(target, "PDF")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise RenditionError(f"image cannot be read: {error}") from None


def _office_to_pdf(source: Path, output_dir: Path, target: Path) -> None:
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        raise RenditionError(
            "LibreOffice is not installed (apt-get install libreoffice-writer-nogui)"
        )
    with tempfile.TemporaryDirectory(prefix="credflow-lo-") as profile:
        try:
            completed = subprocess.run(
                [soffice, f"-env:UserInstallation=file://{profile}", "--headless",
                 "--norestore", "--nolockcheck", "--convert-to", "pdf",
                 "--outdir", str(output_dir), str(source)],
                capture_output=True, text=True, timeout=LIBREOFFICE_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            raise RenditionError(
                f"LibreOffice did not finish within {LIBREOFFICE_TIMEOUT_SECONDS}s"
            ) from None
    if not target.exists() or target.stat().st_size == 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise RenditionError(
            "LibreOffice could not convert it"
            + (f": {detail[-1]}" if detail else f" (exit status {completed.returncode})")
        )
