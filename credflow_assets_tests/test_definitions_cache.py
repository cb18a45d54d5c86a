"""The code location is built once per config file and environment in a long-lived process
(a Celery pool process loads it for every run), and built again when either changes."""

from __future__ import annotations

import shutil

from credflow_assets.definitions import defs
from credflow_assets_tests.conftest import DEFAULT_CONFIG


def test_defs_are_built_again_only_when_the_config_file_or_environment_changes(
        tmp_path, monkeypatch):
    config = tmp_path / "credflow.yaml"
    shutil.copyfile(DEFAULT_CONFIG, config)
    monkeypatch.setenv("CREDFLOW_CONFIG", str(config))
    first = defs()
    assert defs() is first

    monkeypatch.setenv("CREDFLOW_TEST_SOMETHING_NEW", "1")
    rebuilt = defs()
    assert rebuilt is not first
    assert defs() is rebuilt

    config.write_text(config.read_text() + "\n# edited: a new size, so a new file identity\n")
    edited = defs()
    assert edited is not rebuilt
    assert defs() is edited
