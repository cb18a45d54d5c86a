"""The MPF audit, run as an asset check on each therapist's folder after it is materialized.

Declared on the folder asset (`check_specs`) and yielded from it, so each therapist's partition
carries its own result: misplaced files, nested folders, twin folders, missing uploads.
"""

from __future__ import annotations

import dagster as dg

from credflow_assets.resources.drive import DriveResource

MPF_FOLDER_KEY = dg.AssetKey(["drive", "mpf", "folder"])

mpf_audit_check_spec = dg.AssetCheckSpec(
    name="mpf_audit",
    asset=MPF_FOLDER_KEY,
    description="The therapist's MPF folder is unique, at the MPF root, holds only their files "
    "and every file they uploaded.",
)


def mpf_audit_result(
    drive: DriveResource, root_id: str, therapist_id: str, expected_s3_keys: list[str]
) -> dg.AssetCheckResult:
    from credflow_assets.therapists.audit import audit_therapist

    report = audit_therapist(drive, root_id, therapist_id, expected_s3_keys=expected_s3_keys)
    return dg.AssetCheckResult(
        check_name=mpf_audit_check_spec.name,
        asset_key=MPF_FOLDER_KEY,
        passed=report.is_clean,
        # WARN: the files are in Drive either way; the audit says what `credflow mpf repair` fixes.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "findings": len(report.findings),
            # summary_lines() is already a markdown-friendly outline (kinds, then "  - " items).
            "details": dg.MetadataValue.md("\n".join(report.summary_lines())),
        },
    )
