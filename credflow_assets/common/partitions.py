"""What makes a valid dynamic partition key. Each flow's partition sets are named in its own
names module (`therapist_partitions`, `feed_partitions`, `provider_partitions`,
`table_partitions`): each holds only its flow's, feed's, provider's or table's
keys."""


def is_valid_partition_key(key: str) -> bool:
    """Dagster refuses `...` and control characters in keys; commas break UI backfills."""
    return bool(key) and "..." not in key and "," not in key and key.isprintable()
