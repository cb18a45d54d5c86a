"""The staged-tables audit: what in staging/, prod/ and the Glue catalog disagrees, per table.

The source system needed a one-off crawler (`supplemental_2.py`) before its checks could work,
because staging and prod had drifted. This is that crawler, kept: `credflow tables audit` and
the `staged_tables_audit_job` read every `staging/{table}/` and `prod/{table}/` folder and the
Glue catalog, and report per table (one finding per thing a person should look at):

- `column_mismatch`: a staging or prod file whose normalized columns are not the table's, in
  order (the table's columns as in `columns.py`: Glue, else the oldest prod file);
- `prod_file_not_in_glue`: a prod file whose `ingest_date` partition is missing from Glue, or
  registered at another location: Athena does not see it;
- `dangling_partition`: a Glue partition whose location holds no object;
- `no_glue_table`: prod has files but the catalog has no table for them;
- `unprocessed_staging_file`: an upload in staging with no check on record for that version
  (its event was lost, or it waits for a run), or one that passed its checks but whose
  promotion did not finish;
- `rejected_staging_file`: an upload that failed its checks and waits for a corrected upload;
- `unexpected_object`: an object the flow never processes (unconfigured table folder, not a
  `.csv`, a sub-folder, a prod object outside `ingest_date=YYYY-MM-DD/`).

The audit changes nothing. `fix_staged_tables` (`--fix`) does only two things: it registers the
missing partitions of prod folders whose every file matches the table, and it removes dangling
partitions. It never moves, deletes or rewrites an object: files are a person's decision.

Cost: one listing of staging/ and prod/ per table, one ranged GET (first 64 KiB) per file for
its header, one `get_partitions` per table, and one Dagster query per staged file.
"""


from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg

from credflow_assets.common.csv_columns import normalize_headers
from credflow_assets.resources.glue import GlueResource, table_columns
from credflow_assets.resources.s3 import iter_objects
from credflow_assets.staged_tables.columns import (
    HeaderError,
    compare_columns,
    read_header,
)
from credflow_assets.staged_tables.layout import PARTITION_COLUMN, Layout, partition_key_for
from credflow_assets.staged_tables.names import object_version

FINDING_KINDS = (
    "column_mismatch", "prod_file_not_in_glue", "dangling_partition", "no_glue_table",
    "unprocessed_staging_file", "rejected_staging_file", "unexpected_object",
)


@dataclass
class Finding:
    kind: str
    table: str
    location: str  # an s3:// URI, or `glue:{database}.{table}/ingest_date=D`
    sentence: str
    details: dict[str, Any] = field(default_factory=dict)
    fixable: bool = False
    fixed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TableAudit:
    table: str
    configured: bool
    glue_table: bool = False
    columns: list[str] | None = None
    columns_from: str = ""
    staging_files: int = 0
    prod_files: int = 0
    partitions: int = 0
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [finding.to_dict() for finding in self.findings]
        data["counts"] = {kind: sum(1 for f in self.findings if f.kind == kind)
                          for kind in FINDING_KINDS}
        return data


