"""The Dagster UI in a real browser, after the daemon processed one file of each flow.

Debian's headless `chromium` (`apt-get install -y chromium`), driven over the DevTools protocol
(the `websockets` client that dagster-webserver already installs), loads what a user opens: the
asset catalog, the global lineage and each flow's group lineage, the partition page of each
flow's main asset for the file `daemon_processed_files` dropped, that file's run, and the run of a
staged upload with the wrong columns (it fails, and says why). Each page
must render (its content present, no spinner left) with no error dialog, toast or GraphQL error
text, and show the partition key or asset name it is about. Screenshots go to `docs/ui/` for
the README, under stable names.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest

from credflow_assets_tests.dagster_ui import (
    FLOWS,
    PARTITION_TAG,
    REPO,
    SENSOR_TAG,
    stop_process_group,
)

SCREENSHOTS = REPO / "docs" / "ui"
WIDTH, HEIGHT = 1600, 1000
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars",
)
# A page has this long to show its content; then its text must stay the same, with no spinner,
# for SETTLE_POLLS polls (parts of a page, like the catalog's status column, load later).
PAGE_DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.5
SETTLE_POLLS = 3
# What the UI shows when a query fails or an object is missing (Dagster's own wording).
ERROR_TEXTS = ("An error occurred", "Unexpected GraphQL error", "GraphQL error", "PythonError",
               "Something went wrong", "No run found", "No assets were found",
               "does not exist", "Not found")
# On a partition page: the latest run for the partition failed (the file's own run, or another).
PARTITION_FAILURE_TEXTS = ("failed, and did not materialize",)
SPINNERS = "[role=progressbar], [class*=Spinner], [class*=spinner]"
OPEN_DIALOGS = "[role=dialog], [class*=-dialog-container], [class*=-toast][class*=danger]"
SCREENSHOT_NAMES = {
    "therapists": "therapist-partition.png",
    "provider_feeds": "provider-file-partition.png",
    "drive_feeds": "feed-sheet-partition.png",
    "staged_tables": "staged-file-partition.png",
}

ASSET_GROUPS_QUERY = """
query UiTestAssetGroups { assetNodes { assetKey { path } groupName } }
"""


def chromium_binary() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium"
                                         if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    return found


class Chromium:
    """One headless chromium and its first tab, over the DevTools protocol."""

    def __init__(self) -> None:
        from websockets.sync.client import connect

        self.exit_stack = ExitStack()
        self.socket = None
        self.profile = Path(tempfile.mkdtemp(prefix="cf-ui-chromium-"))
        self.log_path = self.profile.with_suffix(".log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                 "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"chromium did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        self.socket = self.exit_stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None))
        self.next_id = 0
        self.exceptions: list[str] = []
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params):
        self.next_id += 1
        message_id = self.next_id
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.exceptions.append((details.get("exception") or {}).get("description")
                                       or details.get("text", ""))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def close(self) -> None:
        with suppress(Exception):  # closing a dead browser's socket
            self.exit_stack.close()
        stop_process_group(self.process, deadline=5)
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def browser(dagster_ui, daemon_processed_files):
    # A first visit opens Dagster's "Join the community" dialog over every page; a user clicks
    # Skip once, which is this mutation (the instance remembers it).
    assert dagster_ui.graphql("mutation { setNuxSeen }")["setNuxSeen"] is True
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chromium = Chromium()
    try:
        yield chromium
    finally:
        chromium.close()


def render(browser: Chromium, ui, path: str, expected: list[str], screenshot: str,
           *, error_texts: tuple[str, ...] = ERROR_TEXTS, loaded: str | None = None) -> str:
    """Open `path`, wait until every `expected` text shows (and the `loaded` pattern matches),
    no spinner is left and the text holds still; check for errors, save the screenshot;
    returns the page's text."""
    url = ui.url + path
    browser.exceptions.clear()
    browser.send("Page.navigate", url=url)
    deadline = time.monotonic() + PAGE_DEADLINE_SECONDS
    settled, text, spinners = 0, "", 0
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        previous = text
        text = browser.evaluate("document.body ? document.body.innerText : ''") or ""
        spinners = browser.evaluate(f"document.querySelectorAll({SPINNERS!r}).length")
        ready = (all(wanted in text for wanted in expected) and not spinners
                 and (loaded is None or re.search(loaded, text) is not None))
        # Holding still, but for clocks: the refresh countdown and "N seconds ago" tick.
        still = re.sub(r"\d+", "#", text) == re.sub(r"\d+", "#", previous)
        settled = settled + 1 if ready and still else 0
        if settled >= SETTLE_POLLS:
            break
    image = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    (SCREENSHOTS / screenshot).write_bytes(image)
    dialogs = browser.evaluate(
        f"Array.from(document.querySelectorAll({OPEN_DIALOGS!r})).map(e => e.innerText)")
    missing = [wanted for wanted in expected if wanted not in text]
    if loaded is not None and re.search(loaded, text) is None:
        missing.append(f"/{loaded}/")
    errors = [marker for marker in error_texts if marker.lower() in text.lower()]
    problems = []
    if missing or spinners:
        problems.append(f"not loaded after {PAGE_DEADLINE_SECONDS:.0f}s: missing {missing}, "
                        f"{spinners} spinner(s)")
    if errors:
        problems.append(f"error text on the page: {errors}")
    if dialogs:
        problems.append(f"open dialog(s) or error toast(s): {dialogs}")
    assert not problems, (f"{url} ({screenshot}): " + "; ".join(problems)
                          + f"\nJS exceptions: {browser.exceptions}\npage text:\n{text[:3000]}")
    if browser.exceptions:
        sys.stderr.write(f"\n[ui browser] {path}: JS exceptions: {browser.exceptions}\n")
    return text


