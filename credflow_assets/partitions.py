"""The dynamic partition definition shared by a whole flow: one partition per therapist. A drive
feed's, a provider's and a staged table's own sets are named in their flow's names module
(`feed_partitions`, `provider_partitions`, `table_partitions`): each holds only that feed's,
provider's or table's files."""

import dagster as dg

# Keyed by the therapist id from the signup database (the S3 prefix of their uploads).
therapist_partitions = dg.DynamicPartitionsDefinition(name="therapists")


def is_valid_partition_key(key: str) -> bool:
    """Dagster refuses `...` and control characters in keys; commas break UI backfills."""
    return bool(key) and "..." not in key and "," not in key and key.isprintable()
