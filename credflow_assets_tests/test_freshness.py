"""Sources that go quiet: `expect_every` in the config puts Dagster's freshness policy on the
source's asset, and the quiet_sources_sensor tells the owner (e-mail, in the local stack's SMTP
server, listed by `credflow local mail`) and the webhook once per quiet spell.

The provider is the demo provider with its own SFTP folder on the session stack and a window of
a few seconds; files land through `credflow sync`'s engine, which also ticks the sensor. One
test runs `credflow dev` (webserver and daemon) on a stack of its own, with a one-minute window
(Dagster's shortest), and reads the asset's freshness as the UI does, through GraphQL.
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml

from credflow_assets.cli.status import flow_status
from credflow_assets.cli.sync import sync
from credflow_assets.common.freshness import QUIET_SOURCES_SENSOR_NAME, describe_duration
from credflow_assets.config import ConfigError, load_config, parse_cadence, to_public_dict
from credflow_assets.definitions import build_definitions
from credflow_assets.flows import flow_named
from credflow_assets.provider_feeds.names import raw_asset_key, sensor_name
from credflow_assets_tests.conftest import DEFAULT_CONFIG
from credflow_assets_tests.dagster_ui import (
    BIN,
    GRAPHQL_DEADLINE_SECONDS,
    DagsterUI,
    _wait_for_code_location,
    _wait_for_graphql,
    child_environment,
    free_port,
    stop_process_group,
)
from credflow_assets_tests.test_mail import listed

WINDOW_SECONDS = 5
PROVIDER = "acme_health"


def config_with(tmp_path: Path, edit) -> Path:
    """The default config copied into tmp_path, `edit(raw)` applied to its parsed YAML."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    edit(raw)
    path = tmp_path / "credflow.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def quiet_provider(local_stack, tmp_path):
    token = uuid.uuid4().hex[:8]
    outbox = f"quiet_{token}/outbox"
    owner = f"provider-owner-{token}@example.org"

    def watch(raw):
        raw["providers"][0].update(remote_dir=outbox, expect_every=f"{WINDOW_SECONDS}s",
                                   owner=owner)

    config = load_config(config_with(tmp_path, watch))
    folder = Path(local_stack.services["sshd"]["root"]) / outbox
    folder.mkdir(parents=True)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield SimpleNamespace(defs=build_definitions(config), config=config,
                              instance=instance, folder=folder,
                              outbox=outbox, owner=owner, token=token, home=local_stack.home)


def drop_file(provider, name: str) -> None:
    (provider.folder / name).write_text("member_id,name\n1,Alex Example\n")
    report = sync(provider.defs, provider.instance, sensor_names=[sensor_name(PROVIDER)],
                  progress=lambda line: None)
    assert report.sensor_errors == {}
    # The raw copy is materialized whatever the landing says: that is the file arriving.
    event = provider.instance.get_latest_materialization_event(raw_asset_key(PROVIDER))
    assert event is not None and name in event.asset_materialization.partition


def tick_quiet_sources(provider) -> None:
    report = sync(provider.defs, provider.instance, sensor_names=[QUIET_SOURCES_SENSOR_NAME],
                  progress=lambda line: None)
    assert report.sensor_errors == {} and report.runs == []


def mails_to(provider) -> list[dict]:
    return listed(provider.home, "--to", provider.owner)


def webhook_messages(caplog, provider) -> list[str]:
    # Without a webhook URL (the default config) the notifier writes its message to the log.
    return [record.getMessage() for record in caplog.records
            if record.name == "credflow.notifications"
            and f"no new file from provider {PROVIDER}" in record.getMessage()
            and provider.token in record.getMessage()]


def wait_past_the_window() -> None:
    time.sleep(WINDOW_SECONDS + 1)


def test_a_quiet_provider_is_told_to_its_owner_once_and_again_after_a_new_file(
        quiet_provider, caplog):
    caplog.set_level(logging.INFO)
    first = f"roster-{quiet_provider.token}-1.csv"
    drop_file(quiet_provider, first)
    tick_quiet_sources(quiet_provider)
    assert mails_to(quiet_provider) == [], "a source within its window is not overdue"

    wait_past_the_window()
    tick_quiet_sources(quiet_provider)
    tick_quiet_sources(quiet_provider)

    [mail] = mails_to(quiet_provider)
    assert mail["to"] == [quiet_provider.owner]
    # `credflow status` says the same, by the same rule.
    overdue = flow_status(quiet_provider.instance, quiet_provider.config,
                          flow_named("provider_feeds"))["overdue"]
    assert overdue["state"] == "overdue"
    assert [each["source"] for each in overdue["sources"]] == [f"provider {PROVIDER}"]
    assert mail["subject"].startswith(f"credflow: no new file from provider {PROVIDER} for ")
    assert mail["subject"].endswith(f"(expected every {WINDOW_SECONDS} seconds)")
    body = mail["text"]
    assert f"last file: {PROVIDER}/" in body and first in body
    assert f"its SFTP folder {quiet_provider.outbox}" in body
    assert len(webhook_messages(caplog, quiet_provider)) == 1

    # A new file: fresh again, nothing said; quiet again past the window: told anew, once.
    second = f"roster-{quiet_provider.token}-2.csv"
    drop_file(quiet_provider, second)
    tick_quiet_sources(quiet_provider)
    assert len(mails_to(quiet_provider)) == 1

    wait_past_the_window()
    tick_quiet_sources(quiet_provider)
    tick_quiet_sources(quiet_provider)
    mails = mails_to(quiet_provider)
    assert len(mails) == 2 and second in mails[-1]["text"]
    assert len(webhook_messages(caplog, quiet_provider)) == 2

    # A quiet spell that began and ended between two ticks of the sensor is still a new one.
    third = f"roster-{quiet_provider.token}-3.csv"
    drop_file(quiet_provider, third)
    wait_past_the_window()
    tick_quiet_sources(quiet_provider)
    mails = mails_to(quiet_provider)
    assert len(mails) == 3 and third in mails[-1]["text"]


