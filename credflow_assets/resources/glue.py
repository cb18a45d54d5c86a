"""Glue Data Catalog: tables of CSV files in S3, partitioned by ingest date.

`GlueResource` wraps the few catalog calls the staged-tables flow needs. Tables are external CSV
tables (OpenCSVSerde, header line skipped) so Athena reads the promoted files as they are; each
partition copies the table's storage descriptor with its own S3 location.

Errors name the database and table: `GlueError("Glue table credflow.claims does not exist …")`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from credflow_assets.resources.s3 import AwsClientResource

CSV_SERDE = "org.apache.hadoop.hive.serde2.OpenCSVSerde"
TEXT_INPUT_FORMAT = "org.apache.hadoop.mapred.TextInputFormat"
TEXT_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
DEFAULT_PARTITION_KEYS: tuple[tuple[str, str], ...] = (("ingest_date", "string"),)


class GlueError(RuntimeError):
    """A Glue catalog call failed; the message names the database and table."""


def table_columns(table: dict[str, Any]) -> list[tuple[str, str]]:
    """The (name, type) data columns of a `get_table` result (partition keys excluded)."""
    return [(c["Name"], c["Type"]) for c in table.get("StorageDescriptor", {}).get("Columns", [])]


def table_partition_keys(table: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["Name"], c["Type"]) for c in table.get("PartitionKeys", [])]


class GlueResource(AwsClientResource):
    """Glue client (built lazily, kept private) with table and partition helpers."""

    service_name = "glue"

    # --- tables ---------------------------------------------------------------------------

    def get_table(self, database: str, name: str) -> dict[str, Any] | None:
        """The table, or None if it (or its database) does not exist."""
        try:
            return self.client.get_table(DatabaseName=database, Name=name)["Table"]
        except self.client.exceptions.EntityNotFoundException:
            return None

    def create_table(
        self,
        database: str,
        name: str,
        columns: Sequence[tuple[str, str]],
        location: str,
        partition_keys: Sequence[tuple[str, str]] = DEFAULT_PARTITION_KEYS,
        *,
        description: str = "",
    ) -> dict[str, Any]:
        """Create an external CSV table (header skipped) at `location` (an `s3://…/` prefix).

        Raises `GlueError` if the database is missing or the table already exists. Returns the
        table as `get_table` does.
        """
        if not columns:
            raise GlueError(f"Glue table {database}.{name}: no columns given")
        table_input: dict[str, Any] = {
            "Name": name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {
                "classification": "csv",
                "skip.header.line.count": "1",
                "EXTERNAL": "TRUE",
            },
            "PartitionKeys": [{"Name": n, "Type": t} for n, t in partition_keys],
            "StorageDescriptor": {
                "Columns": [{"Name": n, "Type": t} for n, t in columns],
                "Location": location,
                "InputFormat": TEXT_INPUT_FORMAT,
                "OutputFormat": TEXT_OUTPUT_FORMAT,
                "SerdeInfo": {
                    "SerializationLibrary": CSV_SERDE,
                    "Parameters": {"separatorChar": ",", "quoteChar": '"', "escapeChar": "\\"},
                },
            },
        }
        if description:
            table_input["Description"] = description
        try:
            self.client.create_table(DatabaseName=database, TableInput=table_input)
        except self.client.exceptions.AlreadyExistsException as error:
            raise GlueError(f"Glue table {database}.{name} already exists") from error
        except self.client.exceptions.EntityNotFoundException as error:
            raise GlueError(
                f"Glue database {database!r} does not exist (creating table {database}.{name})"
            ) from error
        table = self.get_table(database, name)
        assert table is not None
        return table

    def _require_table(self, database: str, table: str) -> dict[str, Any]:
        found = self.get_table(database, table)
        if found is None:
            raise GlueError(f"Glue table {database}.{table} does not exist")
        return found

    # --- partitions -----------------------------------------------------------------------

    def get_partition(
        self, database: str, table: str, values: Sequence[str]
    ) -> dict[str, Any] | None:
        """The partition with these values (in partition-key order), or None."""
        try:
            return self.client.get_partition(
                DatabaseName=database, TableName=table, PartitionValues=list(values)
            )["Partition"]
        except self.client.exceptions.EntityNotFoundException:
            return None

    def get_partitions(
        self, database: str, table: str, expression: str | None = None
    ) -> list[dict[str, Any]]:
        """All partitions of the table, filtered by a Glue `Expression` if given.

        e.g. `expression="ingest_date >= '2024-01-01'"`. Pages with NextToken.
        """
        kwargs: dict[str, Any] = {"DatabaseName": database, "TableName": table}
        if expression:
            kwargs["Expression"] = expression
        partitions: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("get_partitions").paginate(**kwargs):
                partitions.extend(page.get("Partitions", []))
        except self.client.exceptions.EntityNotFoundException as error:
            raise GlueError(f"Glue table {database}.{table} does not exist") from error
        except self.client.exceptions.InvalidInputException as error:
            raise GlueError(
                f"Glue table {database}.{table}: invalid partition expression {expression!r}: "
                f"{error.response['Error'].get('Message', '')}"
            ) from error
        return partitions

    def add_or_update_partition(
        self, database: str, table: str, values: Sequence[str], location: str
    ) -> str:
        """Register partition `values` at `location`: "created", "updated" or "unchanged".

        The partition gets the table's storage descriptor (columns, CSV serde) with its own
        location. If it exists at another location, its location is updated.
        """
        values = [str(v) for v in values]
        found = self._require_table(database, table)
        keys = found.get("PartitionKeys", [])
        if len(values) != len(keys):
            raise GlueError(
                f"Glue table {database}.{table} has partition keys "
                f"{[k['Name'] for k in keys]}; got values {values}"
            )
        storage = copy.deepcopy(found.get("StorageDescriptor", {}))
        storage["Location"] = location
        partition_input = {"Values": values, "StorageDescriptor": storage}

        response = self.client.batch_create_partition(
            DatabaseName=database, TableName=table, PartitionInputList=[partition_input]
        )
        errors = response.get("Errors", [])  # moto omits Errors on success
        if not errors:
            return "created"
        detail = errors[0].get("ErrorDetail", {})
        if detail.get("ErrorCode") != "AlreadyExistsException":
            raise GlueError(
                f"Glue table {database}.{table}: cannot add partition {values} at {location}: "
                f"{detail.get('ErrorCode')}: {detail.get('ErrorMessage')}"
            )

        existing = self.get_partition(database, table, values) or {}
        if existing.get("StorageDescriptor", {}).get("Location") == location:
            return "unchanged"
        existing_storage = copy.deepcopy(existing.get("StorageDescriptor") or storage)
        existing_storage["Location"] = location
        self.client.update_partition(
            DatabaseName=database,
            TableName=table,
            PartitionValueList=values,
            PartitionInput={"Values": values, "StorageDescriptor": existing_storage},
        )
        return "updated"
