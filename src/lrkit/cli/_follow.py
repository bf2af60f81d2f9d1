"""``lrkit diagnose PATH --follow SECONDS``: watch a run that is still training, from its log.

Every ``SECONDS`` the log (a file, a directory of runs, an MLflow store or tracking URI) is read
again and diagnosed; a line is printed when a run's verdict or onset changes (one JSON object per
line with ``--json``), so a problem shows minutes after it starts instead of when someone looks.
It stops when no run's log has grown for ``--idle`` seconds (a finished or dead run; default 10
minutes) or on Ctrl-C, and ends with each run's last verdict. A read that fails while a file is
being written (a truncated or rotated log) is said once and tried again at the next read.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, Callable

import typer

#: a problem's identity: its verdict and onset (the same problem going on prints nothing new)
Key = tuple[str, Any]


def follow(read_all: Callable[[], dict[str, Any]], diagnose: Callable[[Any], Any], *, interval: float, idle: float,
           as_json: bool, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Read, diagnose and report changes until the logs stop growing for ``idle`` seconds.

    ``read_all()`` returns ``{run name: LogRecords or the LogFormatError that kept it unread}``;
    returns the last ``{run name: Diagnosis or error}``.
    """
    said: dict[str, Key] = {}
    sizes: dict[str, tuple[int, float]] = {}
    last: dict[str, Any] = {}
    grew_at = clock()
    try:
        while True:
            for name, records in read_all().items():
                if isinstance(records, Exception):
                    key: Key = ("error", str(records))
                    result: Any = records
                else:
                    size = (len(records), float(records.step[-1]) if len(records) else -1.0)
                    if sizes.get(name) != size:
                        sizes[name] = size
                        grew_at = clock()
                    result = diagnose(records)
                    key = (result.verdict, result.step)
                last[name] = result
                if said.get(name) != key:
                    said[name] = key
                    _say(name, result, records, as_json)
            if clock() - grew_at >= idle:
                break
            sleep(interval)
    except KeyboardInterrupt:
        pass
    return last


def _say(name: str, result: Any, records: Any, as_json: bool) -> None:
    now = datetime.now().strftime("%H:%M:%S")
    if isinstance(result, Exception):
        line = {"time": now, "run": name, "error": str(result)}
        typer.echo(json.dumps(line) if as_json else f"{now} {name}: NOT READ ({result}); trying again")
        return
    rows = len(records)
    if as_json:
        typer.echo(json.dumps({"time": now, "run": name, "rows": rows, **result.to_dict()}))
    elif result.ok:
        typer.echo(f"{now} {name}: {result.verdict.upper()} after {rows} rows")
    else:
        advice = f" -- {result.advice[0]}" if result.advice else ""
        typer.echo(f"{now} {name}: {result.verdict.upper()} since step {result.step} ({rows} rows): "
                   f"{result.message}{advice}")