def asset_path(key: list[str]) -> str:
    return "/assets/" + "/".join(urllib.parse.quote(part, safe="") for part in key)


def query_string(**params: str) -> str:
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def groups_of(ui) -> dict[tuple[str, ...], str]:
    return {tuple(node["assetKey"]["path"]): node["groupName"]
            for node in ui.graphql(ASSET_GROUPS_QUERY)["assetNodes"]}


def test_the_asset_catalog_lists_every_flows_main_asset(browser, dagster_ui,
                                                        daemon_processed_files):
    # The status column loads after the names: "1 partition" once it has, "- partitions" before.
    render(browser, dagster_ui, "/assets",
           [" / ".join(processed.main_asset) for processed in daemon_processed_files],
           "asset-catalog.png", loaded=r"(?<![-\w])[1-9]\d* partitions?\b")


def test_the_global_lineage_shows_every_flows_group(browser, dagster_ui, daemon_processed_files):
    groups = groups_of(dagster_ui)
    render(browser, dagster_ui, "/asset-groups",
           [groups[tuple(processed.main_asset)] for processed in daemon_processed_files],
           "asset-lineage.png")


@pytest.mark.parametrize("flow", FLOWS)
def test_each_flows_group_lineage_shows_its_assets(browser, dagster_ui, daemon_processed_files,
                                                   flow):
    processed = daemon_processed_files[flow]
    groups = groups_of(dagster_ui)
    group = groups[tuple(processed.main_asset)]
    members = [key[-1] for key, member_group in groups.items() if member_group == group]
    path = "/asset-groups~" + urllib.parse.quote(f'group:"{group}"', safe="") + "/"
    render(browser, dagster_ui, path, members, f"lineage-{group.replace('_', '-')}.png")


@pytest.mark.parametrize("flow", FLOWS)
def test_each_flows_partition_page_shows_the_dropped_file(browser, dagster_ui,
                                                          daemon_processed_files, flow):
    processed = daemon_processed_files[flow]
    path = (asset_path(processed.main_asset) + "?"
            + query_string(view="partitions", partition=processed.partition_key))
    render(browser, dagster_ui, path,
           [processed.partition_key, processed.main_asset[-1], "Materialized"],
           SCREENSHOT_NAMES[flow], error_texts=ERROR_TEXTS + PARTITION_FAILURE_TEXTS)


def test_the_run_page_shows_the_sensors_run(browser, dagster_ui, daemon_processed_files):
    processed = daemon_processed_files["therapists"]
    run = next((run for run in processed.runs if run["status"] == "SUCCESS"), processed.run)
    render(browser, dagster_ui, f"/runs/{run['runId']}",
           [run["runId"][:8], run["jobName"], processed.partition_key,
            run["tag_map"][SENSOR_TAG], "Success"],
           "run.png")


@pytest.mark.fails_a_file_on_dagster_ui
def test_a_rejected_staged_upload_says_why_on_its_run_page(browser, dagster_ui,
                                                           daemon_processed_files):
    """An analyst's CSV with the wrong columns, dropped while the daemon runs: its run fails, the
    file stays in staging, and the run's page says which file and what to do."""
    from credflow_assets.local.seed_staged_tables import DEMO_FILES, UPLOADER

    table, demo_name, ingest_date, text = next(
        file for file in DEMO_FILES if file[1].endswith("_wrong_columns.csv"))
    staging = dagster_ui.config.staged_tables.staging_prefix.rstrip("/") + "/"
    key = f"{staging}{table}/ui-{secrets.token_hex(3)}_{demo_name}"
    bucket = dagster_ui.config.buckets.adhoc
    s3 = dagster_ui.aws("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="text/csv",
                  Metadata={"uploaded-by": UPLOADER, "ingest-date": ingest_date})

    (run,) = dagster_ui.wait_for_runs(lambda run: True, tags={PARTITION_TAG: key})
    assert run["status"] == "FAILURE"
    problem = "columns out of order: last_name, first_name; extra column: notes"
    assert f"{key}: {problem}" in dagster_ui.run_failure(run["runId"])
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(text.encode())

    render(browser, dagster_ui, f"/runs/{run['runId']}",
           [run["runId"][:8], "Failure", key, problem, "Upload a corrected file to the same key"],
           "failed-run.png")
