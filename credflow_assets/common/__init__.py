"""The Dagster pieces several flows share: parse logs, error reports, notifications,
reconciliation, run tags and outcomes, failure messages, the one CSV engine (`csv_chunks`: Arrow,
streamed, pandera per chunk) and header rule (`csv_columns`), and the one module that touches
Dagster internals (`dagster_compat`)."""
