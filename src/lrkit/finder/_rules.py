"""The classic range-test suggestion rules, re-implemented from what each library documents and does.

Every rule takes the *raw* per-step losses of a range test and applies the smoothing and the
skipping of its own library before choosing. NumPy only. With :math:`\\ell_i` the raw loss of step
:math:`i` and :math:`\\eta_i` its learning rate:

``steepest`` (torch-lr-finder, ``LRFinder.range_test`` + ``plot(suggest_lr=True)``)
    Unbiased-start EMA with weight :math:`f = 0.05` on the newest loss,
    :math:`s_0 = \\ell_0,\\ s_i = f\\,\\ell_i + (1-f)\\,s_{i-1}`; drop the first 10 and the last 5
    points (``skip_start=10, skip_end=5``; at least 17 points are needed); the answer is
    :math:`\\eta_{k}` with :math:`k = \\arg\\min_i \\nabla_i s` where :math:`\\nabla` is
    ``np.gradient`` over the point *index* (central differences inside, one-sided at the ends).

``steepest_lightning`` (Lightning, ``_LRCallback`` + ``_LRFinder.suggestion(skip_begin=10, skip_end=1)``)
    Bias-corrected EMA with :math:`\\beta = 0.98`,
    :math:`m_i = \\beta m_{i-1} + (1-\\beta)\\ell_i,\\ s_i = m_i / (1-\\beta^{i+2})`
    (Lightning divides by :math:`1-\\beta^{t+1}` with :math:`t` its ``global_step``, which is already
    1 after the first batch); drop the first 10 and the last point, drop non-finite values, need 2
    points; the answer is :math:`\\eta_k,\\ k = \\arg\\min \\partial s/\\partial\\eta`, the gradient
    taken against the learning rates themselves (``torch.gradient(s, spacing=[lrs])``).

``valley`` (fastai, ``Recorder`` smoothing + ``lr_find`` + ``valley``)
    Bias-corrected EMA with :math:`\\beta = 0.98`, :math:`s_i = m_i/(1-\\beta^{i+1})`; keep points
    ``[num_iter // 10 : -5]`` up to the first NaN; find the longest strictly decreasing subsequence
    of the losses ("the longest valley") ending at :math:`e` with length :math:`L`, start
    :math:`b = e - L`, and answer :math:`\\eta_j` with
    :math:`j = b + \\lfloor (e-b)/3 \\rfloor + \\lfloor (e-b)/6 \\rfloor` (about two thirds down the
    valley, as fastai computes it).

``minimum_div_10`` (fastai, ``minimum``)
    Same smoothing and window as ``valley``; answer :math:`\\eta_{\\arg\\min s} / 10`.

Non-finite raw losses: every rule first truncates the curve at the first non-finite loss (a NaN in
an EMA poisons every later value, so this is what each library ends up using; lrkit's range test
never records one).

Example:
    >>> import numpy as np
    >>> lrs = np.logspace(-5, 0, 100)
    >>> losses = 2.0 - np.tanh(np.log10(lrs) + 2.5)     # steepest drop at 10**-2.5
    >>> out = classic_suggestions(lrs, losses)
    >>> sorted(out)
    ['minimum_div_10', 'steepest', 'steepest_lightning', 'valley']
    >>> 1e-2 < out["steepest"] < 2e-2      # torch-lr-finder's EMA lags about a decade behind
    True
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "classic_suggestions",
    "ema_unbiased_start",
    "ema_bias_corrected",
    "check_curve",
    "torch_lr_finder_steepest",
    "lightning_steepest",
    "fastai_window",
    "fastai_valley",
    "fastai_minimum_div_10",
]


def check_curve(lrs: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a range-test curve; return float64 copies truncated at the first non-finite loss.

    Raises:
        ValueError: ``lrs``/``losses`` not 1-D of the same length, or ``lrs`` not all finite, > 0 and
            non-decreasing.
    """
    try:
        x = np.array(lrs, dtype=np.float64)
        y = np.array(losses, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lrs and losses must be 1-D sequences of numbers, got {type(lrs).__name__} "
                         f"and {type(losses).__name__} ({exc})") from None
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"lrs and losses must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"lrs and losses must have the same length, got {len(x)} and {len(y)}")
    if len(x) and not (np.all(np.isfinite(x)) and np.all(x > 0)):
        bad = x[~(np.isfinite(x) & (x > 0))][0]
        raise ValueError(f"lrs must be finite and > 0, got {bad!r} among them")
    if len(x) > 1 and np.any(np.diff(x) < 0):
        raise ValueError("lrs must be non-decreasing (the ramp of a range test), got a decreasing step")
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        x, y = x[: bad[0]], y[: bad[0]]
    return x, y


def ema_unbiased_start(losses: np.ndarray, weight: float = 0.05) -> np.ndarray:
    """torch-lr-finder's smoothing: :math:`s_0=\\ell_0,\\ s_i = w\\ell_i + (1-w)s_{i-1}`.

    Example:
        >>> ema_unbiased_start(np.array([1.0, 3.0]), 0.5).tolist()
        [1.0, 2.0]
    """
    out = np.empty(len(losses), dtype=np.float64)
    for i, loss in enumerate(losses):
        out[i] = loss if i == 0 else weight * loss + (1.0 - weight) * out[i - 1]
    return out


