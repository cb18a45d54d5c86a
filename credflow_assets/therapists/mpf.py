"""Magically Processed Folders: one Drive folder per therapist, found by id, never by name.

The source system found folders by *name* (`name contains 'Lamb'` also finds `Lambert`), and a
lookup not restricted to the MPF root could return a folder elsewhere, nesting one therapist
inside another. Here a folder belongs to a therapist because it carries the therapist's id in
`appProperties`, and it is looked up only among the MPF root's direct children. Its name is a
label, `{last}_{first}_{id}`, kept in step with the directory.

Creation is find-or-create without a distributed lock, made safe the way public reports of twin
folders were cured: after creating, look again by id; if two folders exist (two runs raced, or
the old system made one), keep the oldest and merge the others into it. Every file uploaded
carries its own identity (therapist id, S3 key, etag, rendition), so uploading is idempotent in
the same way, and racing uploads collapse to one file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from credflow_assets.resources.drive import (
    FOLDER_MIME,
    DriveError,
    DriveResource,
    escape_query_literal,
)
from credflow_assets.therapists.directory import Therapist

THERAPIST_ID = "credflow_therapist_id"
SOURCE = "credflow_source"  # hash of the S3 key: the lookup key, always short enough
S3_KEY = "credflow_s3_key"  # the S3 key itself, when it fits Drive's 124-byte property limit
ETAG = "credflow_etag"
RENDITION = "credflow_rendition"

RENDITIONS = ("original", "pdf", "gdoc")
_PROPERTY_LIMIT_BYTES = 124
ITEM_FIELDS = "id,name,mimeType,parents,appProperties,createdTime,modifiedTime,webViewLink,trashed"


def folder_label(therapist: Therapist) -> str:
    """`{last}_{first}_{id}`: unique by construction, readable by the success team."""
    return f"{therapist.last_name.strip()}_{therapist.first_name.strip()}_{therapist.id}"


def source_id(s3_key: str) -> str:
    return hashlib.sha256(s3_key.encode()).hexdigest()[:32]


def file_properties(therapist_id: str, s3_key: str, etag: str, rendition: str) -> dict[str, str]:
    properties = {THERAPIST_ID: therapist_id, SOURCE: source_id(s3_key), ETAG: etag,
                  RENDITION: rendition}
    if len(S3_KEY.encode()) + len(s3_key.encode()) <= _PROPERTY_LIMIT_BYTES:
        properties[S3_KEY] = s3_key
    return properties


def oldest_first(items: list[dict]) -> list[dict]:
    # createdTime decides; the id breaks ties so every racing run picks the same keeper.
    return sorted(items, key=lambda item: (item.get("createdTime", ""), item["id"]))


@dataclass
class FolderResolution:
    folder: dict
    created: bool = False
    renamed_from: str | None = None
    merged_folder_ids: list[str] = field(default_factory=list)


def find_therapist_folders(drive: DriveResource, root_id: str, therapist_id: str) -> list[dict]:
    """The therapist's folders among the MPF root's direct children (normally exactly one)."""
    found = drive.find_children_by_app_property(
        root_id, THERAPIST_ID, therapist_id, mime_type=FOLDER_MIME
    )
    return oldest_first(found)


def ensure_therapist_folder(
    drive: DriveResource, root_id: str, therapist: Therapist
) -> FolderResolution:
    """Find the therapist's folder by id (creating it once), merge any twins, fix its label."""
    label = folder_label(therapist)
    folders = find_therapist_folders(drive, root_id, therapist.id)
    created = False
    if not folders:
        drive.create_folder(label, root_id, app_properties={THERAPIST_ID: therapist.id})
        created = True
        # Look again: a run racing this one may have created a twin in the meantime.
        folders = find_therapist_folders(drive, root_id, therapist.id)
    keeper, twins = folders[0], folders[1:]
    resolution = FolderResolution(folder=keeper, created=created and not twins)
    for twin in twins:
        merge_folder_into(drive, twin, keeper)
        resolution.merged_folder_ids.append(twin["id"])
    if keeper["name"] != label:
        resolution.renamed_from = keeper["name"]
        resolution.folder = drive.update_file(keeper["id"], name=label)
    return resolution


