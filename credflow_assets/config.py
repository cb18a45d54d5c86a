"""credflow's configuration: one YAML file, validated by a typed model.

Where things live (buckets, folders, feeds, providers, tables, databases) is written in the file.
Secrets never are: a secret field only accepts `{env: VARIABLE}`, which becomes a Dagster `EnvVar`
read at run time. Endpoints that differ between the local stack and production (the moto server's
port, the local Drive server's URL) use the same `{env: VARIABLE}` form, so the one file serves any
machine whose environment says where the services are.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_ENV_VAR = "CREDFLOW_CONFIG"
DEFAULT_CONFIG_NAME = "credflow.yaml"
MASK = "****"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CADENCE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_CADENCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    """The configuration file is missing or invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvRef(_Model):
    """`{env: NAME}`: the value is read from the environment variable NAME when a run needs it."""

    env: str

    @field_validator("env")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        return name

    def current_value(self) -> str | None:
        return os.environ.get(self.env)


class Secret(EnvRef):
    """A secret: only ever `{env: NAME}`, never a literal, so it cannot leak from the file."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_literals(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(
                "secrets are never written in the config file; write {env: VARIABLE_NAME} "
                "and set that environment variable"
            )
        return value


StrSetting = Annotated[str | EnvRef, Field(union_mode="left_to_right")]
IntSetting = Annotated[int | EnvRef, Field(union_mode="left_to_right")]


class AwsConfig(_Model):
    region: str = "us-east-1"
    # None in production: boto3 then talks to AWS (or honours AWS_ENDPOINT_URL itself).
    endpoint_url: StrSetting | None = None


class BucketsConfig(_Model):
    signup: str = Field(description="therapist uploads, keyed {therapist_id}/{file}")
    provider_data: str = Field(description="raw and landed provider files")
    adhoc: str = Field(description="analysts' staging/ and prod/ tables")
    logs: str = Field(description="per-file parse logs")
    renditions: str = Field(description="PDF renditions of therapist uploads, by source etag")


class S3EventQueueConfig(_Model):
    """S3 `ObjectCreated` notifications for a bucket prefix, delivered to an SQS queue."""

    bucket: str = Field(description="a key of `buckets`")
    prefix: str = ""
    queue: str


class EventsConfig(_Model):
    signup_uploads: S3EventQueueConfig
    staging_uploads: S3EventQueueConfig


class DriveConfig(_Model):
    # None in production: the client talks to Google's endpoint.
    api_url: StrSetting | None = None
    token: Secret | None = None
    service_account_file: Secret | None = None
    mpf_root_folder_id: str
    num_retries: int = Field(5, ge=0, le=10)

    @model_validator(mode="after")
    def _one_credential(self) -> DriveConfig:
        if self.token is None and self.service_account_file is None:
            raise ValueError("set drive.token (local server) or drive.service_account_file")
        return self


class SqlConfig(_Model):
    directory_url: StrSetting = Field(description="therapist directory (read only)")
    tables_url: StrSetting = Field(description="parsed feed tables")


class GpgConfig(_Model):
    homedir: StrSetting
    passphrase: Secret | None = None


class _ExpectedCadence(_Model):
    """How often a source is expected to send a file, and who hears when it goes quiet.

    `expect_every: 24h` (or 30m, 7d; seconds such as 5s for tests) puts a freshness policy on the
    source's asset; `owner` gets one e-mail when it turns overdue (without one, only the webhook
    hears). Neither set: the source is not watched.
    """

    expect_every: timedelta | None = None
    owner: str | None = None

    @field_validator("expect_every", mode="before")
    @classmethod
    def _cadence(cls, value: Any) -> timedelta | None:
        return None if value is None else parse_cadence(value)

    @field_validator("owner")
    @classmethod
    def _owner_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)


class FeedConfig(_ExpectedCadence):
    name: str
    inbound_folder_id: str
    outbound_folder_id: str
    schema_name: str = Field(alias="schema", description="a DataFrameModel in drive_feeds.schemas")
    id_column: str
    date_formats: dict[str, str] = {}
    table: str
    # Columns whose change makes a change-history row; empty means every column.
    tracked_columns: list[str] = []

    @field_validator("name", "table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _check_identifier(value)


class SftpConfig(_Model):
    host: StrSetting
    port: IntSetting = 22
    username: StrSetting
    private_key_file: Secret
    known_hosts_file: StrSetting | None = None
    host_key_fingerprint: str | None = None

    @model_validator(mode="after")
    def _host_key_pinned(self) -> SftpConfig:
        if self.known_hosts_file is None and self.host_key_fingerprint is None:
            raise ValueError(
                "the server's host key must be pinned: set known_hosts_file or host_key_fingerprint"
            )
        return self


class ProviderConfig(_ExpectedCadence):
    name: str
    sftp: SftpConfig
    remote_dir: str = "."
    pattern: str = "*"
    folder: str = Field(description="the provider's folder under data/{type}/")
    gpg_passphrase: Secret | None = None
    # The provider's public key (armored): detached `.sig` files are verified against it.
    signing_key_file: StrSetting | None = None
    require_signature: bool = False
    # Unpacking stops past this many bytes from one file, at any stage: gpg's plaintext, each
    # decompressed layer, an archive's members together (zip/gzip/OpenPGP bombs).
    max_extracted_bytes: int = Field(10 * 1024**3, gt=0)
    # ... and past this many times the file's size as received (after the first MiB): real
    # rosters compress 3-10 times, bombs a thousand times and more.
    max_expansion_ratio: float = Field(200, gt=0)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _check_identifier(value)


class NotificationsConfig(_Model):
    # A Slack-compatible incoming webhook; without one, failures are written to the log.
    webhook_url: Secret | None = None
    # Who hears, by e-mail, about therapist uploads that fail.
    success_team: str | None = None
    # S3 principal (the upload event's `userIdentity.principalId`) → the uploader's e-mail
    # address, for files uploaded to staging/.
    staged_uploaders: dict[str, str] = {}

    @field_validator("success_team")
    @classmethod
    def _team_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @field_validator("staged_uploaders")
    @classmethod
    def _uploader_addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for principal, address in value.items():
            if not principal.strip():
                raise ValueError("an S3 principal (a key of the map) must not be empty")
            try:
                _check_address(address)
            except ValueError as error:
                raise ValueError(f"{principal}: {error}") from None
        return value


class MailConfig(_Model):
    """E-mail through an SMTP server: the local stack's, or a relay (port 587, STARTTLS)."""

    smtp_host: StrSetting
    smtp_port: IntSetting = 587
    sender: str = Field(description="the From address, e.g. `credflow <credflow@example.org>`")
    username: Secret | None = None
    password: Secret | None = None
    # Upgrade the connection to TLS before anything else is sent; only the local server,
    # which listens on 127.0.0.1, goes without.
    starttls: bool = True
    timeout_seconds: float = Field(30, gt=0, le=600)

    @field_validator("sender")
    @classmethod
    def _sender_address(cls, value: str) -> str:
        return _check_address(value)

    @model_validator(mode="after")
    def _credentials(self) -> MailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        if self.username is not None and not self.starttls:
            raise ValueError(
                "a username and password are only sent over TLS: set starttls: true"
            )
        return self


