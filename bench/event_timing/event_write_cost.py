"""Where one event write to a run's SQLite database goes, phase by phase (bench/RESULTS.md §4).

Dagster's `SqliteEventLogStorage._connect` makes, for every event, a new SQLAlchemy engine
(NullPool) on the run's file, connects, inserts in a transaction, commits, closes the connection
(the file's only one: SQLite checkpoints the WAL into the file and removes -wal/-shm) and disposes
of the engine. This loop does the same with Dagster's own insert statement and times each phase,
wall and CPU, for several ways of writing, interleaved round by round so that they see the same
load:

- `dagster`: as Dagster does;
- `engine kept`: one engine per file, kept; each event still opens and closes its connection
  (so each close still checkpoints);
- `normal`: as `engine kept`, with `PRAGMA synchronous=NORMAL` on each connection;
- `held`: one connection per file kept open across events (no checkpoint at each close), each
  event a transaction; `held + checkpoint`: the same with a PASSIVE checkpoint after each commit
  (the file itself changes at each event, as Dagster's watchers expect).

    python bench/event_timing/event_write_cost.py [--events 22] [--runs 30]
"""

import argparse
import os
import statistics
import tempfile
import time
import uuid

import dagster as dg
import sqlalchemy as sa
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage

PHASES = ("engine", "connect", "pragma", "insert", "commit", "checkpoint", "close")


def _entry(run_id: str, n: int) -> EventLogEntry:
    return EventLogEntry(error_info=None, level="INFO", user_message=f"line {n} " + "x" * 200,
                         run_id=run_id, timestamp=time.time(), step_key="landed", job_name="job")


class Clock:
    def __init__(self):
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.totals: list[float] = []
        self._mark = None

    def start(self):
        self._mark = (time.perf_counter(), time.process_time())
        self._event_start = self._mark[0]

    def lap(self, phase: str):
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[phase] += wall - self._mark[0]
        self.cpu[phase] += cpu - self._mark[1]
        self._mark = (wall, cpu)

    def end(self):
        self.totals.append(self._mark[0] - self._event_start)


def write_run(storage, mode: str, run_id: str, events: int, clock: Clock) -> None:
    url = storage.conn_string_for_shard(run_id)
    storage._initdb(sa.create_engine(url, poolclass=sa.pool.NullPool))  # the run's database
    statements = [storage.prepare_insert_event(_entry(run_id, n)) for n in range(events)]
    kept_engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 30})
    held = None
    for statement in statements:
        clock.start()
        if mode == "dagster":
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool,
                                      connect_args={"timeout": 30})
        else:
            engine = kept_engine
        clock.lap("engine")
        held_before = held
        if mode.startswith("held"):
            if held is None:
                held = engine.connect()
            conn = held
        else:
            conn = engine.connect()
        clock.lap("connect")
        if mode in ("normal", "held, normal") and conn is not held_before:
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            conn.commit()  # SQLAlchemy's autobegun transaction (sqlite3 began none)
        clock.lap("pragma")
        transaction = conn.begin()
        conn.execute(statement)
        clock.lap("insert")
        transaction.commit()
        clock.lap("commit")
        if mode == "held + checkpoint":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            conn.commit()
        elif mode == "held + touch":
            os.utime(storage.path_for_shard(run_id))
        clock.lap("checkpoint")
        if not mode.startswith("held"):
            conn.close()
            if mode == "dagster":
                engine.dispose()
        clock.lap("close")
        clock.end()
    if held is not None:
        held.close()
    kept_engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=22)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dir", default=None, help="where the run databases go (a temp dir)")
    args = parser.parse_args()
    modes = ("dagster", "engine kept", "normal", "held", "held, normal", "held + checkpoint",
             "held + touch")
    clocks = {mode: Clock() for mode in modes}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="event-cost-") as base:
        storage = SqliteEventLogStorage(base)
        for _ in range(args.runs):
            for mode in modes:  # interleaved: every mode sees the same minute's load
                write_run(storage, mode, str(uuid.uuid4()), args.events, clocks[mode])
    n = args.runs * args.events
    print(f"{n} events a mode ({args.runs} runs x {args.events}), load {os.getloadavg()[0]:.1f}, "
          f"dagster {dg.__version__}, sqlite {__import__('sqlite3').sqlite_version}")
    print(f"{'ms an event (wall / cpu)':26}" + "".join(f"{p:>14}" for p in PHASES)
          + f"{'total':>14}{'median':>8}")
    for mode, clock in clocks.items():
        cells = "".join(f"{clock.wall[p] / n * 1e3:>7.2f}/{clock.cpu[p] / n * 1e3:<6.2f}"
                        for p in PHASES)
        wall, cpu = sum(clock.wall.values()) / n * 1e3, sum(clock.cpu.values()) / n * 1e3
        print(f"{mode:26}{cells}{wall:>7.2f}/{cpu:<6.2f}"
              f"{statistics.median(clock.totals) * 1e3:>8.2f}")


if __name__ == "__main__":
    main()
