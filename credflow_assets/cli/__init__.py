"""The `credflow` command: the root group, sync, reparse and backfills. It reads the registry
of flows (`credflow_assets/flows.py`) and registers each flow's commands (its `commands.py`)."""

from credflow_assets.cli.main import main

__all__ = ["main"]
