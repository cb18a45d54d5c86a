"""Shared plumbing of the benchmarks: a throwaway stack, child processes with peak RSS, tables.

Nothing here measures anything by itself. Every benchmark:
- generates its data under a temporary directory (removed at the end, whatever happens);
- starts its own local stack there (`running_stack`, the test suite's helper: moto, sshd, the
  local Drive server), with the stack's environment exported to this process and its children;
- runs credflow's side in a child process (`run_child`) when its peak RSS is reported: the
  child reads its own `VmHWM` from `/proc/self/status` just before exiting, and the parent
  samples the RSS of the child and all its descendants (gpg, soffice, …) meanwhile.
  `getrusage(RUSAGE_CHILDREN).ru_maxrss` is not used: on Linux it survives execve and reports the
  largest of all children, including forks that were this (big) parent before exec.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULT_MARKER = "BENCH_RESULT "
MiB = 1024 * 1024


# ------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import dagster

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "dagster": dagster.__version__,
        "kernel": platform.release(),
        # Other work on the machine skews timings: recorded with every result.
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
    }


def print_machine() -> dict[str, Any]:
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
          f"Python {info['python']}, Dagster {info['dagster']}; {info['date']}")
    return info


# ------------------------------------------------------------------------------ stack


@contextmanager
def bench_workdir(name: str) -> Iterator[Path]:
    """A short temporary directory (gpg-agent socket paths must stay under 108 bytes)."""
    work = Path(tempfile.mkdtemp(prefix=f"cfb-{name}-", dir="/tmp"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def bench_stack(work: Path, config_path: Path | None = None):
    """A local stack under `work/home`, its environment exported; stopped on exit.

    Yields (state, config, variables) as `running_stack` does.
    """
    from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

    started = time.monotonic()
    with running_stack(work / "home", config_path or DEFAULT_CONFIG) as stack:
        print(f"stack up under {work / 'home'} in {time.monotonic() - started:.1f}s")
        try:
            yield stack
        finally:
            print("stopping the stack")


# ------------------------------------------------------------------------------ children


def _processes() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after "pid (comm)" (no psutil in the venv):
    index 1 is the ppid, 11-14 utime, stime, cutime, cstime, 21 rss (in pages)."""
    processes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                processes[int(entry)] = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
    return processes


def _descendants(root: int, processes: dict[int, list[str]]) -> list[int]:
    """The pids below `root` (not `root` itself) among `processes`."""
    children: dict[int, list[int]] = {}
    for pid, fields in processes.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss_tree_kb(pid: int) -> int:
    """RSS of `pid` and all its descendants."""
    processes = _processes()
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    return sum(int(processes[current][21]) * page_kb
               for current in [pid, *_descendants(pid, processes)] if current in processes)


def cpu_seconds_below(root: int, *, including_root: bool = False) -> float:
    """CPU seconds (user + system) of every process below `root`, alive or reaped: the local
    stack's servers, the daemon, its code server and run processes, Celery's workers, sync's child
    and whatever each started (LibreOffice). A difference of two readings is the CPU a mode cost
    in between, which a busy machine does not inflate as it does wall time. `root` itself counts
    only through the children it reaped (its own polling of the instance is left out), unless
    `including_root` (a service whose own work counts, as the daemon's)."""
    processes = _processes()
    ticks = os.sysconf("SC_CLK_TCK")
    own = slice(11, 15) if including_root else slice(13, 15)
    total = sum(int(value) for value in processes[root][own]) if root in processes else 0
    for pid in _descendants(root, processes):
        total += sum(int(value) for value in processes[pid][11:15])
    return total / ticks


def run_child(args: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float | None = None, echo: bool = True) -> dict[str, Any]:
    """Run `python args…` (the same interpreter) and return its result.

    The child prints lines; one of them is `BENCH_RESULT {json}` (see `child_result`). Returns
    that json plus `wall_seconds`, `tree_peak_rss_mb` (sampled every 100 ms: the child and all
    its descendants) and `returncode`. Raises when the child fails.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, cwd=str(REPO),
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_tree_kb(process.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, Any] = {}
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
            continue
        tail = (tail + [line])[-40:]
        if echo:
            print("    | " + line.rstrip()[:200], flush=True)
    try:
        process.wait(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    if process.returncode != 0 or not result:
        raise RuntimeError(f"child {' '.join(args)} failed (exit {process.returncode}):\n"
                           + "".join(tail))
    result["wall_seconds"] = time.monotonic() - started
    result["tree_peak_rss_mb"] = peak[0] / 1024
    result["returncode"] = process.returncode
    result["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return result


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's VmHWM (peak resident set since exec), this one's by default; 0 for a process
    that has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_now_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, MB."""
    values = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def progress_with_rss(line: str) -> None:
    """A sync progress line, with the process's memory after it (to see where RSS grows)."""
    rss, hwm = rss_now_mb()
    print(f"{line} [RSS {rss:.0f} MB, peak {hwm:.0f} MB]", flush=True)


def child_result(payload: dict[str, Any]) -> None:
    """Print the child's result line, with its own peak RSS."""
    payload = {**payload, "peak_rss_mb": peak_rss_mb()}
    print(RESULT_MARKER + json.dumps(payload, default=str), flush=True)


# ------------------------------------------------------------------------------ output


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
              for row in cells[1:]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
        print(f"results written to {path}")


def timed(function, *args, **kwargs) -> tuple[Any, float]:
    started = time.monotonic()
    value = function(*args, **kwargs)
    return value, time.monotonic() - started
