"""The code location's console logger: Dagster's, one line an event.

Dagster's default console logger prints a failed step's whole error, exception class and stack
trace included, to the terminal of whoever runs the job (`credflow sync`, `credflow reparse`, a
run worker's stdout). For a bad file that is noise in front of a person: credflow's own line
names the file and the problem, and the run's event log (the UI's run page) keeps the stack
trace for engineers. So each record is printed as its first line only.
"""

from __future__ import annotations

import logging
import sys

import dagster as dg

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class _FirstLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).split("\n", 1)[0].rstrip()


@dg.logger(
    config_schema={
        "log_level": dg.Field(str, is_required=False, default_value="INFO",
                              description="The logger's threshold."),
        "name": dg.Field(str, is_required=False, default_value="dagster",
                         description="The name the lines carry."),
    },
    description="Dagster's console logger, one line an event (stack traces stay in the run's "
    "event log).",
)
def one_line_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    # A logger of its own, outside logging's tree, as Dagster's console logger makes: it must
    # not reach the `credflow` loggers the parse logs and the event log capture.
    logger = logging.Logger(init_context.logger_config["name"],
                            level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FirstLineFormatter(FORMAT, "%Y-%m-%d %H:%M:%S %z"))
    logger.addHandler(handler)
    return logger