@dataclass
class AuditReport:
    bucket: str
    database: str
    tables: list[TableAudit]
    processing_known: bool  # whether a Dagster instance told which uploads were processed
    actions: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [finding for table in self.tables for finding in table.findings]

    @property
    def open_findings(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.fixed]

    @property
    def is_clean(self) -> bool:
        return not self.open_findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "glue_database": self.database,
            "clean": self.is_clean,
            "processing_known": self.processing_known,
            "counts": {kind: sum(1 for f in self.findings if f.kind == kind)
                       for kind in FINDING_KINDS},
            "tables": [table.to_dict() for table in self.tables],
            "actions": self.actions,
        }

    def table_lines(self) -> list[str]:
        """A readable report: a summary table, then each table's findings."""
        header = ["table", "glue", "staging", "prod", "partitions", "findings"]
        rows = [[t.table + ("" if t.configured or not t.glue_table and not t.columns_from
                            and t.table == "(no table)" else " (not configured)"),
                 "yes" if t.glue_table else "no", t.staging_files, t.prod_files, t.partitions,
                 len(t.findings)] for t in self.tables]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        lines = [f"Staged tables audit of s3://{self.bucket} and Glue database {self.database}: "
                 + ("clean" if self.is_clean else f"{len(self.open_findings)} open finding(s)")]
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
                  for row in [header, *rows]]
        if not self.processing_known:
            lines.append("(no Dagster instance: uploads not checked for processing; set "
                         "DAGSTER_HOME)")
        for table in self.tables:
            if not table.findings:
                continue
            lines.append("")
            source = (f"columns from {table.columns_from}" if table.columns_from
                      else "no table yet: its first good file founds it")
            lines.append(f"{table.table} ({source}):")
            by_kind: dict[str, list[Finding]] = defaultdict(list)
            for finding in table.findings:
                by_kind[finding.kind].append(finding)
            for kind in FINDING_KINDS:
                for finding in by_kind.get(kind, []):
                    mark = " [fixed]" if finding.fixed else ""
                    lines.append(f"  {kind}{mark}: {finding.sentence}")
        if self.actions:
            lines.append("")
            lines.append("fixed:")
            lines += [f"  {action}" for action in self.actions]
        return lines


def audit_staged_tables(client: Any, glue: GlueResource, layout: Layout, database: str, *,
                        instance: Any = None) -> AuditReport:
    """Crawl staging/, prod/ and the Glue catalog; change nothing."""
    directories = set(_folders(client, layout.bucket, layout.staging_prefix))
    directories |= set(_folders(client, layout.bucket, layout.prod_prefix))
    names = list(layout.tables) + sorted(directories - set(layout.tables))
    tables = [_audit_table(client, glue, layout, database, name, instance) for name in names]
    tables += _stray_objects(client, layout)
    return AuditReport(bucket=layout.bucket, database=database, tables=tables,
                       processing_known=instance is not None)


def fix_staged_tables(glue: GlueResource, layout: Layout, database: str,
                      report: AuditReport) -> list[str]:
    """Register missing partitions of clean prod folders; remove dangling partitions."""
    actions: list[str] = []
    registered: set[tuple[str, str]] = set()
    for finding in report.findings:
        if not finding.fixable or finding.fixed:
            continue
        table = finding.table
        if finding.kind == "prod_file_not_in_glue":
            date = finding.details["ingest_date"]
            if (table, date) not in registered:
                location = layout.partition_location(table, date)
                outcome = glue.add_or_update_partition(database, table, [date], location)
                actions.append(f"{database}.{table}: partition {PARTITION_COLUMN}={date} "
                               f"{outcome} at {location}")
                registered.add((table, date))
            finding.fixed = True
        elif finding.kind == "dangling_partition":
            values = finding.details["values"]
            try:
                glue.client.delete_partition(DatabaseName=database, TableName=table,
                                             PartitionValues=values)
            except glue.client.exceptions.EntityNotFoundException:
                pass
            actions.append(f"{database}.{table}: removed partition {values} "
                           f"(location {finding.details['partition_location']} is empty)")
            finding.fixed = True
    report.actions.extend(actions)
    return actions


# --- one table --------------------------------------------------------------------------------


def _audit_table(client, glue: GlueResource, layout: Layout, database: str, table: str,
                 instance) -> TableAudit:
    """One table's findings: its staging files, its prod files, then its Glue partitions."""
    audit = TableAudit(table=table, configured=table in layout.tables)
    staging = _objects(client, layout.bucket, layout.staging_table_prefix(table))
    prod = _objects(client, layout.bucket, layout.prod_table_prefix(table))
    audit.staging_files, audit.prod_files = len(staging), len(prod)
    found = glue.get_table(database, table)
    audit.glue_table = found is not None
    prod_files = [(item, layout.prod_file(item["Key"])) for item in prod]
    reference_key = _find_table_columns(client, layout, database, table, found, prod_files, audit)
    if not audit.configured:
        audit.findings += _unconfigured_folder_findings(layout, table, staging, prod)
    audit.findings += _staging_findings(client, layout, table, staging, audit, instance)
    prod_findings, files_by_date, bad_dates = _prod_findings(client, layout, table, prod_files,
                                                             reference_key, audit)
    audit.findings += prod_findings
    if found is None:
        audit.findings += _no_glue_table_findings(database, table, files_by_date)
        return audit
    partitions = glue.get_partitions(database, table)
    audit.partitions = len(partitions)
    dangling, registered = _partition_findings(client, layout, database, table, found,
                                               partitions, prod)
    audit.findings += dangling
    audit.findings += _unregistered_prod_file_findings(layout, table, files_by_date, registered,
                                                       bad_dates)
    return audit


