"""What a client may write: the File fields it may set, its properties, its times, and the
conversions an upload may ask for. Each refusal is the error Drive answers for it."""

from __future__ import annotations

from typing import Any

from . import convert
from .errors import ApiError, bad_request
from .query import FILE_FIELDS, parse_time_ms
from .records import GOOGLE_APPS_PREFIX, Media

PROPERTY_LIMIT_BYTES = 124
_WRITABLE = {
    "id", "name", "mimeType", "parents", "appProperties", "properties", "trashed",
    "createdTime", "modifiedTime", "description", "starred", "kind",
}
# Writable on Drive, but not kept by this server: refused rather than silently dropped.
_WRITABLE_ON_DRIVE_ONLY = {
    "contentHints", "contentRestrictions", "copyRequiresWriterPermission",
    "downloadRestrictions", "folderColorRgb", "inheritedPermissionsDisabled",
    "originalFilename", "shortcutDetails", "viewedByMeTime", "writersCanShare",
    "viewersCanCopyContent",
}


def check_body(meta: dict, *, creating: bool) -> None:
    if not isinstance(meta, dict):
        raise bad_request("The request body must be a JSON object (a File resource).")
    fields = set(meta) - _WRITABLE
    if fields - FILE_FIELDS:
        names = ", ".join(sorted(fields - FILE_FIELDS))
        raise bad_request(f"Invalid JSON payload received. Unknown name: {names}.", "invalid")
    if fields & _WRITABLE_ON_DRIVE_ONLY:
        names = ", ".join(sorted(fields & _WRITABLE_ON_DRIVE_ONLY))
        raise bad_request(f"The local Drive server does not support setting {names}.")
    if fields:
        raise ApiError(403, "fieldNotWritable",
                       "The resource body includes fields which are not directly writable: "
                       + ", ".join(sorted(fields)) + ".")
    if not creating and "parents" in meta:
        raise ApiError(403, "fieldNotWritable",
                       "The parents field is not directly writable in update requests. Use the "
                       "addParents and removeParents parameters instead.")
    if not creating and "id" in meta:
        raise ApiError(403, "fieldNotWritable", "The id field is not directly writable.")
    if "name" in meta and not isinstance(meta["name"], str):
        raise bad_request("name must be a string.", location="name")
    if "parents" in meta and not (
        isinstance(meta["parents"], list) and all(isinstance(p, str) for p in meta["parents"])
    ):
        raise bad_request("parents must be a list of folder ids.", location="parents")


def clean_props(
    props: Any, field: str, *, allow_null: bool = False
) -> dict[str, str | None]:
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise bad_request(f"{field} must be an object of string values.", location=field)
    cleaned: dict[str, str | None] = {}
    for key, value in props.items():
        if value is None:
            if allow_null:
                cleaned[key] = None
            continue
        if not isinstance(value, str):
            raise bad_request(f"{field} values must be strings ({key!r}).", location=field)
        if not key:
            raise bad_request(f"{field} keys must not be empty.", location=field)
        if len(key.encode("utf-8")) + len(value.encode("utf-8")) > PROPERTY_LIMIT_BYTES:
            raise ApiError(
                403, "propertyLengthLimitExceeded",
                "Properties and app properties are limited to 124 bytes in UTF-8 encoding, "
                "counting both the key and the value.",
            )
        cleaned[key] = value
    return cleaned


def prepare_content(mime: str, media: Media | None) -> Media | str | None:
    """Binary media as is; for a Google Doc the imported text, for a Google Sheet the imported
    CSV; refuse other conversions."""
    if media is None or not mime.startswith(GOOGLE_APPS_PREFIX):
        return media
    source = media.content_type.split(";")[0].strip().lower()
    if mime == convert.SPREADSHEET_MIME and source in convert.IMPORTABLE_TO_SPREADSHEET:
        try:
            return media.path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
        finally:
            media.path.unlink(missing_ok=True)
    if mime != convert.DOCUMENT_MIME or source not in convert.IMPORTABLE_TO_DOCUMENT:
        media.path.unlink(missing_ok=True)
        raise ApiError(
            400, "conversionUnsupportedConversionPath",
            "Conversion of the uploaded content to the requested output type is not supported.",
        )
    try:
        return convert.imported_text(media.path, source)
    finally:
        media.path.unlink(missing_ok=True)


def time_field(meta: dict, field: str, default: int) -> int:
    if meta.get(field) is None:
        return default
    try:
        return parse_time_ms(str(meta[field]), field, field)
    except ValueError as error:
        raise bad_request(str(error), "invalid", field) from None


def cannot_add_parent() -> ApiError:
    return ApiError(403, "cannotAddParent", "Increasing the number of parents is not allowed")
