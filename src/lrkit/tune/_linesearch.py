r"""lrkit's search rule: a bracketing line search in log-LR that starts where the finder points.

Pure NumPy. Validation loss against :math:`x = \log_{10}\eta` is close to unimodal on the tasks
lrkit measures (FINDINGS.md), so a handful of well-placed trials find the valley that a generic
optimiser spends a dozen on. Given the trials so far — finished ones with a (signed, lower is
better) value :math:`y`, bad ones (diverged, failed) and pending ones (running elsewhere) — the
next point is chosen by these rules, in order:

1. nothing tried yet: the centre :math:`x_0` (the finder's suggestion);
2. nothing finished with a finite value: a step :math:`h` below the lowest point tried (a run
   that fails is far more often too high than too low);
3. the best point :math:`x_b` (on a plateau of values equal within 0.1%, the lowest of them) has no tried neighbour below it: :math:`x_b - s`; none above it:
   :math:`x_b + s` — unless that is at or above the lowest diverged point :math:`x_d`, then the
   midpoint :math:`(x_b + x_d)/2`. The stride :math:`s = \min(2, \max(h, 1.5\,d))`, with
   :math:`d` the distance to the nearest point tried on the other side, grows while the walk keeps
   improving (a far-off start costs a few trials, not one per step);
4. bracketed: the vertex of the parabola through the best point and its nearest neighbours
   :math:`(x_L, y_L), (x_b, y_b), (x_R, y_R)`,

   .. math::

       x^* = x_b - \frac{1}{2}\,
             \frac{(x_b-x_L)^2 (y_b-y_R) - (x_b-x_R)^2 (y_b-y_L)}
                  {(x_b-x_L)(y_b-y_R) - (x_b-x_R)(y_b-y_L)},

   kept inside :math:`[x_b - (x_b-x_L)/2,\ x_b + (x_R-x_b)/2]`; a bad neighbour
   (:math:`y=\infty`) or a vertex closer than ``min_gap`` to a tried point gives the midpoint of
   the wider side instead.

Points are clipped to ``[lo, hi]`` and never closer than ``min_gap`` to a point already tried;
``None`` means the interval is exhausted at that resolution.

Example:
    >>> next_point([], [], [], x0=-3.0, h=0.5, lo=-6.0, hi=0.0)
    -3.0
    >>> next_point([(-3.0, 0.5)], [], [], x0=-3.0, h=0.5, lo=-6.0, hi=0.0)
    -3.5
    >>> round(next_point([(-3.0, 0.5), (-3.5, 0.7), (-2.5, 0.6)], [], [], x0=-3.0, h=0.5, lo=-6.0, hi=0.0), 3)
    -2.917
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["next_point", "parabola_vertex"]


def parabola_vertex(xl: float, yl: float, xb: float, yb: float, xr: float, yr: float) -> float | None:
    """Abscissa of the vertex of the parabola through three points; ``None`` if it opens downwards
    or is degenerate (collinear points).

    Example:
        >>> parabola_vertex(-1.0, 1.0, 0.0, 0.0, 2.0, 4.0)
        0.0
    """
    num = (xb - xl) ** 2 * (yb - yr) - (xb - xr) ** 2 * (yb - yl)
    den = (xb - xl) * (yb - yr) - (xb - xr) * (yb - yl)
    if den == 0 or not math.isfinite(num / den if den else math.nan):
        return None
    # opens upwards iff the second divided difference is positive
    curvature = ((yr - yb) / (xr - xb) - (yb - yl) / (xb - xl)) / (xr - xl)
    if curvature <= 0:
        return None
    return xb - 0.5 * num / den


def _free(x: float, tried: Sequence[float], min_gap: float) -> bool:
    return all(abs(x - t) >= min_gap for t in tried)


def next_point(
    finished: Sequence[tuple[float, float]],
    bad: Sequence[float],
    pending: Sequence[float],
    *,
    x0: float,
    h: float,
    lo: float,
    hi: float,
    diverged: Sequence[float] = (),
    min_gap: float | None = None,
) -> float | None:
    """The next log10-LR to try (see the module docstring for the rules).

    Args:
        finished: ``(x, y)`` of finished trials; ``y`` is the value to minimise (``inf`` = bad).
        bad: ``x`` of failed or pruned trials that carry no usable value.
        pending: ``x`` of trials still running (on another worker).
        x0: the centre to start from. h: the exploration step in decades (> 0).
        lo, hi: the search interval (``lo < hi``).
        diverged: ``x`` of trials that diverged (everything at or above the lowest is avoided).
        min_gap: the closest two trials may be, in decades (default ``h / 8``).
    """
    if not (h > 0 and lo < hi):
        raise ValueError(f"need h > 0 and lo < hi, got h={h}, lo={lo}, hi={hi}")
    gap = h / 8 if min_gap is None else min_gap
    top = min([hi, *[d - gap for d in diverged]])
    tried = [x for x, _ in finished] + list(bad) + list(pending)

    def ok(x: float) -> float | None:
        x = min(max(x, lo), max(lo, top))
        return x if _free(x, tried, gap) else None

    if not tried:
        return ok(x0)
    good = [(x, y) for x, y in finished if math.isfinite(y)]
    if not good:
        low = min(tried)
        return ok(low - h) if low - h >= lo - 1e-12 else _widest_gap(tried, lo, top, gap)
    # the best point; values equal within 0.1% (a plateau) go to the lowest LR, where the valley may start
    ymin = min(y for _, y in good)
    xb, yb = min(((x, y) for x, y in good if y <= ymin + 1e-3 * abs(ymin)), key=lambda p: p[0])
    values = dict(finished)
    below = [x for x in tried if x < xb - 1e-12]
    above = [x for x in tried if x > xb + 1e-12]
    if not below and xb - lo >= gap:
        step = _stride(h, xb, above)
        return ok(max(xb - step, lo)) or _widest_gap(tried, lo, top, gap)
    if not above:
        step = _stride(h, xb, below)
        if xb + step <= top + 1e-12:
            return ok(xb + step) or _widest_gap(tried, lo, top, gap)
        if top - xb >= 2 * gap:
            return ok(0.5 * (xb + top + gap)) or _widest_gap(tried, lo, top, gap)
    xl = max(below) if below else None
    xr = min(above) if above else None
    yl = values.get(xl, math.inf) if xl is not None else math.inf
    yr = values.get(xr, math.inf) if xr is not None else math.inf
    if xl is not None and xr is not None and math.isfinite(yl) and math.isfinite(yr):
        v = parabola_vertex(xl, yl, xb, yb, xr, yr)
        if v is not None:
            v = min(max(v, xb - (xb - xl) / 2), xb + (xr - xb) / 2)
            if _free(v, tried, gap):
                return ok(v)
    # midpoint of the wider side around the best point
    sides = []
    if xl is not None:
        sides.append((xb - xl, 0.5 * (xl + xb)))
    if xr is not None:
        sides.append((xr - xb, 0.5 * (xb + xr)))
    for width, mid in sorted(sides, reverse=True):
        if width >= 2 * gap and _free(mid, tried, gap) and lo <= mid <= top:
            return mid
    return _widest_gap(tried, lo, top, gap)


def _stride(h: float, xb: float, behind: Sequence[float]) -> float:
    """Step away from the best point: ``h``, or 1.5x the distance walked from the nearest point
    behind it (the walk accelerates while it keeps improving), at most 2 decades."""
    if not behind:
        return h
    walked = min(abs(xb - x) for x in behind)
    return min(max(h, 1.5 * walked), 2.0)


def _widest_gap(tried: Sequence[float], lo: float, top: float, gap: float) -> float | None:
    """Middle of the widest empty interval of ``[lo, top]`` (``None`` when every gap < 2*gap)."""
    if top < lo:
        return None
    pts = sorted([lo, top, *[t for t in tried if lo <= t <= top]])
    best = None
    for a, b in zip(pts[:-1], pts[1:]):
        if b - a >= 2 * gap and (best is None or b - a > best[1] - best[0]):
            best = (a, b)
    if best is None:
        return None
    mid = 0.5 * (best[0] + best[1])
    return mid if _free(mid, tried, gap) else None
