"""Least privilege, proven: credflow's flows run against a moto server that enforces IAM, as a user
holding only the policy in deploy/iam/credflow-runs.policy.json (rendered for credflow.yaml).

How the enforcement works (moto 5.2.5, server mode): moto authorizes nothing until
`settings.INITIAL_NO_AUTH_ACTION_COUNT` requests have been served (default: infinity). The
module's stack is provisioned as `credflow local up` does it, unauthenticated; the test then
creates two IAM users (an admin standing in for analysts, the signup form and this test's own
inspection, and `credflow-runs` with only the policy) and sets the count to 0 through
`POST /moto-api/reset-auth`. From then on every request must be signed by a known access key,
and is allowed only if that user's policies allow the action on the resource.

What moto cannot check, and so this test cannot prove (see `as_moto_enforces_it`): Glue calls
are checked by action only, never against the catalog/database/table ARNs; `sqs:GetQueueUrl` is
checked by action only; moto calls `DeleteMessageBatch` an action of its own. S3 and the other
SQS calls are checked against their real ARNs. Which
actions the policy names at all is checked statically against the code's own boto3 calls
(`test_the_policy_allows_exactly_the_actions_the_code_needs`). One condition is used (the
logs bucket listed only under compute_logs/), which moto cannot evaluate: it is checked
statically instead.

The stack's sshd and Drive server are real and unrestricted; only AWS is enforced. SQL and GnuPG
are local. The Drive feeds flow is not run here: its only AWS use is the parse log, the same
statement every other flow's log exercises.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from botocore.exceptions import ClientError

from credflow_assets.config import load_config
from credflow_assets.local.iam import PolicyTemplateError, render_policy
from credflow_assets_tests.conftest import DEFAULT_CONFIG, REPO, running_stack

RUNS_POLICY = REPO / "deploy" / "iam" / "credflow-runs.policy.json"
PRODUCTION_CONFIG = REPO / "deploy" / "credflow.production.yaml"
MOTO_ACCOUNT_ID = "123456789012"  # the account moto serves when none is configured
THERAPIST = "t-9001"
WRONG_STAGED = "staging/claims/2024-04_claims_wrong_columns.csv"  # seeded with a bad header
ELSEWHERE = "credflow-iam-elsewhere"  # a bucket and a queue the policy does not name

# --- what each boto3 call of credflow needs --------------------------------------------------

# Every boto3 operation credflow's code location calls, and the IAM actions it needs on AWS.
# A new call the code makes fails `test_the_policy_allows_exactly_the_actions_the_code_needs`
# until it is added here and to the policy: that is the point.
CALL_TO_ACTIONS: dict[str, set[str]] = {
    # HeadObject is authorized as GetObject; without ListBucket on the bucket, S3 answers a
    # missing key with 403 instead of 404, and `head_object_or_none` would raise.
    "head_object": {"s3:GetObject", "s3:ListBucket"},
    "get_object": {"s3:GetObject"},
    "download_file": {"s3:GetObject"},
    "list_objects_v2": {"s3:ListBucket"},
    # Managed transfers: multipart create/upload/complete are s3:PutObject; a failed transfer
    # aborts its upload, which is s3:AbortMultipartUpload.
    "upload_file": {"s3:PutObject", "s3:AbortMultipartUpload"},
    "upload_fileobj": {"s3:PutObject", "s3:AbortMultipartUpload"},
    "copy_object": {"s3:GetObject", "s3:PutObject"},  # read the source, write the target
    "copy": {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"},
    "delete_object": {"s3:DeleteObject"},
    # A killed run's open uploads (recorded in its tags) are aborted by the next run.
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    "get_queue_url": {"sqs:GetQueueUrl"},
    "receive_message": {"sqs:ReceiveMessage"},
    # SQS has no separate permission for its batch calls: DeleteMessage covers DeleteMessageBatch.
    "delete_message_batch": {"sqs:DeleteMessage"},
    "get_database": {"glue:GetDatabase"},
    "get_table": {"glue:GetTable"},
    "create_table": {"glue:CreateTable"},
    "get_partition": {"glue:GetPartition"},
    "paginate get_partitions": {"glue:GetPartitions"},
    "batch_create_partition": {"glue:BatchCreatePartition"},
    "update_partition": {"glue:UpdatePartition"},
    "delete_partition": {"glue:DeletePartition"},
    # Dagster's S3ComputeLogManager (below): `generate_presigned_url` signs a GetObject (the
    # UI's download link) with the caller's credentials; `delete_objects` needs DeleteObject.
    "list_objects": {"s3:ListBucket"},
    "download_fileobj": {"s3:GetObject"},
    "delete_objects": {"s3:DeleteObject"},
    "generate_presigned_url": {"s3:GetObject"},
}

# deploy/'s dagster.yaml stores each step's stdout and stderr with dagster-aws's
# S3ComputeLogManager, in the processes that run credflow's steps and with their identity: its
# calls are scanned as credflow's are, and the policy grants them in statements of their own.
COMPUTE_LOG_STATEMENTS = {"StoreDagsterComputeLogs", "ListDagsterComputeLogs"}


def boto3_operation_names() -> set[str]:
    """The Python names of every S3, SQS and Glue operation, plus s3transfer's helpers."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    names = {"upload_file", "upload_fileobj", "download_file", "download_fileobj", "copy",
             "get_paginator", "generate_presigned_url"}
    for service in ("s3", "sqs", "glue"):
        names |= {xform_name(op) for op in session.get_service_model(service).operation_names}
    return names


