"""The production paths: PostgreSQL for SQL tables and Dagster's storage, and the deploy/ configs.

deploy/dagster.celery.yaml is run for real (daemon, RabbitMQ, a Celery worker) in
test_production_celery.py; the Kubernetes file, with no cluster here, is validated.
"""

from __future__ import annotations

import shutil
from urllib.parse import urlparse

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from credflow_assets.resources.sql import SqlResource, redacted_url
from credflow_assets_tests.conftest import REPO


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sql_resource_round_trip(backend, tmp_path, request):
    url = (f"sqlite:///{tmp_path / 'tables.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = SqlResource(url=url).get_engine()
    table = sa.Table("records", sa.MetaData(), sa.Column("id", sa.String, primary_key=True),
                     sa.Column("name", sa.String))
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert(), [{"id": "1", "name": "O'Brien"}, {"id": "2", "name": "Lamb"}])
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table).order_by(table.c.id)).all()
    assert [tuple(row) for row in rows] == [("1", "O'Brien"), ("2", "Lamb")]
    engine.dispose()


def test_redacted_url_hides_the_password():
    assert redacted_url("postgresql+psycopg2://credflow:s3cret@db:5432/x") == \
        "postgresql+psycopg2://credflow:***@db:5432/x"


def _dagster_home_with(tmp_path, name: str, postgres_url: str, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / name, home / "dagster.yaml")
    parsed = urlparse(postgres_url.replace("+psycopg2", ""))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_HOST", parsed.hostname)
    monkeypatch.setenv("DAGSTER_PG_DB", parsed.path.lstrip("/"))
    monkeypatch.setenv("DAGSTER_PG_USER", parsed.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", parsed.password)
    return home


def test_k8s_deploy_config_is_valid_for_the_launcher(tmp_path, postgres_url, monkeypatch):
    from dagster_k8s import K8sRunLauncher

    from credflow_assets.common.dagster_compat import instance_config_errors

    config = yaml.safe_load((REPO / "deploy" / "dagster.k8s.yaml").read_text())
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["storage"]["custom"]["class"] == "PooledPostgresStorage"
    home = _dagster_home_with(tmp_path, "dagster.k8s.yaml", postgres_url, monkeypatch)
    # The launcher itself needs a cluster to start: its config is checked against its schema.
    assert instance_config_errors(str(home), "run_launcher", K8sRunLauncher) == []
    # Each step's output goes to S3 (a pod's disk goes with the pod), as with Celery.
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_BUCKET", "credflow-logs")
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    assert config["compute_logs"] == yaml.safe_load(
        (REPO / "deploy" / "dagster.celery.yaml").read_text())["compute_logs"]
    with dg.DagsterInstance.get() as instance:
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
