"""The `credflow` command: the root group, sync, reparse and backfills. It reads each flow's
names and registers each flow's command group."""

from credflow_assets.cli.main import main

__all__ = ["main"]