def _receiver(node: ast.AST) -> str | None:
    """`client`, `s3_client`, `self.client`, `glue.client`… as text; None for an expression."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _receiver(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def aws_calls_in_the_code_location() -> dict[str, list[str]]:
    """`{operation: [file:line, …]}` for every boto3 call in credflow_assets/, outside `local/`
    (provisioning, seeding and the Drive stand-in are local-only and never run in production).

    A call counts when its method is an S3/SQS/Glue operation name. Its receiver must then be a
    boto3 client (`client`, `s3_client`, `….client`) or a known non-AWS object; anything else
    fails the scan, so a client held under a new name cannot slip past.
    """
    from credflow_assets.resources.glue import GlueResource

    operations = boto3_operation_names()
    glue_wrappers = {name for name in vars(GlueResource) if not name.startswith("_")}
    calls: dict[str, list[str]] = {}
    unclassified = []
    package = REPO / "credflow_assets"
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[1] == "local":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(relative))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in operations):
                continue
            where, name, receiver = f"{relative}:{node.lineno}", node.func.attr, \
                _receiver(node.func.value)
            if receiver in ("client", "s3_client") or (receiver or "").endswith(".client"):
                if name == "get_paginator":
                    name = f"paginate {node.args[0].value}"
                calls.setdefault(name, []).append(where)
            elif receiver is None and name == "copy":
                continue  # a DataFrame's .copy(): clients are always held in a variable
            elif receiver == "drive":
                continue  # DriveResource's upload_file/download_file: Google Drive, not S3
            elif receiver == "smtp" and name == "send_message":
                continue  # smtplib.SMTP.send_message (resources/mail.py): e-mail, not SQS
            elif receiver in ("glue", "self") and name in glue_wrappers:
                continue  # GlueResource's own methods, which call self.client (counted)
            else:
                unclassified.append(f"{where}: {receiver}.{name}(…)")
    assert not unclassified, (
        "calls named like boto3 operations on an object this scan does not know; say in "
        "aws_calls_in_the_code_location whether it is an AWS client:\n" + "\n".join(unclassified))
    return calls


def aws_calls_of_dagsters_compute_log_manager() -> dict[str, list[str]]:
    """`{operation: [line, …]}` for every call dagster-aws's S3ComputeLogManager makes on its
    client (`self._s3_session`)."""
    import dagster_aws.s3.compute_log_manager as module

    operations = boto3_operation_names()
    source = Path(module.__file__)
    calls: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in operations
                and _receiver(node.func.value) == "self._s3_session"):
            calls.setdefault(node.func.attr, []).append(f"{source.name}:{node.lineno}")
    assert calls, f"no S3 call found in {source}: the scan no longer matches dagster-aws"
    return calls


def policy_actions(policy: dict, sids: set[str] | None = None, *,
                   but: set[str] = frozenset()) -> set[str]:
    """The actions of the policy's statements (of those named `sids`; but not those in `but`)."""
    actions: set[str] = set()
    for statement in policy["Statement"]:
        if (sids is not None and statement["Sid"] not in sids) or statement["Sid"] in but:
            continue
        named = statement["Action"]
        actions |= {named} if isinstance(named, str) else set(named)
    return actions


