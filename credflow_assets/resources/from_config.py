"""Build every resource from the config: the one place where `{env: NAME}` becomes `EnvVar`.

Local and production differ only in what the config and the environment say (endpoints,
credentials); the resource classes and code paths are the same.
"""

from __future__ import annotations

from typing import Any

from dagster import EnvVar

from credflow_assets.config import CredflowConfig, EnvRef
from credflow_assets.common.notifications import Notifier
from credflow_assets.resources.drive import DriveResource
from credflow_assets.resources.glue import GlueResource
from credflow_assets.resources.gpg import GpgResource
from credflow_assets.resources.mail import MailResource
from credflow_assets.resources.s3 import s3_resource
from credflow_assets.resources.sftp import SftpResource, sftp_resource_key
from credflow_assets.resources.sql import SqlResource
from credflow_assets.resources.sqs import SqsResource


def setting(value: Any, *, as_int: bool = False) -> Any:
    """A config value for a resource field: `{env: NAME}` becomes a Dagster EnvVar."""
    if isinstance(value, EnvRef):
        return EnvVar.int(value.env) if as_int else EnvVar(value.env)
    return value


def mail_resource(config: CredflowConfig) -> MailResource:
    """The `mail` resource; without a `mail:` section it is there, disabled (sends nothing)."""
    mail = config.mail
    if mail is None:
        return MailResource()
    return MailResource(
        host=setting(mail.smtp_host),
        port=setting(mail.smtp_port, as_int=True),
        sender=mail.sender,
        username=setting(mail.username),
        password=setting(mail.password),
        starttls=mail.starttls,
        timeout_seconds=mail.timeout_seconds,
    )


def build_resources(config: CredflowConfig) -> dict[str, Any]:
    endpoint_url = setting(config.aws.endpoint_url)
    region = config.aws.region
    resources: dict[str, Any] = {
        "s3": s3_resource(region=region, endpoint_url=endpoint_url),
        "sqs": SqsResource(region_name=region, endpoint_url=endpoint_url),
        "glue": GlueResource(region_name=region, endpoint_url=endpoint_url),
        "drive": DriveResource(
            api_url=setting(config.drive.api_url),
            token=setting(config.drive.token),
            service_account_file=setting(config.drive.service_account_file),
            num_retries=config.drive.num_retries,
        ),
        "directory_db": SqlResource(url=setting(config.sql.directory_url)),
        "tables_db": SqlResource(url=setting(config.sql.tables_url)),
        "gpg": GpgResource(
            homedir=setting(config.gpg.homedir), passphrase=setting(config.gpg.passphrase)
        ),
        "notifier": Notifier(webhook_url=setting(config.notifications.webhook_url)),
        "mail": mail_resource(config),
    }
    for provider in config.providers:
        sftp = provider.sftp
        resources[sftp_resource_key(provider.name)] = SftpResource(
            host=setting(sftp.host),
            port=setting(sftp.port, as_int=True),
            username=setting(sftp.username),
            private_key_file=setting(sftp.private_key_file),
            known_hosts_file=setting(sftp.known_hosts_file),
            host_key_fingerprint=sftp.host_key_fingerprint,
        )
    return resources
