"""Argument checks shared by the schedule constructors.

Every check raises ``ValueError`` whose one-line message names the constructor and the
parameter, shows what was received and states the allowed range. Each returns the value
normalised to a plain Python type (``float``/``int``/``list``), so that ``repr`` of the
parameters — and therefore :meth:`Schedule.to_spec` — never shows NumPy scalar types.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence

__all__ = [
    "lr_value",
    "positive_int",
    "nonneg_int",
    "real",
    "choice",
    "increasing_ints",
    "flag",
    "schedule_arg",
]


def _fail(where: str, name: str, allowed: str, got: Any) -> ValueError:
    return ValueError(f"{where}: {name} must be {allowed}, got {got!r}")


def real(where: str, name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False, allowed: str | None = None) -> float:
    """A finite real number in ``[lo, hi]`` (ends open when ``lo_open``/``hi_open``)."""
    if lo is None and hi is None:
        rng = "a finite number"
    else:
        left = "-inf" if lo is None else repr(float(lo))
        right = "inf" if hi is None else repr(float(hi))
        rng = (f"a finite number in {'(' if lo_open or lo is None else '['}{left}, "
               f"{right}{')' if hi_open or hi is None else ']'}")
    allowed = allowed or rng
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(where, name, allowed, value)
    v = float(value)
    if not math.isfinite(v):
        raise _fail(where, name, allowed, value)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise _fail(where, name, allowed, value)
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise _fail(where, name, allowed, value)
    return v


def lr_value(where: str, name: str, value: Any) -> float:
    """A learning rate: a finite number >= 0."""
    return real(where, name, value, lo=0.0, allowed="a finite learning rate >= 0")


def _as_int(where: str, name: str, value: Any, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(where, name, allowed, value)
    if isinstance(value, numbers.Integral):
        return int(value)
    v = float(value)
    if not math.isfinite(v) or v != math.floor(v):
        raise _fail(where, name, allowed, value)
    return int(v)  # an integral float such as 1e3 (what a CLI spec like `total_steps=1e3` gives)


def positive_int(where: str, name: str, value: Any) -> int:
    """A whole number of steps >= 1 (integral floats such as ``1e3`` are accepted)."""
    allowed = "a whole number of steps >= 1"
    v = _as_int(where, name, value, allowed)
    if v < 1:
        raise _fail(where, name, allowed, value)
    return v


def nonneg_int(where: str, name: str, value: Any) -> int:
    """A whole number of steps >= 0."""
    allowed = "a whole number of steps >= 0"
    v = _as_int(where, name, value, allowed)
    if v < 0:
        raise _fail(where, name, allowed, value)
    return v


def increasing_ints(where: str, name: str, value: Any, *, allow_empty: bool = False,
                    minimum: int = 0) -> list[int]:
    """A strictly increasing list of whole step numbers >= ``minimum``."""
    allowed = f"a strictly increasing list of whole step numbers >= {minimum}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(where, name, allowed, value)
    items = list(value)
    if not items and not allow_empty:
        raise ValueError(f"{where}: {name} must be {allowed} (at least one), got {value!r}")
    out = [_as_int(where, name, x, allowed) for x in items]
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise ValueError(f"{where}: {name} must be {allowed}, got {value!r} "
                             f"({b} does not come after {a})")
    if out and out[0] < minimum:
        raise _fail(where, name, allowed, value)
    return out


def choice(where: str, name: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options`` (exact string match)."""
    if not isinstance(value, str) or value not in options:
        opts = ", ".join(f"{name}={o!r}" for o in options)
        raise ValueError(f"{where}: unknown {name} {value!r}; pass one of {opts}")
    return value


def flag(where: str, name: str, value: Any) -> bool:
    """A real ``bool`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise _fail(where, name, "True or False", value)
    return value


def schedule_arg(where: str, name: str, value: Any):
    """A :class:`~lrkit.schedules.Schedule` instance."""
    from lrkit.schedules.base import Schedule

    if not isinstance(value, Schedule):
        raise _fail(where, name, "a Schedule (e.g. cosine(base_lr=0.1, total_steps=100))", value)
    return value