def test_the_policy_allows_exactly_the_actions_the_code_needs():
    policy = json.loads(RUNS_POLICY.read_text())
    calls = aws_calls_in_the_code_location()
    compute_log_calls = aws_calls_of_dagsters_compute_log_manager()
    for who, made in (("credflow", calls), ("Dagster's compute log manager", compute_log_calls)):
        unmapped = {name: where for name, where in made.items() if name not in CALL_TO_ACTIONS}
        assert not unmapped, f"{who} calls AWS operations the policy was not derived for: " \
            f"{unmapped}"
    for made, granted in (
            (calls, policy_actions(policy, but=COMPUTE_LOG_STATEMENTS)),
            (compute_log_calls, policy_actions(policy, COMPUTE_LOG_STATEMENTS))):
        needed = set().union(*(CALL_TO_ACTIONS[name] for name in made))
        assert granted - needed == set(), "the policy grants actions no code path needs"
        assert needed - granted == set(), "the code needs actions the policy does not grant"
        assert "*" not in json.dumps(sorted(granted)), "a wildcard action"
    # Operations the code no longer calls make the table lie: keep it honest.
    assert set(CALL_TO_ACTIONS) - set(calls) - set(compute_log_calls) == set()


def test_the_policy_prefixes_are_the_codes_own():
    """The literal prefixes in the template are the ones the code writes under."""
    from credflow_assets.common.parse_logs import LOG_PREFIX
    from credflow_assets.provider_feeds.names import landed_key, raw_keys

    text = RUNS_POLICY.read_text()
    assert f"${{buckets.logs}}/{LOG_PREFIX}/*" in text
    compute_logs = yaml.safe_load((REPO / "deploy" / "dagster.celery.yaml").read_text())[
        "compute_logs"]["config"]["prefix"]
    assert f"${{buckets.logs}}/{compute_logs}/*" in text
    assert all(key.startswith("raw/") for key in raw_keys("p", "outbox/x.csv", 1, 0))
    assert landed_key("csv", "p", "x.csv").startswith("data/")
    assert "${buckets.provider_data}/raw/*" in text and "${buckets.provider_data}/data/*" in text


def test_the_compute_logs_listing_is_held_to_its_prefix():
    """The logs bucket's listing, which Dagster's compute log manager needs, is granted only
    under its prefix: the parse logs' names (files, therapist ids) stay unlisted. moto cannot
    check the condition (`as_moto_enforces_it`), so it is checked here."""
    prefix = yaml.safe_load((REPO / "deploy" / "dagster.celery.yaml").read_text())[
        "compute_logs"]["config"]["prefix"]
    statements = {s["Sid"]: s for s in json.loads(RUNS_POLICY.read_text())["Statement"]}
    listing = statements["ListDagsterComputeLogs"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}
    assert [s["Sid"] for s in statements.values() if "Condition" in s] == [
        "ListDagsterComputeLogs"]


@pytest.mark.parametrize("config_path", [DEFAULT_CONFIG, PRODUCTION_CONFIG],
                         ids=["credflow.yaml", "production"])
def test_the_policy_renders_from_a_config(config_path):
    config = load_config(config_path)
    policy = render_policy(RUNS_POLICY, config, "111122223333")
    text = json.dumps(policy)
    assert "${" not in text
    for bucket in config.buckets.model_dump().values():
        assert f"arn:aws:s3:::{bucket}" in text
    for queue in (config.events.signup_uploads.queue, config.events.staging_uploads.queue):
        assert f"arn:aws:sqs:{config.aws.region}:111122223333:{queue}" in text
    database = config.staged_tables.glue_database
    assert f"arn:aws:glue:{config.aws.region}:111122223333:table/{database}/*" in text
    assert "s3:*" not in text and '"Resource": "*"' not in text


