"""Where the therapist flow reads and writes, from the config file (its names: names.py)."""

import dagster as dg


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
