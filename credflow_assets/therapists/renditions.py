"""PDF and Google-Doc renditions of a therapist's upload.

PDFs pass through (after checking they open and are not encrypted); images go through img2pdf
(lossless) or Pillow; office and text documents through LibreOffice headless. Starting
LibreOffice costs about 2 s and converting a small file a fraction of that, so `render_pdfs`
converts all of a run's office files in one LibreOffice call, then checks each file's result on
its own. LibreOffice runs with a profile directory of this process's own (concurrent instances
sharing one profile fail), reused between calls because a profile's first start is slow.
A file that cannot be rendered gets a RenditionError with the reason; the caller keeps the
original and records the reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

# A LibreOffice call may take this long to start, plus this long per file it converts.
LIBREOFFICE_START_SECONDS = 120
LIBREOFFICE_SECONDS_PER_FILE = 60

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


def render_pdfs(sources: list[Path]) -> dict[Path, Path | RenditionError]:
    """A PDF rendition of each source, written next to it as `{stem}.pdf`.

    Returns, for each source, the PDF's path or the RenditionError saying why there is none.
    The office and text files are converted together, in one LibreOffice call.
    """
    results: dict[Path, Path | RenditionError] = {}
    office = [source for source in sources if _kind(source) == "office"]
    for source in sources:
        if source not in office:
            try:
                results[source] = render_pdf(source, source.parent)
            except RenditionError as error:
                results[source] = error
    if office:
        results.update(_office_to_pdfs(office))
    return {source: results[source] for source in sources}


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
        result = _office_to_pdfs([source], output_dir)[source]
        if isinstance(result, RenditionError):
            raise result
        return result
    else:
        raise RenditionError(
            f"unknown file type {source.suffix or '(no extension)'}: only PDFs, images and "
            "office documents are rendered"
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


def _office_to_pdfs(sources: list[Path],
                    output_dir: Path | None = None) -> dict[Path, Path | RenditionError]:
    """Convert `sources` in one LibreOffice call; each PDF goes to `output_dir` (default: next
    to its source) as `{stem}.pdf`, after its own check.

    A file the batch did not convert is converted again on its own, so one file that
    LibreOffice chokes on (or a batch that times out) costs only that file its PDF, and its
    error is that file's own.
    """
    try:
        soffice = _soffice()
    except RenditionError as error:
        return {source: error for source in sources}
    results: dict[Path, Path | RenditionError] = {}
    with tempfile.TemporaryDirectory(prefix="credflow-lo-batch-") as batch:
        inbox, outbox = Path(batch) / "in", Path(batch) / "out"
        inbox.mkdir()
        # One --outdir for the whole batch: an index keeps `cv.txt` and `cv.docx` (or two
        # therapists' `cv.txt`) from writing the same PDF.
        staged = {source: _stage(source, inbox / f"{index:05d}-{source.name}")
                  for index, source in enumerate(sources)}
        problem = _run_soffice(soffice, list(staged.values()), outbox)
        for source, copy in staged.items():
            converted = outbox / f"{copy.stem}.pdf"
            target = (output_dir or source.parent) / f"{source.stem}.pdf"
            if converted.exists() and converted.stat().st_size > 0:
                shutil.move(converted, target)
                try:
                    _check_pdf(target, what="the converted PDF")
                    results[source] = target
                except RenditionError as error:
                    results[source] = error
            elif len(sources) > 1:
                results.update(_office_to_pdfs([source], output_dir))
            else:
                results[source] = RenditionError(
                    f"LibreOffice could not convert {source.name}{problem}")
    return results


def _soffice() -> str:
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        raise RenditionError(
            "LibreOffice is not installed (apt-get install libreoffice-writer-nogui)"
        )
    return soffice


def _stage(source: Path, copy: Path) -> Path:
    try:
        os.link(source, copy)  # no bytes copied; a symlink would give LibreOffice the target's name
    except OSError:
        shutil.copyfile(source, copy)
    return copy


def _run_soffice(soffice: str, files: list[Path], outdir: Path) -> str:
    """One `soffice --convert-to pdf` call. Returns what explains a file it did not convert:
    ": {LibreOffice's last line}", the timeout, or the exit status."""
    timeout = LIBREOFFICE_START_SECONDS + LIBREOFFICE_SECONDS_PER_FILE * len(files)
    with _PROFILE_LOCK:
        profile = _profile_dir()
        # A new session, so a timeout kills soffice.bin too, not only the oosplash launcher.
        process = subprocess.Popen(
            [soffice, f"-env:UserInstallation={Path(profile).as_uri()}", "--headless",
             "--norestore", "--nolockcheck", "--convert-to", "pdf", "--outdir", str(outdir),
             *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            _discard_profile()  # a killed instance may leave its profile locked or half-written
            return f": LibreOffice did not finish within {timeout}s"
        if process.returncode != 0:
            _discard_profile()
    detail = (stderr or stdout).strip().splitlines()
    return f": {detail[-1]}" if detail else f" (exit status {process.returncode})"


# One LibreOffice profile per process, used by one call at a time: created on first use,
# removed at exit, and replaced after a call that failed.
_PROFILE_LOCK = threading.Lock()
_profile: dict[int, str] = {}


def _profile_dir() -> str:
    pid = os.getpid()  # a forked child must not share its parent's profile
    if pid not in _profile:
        _profile[pid] = tempfile.mkdtemp(prefix=f"credflow-lo-profile-{pid}-")
        atexit.register(shutil.rmtree, _profile[pid], True)
    return _profile[pid]


def _discard_profile() -> None:
    path = _profile.pop(os.getpid(), None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