def test_rendering_refuses_unknown_names_and_bad_account_ids():
    config = load_config(DEFAULT_CONFIG)
    with pytest.raises(PolicyTemplateError, match=r"\$\{buckets\.archive\}"):
        render_policy({"Resource": "arn:aws:s3:::${buckets.archive}"}, config, "111122223333")
    with pytest.raises(PolicyTemplateError, match="12 digits"):
        render_policy({}, config, "1234")


# --- moto's enforcement, and the one place the test adapts the policy to it ------------------


def as_moto_enforces_it(policy: dict) -> dict:
    """The same grants, shaped so moto 5.2.5's IAM check can match them. Three gaps of moto's:

    - Glue: moto checks `glue:<Operation>` against the resource "*" (its Glue responses have no
      `_determine_resource`, moto/core/responses.py `call_action`), so an ARN never matches.
      Glue statements get `"Resource": "*"`, their actions unchanged.
    - `sqs:GetQueueUrl`: moto finds the queue from a `QueueUrl` parameter, which GetQueueUrl
      does not have (moto/sqs/responses.py `_determine_resource`), and checks "*".
    - `DeleteMessageBatch`: moto checks it as `sqs:DeleteMessageBatch`; AWS authorizes it as
      `sqs:DeleteMessage`, which is what the policy says. Added beside it, same queues.
    - Conditions: moto evaluates only `sts:ExternalId`, and denies a statement whose other
      conditions it cannot read. The one condition of the policy (compute logs' `ListBucket`
      only under `compute_logs/`) is dropped; `test_the_compute_logs_listing_is_held_to_its_prefix`
      checks it is there.
    - S3's `DeleteObjects` (Dagster's compute log manager deletes a run's logs so): moto checks
      `s3:DeleteObject` against the bucket's ARN, then each key against bucket policies only
      (moto/s3/responses.py `_bucket_response_delete_keys`); AWS checks each key's ARN. The
      buckets of the statements granting `s3:DeleteObject` get it in a statement of its own:
      a single `DeleteObject` names a key's ARN, so it is still checked as written.

    Nothing else changes: every S3 statement and every other SQS grant is checked as written.
    """
    adapted = copy.deepcopy(policy)
    extra = []
    for statement in adapted["Statement"]:
        statement.pop("Condition", None)
        actions = [statement["Action"]] if isinstance(statement["Action"], str) \
            else list(statement["Action"])
        if all(action.startswith("glue:") for action in actions):
            statement["Resource"] = "*"
        if "sqs:DeleteMessage" in actions:
            statement["Action"] = actions = [*actions, "sqs:DeleteMessageBatch"]
        if "sqs:GetQueueUrl" in actions:
            statement["Action"] = [action for action in actions if action != "sqs:GetQueueUrl"]
            extra.append({"Sid": "MotoChecksGetQueueUrlOnStar", "Effect": "Allow",
                          "Action": "sqs:GetQueueUrl", "Resource": "*"})
        if "s3:DeleteObject" in actions:
            resources = [statement["Resource"]] if isinstance(statement["Resource"], str) \
                else statement["Resource"]
            extra.append({"Sid": f"MotoChecksDeleteObjectsOnTheBucket{len(extra)}",
                          "Effect": "Allow", "Action": "s3:DeleteObject",
                          "Resource": sorted({arn.split("/", 1)[0] for arn in resources})})
    adapted["Statement"] += extra
    return adapted


