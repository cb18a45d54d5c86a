"""Demo data for the MPF audit: the "old system" MPF that source doc 000 describes.

Seeds, idempotently:

- the therapist directory: Nicholas Lamb and Nicholas Lambert, two different Erin Adams, Ann
  O'Brien, José Núñez, and the therapists of the doc's nesting-doll reports;
- their signup uploads in S3, `{therapist_id}/{file}`: a tiny PDF, PNG and text file each;
- the MPF as the name-based system left it: `Last, First` folders without the id appProperty;
  `Lambert, Nicholas` holding Lambert's files *and* Lamb's (found by `name contains 'Lamb'`);
  the nesting dolls `Abdullah, Katrina` ⊃ `Adams, Erin` ⊃ `Adler, Brooke` and
  `Acosta, Marlou` ⊃ `Abraham, Joel`, `Cunningham, Paul`; twin `O'Brien, Ann` folders (these do
  carry the id: two racing runs created both); José Núñez's CV and all of Shawn Abraham's uploads
  never reached Drive.

Every seeded folder carries `credflow_seed=old_system` and a `credflow_seed_folder` slug, so a
partly seeded MPF is completed rather than duplicated; when done, the MPF root itself is marked
`credflow_seed=old_system`, and later calls leave Drive alone (the repair may have tidied it).
"""

from __future__ import annotations

import datetime as dt
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from credflow_assets.resources.drive import FOLDER_MIME, DriveResource, escape_query_literal
from credflow_assets.therapists import directory, mpf
from credflow_assets.therapists.renditions import mime_type_of

SEED_MARKER = "credflow_seed"
SEED_VALUE = "old_system"
SEED_FOLDER = "credflow_seed_folder"

# (id, first name, last name)
THERAPISTS: tuple[tuple[str, str, str], ...] = (
    ("t-1001", "Nicholas", "Lamb"),
    ("t-1002", "Nicholas", "Lambert"),
    ("t-1003", "Erin", "Adams"),
    ("t-1004", "Erin", "Adams"),  # a different therapist with the same name
    ("t-1005", "Ann", "O'Brien"),
    ("t-1006", "José", "Núñez"),
    ("t-1007", "Katrina", "Abdullah"),
    ("t-1008", "Shawn", "Abraham"),
    ("t-1009", "Brooke", "Adler"),
    ("t-1010", "Marlou", "Acosta"),
    ("t-1011", "Joel", "Abraham"),
    ("t-1012", "Paul", "Cunningham"),
)
UPLOADS = ("license.pdf", "headshot.png", "cv.txt")


@dataclass(frozen=True)
class _FolderSpec:
    slug: str
    name: str
    keys: tuple[str, ...]  # S3 keys whose originals the old system put here, oldest first
    children: tuple[_FolderSpec, ...] = ()
    therapist_id: str | None = None  # only the O'Brien twins carry the id
    note: str = ""


def _all(therapist_id: str) -> tuple[str, ...]:
    return tuple(f"{therapist_id}/{name}" for name in UPLOADS)


OLD_SYSTEM_MPF: tuple[_FolderSpec, ...] = (
    _FolderSpec(
        "lambert", "Lambert, Nicholas", _all("t-1002") + _all("t-1001"),
        note="Lambert's files, then Lamb's: `name contains 'Lamb'` found Lambert's folder",
    ),
    _FolderSpec(
        "abdullah", "Abdullah, Katrina", _all("t-1007"),
        children=(
            _FolderSpec("adams-t-1003", "Adams, Erin", _all("t-1003"), children=(
                _FolderSpec("adler", "Adler, Brooke", _all("t-1009")),
            )),
        ),
        note="nesting dolls",
    ),
    _FolderSpec(
        "acosta", "Acosta, Marlou", _all("t-1010"),
        children=(
            _FolderSpec("abraham-joel", "Abraham, Joel", _all("t-1011")),
            _FolderSpec("cunningham", "Cunningham, Paul", _all("t-1012")),
        ),
        note="nesting dolls",
    ),
    _FolderSpec("adams-t-1004", "Adams, Erin", _all("t-1004"),
                note="the other Erin Adams, same folder name"),
    _FolderSpec("nunez", "Núñez, José", ("t-1006/license.pdf", "t-1006/headshot.png"),
                note="the CV never reached Drive"),
    _FolderSpec("obrien-1", "O'Brien, Ann", ("t-1005/license.pdf", "t-1005/headshot.png"),
                therapist_id="t-1005", note="twin folders from two racing runs"),
    _FolderSpec("obrien-2", "O'Brien, Ann", ("t-1005/cv.txt", "t-1005/license.pdf"),
                therapist_id="t-1005", note="twin folders from two racing runs"),
)


def seed_old_system_mpf(
    drive: DriveResource,
    root_id: str,
    directory_engine: sa.Engine,
    s3_client: Any,
    signup_bucket: str,
) -> list[str]:
    """Seed the directory, the signup uploads and the old-system MPF under `root_id`; returns a
    line per thing seeded. A second call adds nothing."""
    lines = [_seed_directory(directory_engine)]
    etags, added = _seed_uploads(s3_client, signup_bucket)
    lines.append(f"s3://{signup_bucket}: {len(etags)} uploads of {len(THERAPISTS)} therapists "
                 f"({added} added)")
    root = drive.get_file(root_id, fields=mpf.ITEM_FIELDS)
    if (root.get("appProperties") or {}).get(SEED_MARKER) == SEED_VALUE:
        lines.append(f"drive: the old-system MPF under {root_id} was seeded before; left as is")
        return lines
    names = {therapist_id: f"{first} {last}" for therapist_id, first, last in THERAPISTS}
    with tempfile.TemporaryDirectory(prefix="credflow-seed-mpf-") as work:
        for spec in OLD_SYSTEM_MPF:
            _seed_folder(drive, root_id, spec, etags, names, Path(work), lines, [])
    drive.update_file(root_id, app_properties={SEED_MARKER: SEED_VALUE})
    return lines


