"""A therapist's uploads → PDF and Google-Doc renditions → their MPF folder on Drive.

One partition per therapist id. A file that cannot be rendered keeps its original in the MPF,
and the materialization says which rendition is missing and why; the therapist's other files
go through.

The three assets are materialized by one step (`therapist_mpf`). A run per therapist pays
Dagster's bookkeeping per step (step events, input loading, partition checks: each a write or a
read of the instance's storage); one step instead of three takes about 40 % off a run's
overhead (bench/mpf_throughput.py), and the files and PDFs stay on local disk instead of going
back through S3 and pickles. Each asset still gets its own materialization and metadata per
therapist, and the MPF audit check stays on the folder.
"""


import tempfile
import time
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.common.messages import markdown_table
from credflow_assets.common.parse_logs import ParseLog, parse_log
from credflow_assets.resources.drive import DOCUMENT_MIME, DriveError, DriveResource
from credflow_assets.resources.s3 import head_object_or_none, object_url, prefix_url
from credflow_assets.resources.sql import SqlResource
from credflow_assets.common.run_recovery import mark_transient_failures
from credflow_assets.therapists.checks import mpf_audit_check_spec, mpf_audit_result
from credflow_assets.therapists.directory import (
    Therapist,
    UnknownTherapistError,
    get_therapist,
)
from credflow_assets.therapists.mpf import ensure_therapist_folder, place_file
from credflow_assets.therapists.names import (
    GROUP,
    JOB_NAME,
    MPF_FOLDER_KEY,
    PLACED_FILES_METADATA,
    RENDITIONS_KEY,
    SOURCE_FINGERPRINT_METADATA,
    UPLOADS_KEY,
    therapist_partitions,
)
from credflow_assets.therapists.renditions import (
    RenditionError,
    google_doc_source_type,
    mime_type_of,
    render_pdfs,
)
from credflow_assets.therapists.settings import TherapistFlowSettings
from credflow_assets.therapists.uploads import list_uploads, uploads_fingerprint


@dg.multi_asset(
    name="therapist_mpf",
    specs=[
        dg.AssetSpec(
            UPLOADS_KEY, group_name=GROUP, kinds={"s3"},
            description="The therapist's uploads in the signup bucket ({therapist_id}/{file}).",
        ),
        dg.AssetSpec(
            RENDITIONS_KEY, deps=[UPLOADS_KEY], group_name=GROUP, kinds={"pdf", "s3"},
            description="A PDF of every upload (stored by source etag) and whether Drive can "
            "make it a Google Doc.",
        ),
        dg.AssetSpec(
            MPF_FOLDER_KEY, deps=[UPLOADS_KEY, RENDITIONS_KEY], group_name=GROUP,
            kinds={"googledrive"},
            description="The therapist's Magically Processed Folder: original, PDF and Google "
            "Doc of every upload, in the folder that carries their id.",
        ),
    ],
    partitions_def=therapist_partitions,
    check_specs=[mpf_audit_check_spec],
)
def therapist_mpf(
    context: dg.AssetExecutionContext,
    s3: S3Resource,
    drive: DriveResource,
    directory_db: SqlResource,
    therapist_settings: TherapistFlowSettings,
):
    therapist_id = context.partition_key
    bucket = therapist_settings.signup_bucket
    # Fail before any conversion when the directory does not know the therapist yet; the
    # reconciliation sensor retries the partition on a later pass.
    try:
        therapist = get_therapist(directory_db.get_engine(), therapist_id)
    except UnknownTherapistError as error:
        raise dg.Failure(
            description=f"s3://{bucket}/{therapist_id}/: {error}",
            metadata={"therapist_id": therapist_id},
        ) from None
    client = s3.get_client()
    uploads = list_uploads(client, bucket, therapist_id)
    # Counts go in the metadata, not in log lines: each log line is one more write to the
    # instance's event log, which is most of what a run costs besides its work.
    yield dg.MaterializeResult(asset_key=UPLOADS_KEY, metadata=_uploads_metadata(
        client, bucket, uploads, f"{therapist_id}/"))
    # One local copy per upload (work/{index}/), shared by the rendering and the placing.
    with tempfile.TemporaryDirectory(prefix="credflow-mpf-") as work:
        with parse_log(context, flow="therapists", s3_client=client,
                       bucket=therapist_settings.logs_bucket) as log:
            log.redact_values([therapist.first_name, therapist.last_name])
            entries, rendering = _render_all(context, log, client, therapist_settings, uploads,
                                             Path(work))
        yield dg.MaterializeResult(asset_key=RENDITIONS_KEY, metadata={
            **log.metadata(), **_renditions_metadata(entries), **rendering})
        yield from _fill_folder(context, client, drive, therapist_settings, therapist, uploads,
                                entries, Path(work))