class StagedTableConfig(_ExpectedCadence):
    name: str
    schema_name: str | None = Field(None, alias="schema")

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _check_identifier(value)


class StagedTablesConfig(_Model):
    glue_database: str
    staging_prefix: str = "staging/"
    prod_prefix: str = "prod/"
    tables: list[StagedTableConfig] = []


class RetentionConfig(_Model):
    """How long the Dagster instance keeps what only debugging needs
    (common/instance_retention.py).

    A run's log lines, step events and captured stdout/stderr go after `run_events_days`; its
    outcome, tags, failure reasons, materializations and check results stay, so lineage and
    the UI's partition pages answer as before. Sensor and schedule ticks go after `ticks_days`.
    `schedule` (cron, UTC) runs `instance_retention_job`; `credflow instance prune` runs it now.
    The same job archives the partitions of files processed more than
    `archive_partitions_days` ago (common/partition_archive.py: Dagster's partition budget),
    as `credflow instance archive-partitions` does.
    """

    run_events_days: int = Field(30, ge=1)
    ticks_days: int = Field(7, ge=1)
    archive_partitions_days: int = Field(365, ge=1)
    schedule: str = "0 3 * * *"

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron schedule: write five fields, "
                             "minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\"")
        return value

    @property
    def run_events_age(self) -> timedelta:
        return timedelta(days=self.run_events_days)

    @property
    def ticks_age(self) -> timedelta:
        return timedelta(days=self.ticks_days)

    @property
    def archive_partitions_age(self) -> timedelta:
        return timedelta(days=self.archive_partitions_days)


