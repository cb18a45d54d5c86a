"""The drive feeds' definitions load without pandas or pandera: a feed's columns come from the
committed digest of schemas.py (`model_columns.json`), which must match the models, and which is
ignored when schemas.py has changed since it was made."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from credflow_assets.config import load_config
from credflow_assets.drive_feeds import model_columns
from credflow_assets.drive_feeds.model_columns import (
    DIGEST_FILE,
    SCHEMAS_FILE,
    UnknownSchemaError,
    columns_from_model,
    digest_text,
)
from credflow_assets.drive_feeds.validation import FeedConfigError, build_plan

REPO_CONFIG = SCHEMAS_FILE.parents[2] / "credflow.yaml"


def test_the_committed_digest_matches_the_models():
    assert DIGEST_FILE.read_text() == digest_text(), (
        "credflow_assets/drive_feeds/model_columns.json is out of date with schemas.py: "
        "run `make model-columns` and commit it"
    )


def test_loading_the_definitions_imports_neither_pandas_nor_pandera(tmp_path):
    """What every run process pays: the whole code location, with each feed's table columns."""
    script = textwrap.dedent(f"""
        import json, sys
        from credflow_assets.config import load_config
        from credflow_assets.definitions import build_definitions
        from credflow_assets.drive_feeds.names import records_key
        defs = build_definitions(load_config({str(REPO_CONFIG)!r}))
        spec = defs.resolve_assets_def(records_key("contact_tracing"))
        schema = spec.metadata_by_key[spec.key]["dagster/column_schema"]
        print(json.dumps({{
            "heavy": sorted(m for m in ("pandas", "pandera") if m in sys.modules),
            "columns": [(c.name, c.type) for c in schema.columns],
        }}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []
    assert loaded["columns"][:4] == [["ctas_id", "text"], ["first_name", "text"],
                                     ["last_name", "text"],
                                     ["date_of_birth", "date (read as %Y-%m-%d)"]]


def test_a_digest_made_from_another_schemas_file_is_ignored(tmp_path):
    digest = json.loads(DIGEST_FILE.read_text())
    digest["models"]["ContactTracingRecord"][0]["description"] = "from the digest"
    current = tmp_path / "current.json"
    current.write_text(json.dumps(digest))
    digest["schemas_sha256"] = hashlib.sha256(b"an older schemas.py").hexdigest()
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(digest))

    assert model_columns.model_columns("ContactTracingRecord", current)[0].description \
        == "from the digest"
    assert model_columns.model_columns("ContactTracingRecord", stale) \
        == columns_from_model("ContactTracingRecord")
    assert columns_from_model("ContactTracingRecord")[0].description == "CTAS case id"


def test_a_feed_naming_no_model_is_refused_with_the_models_it_could_name():
    feed = load_config(REPO_CONFIG).feeds[0].model_copy(update={"schema_name": "ContactTracing"})
    with pytest.raises(FeedConfigError) as refused:
        build_plan(feed)
    assert str(refused.value) == (
        f"feeds[{feed.name}].schema: 'ContactTracing' is not a DataFrameModel in "
        "credflow_assets/drive_feeds/schemas.py "
        "(models: ContactTracingRecord, NsssRecord, SplRecord)"
    )
    with pytest.raises(UnknownSchemaError):
        columns_from_model("ContactTracing")


def test_the_pandera_rules_are_built_when_rows_are_first_validated():
    plan = build_plan(load_config(REPO_CONFIG).feeds[0])
    assert "schema" not in vars(plan)  # nothing of pandera yet
    assert list(plan.schema.columns) == plan.column_names
    assert not plan.schema.columns[plan.id_column].unique  # uniqueness is checked file-wide
    assert plan.quick_checks
