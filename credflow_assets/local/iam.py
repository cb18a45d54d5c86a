"""Fill the IAM policy templates in `deploy/iam/` with the names a credflow config gives.

The templates name buckets, queues and the Glue database as `${buckets.signup}`,
`${events.staging_uploads.queue}`, `${staged_tables.glue_database}`…: the config's own field
paths, so a policy can never drift from the config it is rendered for. `${aws.account_id}` is
the one value the config does not hold (boto3 finds the account from the credentials), so it is
passed in; `${aws.partition}` follows from the region.

    python -m credflow_assets.local.iam deploy/iam/credflow-runs.policy.json \
        --config deploy/credflow.production.yaml --account-id 111122223333

prints the policy to attach to the role the code location's runs and sensors use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from credflow_assets.config import CredflowConfig

PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
_ACCOUNT_ID = re.compile(r"^\d{12}$")


class PolicyTemplateError(ValueError):
    """A template names a value the config does not have, or the account id is malformed."""


def partition_of(region: str) -> str:
    """The ARN partition of a region: `aws`, `aws-cn` or `aws-us-gov`."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def placeholder_values(config: CredflowConfig, account_id: str) -> dict[str, str]:
    """Every `${name}` a template may use, with its value for `config`."""
    if not _ACCOUNT_ID.match(account_id):
        raise PolicyTemplateError(f"account id {account_id!r} is not 12 digits")
    values = {
        "aws.account_id": account_id,
        "aws.region": config.aws.region,
        "aws.partition": partition_of(config.aws.region),
        "staged_tables.glue_database": config.staged_tables.glue_database,
        "staged_tables.staging_prefix": config.staged_tables.staging_prefix,
        "staged_tables.prod_prefix": config.staged_tables.prod_prefix,
    }
    for key, bucket in config.buckets.model_dump().items():
        values[f"buckets.{key}"] = bucket
    for name in ("signup_uploads", "staging_uploads"):
        values[f"events.{name}.queue"] = getattr(config.events, name).queue
    return values


def render_policy(template: dict[str, Any] | str | Path, config: CredflowConfig,
                  account_id: str) -> dict[str, Any]:
    """The policy document with every `${name}` replaced; raises naming any unknown name.

    Substitutes inside the parsed JSON strings, so a value can never break the document.
    """
    if isinstance(template, (str, Path)):
        template = json.loads(Path(template).read_text())
    values = placeholder_values(config, account_id)
    unknown: set[str] = set()

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            def value_of(match: re.Match) -> str:
                name = match.group(1)
                if name not in values:
                    unknown.add(name)
                    return match.group(0)
                return values[name]
            return PLACEHOLDER.sub(value_of, node)
        if isinstance(node, list):
            return [fill(item) for item in node]
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        return node

    rendered = fill(template)
    if unknown:
        raise PolicyTemplateError(
            f"the template names {', '.join(f'${{{name}}}' for name in sorted(unknown))}, which "
            f"the config does not give; known: {', '.join(sorted(values))}"
        )
    return rendered


def main(argv: list[str] | None = None) -> int:
    import argparse

    from credflow_assets.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m credflow_assets.local.iam",
        description="Print an IAM policy template from deploy/iam/ filled from a credflow config.")
    parser.add_argument("template", type=Path, help="e.g. deploy/iam/credflow-runs.policy.json")
    parser.add_argument(
        "--config", default=None,
        help="the credflow config (default: $CREDFLOW_CONFIG, else ./credflow.yaml)")
    parser.add_argument("--account-id", required=True, help="the AWS account id (12 digits)")
    arguments = parser.parse_args(argv)
    policy = render_policy(arguments.template, load_config(arguments.config), arguments.account_id)
    print(json.dumps(policy, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
