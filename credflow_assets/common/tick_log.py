"""A sensor's `context.log`, opened only when a line is written.

Dagster opens a tick's captured log (a file, or with deploy/'s S3 compute logs two objects
uploaded at the tick's end) the first time a sensor reads `context.log`, and keeps it even when
nothing was written. A sensor that hands `context.log` to a helper on every tick, to log only
if something happens, would leave an empty log per tick: about 17,000 a day for a sensor that
ticks every 5 s. Sensors hand `TickLog(context)` to their helpers instead.
"""

from __future__ import annotations

from typing import Any


class TickLog:
    """Forwards each call to `context.log`, reading it only then."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def debug(self, message: str, *args, **kwargs) -> None:
        self._context.log.debug(message, *args, **kwargs)

    def info(self, message: str, *args, **kwargs) -> None:
        self._context.log.info(message, *args, **kwargs)

    def warning(self, message: str, *args, **kwargs) -> None:
        self._context.log.warning(message, *args, **kwargs)

    def error(self, message: str, *args, **kwargs) -> None:
        self._context.log.error(message, *args, **kwargs)

    def exception(self, message: str, *args, **kwargs) -> None:
        self._context.log.exception(message, *args, **kwargs)
