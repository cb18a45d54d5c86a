"""`credflow local seed`: demo data for the flows that exist, loaded into the running stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from credflow_assets.config import CredflowConfig


def seed(config: CredflowConfig, resources) -> Iterator[str]:
    """Load each flow's demo data; yields a line per thing loaded, for the terminal.

    `resources` holds initialized `drive` and `directory_db` resources and the `s3` client;
    the stack's environment (CREDFLOW_SFTP_ROOT, CREDFLOW_HOME) is exported.
    """
    from credflow_assets.local.seed_drive_feeds import seed_drive_feeds
    from credflow_assets.local.seed_mpf import seed_old_system_mpf
    from credflow_assets.local.seed_provider_feeds import seed_provider_feeds
    from credflow_assets.local.seed_staged_tables import seed_staged_tables

    yield "therapists: directory rows, uploads in S3, and the old system's MPF mess"
    for line in seed_old_system_mpf(
        resources.drive,
        config.drive.mpf_root_folder_id,
        resources.directory_db.get_engine(),
        resources.s3,
        config.buckets.signup,
    ):
        yield f"  {line}"
    yield "staged tables: analysts' CSVs in staging/"
    for line in seed_staged_tables(config, resources.s3):
        yield f"  {line}"
    yield "drive feeds: sheets in each feed's inbound Drive folder"
    for line in seed_drive_feeds(config, resources.drive):
        yield f"  {line}"
    yield "provider feeds: the demo provider's files on the local SFTP server"
    for line in seed_provider_feeds(config, Path(os.environ["CREDFLOW_SFTP_ROOT"]),
                                    Path(os.environ["CREDFLOW_HOME"])):
        yield f"  {line}"