class CredflowConfig(_Model):
    aws: AwsConfig = AwsConfig()
    buckets: BucketsConfig
    events: EventsConfig
    drive: DriveConfig
    sql: SqlConfig
    gpg: GpgConfig
    feeds: list[FeedConfig] = []
    providers: list[ProviderConfig] = []
    staged_tables: StagedTablesConfig
    notifications: NotificationsConfig = NotificationsConfig()
    # None: no e-mail is sent (the `mail` resource is there, disabled).
    mail: MailConfig | None = None
    retention: RetentionConfig = RetentionConfig()

    @model_validator(mode="after")
    def _consistent(self) -> CredflowConfig:
        bucket_keys = set(BucketsConfig.model_fields)
        for name, queue in (("signup_uploads", self.events.signup_uploads),
                            ("staging_uploads", self.events.staging_uploads)):
            if queue.bucket not in bucket_keys:
                raise ValueError(
                    f"events.{name}.bucket: {queue.bucket!r} is not one of {sorted(bucket_keys)}"
                )
        for kind, names in (("feeds", [f.name for f in self.feeds]),
                            ("providers", [p.name for p in self.providers]),
                            ("staged_tables.tables", [t.name for t in self.staged_tables.tables])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind}: names must be unique, repeated: {duplicates}")
        return self

    def bucket(self, key: str) -> str:
        return getattr(self.buckets, key)


def _check_identifier(value: str) -> str:
    if not _RESOURCE_NAME.match(value):
        raise ValueError(
            f"{value!r} must be lower case letters, digits and underscores, starting with a letter"
        )
    return value


def parse_cadence(value: Any) -> timedelta:
    """`30m`, `24h`, `7d` or `5s` as a timedelta; anything else is refused in words."""
    if isinstance(value, timedelta):
        return value
    match = _CADENCE.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"{value!r} is not a cadence: write a whole number and a unit, "
            "s (seconds), m (minutes), h (hours) or d (days), e.g. 30m, 24h or 7d"
        )
    return timedelta(seconds=int(match.group(1)) * _CADENCE_UNITS[match.group(2)])


def format_cadence(every: timedelta) -> str:
    """The config file's form of a cadence: the largest unit that divides it (`24h`, `7d`)."""
    seconds = int(every.total_seconds())
    unit = next(u for u in ("d", "h", "m", "s") if seconds % _CADENCE_UNITS[u] == 0)
    return f"{seconds // _CADENCE_UNITS[unit]}{unit}"


def _check_address(value: str) -> str:
    """An e-mail address, bare or with a display name (`Name <local@domain>`)."""
    from email.utils import getaddresses

    parsed = getaddresses([value])
    address = parsed[0][1] if len(parsed) == 1 else ""
    local, at, domain = address.rpartition("@")
    if (not at or not local or not domain or any(c.isspace() for c in address)
            or "\n" in value or "\r" in value):
        raise ValueError(f"{value!r} is not an e-mail address (expected local@domain)")
    return value


def resolve_config_path(path: str | os.PathLike | None = None) -> Path:
    """The config file to use: the given path, else $CREDFLOW_CONFIG, else ./credflow.yaml."""
    if path is not None:
        return Path(path).expanduser().resolve()
    from_env = os.environ.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser().resolve()
    return (Path.cwd() / DEFAULT_CONFIG_NAME).resolve()


def load_config(path: str | os.PathLike | None = None) -> CredflowConfig:
    """Read and validate the config file; a bad file raises ConfigError naming file and field."""
    config_path = resolve_config_path(path)
    try:
        text = config_path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path}: config file not found (pass --config, set {CONFIG_ENV_VAR}, "
            f"or run from a directory holding {DEFAULT_CONFIG_NAME})"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{config_path}{where}: not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level")
    try:
        return CredflowConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(config_path, error)) from None


def _describe_validation_error(path: Path, error: ValidationError) -> str:
    # A union field (`int | {env: NAME}`) reports once per branch; join those into one line.
    problems: dict[str, list[str]] = {}
    for problem in error.errors(include_url=False, include_input=False):
        location = ".".join(_location_part(p) for p in problem["loc"] if not _is_branch(p))
        location = location.replace(".[", "[") or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if message not in problems.setdefault(location, []):
            problems[location].append(message)
    lines = [f"{path}: {len(problems)} problem(s)"]
    lines += [f"  {location}: {' — or: '.join(messages)}" for location, messages in problems.items()]
    return "\n".join(lines)


def _location_part(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def _is_branch(part: int | str) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "EnvRef", "Secret"} or "[" in part)


def to_public_dict(config: CredflowConfig) -> dict[str, Any]:
    """The effective config as plain data, with every secret masked.

    `{env: NAME}` settings show the variable and, for non-secrets, its current value; secrets
    show only whether the variable is set.
    """
    return _public(config)


def _public(value: Any) -> Any:
    if isinstance(value, Secret):
        is_set = value.current_value() is not None
        return {"env": value.env, "set": is_set, "value": MASK if is_set else None}
    if isinstance(value, EnvRef):
        return {"env": value.env, "value": value.current_value()}
    if isinstance(value, timedelta):
        return format_cadence(value)
    if isinstance(value, BaseModel):
        return {
            (field.alias or name): _public(getattr(value, name))
            for name, field in type(value).model_fields.items()
        }
    if isinstance(value, list):
        return [_public(item) for item in value]
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    return value

