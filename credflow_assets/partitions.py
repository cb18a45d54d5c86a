"""The dynamic partition definitions shared by a whole flow: one partition per provider file. The
therapists' set is named in `therapists/names.py` (`therapist_partitions`); a drive feed's and a
staged table's own sets in their flow's settings (`feed_partitions`, `table_partitions`): each
holds only that feed's or table's files."""

import dagster as dg

# Keyed `{provider}/{remote path}`: one partition per file a provider dropped on SFTP.
provider_file_partitions = dg.DynamicPartitionsDefinition(name="provider_files")


def is_valid_partition_key(key: str) -> bool:
    """Dagster refuses `...` and control characters in keys; commas break UI backfills."""
    return bool(key) and "..." not in key and "," not in key and key.isprintable()


def __getattr__(name: str):
    # `therapist_partitions` moved to `credflow_assets.therapists.names`; this keeps code not
    # yet updated (other branches) working until it is merged. Looked up lazily: a shared module
    # does not import a flow.
    if name == "therapist_partitions":
        from credflow_assets.therapists.names import therapist_partitions

        return therapist_partitions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
