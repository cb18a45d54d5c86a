"""A therapist's uploads → PDF and Google-Doc renditions → their MPF folder on Drive.

One partition per therapist id. A file that cannot be rendered keeps its original in the MPF,
and the materialization says which rendition is missing and why; the therapist's other files
go through.
"""


import tempfile
import time
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.parse_logs import parse_log
from credflow_assets.partitions import therapist_partitions
from credflow_assets.resources.drive import DOCUMENT_MIME, DriveError, DriveResource
from credflow_assets.resources.s3 import head_object_or_none
from credflow_assets.resources.sql import SqlResource
from credflow_assets.therapists.checks import mpf_audit_check_spec, mpf_audit_result
from credflow_assets.therapists.directory import UnknownTherapistError, get_therapist
from credflow_assets.therapists.mpf import ensure_therapist_folder, place_file
from credflow_assets.therapists.renditions import (
    RenditionError,
    google_doc_source_type,
    mime_type_of,
    render_pdf,
)
from credflow_assets.therapists.settings import TherapistFlowSettings
from credflow_assets.therapists.uploads import list_uploads, uploads_fingerprint

GROUP = "therapists"


@dg.asset(
    key=["s3", "signup", "uploads"],
    partitions_def=therapist_partitions,
    group_name=GROUP,
    kinds={"s3"},
    description="The therapist's uploads in the signup bucket ({therapist_id}/{file}).",
)
def signup_uploads(
    context: dg.AssetExecutionContext,
    s3: S3Resource,
    directory_db: SqlResource,
    therapist_settings: TherapistFlowSettings,
) -> dg.Output[list[dict]]:
    therapist_id = context.partition_key
    bucket = therapist_settings.signup_bucket
    # Fail before any conversion when the directory does not know the therapist yet; the
    # reconciliation sensor retries the partition on a later pass.
    try:
        get_therapist(directory_db.get_engine(), therapist_id)
    except UnknownTherapistError as error:
        raise dg.Failure(
            description=f"s3://{bucket}/{therapist_id}/: {error}",
            metadata={"therapist_id": therapist_id},
        ) from None
    uploads = list_uploads(s3.get_client(), bucket, therapist_id)
    context.log.info(f"therapist {therapist_id}: {len(uploads)} upload(s) in s3://{bucket}/")
    return dg.Output(
        uploads,
        metadata={
            "uploads": len(uploads),
            "total_bytes": sum(upload["size"] for upload in uploads),
            "files": dg.MetadataValue.md(_table(
                ["S3 key", "size", "etag"],
                [[upload["key"], upload["size"], upload["etag"]] for upload in uploads],
            )),
            "s3_prefix": dg.MetadataValue.path(f"s3://{bucket}/{therapist_id}/"),
        },
    )


@dg.asset(
    key=["therapists", "renditions"],
    ins={"uploads": dg.AssetIn(key=["s3", "signup", "uploads"])},
    partitions_def=therapist_partitions,
    group_name=GROUP,
    kinds={"pdf", "s3"},
    description="A PDF of every upload (stored by source etag) and whether Drive can make it "
    "a Google Doc.",
)
def renditions(
    context: dg.AssetExecutionContext,
    uploads: list[dict],
    s3: S3Resource,
    directory_db: SqlResource,
    therapist_settings: TherapistFlowSettings,
) -> dg.Output[list[dict]]:
    client = s3.get_client()
    therapist = get_therapist(directory_db.get_engine(), context.partition_key)
    entries = []
    with parse_log(context, flow="therapists", s3_client=client,
                   bucket=therapist_settings.logs_bucket) as log:
        log.redact_values([therapist.first_name, therapist.last_name])
        with tempfile.TemporaryDirectory(prefix="credflow-renditions-") as work:
            for upload in uploads:
                entries.append(_render(context, client, therapist_settings, upload, Path(work)))
    missing_pdf = [entry for entry in entries if entry["pdf_error"]]
    return dg.Output(
        entries,
        metadata={
            **log.metadata(),
            "files": len(entries),
            "pdf_ready": len(entries) - len(missing_pdf),
            "pdf_missing": len(missing_pdf),
            "google_doc_convertible": sum(1 for entry in entries if entry["gdoc_source_type"]),
            "renditions": dg.MetadataValue.md(_table(
                ["S3 key", "PDF", "Google Doc"],
                [[entry["key"], entry["pdf_error"] and f"missing: {entry['pdf_error']}" or "ok",
                  entry["gdoc_error"] and f"n/a: {entry['gdoc_error']}" or "ok"]
                 for entry in entries],
            )),
        },
    )


