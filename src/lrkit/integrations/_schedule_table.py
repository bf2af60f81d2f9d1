"""How the Keras and optax exports represent a schedule inside a traced graph (NumPy only).

Two representations, chosen once when the export is built:

* **table** — the schedule's own float64 values at steps ``0 .. n-1`` (computed by NumPy, so
  exactly ``schedule(step)``), rounded once to the framework's float type and looked up by
  step. Past the table the schedule holds its last value if its horizon is inside the table,
  or the formula takes over.
* **formula** — the schedule's formula traced with the framework's array namespace
  (``schedule.evaluate(step, xp=...)``): no size limit, but computed in the framework's float
  type (float32 by default), so constants such as ``gamma`` are rounded and errors grow with
  ``gamma**t``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lrkit.schedules.base import Schedule

#: largest table built by ``method="auto"`` (steps); 2**21 float64 values are 16 MiB
AUTO_TABLE_LIMIT = 2**21
METHODS = ("auto", "table", "formula")


class Plan(NamedTuple):
    """What the export evaluates: ``table`` (or ``None``) and whether the formula is needed."""

    table: np.ndarray | None  # float64 values of steps 0 .. len-1
    tail: str  # "hold" (past the table the last value holds) or "formula"


def plan(schedule: Schedule, method: str, table_steps: int | None, where: str) -> Plan:
    """Validate ``method``/``table_steps`` and build the table if one is used."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"{where}: schedule must be an lrkit Schedule, got {schedule!r}")
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {', '.join(map(repr, METHODS))}, "
                         f"got {method!r}")
    if table_steps is not None and (isinstance(table_steps, bool) or not isinstance(table_steps, (int, np.integer))
                                    or table_steps < 1):
        raise ValueError(f"{where}: table_steps must be a whole number >= 1 or None, got {table_steps!r}")
    total = schedule.total_steps
    formula_ok = bool(getattr(schedule, "_supports_xp", False))
    if method == "formula" and table_steps is not None:
        raise ValueError(f"{where}: table_steps={table_steps!r} is only used with method='table' "
                         f"or 'auto', got method='formula'")
    if method == "auto":
        if table_steps is not None:
            method = "table"
        elif total is not None and total + 1 <= AUTO_TABLE_LIMIT:
            method = "table"
        elif formula_ok:
            method = "formula"
        else:
            raise ValueError(
                f"{where}: {type(schedule).__name__} only evaluates with NumPy and has "
                f"total_steps={total!r} (no finite horizon up to {AUTO_TABLE_LIMIT} steps), so "
                f"neither a full table nor a traced formula can represent it; pass "
                f"method='table', table_steps=<the number of steps you will train>")
    if method == "formula":
        if not formula_ok:
            raise ValueError(f"{where}: {type(schedule).__name__} has no traceable formula (it only "
                             f"evaluates with NumPy); pass method='table'")
        return Plan(None, "formula")
    # table
    if table_steps is None:
        if total is None:
            raise ValueError(f"{where}: {schedule.to_spec()} never ends (total_steps=None); pass "
                             f"table_steps=<steps to tabulate> (the formula continues after it)")
        n = int(total) + 1
    else:
        n = int(table_steps)
    if total is not None and total + 1 <= n:
        tail = "hold"
    elif formula_ok:
        tail = "formula"
    else:
        raise ValueError(f"{where}: a table of {n} steps does not reach the end of "
                         f"{schedule.to_spec()} (total_steps={total!r}) and "
                         f"{type(schedule).__name__} has no traceable formula to continue it; "
                         f"pass table_steps >= {'total_steps + 1' if total is not None else 'the steps you train'}")
    with np.errstate(over="ignore", invalid="ignore"):
        table = np.asarray(schedule(np.arange(n, dtype=np.float64)), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(table))
    if bad.size:
        raise ValueError(f"{where}: {schedule.to_spec()[:200]} gives the learning rate {table[bad[0]]} at step "
                         f"{int(bad[0])}; a learning rate must be a finite number")
    return Plan(table, tail)
