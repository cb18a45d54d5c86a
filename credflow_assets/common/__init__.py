"""The Dagster pieces several flows share: parse logs, error reports, notifications,
reconciliation, run tags and outcomes, failure messages, and the one module that touches
Dagster internals (`dagster_compat`)."""