def _uploads_metadata(client, bucket: str, uploads: list[dict], prefix: str) -> dict:
    return {
        "uploads": len(uploads),
        "total_bytes": sum(upload["size"] for upload in uploads),
        "files": dg.MetadataValue.md(markdown_table(
            ["S3 key", "size", "etag"],
            [[f"[{upload['key']}]({object_url(client, bucket, upload['key'])})", upload["size"],
              upload["etag"]] for upload in uploads],
        )),
        "s3_prefix": dg.MetadataValue.path(f"s3://{bucket}/{prefix}"),
        "s3_prefix_url": dg.MetadataValue.url(prefix_url(client, bucket, prefix)),
    }


def _renditions_metadata(entries: list[dict]) -> dict:
    missing_pdf = [entry for entry in entries if entry["pdf_error"]]
    return {
        "files": len(entries),
        "pdf_ready": len(entries) - len(missing_pdf),
        "pdf_missing": len(missing_pdf),
        "google_doc_convertible": sum(1 for entry in entries if entry["gdoc_source_type"]),
        "renditions": dg.MetadataValue.md(markdown_table(
            ["S3 key", "PDF", "Google Doc"],
            [[entry["key"], entry["pdf_error"] and f"missing: {entry['pdf_error']}" or "ok",
              entry["gdoc_error"] and f"n/a: {entry['gdoc_error']}" or "ok"]
             for entry in entries],
        )),
    }


def _render_all(context, log: ParseLog, client, settings: TherapistFlowSettings,
                uploads: list[dict], work: Path) -> tuple[list[dict], dict]:
    """An entry per upload, and the rendering's metadata; the PDFs not rendered before are
    rendered together (one LibreOffice call for all the office files) and stored under their
    source etag."""
    entries, pending = [], {}
    for index, upload in enumerate(uploads):
        entry, source = _entry(client, settings, upload, work / str(index))
        entries.append(entry)
        if source is not None:
            pending[source] = entry
    if not pending:
        return entries, {"pdf_rendered": 0}
    started = time.monotonic()
    results = render_pdfs(list(pending))
    seconds = round(time.monotonic() - started, 1)
    made = sum(1 for result in results.values() if not isinstance(result, RenditionError))
    # In the parse log and the materialization's metadata, not as a log event of its own (one
    # more write to the instance's storage per run, bench/RESULTS.md §4 session 9).
    log.note(f"{made} of {len(pending)} PDF rendition(s) made in {seconds:.1f}s",
             "credflow.therapists")
    for source, result in results.items():
        entry = pending[source]
        if isinstance(result, RenditionError):
            entry["pdf_error"] = str(result)
            context.log.warning(f"{entry['key']}: no PDF rendition: {result}")
            continue
        pdf_key = _pdf_key(entry)
        client.upload_file(str(result), settings.renditions_bucket, pdf_key)
        entry["pdf_key"] = pdf_key
        entry["pdf_is_original"] = (result.resolve() == source.resolve()
                                    or entry["mime_type"] == "application/pdf")
    return entries, {"pdf_rendered": made, "pdf_render_seconds": seconds}


def _entry(client, settings: TherapistFlowSettings, upload: dict,
           source_dir: Path) -> tuple[dict, Path | None]:
    """The upload's entry, and its copy in `source_dir` when its PDF still has to be rendered."""
    key, etag = upload["key"], upload["etag"]
    name = key.split("/", 1)[1]
    entry = {"key": key, "etag": etag, "name": name, "mime_type": mime_type_of(name),
             "pdf_key": None, "pdf_is_original": False, "pdf_error": None,
             "gdoc_source_type": None, "gdoc_error": None}
    try:
        entry["gdoc_source_type"] = google_doc_source_type(name)
    except RenditionError as error:
        entry["gdoc_error"] = str(error)
    pdf_key = _pdf_key(entry)
    if head_object_or_none(client, settings.renditions_bucket, pdf_key) is not None:
        entry["pdf_key"] = pdf_key  # rendered before from these exact bytes
        entry["pdf_is_original"] = entry["mime_type"] == "application/pdf"
        return entry, None
    source_dir.mkdir()
    source = source_dir / Path(name).name
    client.download_file(settings.signup_bucket, key, str(source))
    return entry, source


