"""`credflow lineage ARG [--json]`: what happened to one file of any flow, found by its partition
key or its source path (SFTP path, Drive file id or name, staged key, signup upload key, or a
therapist id).

Each flow's `lineage.py` answers: `find(instance, config, text)` gives the partition keys `text`
names, `lineage(instance, config, key, s3_client)` the chain of that file. This module asks every
flow, and prints the one match (or lists several and says how to pick one).
"""

from __future__ import annotations

import importlib
import json

import click

from credflow_assets.common.command_context import CommandContext
from credflow_assets.flows import FLOW_NAMES, flow_named

ACCEPTED = ("a partition key, an SFTP path (`provider/outbox/x.csv.gpg`, `sftp:…`), a Drive "
            "file id or name, a staged key (`staging/claims/x.csv`, `s3://…`), a signup upload "
            "key (`t-1001/license.pdf`) or a therapist id")


def _flow_lineage(flow: str):
    return importlib.import_module(f"credflow_assets.{flow}.lineage")


def resolve(instance, config, text: str) -> list[tuple[str, str]]:
    """Every (flow, partition key) `text` names, in the flows' order."""
    return [(flow, key) for flow in FLOW_NAMES
            for key in _flow_lineage(flow).find(instance, config, text)]


@click.command("lineage")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="The same chain, as JSON.")
@click.pass_obj
def lineage(context: CommandContext, source: str, as_json: bool) -> None:
    """What happened to one file: its source, each step, its runs, parse log and error report.

    SOURCE is a partition key, an SFTP path, a Drive file id or name, a staged key, a signup
    upload key or a therapist id.
    """
    context.adopt_stack_environment()
    config = context.config()
    with context.instance() as instance, context.resources("s3") as resources:
        matches = resolve(instance, config, source)
        if not matches:
            raise click.ClickException(f"no file of any flow matches {source!r}: give {ACCEPTED}")
        if len(matches) > 1:
            raise click.ClickException(_several(source, matches))
        flow, key = matches[0]
        found = _read_lineage(flow, instance, config, key, resources.s3)
        found["archived_on"] = _archived_on(instance, flow, key)
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    if flow == "therapists":
        from credflow_assets.therapists.lineage import format_lineage

        lines = format_lineage(found)
    else:
        lines = format_file_lineage(found)
    if found["archived_on"]:
        lines[1:1] = _row("archived", f"on {found['archived_on'][:10]}: off the instance's "
                                      "partition list (credflow archive-partitions); its runs "
                                      "and records stay")
    click.echo("\n".join(lines))


def _archived_on(instance, flow: str, key: str) -> str | None:
    """When the file's partition was archived (common/partition_archive.py), or None."""
    from credflow_assets.common.partition_archive import archived_on

    partitions = flow_named(flow).partitions
    return archived_on(instance, partitions.partitions_of(partitions.name_of(key)), key)


def _read_lineage(flow: str, instance, config, key: str, s3_client) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _flow_lineage(flow).lineage(instance, config, key, s3_client)
    except (BotoCoreError, ClientError) as error:
        # The chain's logs and objects are in S3: say which store failed, not a traceback.
        raise click.ClickException(
            f"could not read the logs and objects of {flow} file {key!r} from S3 "
            f"({s3_client.meta.endpoint_url}): {error}") from None


def _several(source: str, matches: list[tuple[str, str]]) -> str:
    listed = "\n".join(f"  {flow:15} {key}" for flow, key in matches)
    return (f"{len(matches)} files match {source!r}; run `credflow lineage` again with one of "
            f"these partition keys:\n{listed}")


def format_file_lineage(found: dict) -> list[str]:
    """A file's chain for a person: one link per line, labels aligned, failures in words."""
    lines = [f"{found['flow']} file {found['file']}", *_row("partition", found["partition"]),
             *_row("outcome", found["outcome"])]
    lines += _source_lines(found["source"])
    if found["flow"] == "provider_feeds":
        lines += _provider_lines(found)
    elif found["flow"] == "drive_feeds":
        lines += _feed_lines(found)
    elif found["flow"] == "staged_tables":
        lines += _staged_lines(found)
    for run in found["runs"]:
        lines += _row("run", f"{run['run_id']} {run['job']} {run['status']} at "
                             f"{run['ended'] or run['started']}")
        if run["error"]:
            lines += _row("  why", f"{run['error']}"
                                   + (f" ({run['failure_kind']})" if run["failure_kind"] else ""))
        for field, label in (("log", "  parse log"), ("error_report", "  error report")):
            if run[field]:
                lines += _row(label, run[field]["url"])
    if not found["runs"]:
        lines += _row("runs", "none yet")
    return lines


def _row(label: str, value) -> list[str]:
    return [f"  {label:16} {value}"]


def _link(item: dict | None) -> str:
    if not item:
        return "not there"
    return item.get("url") or item.get("uri") or item.get("missing") or ""


def _source_lines(source: dict) -> list[str]:
    shown = {name: value for name, value in source.items()
             if value not in (None, "") and name not in ("uri", "url")}
    lines = _row("source", ", ".join(f"{name} {value}" for name, value in shown.items()))
    if source.get("url"):
        lines += _row("  link", source["url"])
    return lines


def _provider_lines(found: dict) -> list[str]:
    raw = found["raw_copy"]
    lines = _row("raw copy", f"sha256 {raw['sha256']} {_link(raw)}" if raw else "none yet")
    signature = found["signature"]
    lines += _row("signature", signature["verdict"]
                  + (f" {_link(signature['copy'])}" if signature["copy"] else ""))
    for landed in found["landed"]:
        lines += _row("landed", f"{landed['key']} ({landed['type']}, {landed['size']} B) "
                                f"{_link(landed)}")
    if not found["landed"]:
        lines += _row("landed", "nothing yet")
    return lines


def _feed_lines(found: dict) -> list[str]:
    rows = found["rows"]
    lines = _row("rows", ", ".join(f"{count} {name.replace('_', ' ')}"
                                   for name, count in rows.items()) if rows else "none recorded")
    for reason, count in found["rejections_by_reason"].items():
        lines += _row("  rejected", f"{count}: {reason}")
    summary = found["summary"]
    lines += _row("summary", f"{summary['name']} ({summary['action']}) {_link(summary)}"
                  if summary else "none written")
    return lines


def _staged_lines(found: dict) -> list[str]:
    lines = []
    for check in found["checks"]:
        columns = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(names)}"
                            for kind, names in check["columns"].items())
        verdict = "passed" if check["passed"] else "FAILED"
        lines += _row(f"check {check['check']}", f"{verdict}" + (f" ({columns})" if columns
                                                                   else ""))
    if found["waiting_in_staging"]:
        lines += _row("prod", "waiting in staging")
    else:
        prod, glue = found["prod"], found["glue"]
        lines += _row("prod", f"{prod['key']} {_link(prod)}")
        if glue:
            lines += _row("glue", f"{glue['table']} partition {glue['partition']}")
    return lines