def ema_bias_corrected(losses: np.ndarray, beta: float = 0.98, offset: int = 1) -> np.ndarray:
    """Bias-corrected EMA: :math:`m_i = \\beta m_{i-1} + (1-\\beta)\\ell_i`, :math:`s_i = m_i/(1-\\beta^{i+o})`.

    ``offset`` :math:`o` is 1 for fastai (and Adam-style correction) and 2 for Lightning.

    Example:
        >>> ema_bias_corrected(np.array([2.0, 2.0]), 0.9).round(12).tolist()
        [2.0, 2.0]
    """
    out = np.empty(len(losses), dtype=np.float64)
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * loss
        out[i] = avg / (1.0 - beta ** (i + offset))
    return out


def torch_lr_finder_steepest(lrs: np.ndarray, losses: np.ndarray, skip_start: int = 10, skip_end: int = 5) -> float | None:
    """torch-lr-finder's ``plot(suggest_lr=True)`` answer on raw losses (``None``: too few points)."""
    if len(lrs) < skip_start + skip_end + 2:
        return None
    s = ema_unbiased_start(losses, 0.05)
    stop = len(s) - skip_end
    window = s[skip_start:stop]
    return float(lrs[skip_start + int(np.argmin(np.gradient(window)))])


def lightning_steepest(lrs: np.ndarray, losses: np.ndarray, skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """Lightning's ``_LRFinder.suggestion()`` on raw losses (``None``: fewer than 2 points left)."""
    s = ema_bias_corrected(losses, 0.98, offset=2)
    stop = len(s) - skip_end
    window, lr_window = s[skip_begin:stop], lrs[skip_begin:stop]
    keep = np.isfinite(window)
    window, lr_window = window[keep], lr_window[keep]
    if len(window) < 2 or np.any(np.diff(lr_window) <= 0):
        return None  # np.gradient needs distinct coordinates
    return float(lr_window[int(np.argmin(np.gradient(window, lr_window)))])


def fastai_window(lrs: np.ndarray, losses: np.ndarray, num_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """fastai's smoothed losses and the window ``[num_iter // 10 : -5]`` it suggests from."""
    s = ema_bias_corrected(losses, 0.98, offset=1)
    start, stop = num_iter // 10, len(s) - 5
    return lrs[start:stop], s[start:stop]


def _longest_decreasing_end(losses: np.ndarray) -> tuple[int, int]:
    """fastai's longest-valley scan: (start, end) with start = end - length, first maximum kept."""
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - int(lds[max_end])
    return max_start, max_end


def fastai_valley(lrs: np.ndarray, losses: np.ndarray, num_iter: int) -> float | None:
    """fastai's ``valley`` on raw losses (``None`` when the window is empty)."""
    x, s = fastai_window(lrs, losses, num_iter)
    if len(s) == 0:
        return None
    start, end = _longest_decreasing_end(s)
    sections = (end - start) / 3
    idx = start + int(sections) + int(sections / 2)
    return float(x[idx])


def fastai_minimum_div_10(lrs: np.ndarray, losses: np.ndarray, num_iter: int) -> float | None:
    """fastai's ``minimum``: the LR of the lowest smoothed loss, divided by 10."""
    x, s = fastai_window(lrs, losses, num_iter)
    if len(s) == 0:
        return None
    return float(x[int(np.argmin(s))]) / 10.0


def classic_suggestions(lrs: Any, losses: Any, *, num_iter: int | None = None) -> dict[str, float | None]:
    """The four classic suggestions from one range test's raw losses.

    Args:
        lrs: learning rate of every recorded step (finite, > 0, non-decreasing).
        losses: raw training loss of every step (truncated at the first non-finite value).
        num_iter: the number of steps the test had planned (fastai skips ``num_iter // 10`` points
            at the start); default ``len(lrs)`` (before any truncation).

    Returns:
        ``{"steepest", "steepest_lightning", "valley", "minimum_div_10"}`` mapped to a learning
        rate, or to ``None`` where a rule has too few points to answer. See the module docstring for
        each rule's formula.

    Example:
        >>> lrs = np.logspace(-4, 0, 60)
        >>> classic_suggestions(lrs, (np.log10(lrs) + 2) ** 2)["minimum_div_10"] < 1e-2
        True
        >>> classic_suggestions([0.1, 0.2], [1.0, 0.5])["steepest"] is None
        True
    """
    x, y = check_curve(lrs, losses)
    if num_iter is None:
        num_iter = len(np.atleast_1d(np.asarray(lrs, dtype=object)))
    if isinstance(num_iter, bool) or not isinstance(num_iter, (int, np.integer)) or num_iter < 0:
        raise ValueError(f"num_iter must be an integer >= 0 (the planned range-test steps), got {num_iter!r}")
    num_iter = int(num_iter)
    return {
        "steepest": torch_lr_finder_steepest(x, y),
        "steepest_lightning": lightning_steepest(x, y),
        "valley": fastai_valley(x, y, num_iter),
        "minimum_div_10": fastai_minimum_div_10(x, y, num_iter),
    }


