"""What a run process imports before its step: under the default run launcher every run is a new
Python process that builds the whole code location, so a library only one flow's step uses is
imported by that step, not by the definitions (bench/RESULTS.md §7, session 10)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_CONFIG = Path(__file__).resolve().parents[1] / "credflow.yaml"


def test_building_the_definitions_imports_no_numpy(tmp_path):
    """numpy counts a provider CSV's rows while it lands (provider_feeds/rows.py): a therapist's
    or a feed's run never needs it."""
    script = textwrap.dedent(f"""
        import json, sys
        from credflow_assets.config import load_config
        from credflow_assets.definitions import build_definitions
        from credflow_assets.therapists.names import JOB_NAME
        defs = build_definitions(load_config({str(REPO_CONFIG)!r}))
        job = defs.resolve_job_def(JOB_NAME)
        print(json.dumps({{"job": job.name, "numpy": "numpy" in sys.modules}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"job": "therapist_mpf_job", "numpy": False}


def test_a_provider_csv_is_still_counted(tmp_path):
    """The row count the landing reports, from the module that now imports rows.py late."""
    from credflow_assets.provider_feeds.unpack import count_csv_rows

    path = tmp_path / "claims.csv"
    path.write_bytes(b'id,note\n1,"two\nlines"\n2,plain\n')
    assert count_csv_rows(path) == (2, None)