def test_a_provider_that_never_sent_a_file_is_not_called_quiet(quiet_provider):
    # Dagster's freshness says UNKNOWN for an asset never materialized: nothing to tell yet.
    wait_past_the_window()
    tick_quiet_sources(quiet_provider)
    assert mails_to(quiet_provider) == []


def test_the_policy_is_on_the_watched_sources_asset_only(quiet_provider):
    graph = quiet_provider.defs.get_repository_def().asset_graph
    with_policy = {key.to_user_string(): graph.get(key).freshness_policy
                   for key in graph.get_all_asset_keys() if graph.get(key).freshness_policy}
    assert list(with_policy) == [f"s3/provider_feeds/{PROVIDER}_raw"]
    # Dagster's shortest window is a minute: the UI shows that for a window of seconds.
    assert with_policy[f"s3/provider_feeds/{PROVIDER}_raw"] == dg.FreshnessPolicy.time_window(
        fail_window=parse_cadence("1m"))


def test_the_shipped_config_watches_the_demo_provider_daily():
    graph = build_definitions(load_config(DEFAULT_CONFIG)).get_repository_def().asset_graph
    policy = graph.get(raw_asset_key(PROVIDER)).freshness_policy
    assert policy == dg.FreshnessPolicy.time_window(fail_window=parse_cadence("24h"))
    # A feed or table without `expect_every` gets no policy.
    assert graph.get(dg.AssetKey(["drive", "inbound", "nsss_sheet"])).freshness_policy is None


def test_a_feed_and_a_staged_table_with_expect_every_get_the_policy_on_their_source(tmp_path):
    def watch(raw):
        raw["feeds"][0].update(expect_every="30m", owner="feeds@example.org")
        raw["staged_tables"]["tables"][1].update(expect_every="7d")

    graph = build_definitions(load_config(config_with(tmp_path, watch))).get_repository_def(
    ).asset_graph
    with_policy = {key.to_user_string(): graph.get(key).freshness_policy
                   for key in graph.get_all_asset_keys() if graph.get(key).freshness_policy}
    assert with_policy == {
        f"s3/provider_feeds/{PROVIDER}_raw": dg.FreshnessPolicy.time_window(
            fail_window=parse_cadence("24h")),
        "drive/inbound/contact_tracing_sheet": dg.FreshnessPolicy.time_window(
            fail_window=parse_cadence("30m")),
        "s3/staging/licenses_staged_csv": dg.FreshnessPolicy.time_window(
            fail_window=parse_cadence("7d")),
    }


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("24h", 86400), ("7d", 604800),
                                           ("5s", 5), (" 2h ", 7200)])
def test_a_cadence_is_a_whole_number_and_a_unit(text, seconds):
    assert parse_cadence(text).total_seconds() == seconds


@pytest.mark.parametrize("where, value", [
    (("providers", 0), "tomorrow"), (("feeds", 1), "24 hours"), (("feeds", 0), 24),
    (("providers", 0), "0h"), (("providers", 0), "1.5h"),
])
def test_a_bad_cadence_is_refused_naming_the_file_and_the_field(tmp_path, where, value):
    section, index = where
    path = config_with(tmp_path, lambda raw: raw[section][index].update(expect_every=value))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert str(path) in message
    assert f"{section}[{index}].expect_every: {value!r} is not a cadence" in message
    assert "e.g. 30m, 24h or 7d" in message and "Traceback" not in message


def test_a_staged_tables_owner_must_be_an_address(tmp_path):
    path = config_with(tmp_path, lambda raw: raw["staged_tables"]["tables"][0].update(
        expect_every="7d", owner="the analysts"))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert ("staged_tables.tables[0].owner: 'the analysts' is not an e-mail address"
            in str(refused.value))


def test_the_effective_config_shows_a_cadence_as_written_form(tmp_path):
    path = config_with(tmp_path, lambda raw: raw["feeds"][0].update(expect_every="30m",
                                                                    owner="ops@example.org"))
    public = to_public_dict(load_config(path))
    assert public["feeds"][0]["expect_every"] == "30m"
    assert public["feeds"][0]["owner"] == "ops@example.org"
    assert public["feeds"][1]["expect_every"] is None


