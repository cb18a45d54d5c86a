"""Every dynamic partition definition, in one place: one partition per therapist or per file."""

import dagster as dg

# Keyed by the therapist id from the signup database (the S3 prefix of their uploads).
therapist_partitions = dg.DynamicPartitionsDefinition(name="therapists")

# Keyed `{provider}/{remote path}`: one partition per file a provider dropped on SFTP.
provider_file_partitions = dg.DynamicPartitionsDefinition(name="provider_files")

# Keyed `{feed}/{drive file id}/{revision}`: one partition per revision of an inbound sheet.
drive_feed_file_partitions = dg.DynamicPartitionsDefinition(name="drive_feed_files")

# Keyed by the staged object's key (`staging/{table}/{file}`), sanitized for Dagster.
staged_file_partitions = dg.DynamicPartitionsDefinition(name="staged_files")


def is_valid_partition_key(key: str) -> bool:
    """Dagster refuses `...` and control characters in keys; commas break UI backfills."""
    return bool(key) and "..." not in key and "," not in key and key.isprintable()
