"""The therapist flow's names, written here only: its partition set, asset keys, check, jobs,
sensors, run tags, reparse lane and failure label. Everything else (the flow's modules, the
CLI, the reparse, the failure notifications, tests and benches) imports them from here.

    therapist_partitions  therapists: one partition per therapist id (the S3 prefix of
                          their uploads)
    UPLOADS_KEY           s3/signup/uploads: the therapist's uploads in the signup bucket
    RENDITIONS_KEY        therapists/renditions: a PDF of every upload
    MPF_FOLDER_KEY        drive/mpf/folder: their Magically Processed Folder on Drive
    MPF_AUDIT_CHECK       mpf_audit: the audit of that folder, a check on each partition
    JOB_NAME              therapist_mpf_job: the three assets, for one therapist per run
    REPAIR_JOB_NAME       mpf_repair_job: the MPF repair, over the whole MPF
    THERAPIST_TAG         credflow/therapist_id: one run per therapist at a time
"""

from __future__ import annotations

import dagster as dg

from credflow_assets.common.flow import Flow, FlowPartitions, FlowRuns

GROUP = "therapists"

# Keyed by the therapist id from the signup database (the S3 prefix of their uploads).
therapist_partitions = dg.DynamicPartitionsDefinition(name="therapists")

UPLOADS_KEY = dg.AssetKey(["s3", "signup", "uploads"])
RENDITIONS_KEY = dg.AssetKey(["therapists", "renditions"])
MPF_FOLDER_KEY = dg.AssetKey(["drive", "mpf", "folder"])
ASSET_KEYS = (UPLOADS_KEY, RENDITIONS_KEY, MPF_FOLDER_KEY)  # upstream first

MPF_AUDIT_CHECK = "mpf_audit"

# The MPF folder materialization's metadata that the sensors and `credflow lineage` read: the
# uploads it placed, one {"s3_key", "etag", "renditions"} each (a run fails without
# materializing when an original cannot be placed, so every upload listed is in the folder),
# and the digest of the (key, etag) pairs the run listed (`uploads.uploads_fingerprint`).
PLACED_FILES_METADATA = "files"
SOURCE_FINGERPRINT_METADATA = "source_fingerprint"

JOB_NAME = "therapist_mpf_job"
REPAIR_JOB_NAME = "mpf_repair_job"
REPAIR_OP_NAME = "mpf_repair"

UPLOAD_SENSOR_NAME = "signup_upload_sensor"
RECONCILIATION_SENSOR_NAME = "signup_reconciliation_sensor"

# Runs carry this tag; a tag concurrency limit of 1 per value keeps two runs for one
# therapist from ever running at once (DAGSTER_HOME/dagster.yaml, run_coordinator), whatever
# launched them (common/flow.py).
THERAPIST_TAG = "credflow/therapist_id"

FLOW_RUNS = FlowRuns(
    job_names=lambda name: name in (JOB_NAME, REPAIR_JOB_NAME),
    asset_key_prefixes=tuple(dict.fromkeys(tuple(key.path[:-1]) for key in ASSET_KEYS)),
    tags=lambda therapist_id, _job, _assets: {THERAPIST_TAG: therapist_id},
)

# A therapist is a partition: their files go to their own MPF folder only, so a reparse runs
# each therapist in a lane of their own (no two therapists' runs need an order).
FLOW = Flow(
    name="therapists",
    label="therapist MPF",  # "credflow: therapist MPF failed"
    runs=FLOW_RUNS,
    partitions=FlowPartitions(
        name_option=None,
        names=lambda config: [""],
        partitions_of=lambda _: therapist_partitions.name,
        asset_of=lambda _: MPF_FOLDER_KEY,
        name_of=lambda key: "",
        job_for=lambda _: JOB_NAME,
        lane_of=lambda key: key,
    ),
)


def therapist_uploader(success_team: str | None):
    """Therapist uploads that fail are told to the success team (`notifications.success_team`),
    who talk to the therapist; a therapist is never e-mailed by credflow."""
    from credflow_assets.common.uploader_mail import UploaderNotice

    def uploader_of_run(_instance: dg.DagsterInstance, run: dg.DagsterRun,
                        _sentence: str) -> UploaderNotice | None:
        therapist_id = run.tags.get(THERAPIST_TAG) or run.tags.get("dagster/partition")
        if not success_team or not therapist_id:
            return None
        return UploaderNotice(
            to=success_team, file_name=f"the signup upload of therapist {therapist_id}",
            where=f"the signup bucket, folder {therapist_id}/ (therapist {therapist_id})",
            fix="fix what is wrong, or ask the therapist to upload a corrected file to the "
                "same place")

    return uploader_of_run