def _objects(client, bucket: str, prefix: str) -> list[dict]:
    """The objects under `prefix`, folder markers left out."""
    return [item for item in iter_objects(client, bucket, prefix=prefix)
            if not item["Key"].endswith("/")]


def _find_table_columns(client, layout: Layout, database: str, table: str, found,
                        prod_files: list, audit: TableAudit) -> str | None:
    """Set the audit's table columns (and where they come from) as the flow finds them: the
    Glue table's, else the oldest prod file's header. Returns that prod file's key, if any: it
    defines the columns, so it is not compared with them."""
    if found is not None:
        audit.columns = [name for name, _ in table_columns(found)]
        audit.columns_from = f"Glue table {database}.{table}"
        return None
    dated = [(item["LastModified"], item["Key"]) for item, prod_file in prod_files if prod_file]
    if not dated:
        return None
    reference_key = min(dated)[1]
    try:
        audit.columns = normalize_headers(read_header(client, layout.bucket, reference_key))
        audit.columns_from = f"the oldest prod file {layout.uri(reference_key)}"
    except HeaderError:
        audit.columns_from = ""
    return reference_key


def _unconfigured_folder_findings(layout: Layout, table: str, staging: list[dict],
                                  prod: list[dict]) -> list[Finding]:
    """A table folder the config does not name: its objects are never checked or promoted."""
    findings = []
    for prefix, count in ((layout.staging_table_prefix(table), len(staging)),
                          (layout.prod_table_prefix(table), len(prod))):
        if count:
            findings.append(Finding(
                "unexpected_object", table, layout.uri(prefix),
                f"{layout.uri(prefix)} holds {count} object(s) but {table} is not a "
                "configured table: they are never checked or promoted",
                {"objects": count},
            ))
    return findings


def _staging_findings(client, layout: Layout, table: str, staging: list[dict],
                      audit: TableAudit, instance) -> list[Finding]:
    """Per staged upload: never processed as a file, columns not the table's, and (with a
    Dagster instance) not checked, rejected or not promoted."""
    findings = []
    for item in staging:
        key = item["Key"]
        why = layout.why_ignored(key)
        if why:
            if audit.configured:
                findings.append(Finding(
                    "unexpected_object", table, layout.uri(key),
                    f"{layout.uri(key)} is never processed: {why}", {"key": key}))
            continue
        mismatch = _column_finding(client, layout, table, key, audit.columns, audit.columns_from)
        if mismatch:
            findings.append(mismatch)
        if instance is not None:
            status = _processing_finding(instance, layout, table, item)
            if status:
                findings.append(status)
    return findings


def _prod_findings(client, layout: Layout, table: str, prod_files: list,
                   reference_key: str | None, audit: TableAudit):
    """(the prod files' findings: outside a partition folder, columns not the table's; the
    files of each ingest date; the dates holding a file whose columns are not the table's)."""
    findings = []
    bad_dates: set[str] = set()
    files_by_date: dict[str, list[str]] = defaultdict(list)
    for item, prod_file in prod_files:
        key = item["Key"]
        if prod_file is None:
            findings.append(Finding(
                "unexpected_object", table, layout.uri(key),
                f"{layout.uri(key)} is not prod/{table}/{PARTITION_COLUMN}=YYYY-MM-DD/{{file}}: "
                "no partition can hold it", {"key": key}))
            continue
        files_by_date[prod_file.ingest_date].append(key)
        if key == reference_key:
            continue
        mismatch = _column_finding(client, layout, table, key, audit.columns, audit.columns_from)
        if mismatch:
            findings.append(mismatch)
            bad_dates.add(prod_file.ingest_date)
    return findings, files_by_date, bad_dates


