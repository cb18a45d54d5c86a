"""Therapist documents → Magically Processed Folders (source doc 000).

Reads top to bottom: sensors.py (new uploads) → assets.py (uploads, renditions, MPF folder,
materialized by one step) →
checks.py (the MPF audit as an asset check). mpf.py holds the folder rules, renditions.py the
conversions, directory.py the therapist directory, uploads.py the signup bucket's layout,
mpf_audit/ the audit and repair, lineage.py what `credflow lineage` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig


def build_defs(config: CredflowConfig) -> dg.Definitions:
    import dagster as dg

    from credflow_assets.therapists.assets import therapist_mpf, therapist_mpf_job
    from credflow_assets.therapists.sensors import (
        signup_reconciliation_sensor,
        signup_upload_sensor,
    )
    from credflow_assets.therapists.settings import TherapistFlowSettings

    return dg.Definitions(
        assets=[therapist_mpf],
        jobs=[therapist_mpf_job],
        sensors=[signup_upload_sensor, signup_reconciliation_sensor],
        resources={
            "therapist_settings": TherapistFlowSettings(
                signup_bucket=config.buckets.signup,
                renditions_bucket=config.buckets.renditions,
                signup_queue=config.events.signup_uploads.queue,
                mpf_root_folder_id=config.drive.mpf_root_folder_id,
                logs_bucket=config.buckets.logs,
            )
        },
    )