def _pdf_key(entry: dict) -> str:
    return f"{entry['key'].split('/', 1)[0]}/{entry['etag']}/{Path(entry['name']).stem}.pdf"


def _fill_folder(context, client, drive: DriveResource, settings: TherapistFlowSettings,
                 therapist: Therapist, uploads: list[dict], entries: list[dict], work: Path):
    """Put every upload's renditions in the therapist's folder; yields the folder's
    materialization and its audit."""
    therapist_id = therapist.id
    root_id = settings.mpf_root_folder_id
    resolution = ensure_therapist_folder(drive, root_id, therapist)
    folder = resolution.folder
    if resolution.merged_folder_ids:
        context.log.warning(
            f"therapist {therapist_id}: merged twin folder(s) {resolution.merged_folder_ids} "
            f"into {folder['id']}"
        )
    files, failures = [], []
    for index, entry in enumerate(entries):
        placed = _place_renditions(client, drive, settings, folder["id"], therapist_id, entry,
                                   work / str(index))
        files.append(placed)
        if "error" in placed["renditions"]["original"]:
            failures.append(f"{entry['key']}: {placed['renditions']['original']['error']}")
    metadata = {
        # `credflow sync` prints it on the run's line.
        "summary": f"{len(files)} upload(s) in folder {folder['id']}, "
                   f"{len(failures)} original(s) not placed",
        "therapist_id": therapist_id,
        "folder_id": folder["id"],
        "folder_name": folder["name"],
        "folder_url": dg.MetadataValue.url(drive.folder_url(folder["id"])),
        "folder_created": resolution.created,
        "renamed_from": resolution.renamed_from or "",
        "merged_folder_ids": dg.MetadataValue.json(resolution.merged_folder_ids),
        SOURCE_FINGERPRINT_METADATA: uploads_fingerprint([(u["key"], u["etag"])
                                                          for u in uploads]),
        PLACED_FILES_METADATA: dg.MetadataValue.json(files),
        "files_table": dg.MetadataValue.md(_files_table(files)),
    }
    if failures:
        # The partition fails (and is retried) only when an original could not be placed;
        # a missing PDF or Google Doc is reported in the metadata instead.
        raise dg.Failure(
            description=f"therapist {therapist_id}: {len(failures)} upload(s) not placed in "
            f"the MPF: " + "; ".join(failures),
            metadata={key: value for key, value in metadata.items()
                      if key != SOURCE_FINGERPRINT_METADATA},
        )
    yield dg.MaterializeResult(asset_key=MPF_FOLDER_KEY, metadata=metadata)
    yield mpf_audit_result(drive, root_id, therapist_id, [upload["key"] for upload in uploads])


def _place_renditions(client, drive: DriveResource, settings: TherapistFlowSettings,
                      folder_id: str, therapist_id: str, entry: dict, local: Path) -> dict:
    """Place one upload's renditions; `local` holds the copies rendering left (if any)."""
    key, etag, name = entry["key"], entry["etag"], entry["name"]
    source = local / Path(name).name
    _fetch_unless_here(client, settings.signup_bucket, key, source)
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
        pdf = local / f"{Path(name).stem}.pdf"
        _fetch_unless_here(client, settings.renditions_bucket, entry["pdf_key"], pdf)
        placed["pdf"] = attempt("pdf", local_path=str(pdf), name=pdf.name,
                                mime_type="application/pdf")
    if entry["gdoc_source_type"]:
        placed["gdoc"] = attempt("gdoc", local_path=str(source), name=Path(name).stem,
                                 mime_type=entry["gdoc_source_type"], convert_to=DOCUMENT_MIME)
    else:
        placed["gdoc"] = {"missing": entry["gdoc_error"]}
    return {"s3_key": key, "etag": etag, "renditions": placed}


def _fetch_unless_here(client, bucket: str, key: str, path: Path) -> None:
    if not path.exists():  # rendering in this step already downloaded or made it
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(path))


def _files_table(files: list[dict]) -> str:
    def cell(rendition: dict) -> str:
        if "missing" in rendition:
            return f"missing: {rendition['missing']}"
        if "error" in rendition:
            return f"error: {rendition['error']}"
        return f"[{rendition['name']}]({rendition.get('link')}) ({rendition['action']})"

    return markdown_table(
        ["S3 key", "original", "PDF", "Google Doc"],
        [[f["s3_key"], *(cell(f["renditions"][r]) for r in ("original", "pdf", "gdoc"))]
         for f in files],
    )


therapist_mpf_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    hooks={mark_transient_failures},
    description="One therapist's uploads → renditions → MPF folder.",
)