def _render(context, client, settings: TherapistFlowSettings, upload: dict, work: Path) -> dict:
    key, etag = upload["key"], upload["etag"]
    name = key.split("/", 1)[1]
    entry = {"key": key, "etag": etag, "name": name, "mime_type": mime_type_of(name),
             "pdf_key": None, "pdf_is_original": False, "pdf_error": None,
             "gdoc_source_type": None, "gdoc_error": None}
    try:
        entry["gdoc_source_type"] = google_doc_source_type(name)
    except RenditionError as error:
        entry["gdoc_error"] = str(error)
    pdf_key = f"{key.split('/', 1)[0]}/{etag}/{Path(name).stem}.pdf"
    if head_object_or_none(client, settings.renditions_bucket, pdf_key) is not None:
        entry["pdf_key"] = pdf_key  # rendered before from these exact bytes
        entry["pdf_is_original"] = entry["mime_type"] == "application/pdf"
        return entry
    source_dir = work / etag
    source_dir.mkdir(exist_ok=True)
    source = source_dir / Path(name).name
    client.download_file(settings.signup_bucket, key, str(source))
    started = time.monotonic()
    try:
        pdf = render_pdf(source, source_dir)
    except RenditionError as error:
        entry["pdf_error"] = str(error)
        context.log.warning(f"{key}: no PDF rendition: {error}")
        return entry
    client.upload_file(str(pdf), settings.renditions_bucket, pdf_key)
    entry["pdf_key"] = pdf_key
    entry["pdf_is_original"] = pdf.resolve() == source.resolve() or entry["mime_type"] == "application/pdf"
    context.log.info(f"{key}: PDF rendition in {time.monotonic() - started:.1f}s")
    return entry



@dg.asset(
    key=["drive", "mpf", "folder"],
    ins={
        "uploads": dg.AssetIn(key=["s3", "signup", "uploads"]),
        "renditions": dg.AssetIn(key=["therapists", "renditions"]),
    },
    partitions_def=therapist_partitions,
    group_name=GROUP,
    kinds={"googledrive"},
    check_specs=[mpf_audit_check_spec],
    description="The therapist's Magically Processed Folder: original, PDF and Google Doc of "
    "every upload, in the folder that carries their id.",
)
def mpf_folder(
    context: dg.AssetExecutionContext,
    uploads: list[dict],
    renditions: list[dict],
    s3: S3Resource,
    drive: DriveResource,
    directory_db: SqlResource,
    therapist_settings: TherapistFlowSettings,
):
    therapist_id = context.partition_key
    root_id = therapist_settings.mpf_root_folder_id
    therapist = get_therapist(directory_db.get_engine(), therapist_id)
    resolution = ensure_therapist_folder(drive, root_id, therapist)
    folder = resolution.folder
    if resolution.merged_folder_ids:
        context.log.warning(
            f"therapist {therapist_id}: merged twin folder(s) {resolution.merged_folder_ids} "
            f"into {folder['id']}"
        )
    client = s3.get_client()
    files, failures = [], []
    with tempfile.TemporaryDirectory(prefix="credflow-mpf-") as work:
        for entry in renditions:
            placed = _place_renditions(client, drive, therapist_settings, folder["id"],
                                       therapist_id, entry, Path(work))
            files.append(placed)
            if "error" in placed["renditions"]["original"]:
                failures.append(f"{entry['key']}: {placed['renditions']['original']['error']}")
    context.log.info(
        f"therapist {therapist_id}: {len(files)} upload(s) in folder {folder['id']}, "
        f"{len(failures)} original(s) not placed"
    )
    metadata = {
        "therapist_id": therapist_id,
        "folder_id": folder["id"],
        "folder_name": folder["name"],
        "folder_url": dg.MetadataValue.url(drive.folder_url(folder["id"])),
        "folder_created": resolution.created,
        "renamed_from": resolution.renamed_from or "",
        "merged_folder_ids": dg.MetadataValue.json(resolution.merged_folder_ids),
        "source_fingerprint": uploads_fingerprint([(u["key"], u["etag"]) for u in uploads]),
        "files": dg.MetadataValue.json(files),
        "files_table": dg.MetadataValue.md(_files_table(files)),
    }
    if failures:
        # The partition fails (and is retried) only when an original could not be placed;
        # a missing PDF or Google Doc is reported in the metadata instead.
        raise dg.Failure(
            description=f"therapist {therapist_id}: {len(failures)} upload(s) not placed in "
            f"the MPF: " + "; ".join(failures),
            metadata={key: value for key, value in metadata.items() if key != "source_fingerprint"},
        )
    yield dg.MaterializeResult(metadata=metadata)
    yield mpf_audit_result(drive, root_id, therapist_id, [upload["key"] for upload in uploads])


