"""The `credflow` command's root group: the local stack, the config, sync, logs, reparse and dev;
each flow's own commands (its `commands.py`) are added from the registry of flows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from credflow_assets.cli.context import CliContext
from credflow_assets.cli.instance import instance as instance_group
from credflow_assets.cli.lineage import lineage as lineage_command
from credflow_assets.cli.status import status as status_command
from credflow_assets.config import to_public_dict
from credflow_assets.flows import FLOW_NAMES, flow_commands


@click.group()
@click.option("--config", "config_path", envvar="CREDFLOW_CONFIG", type=click.Path(dir_okay=False),
              help="The config file [default: $CREDFLOW_CONFIG, else ./credflow.yaml].")
@click.option("--home", envvar="CREDFLOW_HOME", type=click.Path(file_okay=False),
              help="Where the local stack keeps its state [default: $CREDFLOW_HOME, else ./.credflow].")
@click.pass_context
def main(context: click.Context, config_path: str | None, home: str | None) -> None:
    """credflow: therapist-credentialing file flows on Dagster."""
    context.obj = CliContext(config_path, home)


# --- config -------------------------------------------------------------------------------

@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (secrets masked).")
@click.pass_obj
def config_show(settings: CliContext, as_json: bool) -> None:
    """Print the effective config, with every secret masked."""
    settings.adopt_stack_environment()
    public = {"config_file": str(settings.config_path), **to_public_dict(settings.config())}
    if as_json:
        click.echo(json.dumps(public, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(public, sort_keys=False))


# --- local stack --------------------------------------------------------------------------

@main.group()
def local() -> None:
    """The embedded local stack: moto (S3, SQS, Glue), sshd (SFTP), Drive, SMTP, SQLite."""


@local.command("up")
@click.pass_obj
def local_up(settings: CliContext) -> None:
    """Start the local services (those not already running) and provision them."""
    _require_local_extra()
    from credflow_assets.local import stack

    state = stack.up(settings.home, settings.config(), settings.config_path)
    for name, service in state.services.items():
        click.echo(f"{name:6} running  pid {service['pid']:<7} 127.0.0.1:{service['port']}")
    click.echo(f"state in {settings.home}; `eval \"$(credflow local env)\"` to use it from a shell")


@local.command("down")
@click.pass_obj
def local_down(settings: CliContext) -> None:
    """Stop the local services (their data stays for the next `up`)."""
    from credflow_assets.local import stack

    stopped = stack.down(settings.home)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@local.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def local_status(settings: CliContext, as_json: bool) -> None:
    """Show which local services run, with pid and port; exits 1 when any is down."""
    from credflow_assets.local import stack

    report = stack.status(settings.home)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for name, service in report.items():
            where = f"pid {service['pid']:<7} 127.0.0.1:{service['port']}" if service["running"] else ""
            click.echo(f"{name:6} {'running' if service['running'] else 'stopped':8} {where}")
    sys.exit(0 if all(service["running"] for service in report.values()) else 1)


@local.command("env")
@click.pass_obj
def local_env(settings: CliContext) -> None:
    """Print `export` lines for the running stack: eval "$(credflow local env)"."""
    from credflow_assets.local import stack

    try:
        state = stack.require_running(settings.home)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(stack.export_lines(stack.environment(state, settings.config())))


@local.command("mail")
@click.option("--to", "recipient", metavar="ADDRESS", help="Only messages to this recipient.")
@click.option("--json", "as_json", is_flag=True, help="Every field, the whole text body too.")
@click.pass_obj
def local_mail(settings: CliContext, recipient: str | None, as_json: bool) -> None:
    """List the messages the local SMTP server received, newest last."""
    from credflow_assets.local.mailbox import MailboxError, listing

    try:
        click.echo(listing(settings.home, to=recipient, as_json=as_json))
    except MailboxError as error:
        raise click.ClickException(str(error)) from None


@local.command("seed")
@click.pass_obj
def local_seed(settings: CliContext) -> None:
    """Load demo data into the running stack for the flows that exist."""
    from credflow_assets.local import seed, stack

    try:
        stack.require_running(settings.home)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    settings.adopt_stack_environment()
    with settings.resources("drive", "s3", "directory_db") as resources:
        for line in seed.seed(settings.config(), resources):
            click.echo(line)


# --- running ------------------------------------------------------------------------------

@main.command("sync")
@click.option("--sensor", "sensor_names", multiple=True, help="Only this sensor (repeatable).")
@click.option("--verbose", is_flag=True, help="Also print Dagster's own event log lines.")
@click.pass_obj
def sync_command(settings: CliContext, sensor_names: tuple[str, ...], verbose: bool) -> None:
    """Evaluate every sensor and run what it requests, in-process, to completion.

    Exits 1 when a run failed, naming the failed partitions.
    """
    settings.adopt_stack_environment()
    from credflow_assets.cli.sync import sync
    from credflow_assets.definitions import build_definitions

    with settings.instance() as instance:
        defs = build_definitions(settings.config())
        report = sync(defs, instance, sensor_names=list(sensor_names) or None,
                      progress=click.echo, verbose=verbose)
    ok_runs = len(report.runs) - len(report.failed)
    click.echo(
        f"sync: {len(report.runs)} run(s), {ok_runs} succeeded, {len(report.failed)} failed; "
        f"{report.partitions_added} new partition(s); "
        f"{report.skipped_run_keys} request(s) already done"
    )
    for run in report.failed:
        click.echo(f"  FAILED {run.job} partition {run.partition}: {run.error} (run {run.run_id})")
    for sensor_name, error in report.sensor_errors.items():
        click.echo(f"  SENSOR ERROR {sensor_name}: {error}")
    sys.exit(0 if report.ok else 1)


@main.command("logs")
@click.argument("words", nargs=-1, required=True, metavar="[diff] PARTITION")
@click.option("--run", "run_id", help="This run's log instead of the latest.")
@click.option("--flow", help="Only this flow's logs (therapists, drive_feeds, …).")
@click.option("--errors", is_flag=True,
              help="The file's error report instead (row, column, rule, value of each problem).")
@click.pass_obj
def logs(settings: CliContext, words: tuple[str, ...], run_id: str | None,
         flow: str | None, errors: bool) -> None:
    """Print a file's latest parse log (or --run's); `logs diff PARTITION` compares the last two.

    With --errors, the error report of that parse: the values that broke a rule, which the
    parse log and Dagster never show.
    """
    settings.adopt_stack_environment()
    from credflow_assets.common.error_reports import list_error_reports, read_error_report
    from credflow_assets.common.parse_logs import diff_logs, list_logs, read_log

    diff = len(words) == 2 and words[0] == "diff"
    if len(words) != 1 and not diff:
        raise click.UsageError("expected PARTITION or `diff PARTITION`")
    if diff and errors:
        raise click.UsageError("--errors prints one error report; it does not diff")
    partition = words[-1]
    bucket = settings.config().buckets.logs
    listing, read, kind = ((list_error_reports, read_error_report, "error report") if errors
                           else (list_logs, read_log, "parse log"))
    with settings.resources("s3") as resources:
        client = resources.s3
        found = listing(client, bucket, partition, flow=flow)
        if run_id:
            found = [entry for entry in found if entry["run_id"] == run_id]
        if not found or (diff and len(found) < 2):
            what = f"run {run_id}" if run_id else ("two parses" if diff else "a parse")
            raise click.ClickException(
                f"no {kind} for {what} of partition {partition!r} in s3://{bucket}/"
                + (" (a parse stores one only when the file had problems)" if errors else "")
            )
        if diff:
            older, newer = found[-2], found[-1]
            click.echo(diff_logs(read_log(client, bucket, older["key"]),
                                 read_log(client, bucket, newer["key"]),
                                 f"run {older['run_id']}", f"run {newer['run_id']}")
                       or f"nothing changed: runs {older['run_id']} and {newer['run_id']} "
                       "logged the same lines (timestamps, run ids and durations aside)")
        else:
            latest = found[-1]
            click.echo(f"# s3://{bucket}/{latest['key']}", err=True)
            click.echo(read(client, bucket, latest["key"]), nl=False)


@main.command("reparse")
@click.option("--flow", required=True,
              type=click.Choice(FLOW_NAMES))
@click.option("--feed", help="drive_feeds: only this feed.")
@click.option("--provider", help="provider_feeds: only this provider.")
@click.option("--table", help="staged_tables: only this table.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Only partitions last materialized on or after this date (UTC).")
@click.option("--partition", "partition_keys", multiple=True, help="This partition (repeatable).")
@click.option("--webserver", help="Launch as backfills through this Dagster webserver "
              "[default: $CREDFLOW_WEBSERVER_URL, else 127.0.0.1:3000 if it answers].")
@click.option("--in-process", is_flag=True, help="Run here even when a webserver is running.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="In-process: runs at once. Partitions whose order matters (one feed's, "
              "provider's or table's files) still run one after another.")
@click.option("--verbose", is_flag=True, help="Also print Dagster's own event log lines.")
@click.pass_obj
def reparse_command(settings: CliContext, flow: str, feed: str | None, provider: str | None,
                    table: str | None, since, partition_keys: tuple[str, ...],
                    webserver: str | None, in_process: bool, workers: int,
                    verbose: bool) -> None:
    """Rerun existing partitions of a flow, every run tagged with one credflow/reparse_id.

    With a webserver running, each flow job's partitions become one backfill (the daemon runs
    them; the UI shows them). Otherwise they run here, in-process, and the command exits 1
    when a run failed. Each run writes its own parse log beside the earlier ones.
    """
    from datetime import timezone

    names = [name for name in (feed, provider, table) if name]
    if len(names) > 1:
        raise click.UsageError("give at most one of --feed, --provider, --table")
    settings.adopt_stack_environment()
    from credflow_assets.cli.reparse import ReparseError, reparse, select_partitions

    config = settings.config()
    with settings.instance() as instance:
        try:
            chosen = select_partitions(
                instance, config, flow, name=names[0] if names else None,
                since=since.replace(tzinfo=timezone.utc) if since else None,
                partitions=list(partition_keys) or None,
            )
        except ReparseError as error:
            raise click.ClickException(str(error)) from None
        if not chosen:
            click.echo(f"no {flow} partition matches; nothing to reparse")
            return
        url = None if in_process else _webserver_or_fail(webserver)
        if url:
            _reparse_as_backfills(url, flow, chosen)
            return
        report = reparse(config, instance, flow, chosen, workers=workers, progress=click.echo,
                         verbose=verbose)
    click.echo(f"reparse {report.reparse_id}: {len(report.runs)} run(s) in "
               f"{report.seconds:.1f}s, {len(report.failed)} failed (find them by tag "
               f"credflow/reparse_id={report.reparse_id})")
    for run in report.failed:
        click.echo(f"  FAILED {run.partition}: {run.error} (run {run.run_id})")
    sys.exit(1 if report.failed else 0)


def _webserver_or_fail(explicit: str | None) -> str | None:
    from credflow_assets.cli.backfills import BackfillError, find_webserver

    try:
        return find_webserver(explicit)
    except BackfillError as error:
        raise click.ClickException(str(error)) from None


def _reparse_as_backfills(url: str, flow: str, partitions: list[str]) -> None:
    from credflow_assets.cli.backfills import BackfillError, launch_backfills
    from credflow_assets.cli.reparse import REPARSE_TAG, new_reparse_id, partitions_by_job

    reparse_id = new_reparse_id()
    try:
        backfill_ids = launch_backfills(
            url, partitions_by_job(flow, partitions), {REPARSE_TAG: reparse_id},
            title=f"credflow reparse {reparse_id} ({flow})",
        )
    except BackfillError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"reparse {reparse_id}: {len(partitions)} partition(s) of {flow} as "
               f"{len(backfill_ids)} backfill(s) through {url}")
    for backfill_id in backfill_ids:
        click.echo(f"  backfill {backfill_id}: {url}/runs/b/{backfill_id}")
    click.echo(f"the daemon runs them; find every run by tag {REPARSE_TAG}={reparse_id}")


@main.command("dev")
@click.option("--port", default=3000, show_default=True)
@click.pass_obj
def dev(settings: CliContext, port: int) -> None:
    """Local stack + `dg dev` (webserver on 127.0.0.1, daemon on: sensors run by themselves)."""
    from credflow_assets.local import stack

    from credflow_assets.common.dagster_compat import DEFINITIONS_MODULE, LOCATION_NAME

    _require_local_extra()
    stack.up(settings.home, settings.config(), settings.config_path)
    settings.adopt_stack_environment()
    # The code location's name must be the one `credflow sync` gives its runs and sensor
    # states (`dagster dev -m` would name it after the module).
    workspace = settings.home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n"
        f"      module_name: {DEFINITIONS_MODULE}\n      location_name: {LOCATION_NAME}\n"
        f"      working_directory: {json.dumps(str(Path.cwd()))}\n")
    dg = Path(sys.executable).with_name("dg")  # Dagster's CLI (`dagster dev` is superseded)
    command = [str(dg), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    click.echo(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C stops it; the stack stays up)")
    os.execv(command[0], command)


def _require_local_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        raise click.ClickException(
            "the local stack needs credflow's `local` extra (moto): pip install "
            "'credflow[local]' (make demo and make test install it)")


def _register_flow_commands() -> None:
    for command in flow_commands():
        main.add_command(command)
    main.add_command(lineage_command)
    main.add_command(status_command)
    main.add_command(instance_group)


_register_flow_commands()

if __name__ == "__main__":
    main()