def _seed_directory(engine: sa.Engine) -> str:
    directory.metadata.create_all(engine)
    table = directory.therapists_table
    ids = [therapist_id for therapist_id, _, _ in THERAPISTS]
    added = updated = 0
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as connection:
        existing = {
            row.id: (row.first_name, row.last_name)
            for row in connection.execute(
                sa.select(table.c.id, table.c.first_name, table.c.last_name)
                .where(table.c.id.in_(ids))
            )
        }
        for therapist_id, first, last in THERAPISTS:
            if therapist_id not in existing:
                connection.execute(table.insert().values(
                    id=therapist_id, first_name=first, last_name=last,
                    email=f"{therapist_id}@therapists.example", updated_at=now,
                ))
                added += 1
            elif existing[therapist_id] != (first, last):
                connection.execute(table.update().where(table.c.id == therapist_id).values(
                    first_name=first, last_name=last, updated_at=now,
                ))
                updated += 1
    return f"directory: {len(THERAPISTS)} therapists ({added} added, {updated} updated)"


def _seed_uploads(client: Any, bucket: str) -> tuple[dict[str, str], int]:
    """Put each therapist's uploads that are not there yet; returns ({key: etag}, added)."""
    from botocore.exceptions import ClientError

    etags: dict[str, str] = {}
    added = 0
    for therapist_id, first, last in THERAPISTS:
        for name in UPLOADS:
            key = f"{therapist_id}/{name}"
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey",
                                                                          "NotFound"}:
                    raise
                head = None
            if head is None:
                put = client.put_object(Bucket=bucket, Key=key, ContentType=mime_type_of(name),
                                        Body=_content(name, f"{first} {last}", therapist_id))
                etags[key] = put["ETag"].strip('"')
                added += 1
            else:
                etags[key] = head["ETag"].strip('"')
    return etags, added


def _content(name: str, full_name: str, therapist_id: str) -> bytes:
    """Small real files: a one-page PDF, an 8×8 PNG, a text CV."""
    suffix = Path(name).suffix
    buffer = io.BytesIO()
    if suffix == ".pdf":
        from pypdf import PdfWriter

        writer = PdfWriter()
        writer.add_blank_page(width=200, height=200)
        writer.add_metadata({"/Title": f"License of {full_name} ({therapist_id})"})
        writer.write(buffer)
    elif suffix == ".png":
        from PIL import Image

        shade = int(therapist_id.rsplit("-", 1)[-1]) % 256
        Image.new("RGB", (8, 8), (shade, 120, 200)).save(buffer, "PNG")
    else:
        buffer.write(f"Curriculum vitae of {full_name} (therapist {therapist_id})\n".encode())
    return buffer.getvalue()


def _seed_folder(
    drive: DriveResource,
    parent_id: str,
    spec: _FolderSpec,
    etags: dict[str, str],
    names: dict[str, str],
    work: Path,
    lines: list[str],
    path: list[str],
) -> None:
    folder = _find_seeded(drive, parent_id, spec.slug)
    created = folder is None
    if folder is None:
        properties = {SEED_MARKER: SEED_VALUE, SEED_FOLDER: spec.slug}
        if spec.therapist_id:
            properties[mpf.THERAPIST_ID] = spec.therapist_id
        folder = drive.create_folder(spec.name, parent_id, app_properties=properties)
    uploaded = 0
    for key in spec.keys:
        therapist_id, _, name = key.partition("/")
        if _has_original(drive, folder["id"], key):
            continue
        local = work / therapist_id / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(_content(name, names[therapist_id], therapist_id))
        # Stamped as the old system's uploads were: the file knows its therapist and upload.
        drive.upload_file(local, name, folder["id"], mime_type=mime_type_of(name),
                          app_properties=mpf.file_properties(therapist_id, key, etags[key],
                                                             "original"))
        uploaded += 1
    owners = ", ".join(
        f"{owner} {names[owner]}" for owner in dict.fromkeys(k.partition("/")[0] for k in spec.keys)
    )
    where = " / ".join([*path, spec.name])
    id_text = f"id {spec.therapist_id}" if spec.therapist_id else "no id"
    lines.append(
        f"drive: '{where}' ({id_text}{', created' if created else ''}): {uploaded} of "
        f"{len(spec.keys)} file(s) added, of {owners}" + (f" — {spec.note}" if spec.note else "")
    )
    for child in spec.children:
        _seed_folder(drive, folder["id"], child, etags, names, work, lines, [*path, spec.name])


def _find_seeded(drive: DriveResource, parent_id: str, slug: str) -> dict | None:
    found = drive.find_children_by_app_property(parent_id, SEED_FOLDER, slug,
                                                mime_type=FOLDER_MIME)
    return found[0] if found else None


def _has_original(drive: DriveResource, folder_id: str, key: str) -> bool:
    q = (
        f"'{escape_query_literal(folder_id)}' in parents and trashed = false"
        f" and appProperties has {{ key='{mpf.SOURCE}' and value='{mpf.source_id(key)}' }}"
        f" and appProperties has {{ key='{mpf.RENDITION}' and value='original' }}"
    )
    return any(True for _ in drive.list_files(q, fields="id"))
