"""The dynamic partition definitions shared by a whole flow: one partition per therapist or per
provider file. A drive feed's and a staged table's own sets are named in their flow's
settings (`feed_partitions`, `table_partitions`): each holds only that feed's or table's files."""

import dagster as dg

# Keyed by the therapist id from the signup database (the S3 prefix of their uploads).
therapist_partitions = dg.DynamicPartitionsDefinition(name="therapists")

# Keyed `{provider}/{remote path}`: one partition per file a provider dropped on SFTP.
provider_file_partitions = dg.DynamicPartitionsDefinition(name="provider_files")


def is_valid_partition_key(key: str) -> bool:
    """Dagster refuses `...` and control characters in keys; commas break UI backfills."""
    return bool(key) and "..." not in key and "," not in key and key.isprintable()