def _place_renditions(client, drive: DriveResource, settings: TherapistFlowSettings,
                      folder_id: str, therapist_id: str, entry: dict, work: Path) -> dict:
    key, etag, name = entry["key"], entry["etag"], entry["name"]
    source = work / etag / Path(name).name
    source.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(settings.signup_bucket, key, str(source))
    common = {"therapist_id": therapist_id, "s3_key": key, "etag": etag}
    placed: dict[str, dict] = {}

    def attempt(rendition: str, **kwargs) -> dict:
        try:
            result = place_file(drive, folder_id, rendition=rendition, **common, **kwargs)
        except DriveError as error:
            return {"error": str(error)}
        return {"id": result.file["id"], "name": result.file["name"],
                "link": result.file.get("webViewLink"), "action": result.action}

    placed["original"] = attempt("original", local_path=str(source), name=Path(name).name,
                                 mime_type=entry["mime_type"])
    if entry["pdf_error"]:
        placed["pdf"] = {"missing": entry["pdf_error"]}
    elif entry["pdf_is_original"]:
        placed["pdf"] = {**placed["original"], "same_as": "original"}
    else:
        pdf = work / etag / f"{Path(name).stem}.pdf"
        client.download_file(settings.renditions_bucket, entry["pdf_key"], str(pdf))
        placed["pdf"] = attempt("pdf", local_path=str(pdf), name=pdf.name,
                                mime_type="application/pdf")
    if entry["gdoc_source_type"]:
        placed["gdoc"] = attempt("gdoc", local_path=str(source), name=Path(name).stem,
                                 mime_type=entry["gdoc_source_type"], convert_to=DOCUMENT_MIME)
    else:
        placed["gdoc"] = {"missing": entry["gdoc_error"]}
    return {"s3_key": key, "etag": etag, "renditions": placed}


def _files_table(files: list[dict]) -> str:
    def cell(rendition: dict) -> str:
        if "missing" in rendition:
            return f"missing: {rendition['missing']}"
        if "error" in rendition:
            return f"error: {rendition['error']}"
        return f"[{rendition['name']}]({rendition.get('link')}) ({rendition['action']})"

    return _table(
        ["S3 key", "original", "PDF", "Google Doc"],
        [[f["s3_key"], *(cell(f["renditions"][r]) for r in ("original", "pdf", "gdoc"))]
         for f in files],
    )


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |"
              for row in rows]
    return "\n".join(lines)


therapist_mpf_job = dg.define_asset_job(
    "therapist_mpf_job",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="One therapist's uploads → renditions → MPF folder.",
)
