"""Sources that go quiet: a provider, feed or staged table that declares `expect_every`.

Two pieces, one rule. The source's asset gets Dagster's time-window freshness policy
(`dg.FreshnessPolicy.time_window(fail_window=expect_every)`): the daemon's FreshnessDaemon
evaluates it and the UI shows the asset fresh or overdue. The `quiet_sources_sensor` tells
people: when a source has had no new file for longer than its window, its owner gets one e-mail
and the webhook one message; nothing more until a new file has arrived and it goes quiet again.

The sensor applies the policy's own rule (the asset's latest materialization older than the
window is overdue; no materialization yet is unknown, not overdue) to the latest
materialization, read through the instance's public API. It does not read the daemon's stored
freshness state: that state has no public reader, and `credflow sync`, which ticks this sensor
too, runs without the daemon, so a sensor waiting for the daemon would never speak there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg

from credflow_assets.common.notifications import Notifier
from credflow_assets.resources.mail import MailResource

logger = logging.getLogger("credflow.freshness")

QUIET_SOURCES_SENSOR_NAME = "quiet_sources_sensor"


@dataclass(frozen=True)
class QuietSource:
    """A source whose config declares `expect_every`: its asset, what to call it in a message
    ("provider acme_health"), where its files arrive, and who hears when it goes quiet."""

    key: dg.AssetKey
    kind: str
    name: str
    where: str
    every: timedelta
    owner: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


# Dagster refuses a time window under one minute; a shorter `expect_every` (seconds, for tests)
# shows one minute in the UI, while the sensor keeps the config's window.
DAGSTER_SHORTEST_WINDOW = timedelta(minutes=1)


def expected_cadence_policy(every: timedelta) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.time_window(fail_window=max(every, DAGSTER_SHORTEST_WINDOW))


def with_expected_cadence(assets: Sequence, sources: Iterable[QuietSource]) -> list:
    """`assets` with each watched source's freshness policy on its asset spec; assets of
    sources without `expect_every` are returned as they are."""
    by_key = {source.key: source for source in sources}
    if not by_key:
        return list(assets)

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        source = by_key.get(spec.key)
        if source is None:
            return spec
        return dg.apply_freshness_policy(spec, expected_cadence_policy(source.every))

    return list(dg.map_asset_specs(attach, assets))


def build_quiet_sources_sensor(sources: Sequence[QuietSource]) -> dg.SensorDefinition:
    """One sensor for every watched source. Its cursor maps each source told about to the time
    of the file it was quiet after, so each quiet spell is told once, even one that began and
    ended between two ticks."""

    @dg.sensor(
        name=QUIET_SOURCES_SENSOR_NAME, minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Tells a source's owner (e-mail) and the webhook, once, when a provider, "
        "feed or staged table with `expect_every` in the config has had no new file for longer "
        "than that; again only after a new file has come and it goes quiet anew.",
    )
    def quiet_sources_sensor(context: dg.SensorEvaluationContext, notifier: Notifier,
                             mail: MailResource) -> dg.SkipReason:
        told: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        quiet = dict(quiet_sources_now(context.instance, sources, now))
        overdue = []
        for source in sources:
            label = source.key.to_user_string()
            last = quiet.get(source)
            if last is None:
                told.pop(label, None)
                continue
            overdue.append(source.label)
            if told.get(label) != last.timestamp:
                tell_quiet_source(source, last, now, notifier, mail)
                told[label] = last.timestamp
        context.update_cursor(json.dumps(told, sort_keys=True))
        if not overdue:
            return dg.SkipReason(f"{len(sources)} watched source(s), none overdue")
        return dg.SkipReason(f"overdue: {', '.join(overdue)}")

    return quiet_sources_sensor


def quiet_sources_now(instance: dg.DagsterInstance, sources: Iterable[QuietSource],
                      now: float) -> list[tuple[QuietSource, dg.EventLogEntry]]:
    """The sources overdue at `now`, each with its latest file's materialization: the one rule
    the sensor and `credflow status` share. The policy's own rule (no materialization within
    `expect_every`), applied to the latest materialization read through the public instance
    API rather than the daemon's stored freshness state, which has no public reader and which
    `credflow sync`, without a daemon, never writes. A source that never had a file is not
    overdue (Dagster shows it "unknown")."""
    quiet = []
    for source in sources:
        last = instance.get_latest_materialization_event(source.key)
        if last is not None and now - last.timestamp >= source.every.total_seconds():
            quiet.append((source, last))
    return quiet


def tell_quiet_source(source: QuietSource, last: dg.EventLogEntry, now: float,
                      notifier: Notifier, mail: MailResource) -> None:
    """One webhook message, and one e-mail to the source's owner when it has one."""
    title, lines = quiet_source_message(source, last, now)
    notifier.notify(title, lines)
    if source.owner:
        mail.send(source.owner, title, "\n".join([
            *lines, "",
            f"Please check that {source.label} is still sending files to {source.where}.",
            "You are told once; credflow tells you again only if, after a new file, "
            f"{source.label} goes quiet again.",
        ]) + "\n")
    logger.info(f"{source.label} is overdue: told the webhook"
                + (" and its owner" if source.owner else " (no owner in the config)"))


def quiet_source_message(source: QuietSource, last: dg.EventLogEntry,
                         now: float) -> tuple[str, list[str]]:
    """("credflow: no new file from provider acme_health for 26 hours (expected every 24
    hours)", [the last file and when it came, the asset])."""
    title = (f"credflow: no new file from {source.label} for "
             f"{describe_duration(now - last.timestamp)} "
             f"(expected every {describe_duration(source.every.total_seconds())})")
    materialization = last.asset_materialization
    file = (materialization.partition if materialization and materialization.partition
            else "(not partitioned)")
    when = datetime.fromtimestamp(last.timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return title, [f"last file: {file} at {when}",
                   f"asset: {source.key.to_user_string()}"]


def describe_duration(seconds: float) -> str:
    """Whole units, the largest that still counts two or more: `26 hours`, `3 days`,
    `90 minutes`, `6 seconds`."""
    whole = int(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if whole >= 2 * size:
            count = whole // size
            return f"{count} {unit}s"
    return f"{whole} second" + ("" if whole == 1 else "s")