def _no_glue_table_findings(database: str, table: str,
                            files_by_date: dict[str, list[str]]) -> list[Finding]:
    if not files_by_date:
        return []
    count = sum(len(keys) for keys in files_by_date.values())
    return [Finding(
        "no_glue_table", table, f"glue:{database}.{table}",
        f"prod/{table}/ has {count} file(s) in {len(files_by_date)} "
        f"{PARTITION_COLUMN} folder(s) but Glue has no table {database}.{table}: Athena "
        "cannot see them (the next promoted file creates it)",
        {"files": count})]


def _partition_findings(client, layout: Layout, database: str, table: str, found,
                        partitions: list[dict], prod: list[dict]):
    """(a finding per Glue partition whose location holds no object: dangling; where each
    ingest date's partition is registered)."""
    findings = []
    partition_names = [k["Name"] for k in found.get("PartitionKeys", [])]
    by_date: dict[str, str] = {}
    for partition in partitions:
        values = partition.get("Values", [])
        location = partition.get("StorageDescriptor", {}).get("Location", "")
        if partition_names == [PARTITION_COLUMN] and values:
            by_date[values[0]] = location
        if not _location_has_objects(client, layout, location, table, prod):
            findings.append(Finding(
                "dangling_partition", table,
                f"glue:{database}.{table}/" + "/".join(
                    f"{n}={v}" for n, v in zip(partition_names, values)),
                f"Glue partition {values} of {database}.{table} points at {location}, which "
                "holds no object", {"values": values, "partition_location": location},
                fixable=True))
    return findings, by_date


def _unregistered_prod_file_findings(layout: Layout, table: str,
                                     files_by_date: dict[str, list[str]],
                                     registered_at: dict[str, str],
                                     bad_dates: set[str]) -> list[Finding]:
    """Prod files Athena does not see: their date's partition is missing or elsewhere. Fixable
    (by registering it) unless a file of that date has the wrong columns."""
    findings = []
    for date, file_keys in sorted(files_by_date.items()):
        expected = layout.partition_location(table, date)
        registered = registered_at.get(date)
        if registered == expected:
            continue
        fixable = date not in bad_dates
        why_not = ("" if fixable else
                   f"; not fixable while {PARTITION_COLUMN}={date} holds a file whose columns "
                   "disagree with the table")
        state = "is not registered" if registered is None else f"points at {registered}"
        for key in file_keys:
            findings.append(Finding(
                "prod_file_not_in_glue", table, layout.uri(key),
                f"{layout.uri(key)} is invisible to Athena: partition {PARTITION_COLUMN}={date} "
                f"{state}{why_not}",
                {"ingest_date": date, "registered_location": registered,
                 "expected_location": expected},
                fixable=fixable))
    return findings


def _column_finding(client, layout: Layout, table: str, key: str,
                    columns: list[str] | None, columns_from: str) -> Finding | None:
    if columns is None:
        return None
    try:
        actual = normalize_headers(read_header(client, layout.bucket, key))
    except HeaderError as error:
        return Finding("column_mismatch", table, layout.uri(key),
                       f"{layout.uri(key)}: {error}", {"key": key, "problem": str(error)})
    comparison = compare_columns(actual, columns)
    if comparison.passed:
        return None
    return Finding(
        "column_mismatch", table, layout.uri(key),
        f"{layout.uri(key)}: " + "; ".join(comparison.problems())
        + f" (table columns from {columns_from})",
        {"key": key, "missing": comparison.missing, "extra": comparison.extra,
         "reordered": comparison.reordered, "file_columns": actual, "table_columns": columns},
    )


