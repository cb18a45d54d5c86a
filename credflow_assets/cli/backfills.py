"""Launching partition backfills through a running Dagster webserver (its GraphQL API).

When the webserver and daemon run (`credflow dev`, or production), a reparse is a backfill the
UI shows with its runs, launched like the UI's own "Launch backfill" (`launchPartitionBackfill`).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

WEBSERVER_ENV = "CREDFLOW_WEBSERVER_URL"
DEFAULT_LOCAL_WEBSERVER = "http://127.0.0.1:3000"

_FIND_JOBS = """
query { repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
  ... on PythonError { message } } }
"""

_PARTITION_SETS = """
query($repository: RepositorySelector!, $job: String!) {
  partitionSetsOrError(repositorySelector: $repository, pipelineName: $job) { __typename
    ... on PartitionSets { results { name } }
    ... on PythonError { message } } }
"""

_LAUNCH = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename
  ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message }
  ... on PartitionSetNotFoundError { message }
  ... on InvalidSubsetError { message }
  ... on UnauthorizedError { message } } }
"""


class BackfillError(RuntimeError):
    """The webserver refused or failed the backfill; the message is its answer."""


def find_webserver(explicit: str | None = None) -> str | None:
    """The webserver to use: --webserver, else $CREDFLOW_WEBSERVER_URL, else a local one if it
    answers on 127.0.0.1:3000; None when none is running."""
    for candidate in (explicit, os.environ.get(WEBSERVER_ENV), DEFAULT_LOCAL_WEBSERVER):
        if not candidate:
            continue
        url = candidate.rstrip("/")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            if candidate in (explicit, os.environ.get(WEBSERVER_ENV)):
                raise BackfillError(f"no Dagster webserver answers at {url}") from None
    return None


def launch_backfills(url: str, partitions_by_job: dict[str, list[str]],
                     tags: dict[str, str], title: str) -> list[str]:
    """One backfill per job over its partitions; returns the backfill ids."""
    locations = _job_locations(url)
    backfill_ids = []
    for job_name, partitions in partitions_by_job.items():
        if job_name not in locations:
            raise BackfillError(f"the webserver at {url} has no job {job_name!r}")
        location, repository = locations[job_name]
        repository_selector = {"repositoryLocationName": location, "repositoryName": repository}
        answer = _graphql(url, _LAUNCH, {"params": {
            "selector": {
                "partitionSetName": _partition_set(url, repository_selector, job_name),
                "repositorySelector": repository_selector,
            },
            "partitionNames": partitions,
            "tags": [{"key": key, "value": value} for key, value in tags.items()],
            "title": title,
        }})["launchPartitionBackfill"]
        if answer["__typename"] != "LaunchBackfillSuccess":
            raise BackfillError(f"backfill of {job_name} refused: {answer['__typename']}: "
                                f"{answer.get('message', '')}")
        backfill_ids.append(answer["backfillId"])
    return backfill_ids


def _partition_set(url: str, repository_selector: dict, job_name: str) -> str:
    """The job's partition set, as the webserver names it (asked, not guessed)."""
    answer = _graphql(url, _PARTITION_SETS, {"repository": repository_selector,
                                             "job": job_name})["partitionSetsOrError"]
    if answer["__typename"] != "PartitionSets" or not answer["results"]:
        raise BackfillError(f"the webserver at {url} has no partition set for {job_name}: "
                            f"{answer.get('message', 'none')}")
    return answer["results"][0]["name"]


def _job_locations(url: str) -> dict[str, tuple[str, str]]:
    answer = _graphql(url, _FIND_JOBS, {})["repositoriesOrError"]
    if answer["__typename"] != "RepositoryConnection":
        raise BackfillError(f"the webserver at {url} could not list jobs: {answer}")
    return {job["name"]: (node["location"]["name"], node["name"])
            for node in answer["nodes"] for job in node["jobs"]}


def _graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
    except (urllib.error.URLError, OSError) as error:
        raise BackfillError(f"the webserver at {url} did not answer: {error}") from None
    if payload.get("errors"):
        raise BackfillError(f"the webserver at {url} refused the request: "
                            f"{payload['errors'][0].get('message')}")
    return payload["data"]
