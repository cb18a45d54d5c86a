"""Therapist documents → Magically Processed Folders (source doc 000).

Read it top to bottom:

    names.py        the flow's names, written only there: partition set, asset keys, check,
                    jobs, sensors, run tags, reparse lane, failure label
    settings.py     where it reads and writes, from the config file
    sensors.py      new uploads (the signup bucket's S3 events, and a slow reconciliation
                    pass) → one run per therapist
    assets.py       uploads → renditions → MPF folder, materialized by one step
    checks.py       the MPF audit as an asset check on each therapist's folder
    repair_job.py   the MPF repair as a job (`credflow mpf repair`, or the UI)
    commands.py     `credflow mpf audit`, `credflow mpf repair`

then the engine:

    mpf.py          the folder rules: found by id, never by name; twins merge into the oldest
    renditions.py   PDF and Google-Doc conversions
    directory.py    the therapist directory (who an id belongs to)
    uploads.py      the signup bucket's layout (`{therapist_id}/{file}`)
    mpf_audit/      the audit of the whole MPF or one therapist, and the repair
    lineage.py      a therapist's chain for `credflow lineage` (cli/lineage.py asks every flow)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig


def build_defs(config: CredflowConfig) -> dg.Definitions:
    import dagster as dg

    from credflow_assets.therapists.assets import therapist_mpf, therapist_mpf_job
    from credflow_assets.therapists.repair_job import mpf_repair_job
    from credflow_assets.therapists.sensors import (
        signup_reconciliation_sensor,
        signup_upload_sensor,
    )
    from credflow_assets.therapists.settings import TherapistFlowSettings

    return dg.Definitions(
        assets=[therapist_mpf],
        jobs=[therapist_mpf_job, mpf_repair_job],
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
