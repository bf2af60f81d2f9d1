r"""Inputs that were never standardised: the finder says so, because no LR will fix them.

Features in their raw units (pixel counts 0-255, a wine's proline near 1000, prices, temperatures
in kelvin) make the loss surface ill-conditioned: the largest curvature grows with the square of
the input scale, so the range of LRs that train at all narrows to a sliver, a network dies at LRs
a hair above the best one, and short runs at neighbouring LRs score at random. That is where
lrkit's own benchmarks are worst -- the unscaled logistic regression (held out) and the unscaled
wine MLP (development) in the finder's, the search's and the autopilot's tables -- and where
every other LR rule is worse still. The remedy is not an LR: it is
:math:`x \leftarrow (x - \mu) / \sigma` per feature, or pixels divided by 255.

The test is the root mean square of a sample of the float inputs,
:math:`\sqrt{\overline{x^2}} > 5` (:data:`UNSCALED_RMS`): standardised features sit at 1, images
in :math:`[0, 1]` or :math:`[-1, 1]` under it, raw pixel counts (0-16: about 7; 0-255: about 100)
and physical units far above. Integer inputs (token ids, class indices) are not features and are
left alone.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(256, 8))
    >>> unscaled_inputs(x) is None, unscaled_inputs(np.arange(10))    # standardised; integers
    (True, None)
    >>> print(unscaled_inputs(255 * np.random.default_rng(0).random((64, 784))))  # doctest: +ELLIPSIS
    the inputs are not standardised (root mean square 147, largest |value| 255): ...
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: root mean square of the float inputs above which they are called unscaled (module docstring)
UNSCALED_RMS = 5.0
#: how the warning begins (the autopilot's plan repeats it)
UNSCALED_WARNING = "the inputs are not standardised"

__all__ = ["UNSCALED_RMS", "UNSCALED_WARNING", "unscaled_inputs"]


def _is_target(key: Any) -> bool:
    """A dict batch's entry that holds the targets, not inputs (``labels``, ``target``, ``y``)."""
    name = str(key).lower()
    return "label" in name or "target" in name or name == "y"


def _float_arrays(sample: Any) -> list[np.ndarray]:
    """The floating-point arrays in ``sample`` (an array, or a list/tuple/dict of them; a dict's
    targets left out)."""
    if sample is None:
        return []
    if isinstance(sample, dict):
        return [a for k, v in sample.items() if not _is_target(k) for a in _float_arrays(v)]
    if isinstance(sample, (list, tuple)):
        return [a for v in sample for a in _float_arrays(v)]
    try:
        arr = np.asarray(sample)
    except (TypeError, ValueError):
        return []
    return [arr] if arr.dtype.kind == "f" and arr.size else []


def unscaled_inputs(sample: Any) -> str | None:
    """The finder's warning when the float inputs in ``sample`` (a batch's inputs: an array, or a
    list/tuple/dict of arrays; a dict's ``labels``/``target``/``y`` are left out) were not
    standardised, else ``None`` (see the module docstring)."""
    arrays = [a[np.isfinite(a)] for a in _float_arrays(sample)]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return None
    values = np.concatenate([a.ravel().astype(np.float64) for a in arrays])
    rms = float(np.sqrt(np.mean(values ** 2)))
    if rms <= UNSCALED_RMS:
        return None
    return (f"{UNSCALED_WARNING} (root mean square {rms:.3g}, largest |value| "
            f"{float(np.max(np.abs(values))):.3g}): the LRs that train at all form a narrow band, a network dies "
            "just above the best one, and this answer is less certain than its band says. No LR fixes that: "
            "standardise each feature ((x - mean) / std over the training set) or divide pixels by 255, then "
            "run the finder again")