def test_the_moto_adaptation_widens_only_what_moto_cannot_check():
    policy = render_policy(RUNS_POLICY, load_config(DEFAULT_CONFIG), MOTO_ACCOUNT_ID)
    adapted = as_moto_enforces_it(policy)

    def services(statement) -> set[str]:
        named = statement["Action"]
        return {action.split(":")[0] for action in ([named] if isinstance(named, str) else named)}

    def by_service(document, service):
        return [s for s in document["Statement"] if service in services(s)]

    # S3 is checked exactly as written, but for DeleteObjects, which moto checks on the bucket.
    delete_objects = [s for s in adapted["Statement"]
                      if s["Sid"].startswith("MotoChecksDeleteObjectsOnTheBucket")]
    as_written = [{name: value for name, value in s.items() if name != "Condition"}
                  for s in by_service(policy, "s3")]
    assert [s for s in by_service(adapted, "s3") if s not in delete_objects] == as_written
    assert {s["Action"] for s in delete_objects} == {"s3:DeleteObject"}
    assert all(":s3:::" in arn and "/" not in arn
               for s in delete_objects for arn in s["Resource"]), delete_objects
    assert {s["Sid"] for s in adapted["Statement"] if s["Resource"] == "*"} == {
        "CatalogTheStagedTables", "MotoChecksGetQueueUrlOnStar"}
    assert next(s for s in adapted["Statement"] if s["Sid"] == "MotoChecksGetQueueUrlOnStar")[
        "Action"] == "sqs:GetQueueUrl"
    assert policy_actions(adapted) - policy_actions(policy) == {"sqs:DeleteMessageBatch"}
    assert policy_actions(policy) <= policy_actions(adapted)


# --- the flows, as the policy's user ----------------------------------------------------------


def _enforce_iam(endpoint_url: str) -> None:
    """From the next request on, moto authenticates and authorizes every request."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def _user_with_policy(iam, name: str, policy: dict) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy",
                        PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"]}


@pytest.fixture(scope="module")
def enforced(tmp_path_factory):
    from credflow_assets.definitions import build_definitions

    home = tmp_path_factory.mktemp("iam") / "home"
    with running_stack(home) as (state, config, variables), pytest.MonkeyPatch.context() as env:
        endpoint = variables["AWS_ENDPOINT_URL"]
        where = {"endpoint_url": endpoint, "region_name": config.aws.region}
        # Still unauthenticated: the stack's own provisioning keys ("testing") set up IAM.
        iam = boto3.client("iam", **where, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        admin = _user_with_policy(iam, "credflow-admin", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        policy = render_policy(RUNS_POLICY, config, MOTO_ACCOUNT_ID)
        runs = _user_with_policy(iam, "credflow-runs", as_moto_enforces_it(policy))
        _enforce_iam(endpoint)

        def clients(keys):
            return {service: boto3.client(service, **where, **keys)
                    for service in ("s3", "sqs", "glue", "iam")}

        as_admin, as_runs = clients(admin), clients(runs)
        as_admin["s3"].create_bucket(Bucket=ELSEWHERE)
        elsewhere_queue = as_admin["sqs"].create_queue(QueueName=ELSEWHERE)["QueueUrl"]
        # credflow's resources take their credentials from the environment, as in production.
        env.setenv("AWS_ACCESS_KEY_ID", runs["aws_access_key_id"])
        env.setenv("AWS_SECRET_ACCESS_KEY", runs["aws_secret_access_key"])
        instance = dg.DagsterInstance.get()
        try:
            yield {"config": config, "state": state, "env": variables, "admin": as_admin,
                   "runs": as_runs, "runs_keys": runs, "where": where, "instance": instance,
                   "defs": build_definitions(config), "elsewhere_queue": elsewhere_queue}
        finally:
            instance.dispose()


def test_enforcement_is_on(enforced):
    """The stack's own fixed keys are no IAM user's: refused, so nothing passes unchecked."""
    anonymous = boto3.client("s3", **enforced["where"], aws_access_key_id="testing",
                             aws_secret_access_key="testing")
    with pytest.raises(ClientError) as caught:
        anonymous.list_objects_v2(Bucket=enforced["config"].buckets.signup)
    assert caught.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_dagsters_compute_logs_are_stored_read_and_deleted_with_only_the_policy(enforced,
                                                                              tmp_path,
                                                                              monkeypatch):
    """deploy/'s compute log manager, with the runs' identity: a step's output is uploaded, read
    back as the webserver reads it (the local copy is gone by then), and deleted as the
    retention prune deletes a run's; outside its prefix it is refused."""
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    prefix = yaml.safe_load((REPO / "deploy" / "dagster.celery.yaml").read_text())[
        "compute_logs"]["config"]["prefix"]
    bucket = enforced["config"].buckets.logs
    manager = S3ComputeLogManager(bucket=bucket, prefix=prefix, local_dir=str(tmp_path))
    log_key = ["iam-run", "compute_logs", "step"]
    # Dagster captures the streams' file descriptors, which pytest's own capture objects hide.
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)

    with manager.capture_logs(log_key):
        os.write(2, b"a step's line on stderr\n")

    assert not [path for path in tmp_path.rglob("*") if path.is_file()]
    assert manager.get_log_data(log_key).stderr == b"a step's line on stderr\n"
    assert _keys(enforced["admin"]["s3"], bucket, f"{prefix}/")
    manager.delete_logs(prefix=["iam-run"])
    assert _keys(enforced["admin"]["s3"], bucket, f"{prefix}/") == []
    elsewhere = S3ComputeLogManager(bucket=bucket, prefix="elsewhere", local_dir=str(tmp_path))
    with pytest.raises(ClientError, match="AccessDenied"):
        with elsewhere.capture_logs(log_key):
            os.write(2, b"a line the policy does not let it store\n")
    assert _keys(enforced["admin"]["s3"], bucket, "elsewhere/") == []