def _processing_finding(instance, layout: Layout, table: str, item: dict) -> Finding | None:
    from credflow_assets.staged_tables.sensors import last_observation

    key = item["Key"]
    version = object_version(item["ETag"], item["LastModified"])
    observed = last_observation(instance, partition_key_for(key))
    if observed is None or observed.get("version") != version:
        return Finding(
            "unprocessed_staging_file", table, layout.uri(key),
            f"{layout.uri(key)} (uploaded {item['LastModified']:%Y-%m-%d %H:%M} UTC) has never "
            "been checked: its event may have been lost, or it waits for a run",
            {"key": key, "version": version})
    if not observed.get("checks_passed"):
        return Finding(
            "rejected_staging_file", table, layout.uri(key),
            f"{layout.uri(key)} failed its checks and waits for a corrected upload "
            f"(uploader: {observed.get('uploader') or 'unknown'})",
            {"key": key, "version": version})
    return Finding(
        "unprocessed_staging_file", table, layout.uri(key),
        f"{layout.uri(key)} passed its checks but its promotion did not finish (a failed "
        "prod or Glue step; the reconciliation sensor retries it)",
        {"key": key, "version": version})


def _location_has_objects(client, layout: Layout, location: str, table: str,
                          prod: list[dict]) -> bool:
    prefix_uri = f"s3://{layout.bucket}/{layout.prod_table_prefix(table)}"
    if location.startswith(prefix_uri):
        prefix = location[len(f"s3://{layout.bucket}/"):]
        return any(item["Key"].startswith(prefix) for item in prod)
    if not location.startswith("s3://"):
        return False
    bucket, _, prefix = location[len("s3://"):].partition("/")
    try:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except client.exceptions.ClientError:
        return False
    return bool(page.get("Contents"))


def _folders(client, bucket: str, prefix: str) -> list[str]:
    names = []
    kwargs = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
    while True:
        page = client.list_objects_v2(**kwargs)
        names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        if not page.get("IsTruncated"):
            return names
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _stray_objects(client, layout: Layout) -> list[TableAudit]:
    """Objects directly under staging/ or prod/, outside any table folder."""
    strays = []
    for prefix in (layout.staging_prefix, layout.prod_prefix):
        kwargs = {"Bucket": layout.bucket, "Prefix": prefix, "Delimiter": "/"}
        while True:
            page = client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                if item["Key"] != prefix:
                    strays.append(Finding(
                        "unexpected_object", "", layout.uri(item["Key"]),
                        f"{layout.uri(item['Key'])} is outside any table folder: never "
                        "processed", {"key": item["Key"]}))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    if not strays:
        return []
    return [TableAudit(table="(no table)", configured=False, findings=strays)]


# --- the audit as a job in the UI -------------------------------------------------------------


class AuditConfig(dg.Config):
    fix: bool = False  # register missing partitions and remove dangling ones


def build_audit_job() -> dg.JobDefinition:
    from dagster_aws.s3 import S3Resource

    from credflow_assets.staged_tables.names import AUDIT_JOB_NAME
    from credflow_assets.staged_tables.settings import StagedTablesSettings

    @dg.op(out=dg.Out(dg.Nothing))
    def audit_staged_tables_op(context: dg.OpExecutionContext, config: AuditConfig,
                               s3: S3Resource, glue: GlueResource,
                               staged_tables_settings: StagedTablesSettings):
        settings = staged_tables_settings
        report = audit_staged_tables(s3.get_client(), glue, settings.layout,
                                     settings.glue_database, instance=context.instance)
        if config.fix:
            fix_staged_tables(glue, settings.layout, settings.glue_database, report)
        text = "\n".join(report.table_lines())
        (context.log.info if report.is_clean else context.log.warning)(text)
        counts = report.to_dict()["counts"]
        yield dg.Output(None, metadata={
            "clean": report.is_clean,
            "open_findings": len(report.open_findings),
            **{kind: count for kind, count in counts.items()},
            "fixed": dg.MetadataValue.json(report.actions),
            "report": dg.MetadataValue.md(f"```\n{text}\n```"),
            "report_json": dg.MetadataValue.json(report.to_dict()),
        })

    @dg.job(name=AUDIT_JOB_NAME, executor_def=dg.in_process_executor,
            description="Crawl staging/, prod/ and the Glue catalog and report, per table, files "
            "whose columns disagree, prod files missing from Glue, dangling partitions and "
            "staged files never processed. Changes nothing unless run with config fix: true "
            "(then it only registers missing partitions and removes dangling ones).")
    def staged_tables_audit_job():
        audit_staged_tables_op()

    return staged_tables_audit_job
