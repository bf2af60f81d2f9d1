"""The doctor's inputs checked: the numbers its constructor takes and :meth:`Doctor.observe_many`'s
table (``ValueError`` naming the parameter or column, the first bad row and what is allowed).

Example:
    >>> _table_rows("Doctor.observe_many", [0, 1], [2.3, 2.1], lr=[0.1, 0.1], grad_norm=None,
    ...             val_loss=None, metrics=None, present=None, last_step=None, loss_floor=0.0)[:3]
    ([0, 1], [2.3, 2.1], [0.1, 0.1])
    >>> _table_rows("Doctor.observe_many", [0, 0], [2.3, 2.1], lr=None, grad_norm=None,
    ...             val_loss=None, metrics=None, present=None, last_step=None, loss_floor=0.0)
    Traceback (most recent call last):
    ...
    ValueError: Doctor.observe_many: steps must be strictly increasing, got 0 at row 1 (step 0)
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

__all__ = ["reference_run_ok"]

#: what a loss below the doctor's ``loss_floor`` needs (said by ``observe`` and ``observe_many``)
FLOOR_ADVICE = ("a loss that can go below it (a continuous negative log-likelihood, a loss with a negative term) "
                "needs Doctor(loss_floor=F) with F a lower bound of it, as tight as known (torch's "
                "GaussianNLLLoss: 0.5*log(eps), -6.9 at its default eps=1e-6); a bound far below the "
                "losses makes real progress look small (flat)")


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def reference_run_ok(value: Any) -> bool:
    """``reference_run`` is ``None`` or ``(steps, loss, kind)``: an int >= 1, a finite number, ``"val"`` or ``"train"``."""
    if value is None:
        return True
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return False
    steps, loss, kind = value
    return (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 1
            and _finite_number(loss) and kind in ("val", "train"))


def _chance_ok(value: Any, loss_floor: float) -> bool:
    """``chance_loss`` is ``None`` or a finite number above the loss floor."""
    return value is None or (_finite_number(value) and value > loss_floor)


def _column(who: str, name: str, col: Any, n: int) -> np.ndarray:
    try:
        a = np.asarray(col, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must be numbers") from None
    if a.shape != (n,):
        raise ValueError(f"{who}: {name} must have one value per step ({n}), got shape {a.shape}")
    return a


def _table_rows(who: str, steps: Any, losses: Any, *, lr: Any, grad_norm: Any, val_loss: Any,
                metrics: Mapping[str, Any] | None, present: Mapping[str, Any] | None, last_step: int | None,
                loss_floor: float) -> tuple[list, list, list, list, list, dict[str, list]] | None:
    """:meth:`Doctor.observe_many`'s table checked (``ValueError`` naming the column, the first bad
    row and what is allowed) and turned into Python rows: ``(steps, losses, lrs, grad_norms,
    val_losses, {metric: values})``, ``None`` where a column was not logged; ``None`` for no rows."""
    st = np.asarray(steps)
    n = len(st)
    if st.ndim != 1 or (n and st.dtype.kind not in "iu"):
        raise ValueError(f"{who}: steps must be a 1-d array of ints, got dtype {st.dtype} and shape {st.shape}")
    if n == 0:
        return None
    try:
        ls = np.asarray(losses, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: losses must be numbers") from None
    cols: dict[str, np.ndarray] = {}
    for name, col in (("lr", lr), ("grad_norm", grad_norm), ("val_loss", val_loss)):
        if col is not None:
            cols[name] = _column(who, name, col, n)
    for name, col in (metrics or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"{who}: metric names must be str, got {name!r}")
        cols[f"metrics[{name!r}]"] = _column(who, f"metrics[{name!r}]", col, n)
    if ls.shape != (n,):
        raise ValueError(f"{who}: losses must have one value per step ({n}), got shape {ls.shape}")
    masks: dict[str, np.ndarray] = {}
    for name, m in (present or {}).items():
        key = name if name in ("lr", "grad_norm", "val_loss") else f"metrics[{name!r}]"
        if key not in cols:
            raise ValueError(f"{who}: present[{name!r}] names no column passed; columns: {sorted(cols)}")
        mm = np.asarray(m, dtype=bool)
        if mm.shape != (n,):
            raise ValueError(f"{who}: present[{name!r}] must have one bool per step ({n}), got shape {mm.shape}")
        masks[key] = mm

    def bad_row(ok: np.ndarray, name: str, values: np.ndarray, allowed: str, advice: str = "") -> None:
        mask = masks.get(name)
        bad = ~ok if mask is None else (~ok & mask)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{who}: {name} must be {allowed}, got {values[i].item()!r} at row {i} "
                             f"(step {int(st[i])})" + (f": {advice}" if advice else ""))

    if n > 1:
        bad_row(np.concatenate([[True], np.diff(st) > 0]), "steps", st, "strictly increasing")
    if last_step is not None and st[0] <= last_step:
        raise ValueError(f"{who}: steps must increase, got {int(st[0])} after {last_step} "
                         "(call reset() or load_state_dict() after a rollback)")
    f = loss_floor
    with np.errstate(invalid="ignore"):
        bad_row(~(np.isfinite(ls) & (ls < f)), "losses", ls, f">= loss_floor={f} (or non-finite)", FLOOR_ADVICE)
        if "lr" in cols:
            bad_row(np.isfinite(cols["lr"]) & (cols["lr"] >= 0), "lr", cols["lr"], "a finite number >= 0")
        if "grad_norm" in cols:
            bad_row(~(cols["grad_norm"] < 0), "grad_norm", cols["grad_norm"], ">= 0")
    # rows as Python lists (None where a column was not logged)
    def as_list(key: str) -> list[Any]:
        v = cols[key].tolist()
        m = masks.get(key)
        return v if m is None else [x if p else None for x, p in zip(v, m.tolist())]

    step_l, loss_l = st.tolist(), ls.tolist()
    none = [None] * n
    lr_l = as_list("lr") if "lr" in cols else none
    gn_l = as_list("grad_norm") if "grad_norm" in cols else none
    vl_l = as_list("val_loss") if "val_loss" in cols else none
    met_l = {name: as_list(f"metrics[{name!r}]") for name in (metrics or {})}
    return step_l, loss_l, lr_l, gn_l, vl_l, met_l