def _seed(enforced) -> None:
    """What people and other systems put in front of credflow: analysts' CSVs, a provider's
    files on SFTP, a therapist's uploads and directory row. As the admin, not as credflow."""
    from credflow_assets.local.seed_provider_feeds import seed_provider_feeds
    from credflow_assets.local.seed_staged_tables import seed_staged_tables
    from credflow_assets.therapists.directory import metadata as directory_metadata
    from credflow_assets.therapists.directory import therapists_table
    from credflow_assets_tests.files import pdf_bytes, png_bytes

    config, s3 = enforced["config"], enforced["admin"]["s3"]
    seed_staged_tables(config, s3)
    seed_provider_feeds(config, Path(enforced["env"]["CREDFLOW_SFTP_ROOT"]),
                        enforced["state"].home)
    engine = sa.create_engine(enforced["env"]["CREDFLOW_DIRECTORY_DB_URL"])
    directory_metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(therapists_table.insert(), [{
            "id": THERAPIST, "first_name": "Iam", "last_name": "Policy",
            "email": f"{THERAPIST}@example.com", "updated_at": datetime.now(UTC)}])
    engine.dispose()
    for name, body in (("license.pdf", pdf_bytes()), ("headshot.png", png_bytes())):
        s3.put_object(Bucket=config.buckets.signup, Key=f"{THERAPIST}/{name}", Body=body)


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    return sorted(item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for item in page.get("Contents", []))


