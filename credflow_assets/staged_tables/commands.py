"""`credflow tables …`: the staged-tables audit from the command line.

Registered on the `credflow` command by `main.add_command(tables)`; it uses the CLI's context
object (config file, local stack) when there is one, and `--config` / `$CREDFLOW_CONFIG`
otherwise, so the group also runs on its own.
"""

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@click.group("tables")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The config file (when run outside `credflow`) [default: $CREDFLOW_CONFIG, "
              "else ./credflow.yaml].")
@click.pass_context
def tables(context: click.Context, config_path: str | None) -> None:
    """Staged tables: analysts' CSVs in staging/ → prod/ → Glue."""
    if config_path is not None or not hasattr(context.obj, "config"):
        context.obj = _StandaloneSettings(config_path)


@tables.command("audit")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the JSON report to this file.")
@click.option("--fix", is_flag=True,
              help="Register missing Glue partitions and remove dangling ones (nothing else; "
              "files are never touched).")
@click.pass_obj
def audit(settings, as_json: bool, output: str | None, fix: bool) -> None:
    """Report, per table: files whose columns disagree with the table, prod files missing from
    Glue partitions, partitions pointing at missing objects, staged files never processed.

    Changes nothing unless --fix. Exits 1 while any finding is open.
    """
    from credflow_assets.staged_tables.audit import audit_staged_tables, fix_staged_tables
    from credflow_assets.staged_tables.settings import settings_from_config

    if hasattr(settings, "adopt_stack_environment"):
        settings.adopt_stack_environment()
    config = settings.config()
    flow = settings_from_config(config)
    with settings.resources("s3", "glue") as resources, _instance() as instance:
        report = audit_staged_tables(resources.s3, resources.glue, flow.layout,
                                     flow.glue_database, instance=instance)
        if fix:
            fix_staged_tables(resources.glue, flow.layout, flow.glue_database, report)
    data = report.to_dict()
    if output:
        Path(output).write_text(json.dumps(data, indent=2, default=str) + "\n")
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo("\n".join(report.table_lines()))
    sys.exit(0 if report.is_clean else 1)


class _StandaloneSettings:
    """What the `credflow` context object offers, for the group run on its own."""

    def __init__(self, config_path: str | None):
        self._config_path = config_path

    def config(self):
        from credflow_assets.config import ConfigError, load_config

        try:
            return load_config(self._config_path)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None

    def resources(self, *names: str):
        import dagster as dg

        from credflow_assets.resources.from_config import build_resources

        available = build_resources(self.config())
        return dg.build_resources({name: available[name] for name in names})


@contextmanager
def _instance() -> Iterator:
    """The Dagster instance when DAGSTER_HOME is set (to tell processed uploads), else None."""
    if not os.environ.get("DAGSTER_HOME"):
        yield None
        return
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        yield instance
