"""Where staged-table files live, and the partition key of each: pure functions, no I/O.

    s3://{adhoc}/{staging_prefix}{table}/{file}.csv                  uploaded by an analyst
    s3://{adhoc}/{prod_prefix}{table}/ingest_date=YYYY-MM-DD/{file}.csv  promoted copy
    Glue {database}.{table}, partition ingest_date=YYYY-MM-DD at
    s3://{adhoc}/{prod_prefix}{table}/ingest_date=YYYY-MM-DD/        (several files may share it)

A staged file is exactly `{staging_prefix}{table}/{name}` for a configured table, with a `.csv`
name and no deeper folders: Athena reads a partition's folder, and flattening nested folders
would make two uploads collide. Anything else under `staging/` is ignored by the sensors and
listed by the audit.

Partition keys are the staged object keys, made acceptable to Dagster reversibly
(`partition_key_for` / `object_key_for`): `%`, `,` and non-printable characters are
percent-encoded, and the third dot of any `...` becomes `%2E`. Ordinary keys
(`staging/claims/2024-01 claims.csv`) are their own partition key. Each table has its own
partition set (`settings.table_partitions`); `table_of_partition` says which a key belongs to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote, unquote

PARTITION_COLUMN = "ingest_date"
_PROD_FILE = re.compile(r"^ingest_date=(\d{4}-\d{2}-\d{2})/([^/]+)$")


def partition_key_for(object_key: str) -> str:
    """The Dagster partition key of an S3 object key (reversible, see the module docstring)."""
    encoded = "".join(
        quote(char, safe="") if char in "%," or not char.isprintable() else char
        for char in object_key
    )
    while "..." in encoded:
        encoded = encoded.replace("...", "..%2E", 1)
    return encoded


def object_key_for(partition_key: str) -> str:
    """The S3 object key a partition key stands for."""
    return unquote(partition_key)


def table_of_partition(partition_key: str) -> str | None:
    """The table a staged file's partition key belongs to: the folder its file sits in
    (`{staging_prefix}{table}/{name}`, whatever the staging prefix), None for a key without one.
    Whether that table is configured is `Layout.why_ignored`'s to say."""
    parts = object_key_for(partition_key).split("/")
    return (parts[-2] or None) if len(parts) >= 2 else None


def _prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


@dataclass(frozen=True)
class StagedFile:
    """An object under `staging/` that the flow processes."""

    key: str
    table: str
    name: str

    @property
    def partition_key(self) -> str:
        return partition_key_for(self.key)


@dataclass(frozen=True)
class ProdFile:
    key: str
    table: str
    ingest_date: str
    name: str


@dataclass(frozen=True)
class Layout:
    bucket: str
    staging_prefix: str
    prod_prefix: str
    tables: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "staging_prefix", _prefix(self.staging_prefix))
        object.__setattr__(self, "prod_prefix", _prefix(self.prod_prefix))

    # --- staging ---------------------------------------------------------------------------

    def staged_file(self, key: str) -> StagedFile | None:
        """The staged file at `key`, or None when the flow does not process that object."""
        return None if self.why_ignored(key) else self._split_staged(key)

    def why_ignored(self, key: str) -> str | None:
        """Why the flow does not process the object at `key` (None: it does)."""
        if not key.startswith(self.staging_prefix):
            return f"not under {self.staging_prefix}"
        rest = key[len(self.staging_prefix):]
        table, slash, name = rest.partition("/")
        if not slash:
            return f"not in a table folder ({self.staging_prefix}{{table}}/{{file}}.csv)"
        if table not in self.tables:
            return (f"{self.staging_prefix}{table}/ is not a configured table "
                    f"(staged_tables.tables: {', '.join(self.tables) or 'none'})")
        if not name or name.endswith("/"):
            return "a folder marker"
        if "/" in name:
            return f"in a sub-folder of {self.staging_prefix}{table}/ (only {{table}}/{{file}}.csv)"
        if not name.lower().endswith(".csv"):
            return "not a .csv file"
        return None

    def _split_staged(self, key: str) -> StagedFile:
        table, _, name = key[len(self.staging_prefix):].partition("/")
        return StagedFile(key=key, table=table, name=name)

    def staging_table_prefix(self, table: str) -> str:
        return f"{self.staging_prefix}{table}/"

    # --- prod ------------------------------------------------------------------------------

    def prod_table_prefix(self, table: str) -> str:
        return f"{self.prod_prefix}{table}/"

    def prod_key(self, table: str, ingest_date: date | str, name: str) -> str:
        return f"{self.prod_table_prefix(table)}{PARTITION_COLUMN}={ingest_date}/{name}"

    def prod_file(self, key: str) -> ProdFile | None:
        """The promoted file at `key` (`prod/{table}/ingest_date=D/{file}`), or None."""
        if not key.startswith(self.prod_prefix):
            return None
        table, slash, rest = key[len(self.prod_prefix):].partition("/")
        match = _PROD_FILE.match(rest) if slash else None
        if not match:
            return None
        return ProdFile(key=key, table=table, ingest_date=match.group(1), name=match.group(2))

    def table_location(self, table: str) -> str:
        return f"s3://{self.bucket}/{self.prod_table_prefix(table)}"

    def partition_location(self, table: str, ingest_date: date | str) -> str:
        return f"{self.table_location(table)}{PARTITION_COLUMN}={ingest_date}/"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
