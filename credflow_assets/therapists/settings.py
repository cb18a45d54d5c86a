"""Where the therapist flow reads and writes, from the config file."""

import dagster as dg

from credflow_assets.run_tags import FlowRuns

JOB_NAME = "therapist_mpf_job"

# Runs carry this tag; a tag concurrency limit of 1 per value keeps two runs for one
# therapist from ever running at once (DAGSTER_HOME/dagster.yaml, run_coordinator), whatever
# launched them (run_tags.py).
THERAPIST_TAG = "credflow/therapist_id"

FLOW_RUNS = FlowRuns(
    job_names=lambda name: name == JOB_NAME,
    asset_key_prefixes=(("s3", "signup"), ("therapists",), ("drive", "mpf")),
    tags=lambda therapist_id, _job, _assets: {THERAPIST_TAG: therapist_id},
)


class TherapistFlowSettings(dg.ConfigurableResource):
    signup_bucket: str
    renditions_bucket: str
    signup_queue: str
    mpf_root_folder_id: str
    logs_bucket: str  # per-file parse logs (parsing_logs/therapists/{therapist_id}/…)
    # At most this many SQS messages per sensor tick, and S3 pages per reconciliation tick.
    max_events_per_tick: int = 100
    # Pages of 1,000 keys a reconciliation tick lists: one keeps a tick about a second
    # whatever the bucket holds (bench/sensor_scale.py); more makes a pass shorter.
    max_reconcile_pages_per_tick: int = 1