@pytest.mark.parametrize("seconds, words", [(26 * 3600, "26 hours"), (86400, "24 hours"),
                                            (7 * 86400, "7 days"), (1800, "30 minutes"),
                                            (6, "6 seconds"), (1, "1 second")])
def test_a_duration_is_told_in_whole_units(seconds, words):
    assert describe_duration(seconds) == words


# ------------------------------------------------------------------ under the daemon, as in the UI

FRESHNESS_QUERY = """
query QuietSourceFreshness($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      freshnessPolicy: internalFreshnessPolicy {
        __typename ... on TimeWindowFreshnessPolicy { failWindowSeconds }
      }
      freshnessStatusInfo { freshnessStatus }
    }
  }
}
"""
# The provider sensor's interval (60 s), a run, the one-minute window, the sensors' next ticks.
DAEMON_DEADLINE_SECONDS = 300


@pytest.fixture(scope="module")
def quiet_provider_under_the_daemon(tmp_path_factory):
    """`credflow dev` on a stack of its own whose provider expects a file every minute."""
    from credflow_assets.local import stack

    base = tmp_path_factory.mktemp("quiet_ui")
    token = uuid.uuid4().hex[:8]
    owner = f"provider-owner-{token}@example.org"
    outbox = f"quiet_{token}/outbox"
    config_path = config_with(base, lambda raw: raw["providers"][0].update(
        remote_dir=outbox, expect_every="1m", owner=owner))
    config = load_config(config_path)
    home = base / "home"
    state = stack.up(home, config, config_path)
    process = None
    try:
        variables = stack.environment(state, config)
        port, log_path = free_port(), base / "credflow-dev.log"
        # The daemon evaluates freshness every 30 s by default: every 5 s keeps the test short.
        environment = {**child_environment(variables), "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5"}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(BIN / "credflow"), "--config", str(config_path), "--home", str(home),
                 "dev", "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=environment, cwd=base, start_new_session=True)
        ui = DagsterUI(url=f"http://127.0.0.1:{port}", port=port, home=home, state=state,
                       config=config, env=variables, process=process, log_path=log_path)
        _wait_for_graphql(ui.url, process, log_path, GRAPHQL_DEADLINE_SECONDS)
        _wait_for_code_location(ui, GRAPHQL_DEADLINE_SECONDS)
        folder = Path(variables["CREDFLOW_SFTP_ROOT"]) / outbox  # made empty by `stack.up`
        yield SimpleNamespace(ui=ui, folder=folder, owner=owner, token=token, home=home)
    finally:
        if process is not None:
            stop_process_group(process)
        stack.down(home)


def freshness_in_the_ui(ui: DagsterUI) -> dict:
    answer = ui.graphql(FRESHNESS_QUERY, {"assetKey": {"path": list(raw_asset_key(PROVIDER).path)}})
    node = answer["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    return node


# Dagster's shortest window is a minute and the sensors tick each minute: over two minutes of
# waiting, so it runs with `pytest -m slow`; test_the_ui_shows_the_demo_providers_policy (below)
# keeps the policy's place in the UI in every run.
@pytest.mark.slow
def test_under_the_daemon_the_ui_shows_a_quiet_provider_overdue_and_its_owner_is_told_once(
        quiet_provider_under_the_daemon):
    watched = quiet_provider_under_the_daemon
    assert freshness_in_the_ui(watched.ui)["freshnessPolicy"] == {
        "__typename": "TimeWindowFreshnessPolicy", "failWindowSeconds": 60}

    name = f"roster-{watched.token}.csv"
    (watched.folder / name).write_text("member_id,name\n1,Alex Example\n")
    deadline = time.monotonic() + DAEMON_DEADLINE_SECONDS
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(freshness_in_the_ui(watched.ui)["freshnessStatusInfo"]["freshnessStatus"])
        if statuses[-1] == "DEGRADED" and listed(watched.home, "--to", watched.owner):
            break
        time.sleep(5)
    # Fresh once the file came, overdue (DEGRADED, as the UI shows it) a minute later.
    assert "HEALTHY" in statuses and statuses[-1] == "DEGRADED", statuses
    [mail] = listed(watched.home, "--to", watched.owner)
    assert mail["subject"].startswith(f"credflow: no new file from provider {PROVIDER} for ")
    assert mail["subject"].endswith("(expected every 60 seconds)") and name in mail["text"]


def test_the_ui_shows_the_demo_providers_freshness_policy(dagster_ui):
    """The shipped config watches acme_health daily: the UI's asset node carries the policy
    (the daemon's freshness status beside it), read through the GraphQL the UI uses."""
    node = freshness_in_the_ui(dagster_ui)
    assert node["freshnessPolicy"] == {"__typename": "TimeWindowFreshnessPolicy",
                                       "failWindowSeconds": 24 * 3600}
    assert node["freshnessStatusInfo"]["freshnessStatus"] in ("HEALTHY", "UNKNOWN"), node
