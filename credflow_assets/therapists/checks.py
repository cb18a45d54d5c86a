"""The MPF audit, run as an asset check on each therapist's folder after it is materialized.

Declared on the folder asset (`check_specs`) with the therapists' partitions, and yielded from
it, so each therapist's partition carries its own result (the UI shows each therapist's latest
verdict): misplaced files, nested folders, twin folders, missing uploads. `credflow mpf repair`
records a new verdict for each therapist it audits again after the repair.
"""

from __future__ import annotations

import warnings

import dagster as dg

from credflow_assets.resources.drive import DriveResource
from credflow_assets.therapists.names import (
    MPF_AUDIT_CHECK,
    MPF_FOLDER_KEY,
    therapist_partitions,
)

# `partitions_def` records each verdict against the therapist's partition, so the UI shows each
# therapist's latest verdict. It is a preview in Dagster 1.13; its warning is silenced here,
# where the choice is made, rather than at every load.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=dg.PreviewWarning)
    mpf_audit_check_spec = dg.AssetCheckSpec(
        name=MPF_AUDIT_CHECK,
        asset=MPF_FOLDER_KEY,
        partitions_def=therapist_partitions,
        description="The therapist's MPF folder is unique, at the MPF root, holds only their "
        "files and every file they uploaded. WARN: `credflow mpf repair` fixes what it finds.",
    )


def mpf_audit_result(
    drive: DriveResource, root_id: str, therapist_id: str, expected_s3_keys: list[str]
) -> dg.AssetCheckResult:
    from credflow_assets.therapists.mpf_audit import audit_therapist

    report = audit_therapist(drive, root_id, therapist_id, expected_s3_keys=expected_s3_keys)
    return dg.AssetCheckResult(
        check_name=mpf_audit_check_spec.name,
        asset_key=MPF_FOLDER_KEY,
        passed=report.is_clean,
        # WARN: the files are in Drive either way; the audit says what `credflow mpf repair` fixes.
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict(therapist_id, report),
        metadata=verdict_metadata(therapist_id, report),
    )


def verdict(therapist_id: str, report) -> str:
    if report.is_clean:
        return f"therapist {therapist_id}: MPF folder clean"
    return f"therapist {therapist_id}: {len(report.findings)} finding(s) for `credflow mpf repair`"


def verdict_metadata(therapist_id: str, report) -> dict:
    return {
        "therapist_id": therapist_id,
        "findings": len(report.findings),
        # summary_lines() is already a markdown-friendly outline (kinds, then "  - " items).
        "details": dg.MetadataValue.md("\n".join(report.summary_lines()) or "no findings"),
    }


def record_verdict(instance: dg.DagsterInstance, therapist_id: str, report) -> None:
    """Record a verdict outside a run (after `credflow mpf repair`), on the therapist's
    partition, as the run's own check would."""
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=MPF_FOLDER_KEY,
        check_name=mpf_audit_check_spec.name,
        passed=report.is_clean,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict(therapist_id, report),
        metadata=verdict_metadata(therapist_id, report),
        partition=therapist_id,
    ))


def therapists_named(findings) -> set[str]:
    """Every therapist an audit's findings concern: owners of files, of folders, presumed ones."""
    ids: set[str] = set()
    for finding in findings:
        for field in ("owner_id", "folder_therapist_id", "therapist_id", "presumed_therapist_id"):
            if getattr(finding, field, None):
                ids.add(getattr(finding, field))
        ids.update(owner for owner, _count in getattr(finding, "files_by_owner", ()))
    return ids


def record_verdicts_after_repair(instance: dg.DagsterInstance, drive: DriveResource,
                                 root_id: str, findings, s3_client, signup_bucket: str) -> int:
    """Audit again each therapist the repaired findings named (and the instance knows), and
    record the new verdict on their partition. Returns how many were recorded."""
    from credflow_assets.therapists.mpf_audit import audit_therapist
    from credflow_assets.therapists.uploads import list_uploads

    recorded = 0
    for therapist_id in sorted(therapists_named(findings)):
        if not instance.has_dynamic_partition(therapist_partitions.name, therapist_id):
            continue
        uploads = list_uploads(s3_client, signup_bucket, therapist_id)
        report = audit_therapist(drive, root_id, therapist_id,
                                 expected_s3_keys=[upload["key"] for upload in uploads])
        record_verdict(instance, therapist_id, report)
        recorded += 1
    return recorded
