"""Demo uploads for the staged-tables flow: analysts' CSVs in `staging/{table}/`.

For the `claims` table, in upload order:

1. `2024-01_claims.csv`: a good file; as the table's first, it founds the Glue table;
2. `2024-02_claims.csv`: a good second file, another partition's worth of rows;
3. `2024-03_claims_excel_export.csv`: headers as a spreadsheet writes them (`Claim ID`,
   `First Name`, …); they normalize to the table's columns and the file goes through;
4. `2024-04_claims_wrong_columns.csv`: `last_name` and `first_name` swapped and an extra
   `notes` column: both checks fail and it stays in staging.

The claims files name their month's last day as `ingest-date` (S3 metadata), so each lands in a
partition of its own.
And one `licenses` file, a table without a pandera model (its types are inferred).

Idempotent: a file already in staging with the same content, or already promoted to prod, is not
uploaded again (re-uploading would be a new upload, processed again).
"""

from __future__ import annotations

import hashlib
from typing import Any

from credflow_assets.config import CredflowConfig

UPLOADER = "ana.analyst@example.com"

_CLAIMS_COLUMNS = "claim_id,first_name,last_name,service_date,amount_usd,status"

# (table, file name, ingest date or None for the upload date, content)
DEMO_FILES: list[tuple[str, str, str | None, str]] = [
    ("claims", "2024-01_claims.csv", "2024-01-31", _CLAIMS_COLUMNS + "\n"
     "C-1001,Nicholas,Lamb,2024-01-03,120.50,paid\n"
     "C-1002,Erin,Adams,2024-01-09,80.00,submitted\n"
     "C-1003,Ann,O'Brien,2024-01-17,310.25,denied\n"),
    ("claims", "2024-02_claims.csv", "2024-02-29", _CLAIMS_COLUMNS + "\n"
     "C-1004,Nicholas,Lambert,2024-02-02,95.00,paid\n"
     "C-1005,José,Núñez-Ávila,2024-02-14,150.75,submitted\n"),
    ("claims", "2024-03_claims_excel_export.csv", "2024-03-31",
     "Claim ID,First Name,Last Name,Service Date,Amount USD,Status\n"
     "C-1006,Erin,Adams,2024-03-05,60.00,paid\n"
     "C-1007,\"Smith, Jr.\",Kim,2024-03-21,45.10,submitted\n"),
    ("claims", "2024-04_claims_wrong_columns.csv", "2024-04-30",
     "claim_id,last_name,first_name,service_date,amount_usd,status,notes\n"
     "C-1008,Lamb,Nicholas,2024-04-01,75.00,paid,resubmitted\n"
     "C-1009,Adams,Erin,2024-04-11,20.00,denied,duplicate\n"),
    ("licenses", "2024-q1_licenses.csv", None,
     "License Number,State,Holder,Expires On,Active\n"
     "LCSW-0042,NY,Nicholas Lamb,2026-06-30,true\n"
     "LMFT-0077,CA,Erin Adams,2025-12-31,false\n"),
]


def seed_staged_tables(config: CredflowConfig, s3_client: Any) -> list[str]:
    """Upload the demo CSVs that are not there yet; a line per file for the terminal."""
    bucket = config.buckets.adhoc
    staging = _prefix(config.staged_tables.staging_prefix)
    prod = _prefix(config.staged_tables.prod_prefix)
    configured = {table.name for table in config.staged_tables.tables}
    lines = []
    for table, name, ingest_date, text in DEMO_FILES:
        if table not in configured:
            lines.append(f"skipped {name}: table {table} is not in staged_tables.tables")
            continue
        body = text.encode("utf-8")
        etag = hashlib.md5(body).hexdigest()  # noqa: S324 - S3's single-part ETag
        key = f"{staging}{table}/{name}"
        if _etag(s3_client, bucket, key) == etag:
            lines.append(f"s3://{bucket}/{key} already staged")
            continue
        promoted = _promoted(s3_client, bucket, f"{prod}{table}/", name, etag)
        if promoted:
            lines.append(f"s3://{bucket}/{key} already promoted ({promoted})")
            continue
        metadata = {"uploaded-by": UPLOADER}
        if ingest_date:
            metadata["ingest-date"] = ingest_date
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/csv",
                             Metadata=metadata)
        lines.append(f"s3://{bucket}/{key} uploaded")
    return lines


def _prefix(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


def _etag(client: Any, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def _promoted(client: Any, bucket: str, prefix: str, name: str, etag: str) -> str | None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].rsplit("/", 1)[-1] == name and item["ETag"].strip('"') == etag:
                return item["Key"]
    return None