def list_children(drive: DriveResource, folder_id: str, *, folders_only: bool = False) -> list[dict]:
    query = f"'{_escape(folder_id)}' in parents and trashed = false"
    if folders_only:
        query += f" and mimeType = '{FOLDER_MIME}'"
    return list(drive.list_files(query, fields=ITEM_FIELDS))


def merge_folder_into(drive: DriveResource, source: dict, target: dict) -> int:
    """Move everything in `source` into `target`, then delete the emptied `source`.

    Files that then exist twice in `target` (the same upload and rendition) collapse to the
    oldest. Tolerates a concurrent run doing the same merge.
    """
    moved = 0
    for child in list_children(drive, source["id"]):
        if _move(drive, child["id"], source["id"], target["id"]):
            moved += 1
    try:
        drive.delete_file(source["id"])
    except DriveError as error:
        if error.status != 404:
            raise
    collapse_duplicate_files(drive, target["id"])
    return moved


def collapse_duplicate_files(drive: DriveResource, folder_id: str) -> list[str]:
    """Delete younger copies of the same (source, rendition) in a folder; returns deleted ids."""
    by_identity: dict[tuple[str, str, str], list[dict]] = {}
    for child in list_children(drive, folder_id):
        properties = child.get("appProperties") or {}
        if SOURCE in properties and RENDITION in properties:
            identity = (properties.get(THERAPIST_ID, ""), properties[SOURCE],
                        properties[RENDITION])
            by_identity.setdefault(identity, []).append(child)
    deleted = []
    for copies in by_identity.values():
        for younger in oldest_first(copies)[1:]:
            _delete_quietly(drive, younger["id"])
            deleted.append(younger["id"])
    return deleted


@dataclass
class PlacedFile:
    rendition: str
    file: dict
    action: str  # "uploaded", "replaced" or "unchanged"


def place_file(
    drive: DriveResource,
    folder_id: str,
    *,
    therapist_id: str,
    s3_key: str,
    etag: str,
    rendition: str,
    local_path: str,
    name: str,
    mime_type: str,
    convert_to: str | None = None,
) -> PlacedFile:
    """Put one rendition of one upload in the folder: upload, replace a stale one, or skip."""
    existing = _find_placed(drive, folder_id, s3_key, rendition)
    properties = file_properties(therapist_id, s3_key, etag, rendition)
    if existing:
        current = existing[0]
        for duplicate in existing[1:]:
            _delete_quietly(drive, duplicate["id"])
        if (current.get("appProperties") or {}).get(ETAG) == etag:
            return PlacedFile(rendition, current, "unchanged")
        if convert_to is None:
            updated = drive.update_file(current["id"], name=name, app_properties=properties,
                                        local_path=local_path, mime_type=mime_type)
            return PlacedFile(rendition, updated, "replaced")
        # A Google Doc is re-imported rather than overwritten: delete, then upload anew.
        _delete_quietly(drive, current["id"])
    uploaded = drive.upload_file(local_path, name, folder_id, mime_type=mime_type,
                                 convert_to=convert_to, app_properties=properties)
    # A racing run may have uploaded the same rendition: keep the oldest copy only.
    copies = _find_placed(drive, folder_id, s3_key, rendition)
    keeper = copies[0] if copies else uploaded
    for duplicate in copies[1:]:
        _delete_quietly(drive, duplicate["id"])
    return PlacedFile(rendition, keeper, "replaced" if existing else "uploaded")


def _find_placed(drive: DriveResource, folder_id: str, s3_key: str, rendition: str) -> list[dict]:
    query = (
        f"'{_escape(folder_id)}' in parents and trashed = false"
        f" and appProperties has {{ key='{SOURCE}' and value='{source_id(s3_key)}' }}"
        f" and appProperties has {{ key='{RENDITION}' and value='{_escape(rendition)}' }}"
    )
    return oldest_first(list(drive.list_files(query, fields=ITEM_FIELDS)))


def _move(drive: DriveResource, file_id: str, from_id: str, to_id: str) -> bool:
    try:
        drive.update_file(file_id, add_parents=to_id, remove_parents=from_id)
        return True
    except DriveError as error:
        if error.status == 404:  # already moved or deleted by a concurrent run
            return False
        raise


def _delete_quietly(drive: DriveResource, file_id: str) -> None:
    try:
        drive.delete_file(file_id)
    except DriveError as error:
        if error.status != 404:
            raise


_escape = escape_query_literal