def test_credflow_sync_does_everything_with_only_the_policy(enforced):
    """Every sensor, and every run they ask for, in-process as `credflow sync` does, with the
    policy's user: the only failure is the file whose header is wrong, for that reason."""
    from credflow_assets.cli.sync import sync

    _seed(enforced)
    config, s3, glue = enforced["config"], enforced["admin"]["s3"], enforced["admin"]["glue"]
    lines: list[str] = []
    report = sync(enforced["defs"], enforced["instance"], progress=lines.append)
    transcript = "\n".join(lines)
    assert report.sensor_errors == {}, transcript
    assert "AccessDenied" not in transcript and "Access Denied" not in transcript, transcript
    assert [run.partition for run in report.failed] == [WRONG_STAGED], transcript
    assert "columns out of order: last_name, first_name" in report.failed[0].error  # its header, not IAM
    succeeded = {run.job for run in report.runs if run.success}
    assert {"staged_claims_job", "staged_licenses_job"} <= succeeded, transcript
    assert any("provider" in job for job in succeeded), transcript
    assert any(run.partition == THERAPIST and run.success for run in report.runs), transcript

    # What those runs wrote, read back as the admin.
    adhoc = config.buckets.adhoc
    assert len(_keys(s3, adhoc, "prod/claims/")) == 3 and _keys(s3, adhoc, "prod/licenses/")
    assert _keys(s3, adhoc, "staging/") == [WRONG_STAGED]  # promoted files were removed
    database = config.staged_tables.glue_database
    assert len(glue.get_partitions(DatabaseName=database, TableName="claims")["Partitions"]) == 3
    provider = config.buckets.provider_data
    assert len(_keys(s3, provider, "raw/acme_health/")) >= 5  # four files and a signature
    assert len(_keys(s3, provider, "data/")) >= 6
    assert len(_keys(s3, config.buckets.renditions)) == 2
    logged = {key.split("/")[1] for key in _keys(s3, config.buckets.logs, "parsing_logs/")}
    assert {"staged_tables", "provider_feeds", "therapists"} <= logged
    # Both S3-event queues were drained and acknowledged (DeleteMessageBatch went through).
    sqs = enforced["admin"]["sqs"]
    for queue in (config.events.signup_uploads.queue, config.events.staging_uploads.queue):
        attributes = sqs.get_queue_attributes(
            QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"],
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        assert attributes == {"ApproximateNumberOfMessages": "0",
                              "ApproximateNumberOfMessagesNotVisible": "0"}, queue


def test_the_audit_job_repairs_the_catalog_with_only_the_policy(enforced):
    """The audit's fix registers a prod file missing from Glue and drops a dangling partition."""
    config, s3, glue = enforced["config"], enforced["admin"]["s3"], enforced["admin"]["glue"]
    adhoc, database = config.buckets.adhoc, config.staged_tables.glue_database
    header = "claim_id,first_name,last_name,service_date,amount_usd,status"
    s3.put_object(Bucket=adhoc, Key="prod/claims/ingest_date=2024-06-30/lost.csv",
                  Body=f"{header}\nC-9,Ann,Lee,2024-06-01,10.00,paid\n".encode())
    table = glue.get_table(DatabaseName=database, Name="claims")["Table"]
    glue.batch_create_partition(DatabaseName=database, TableName="claims", PartitionInputList=[{
        "Values": ["2023-12-31"], "StorageDescriptor": {
            **table["StorageDescriptor"],
            "Location": f"s3://{adhoc}/prod/claims/ingest_date=2023-12-31/"}}])

    job = enforced["defs"].resolve_job_def("staged_tables_audit_job")
    result = job.execute_in_process(
        instance=enforced["instance"],
        run_config={"ops": {"audit_staged_tables_op": {"config": {"fix": True}}}})
    assert result.success
    dates = {p["Values"][0] for p in glue.get_partitions(
        DatabaseName=database, TableName="claims")["Partitions"]}
    assert "2024-06-30" in dates and "2023-12-31" not in dates


def test_a_partition_moves_and_a_big_file_is_promoted_with_only_the_policy(enforced):
    """The two paths the demo data does not take: a partition registered at another location
    (UpdatePartition), and a staged file promoted with a managed multipart copy."""
    from credflow_assets.resources.glue import GlueResource
    from credflow_assets.staged_tables.assets import promote_object

    config = enforced["config"]
    adhoc, database = config.buckets.adhoc, config.staged_tables.glue_database
    glue = GlueResource(region_name=config.aws.region, endpoint_url=enforced["env"][
        "AWS_ENDPOINT_URL"], **enforced["runs_keys"])
    moved = f"s3://{adhoc}/prod/claims/moved/"
    original = glue.get_partition(database, "claims", ["2024-01-31"])["StorageDescriptor"][
        "Location"]
    assert glue.add_or_update_partition(database, "claims", ["2024-01-31"], moved) == "updated"
    assert glue.add_or_update_partition(database, "claims", ["2024-01-31"], original) == "updated"

    body = ("claim_id,status\n" + "C-1,paid\n" * 700_000).encode()  # 6.3 MB: two parts
    enforced["admin"]["s3"].put_object(Bucket=adhoc, Key="staging/claims/big.csv", Body=body)
    s3 = enforced["runs"]["s3"]
    etag = s3.head_object(Bucket=adhoc, Key="staging/claims/big.csv")["ETag"].strip('"')
    promoted = promote_object(s3, adhoc, "staging/claims/big.csv", etag,
                              "prod/claims/iam-test/big.csv",
                              managed_copy_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    assert promoted["method"] == "managed multipart copy" and promoted["size"] == len(body)


def _refused(call) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    # S3 answers AccessDenied; moto answers SQS and Glue (JSON protocols) with IAM's XML error,
    # which botocore reports as code "403" with the XML as the message.
    assert error.get("Code") == "AccessDenied" or "<Code>AccessDenied</Code>" in error.get(
        "Message", ""), error


# What credflow's runs must not be able to do, each a call a slip in the code (or an attacker
# holding the runs' credentials) could make. Authorization comes before any lookup, so the
# objects need not exist.
OUTSIDE_THE_POLICY = {
    "write to the signup bucket": lambda c, runs, queue: runs["s3"].put_object(
        Bucket=c.buckets.signup, Key="prod/x.csv", Body=b"x"),
    "delete an upload": lambda c, runs, queue: runs["s3"].delete_object(
        Bucket=c.buckets.signup, Key=f"{THERAPIST}/license.pdf"),
    "delete a raw provider copy": lambda c, runs, queue: runs["s3"].delete_object(
        Bucket=c.buckets.provider_data, Key="raw/acme_health/2024-06-03/roster_2024-06-03.xml"),
    "delete a landed provider file": lambda c, runs, queue: runs["s3"].delete_object(
        Bucket=c.buckets.provider_data, Key="data/xml/acme_health/roster_2024-06-03.xml"),
    "write outside raw/ and data/": lambda c, runs, queue: runs["s3"].put_object(
        Bucket=c.buckets.provider_data, Key="other/x", Body=b"x"),
    "write into staging/ (the analysts' uploads)": lambda c, runs, queue: runs["s3"].put_object(
        Bucket=c.buckets.adhoc, Key=f"{c.staged_tables.staging_prefix}claims/x.csv", Body=b"x"),
    "write outside staging/ and prod/": lambda c, runs, queue: runs["s3"].put_object(
        Bucket=c.buckets.adhoc, Key="scratch/x.csv", Body=b"x"),
    "read a parse log": lambda c, runs, queue: runs["s3"].get_object(
        Bucket=c.buckets.logs, Key="parsing_logs/therapists/t-9001/x.log.gz"),
    # (Listing the logs bucket is granted under compute_logs/ only, by a condition moto does
    # not evaluate: test_the_compute_logs_listing_is_held_to_its_prefix.)
    "write a log outside parsing_logs/": lambda c, runs, queue: runs["s3"].put_object(
        Bucket=c.buckets.logs, Key="other/x.log", Body=b"x"),
    "delete a rendition": lambda c, runs, queue: runs["s3"].delete_object(
        Bucket=c.buckets.renditions, Key=f"{THERAPIST}/x.pdf"),
    "list a bucket the policy does not name": lambda c, runs, queue:
        runs["s3"].list_objects_v2(Bucket=ELSEWHERE),
    "write to a bucket the policy does not name": lambda c, runs, queue:
        runs["s3"].put_object(Bucket=ELSEWHERE, Key="x", Body=b"x"),
    "read a queue the policy does not name": lambda c, runs, queue:
        runs["sqs"].receive_message(QueueUrl=queue, WaitTimeSeconds=0),
    "send to an event queue": lambda c, runs, queue: runs["sqs"].send_message(
        QueueUrl=queue.replace(ELSEWHERE, c.events.staging_uploads.queue), MessageBody="{}"),
    "purge an event queue": lambda c, runs, queue: runs["sqs"].purge_queue(
        QueueUrl=queue.replace(ELSEWHERE, c.events.signup_uploads.queue)),
    "drop a Glue table": lambda c, runs, queue: runs["glue"].delete_table(
        DatabaseName=c.staged_tables.glue_database, Name="claims"),
    "create a Glue database": lambda c, runs, queue: runs["glue"].create_database(
        DatabaseInput={"Name": "other"}),
    "manage IAM": lambda c, runs, queue: runs["iam"].list_users(),
}


@pytest.mark.parametrize("attempt", list(OUTSIDE_THE_POLICY))
def test_outside_the_policy_is_refused(enforced, attempt):
    _refused(lambda: OUTSIDE_THE_POLICY[attempt](
        enforced["config"], enforced["runs"], enforced["elsewhere_queue"]))
