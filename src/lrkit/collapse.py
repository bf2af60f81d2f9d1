r"""A model that stopped depending on its input: :func:`output_spread`.

A network driven by too high an LR can die rather than diverge: its ReLUs switch off, every input
gets the same output, and the loss settles at that of a constant prediction (for a classifier the
class priors' cross-entropy). Where the untrained model's loss is far above that level (unscaled
features: 20-70 against 1.1 on the three-class wine data), a dead candidate run *improves* on its
start within a few steps and can beat the live ones, which are still on their way down: the
finder then answered a dead LR (measured on the development task ``wine_unscaled_adagrad``:
1.2 and 0.27 against a best of 0.19, the second run ending at the chance loss).

The spread of outputs :math:`Y \in \mathbb{R}^{N \times D}` (one row per example; each row
centred first when :math:`D > 1`, since logits are defined up to a shift) is

.. math::

    s = \frac{\operatorname{mean}_d \operatorname{std}_n Y_{nd}}{\operatorname{mean}_{n,d} |Y_{nd}| + \epsilon},

zero (up to rounding) when every example gets the same output; a live model measured at 0.2-1.2 on the
development tasks. :data:`COLLAPSED` is the threshold below which the finder rejects a candidate
and the doctor calls a run that had been live *dead* (:mod:`lrkit.doctor.signs.dead`, fed the
metric named :data:`OUTPUT_SPREAD` by the framework adapters, which measure a bounded sample of
the outputs: strided rows and columns, see :func:`sample_indices`).

Example:
    >>> import numpy as np
    >>> output_spread(np.tile([0.2, -1.0, 0.5], (8, 1))) < COLLAPSED
    True
    >>> output_spread(np.array([[1.0, 0.0], [0.0, 1.0]])) > 0.5
    True
    >>> output_spread(np.array([[1.0, 2.0]])) is None
    True
"""
from __future__ import annotations

import numpy as np

__all__ = ["COLLAPSED", "OUTPUT_SPREAD", "WEIGHT_CHANGE", "check_every_arg", "output_spread", "relative_change",
           "sample_indices", "sampled_spread"]

#: a relative spread at or below this is a model giving every input the same output
COLLAPSED = 1e-6
#: the metric name under which adapters report :func:`output_spread` to the doctor
OUTPUT_SPREAD = "output_spread"
#: most rows (examples) and columns (flattened outputs) an adapter measures
MAX_ROWS, MAX_COLS = 256, 4096
#: the metric name under which adapters report :func:`relative_change` of the trainable weights since
#: the run's start (:mod:`lrkit.doctor.signs.flat` reads it: a loss that has not moved while the weights
#: have is no LR too low)
WEIGHT_CHANGE = "weight_change"
#: most weights an adapter keeps (an evenly spread sample of every trainable tensor, in proportion to its size)
MAX_WEIGHTS = 65536


def relative_change(start: np.ndarray, now: np.ndarray) -> float | None:
    r"""How far weights moved from where they started, relative to their size:
    :math:`\lVert w - w_0 \rVert / \lVert w_0 \rVert` (``None`` when :math:`w_0 = 0`: nothing to
    compare with). Adapters measure it on a fixed sample of the trainable weights (at most
    :data:`MAX_WEIGHTS`, spread over every tensor in proportion to its size: an estimate of the whole).

    Example:
        >>> relative_change(np.array([3.0, 4.0]), np.array([3.0, 4.5]))
        0.1
        >>> relative_change(np.zeros(3), np.ones(3)) is None
        True
    """
    start = np.asarray(start, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(start))
    if not norm > 0:
        return None
    return float(np.linalg.norm(np.asarray(now, dtype=np.float64).ravel() - start)) / norm


def check_every_arg(name: str, value: object) -> None:
    """An adapter's ``check_outputs_every``: an int >= 0 (0: never measure), else a ``ValueError``
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0 = never measure the outputs), got {value!r}")


def sample_indices(n: int, most: int) -> np.ndarray | None:
    """``most`` indices spread evenly over ``range(n)`` (``None``: take all ``n``).

    A collapsed model gives the same output everywhere, so any subset shows it; evenly spread
    rows and columns keep a live one's variety (a sequence model's positions, not its first only).

    Example:
        >>> sample_indices(10, 4).tolist(), sample_indices(3, 4) is None
        ([0, 3, 6, 9], True)
    """
    if n <= most:
        return None
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def output_spread(outputs: np.ndarray) -> float | None:
    """The relative spread of a batch of outputs over its examples (``None`` with fewer than two
    examples or non-finite values); see the module docstring."""
    y = np.asarray(outputs, dtype=np.float64)
    if y.ndim == 0 or y.shape[0] < 2 or not np.all(np.isfinite(y)):
        return None
    y = y.reshape(y.shape[0], -1)
    if y.shape[1] > 1:
        y = y - y.mean(axis=1, keepdims=True)
    scale = float(np.mean(np.abs(y)))
    return float(np.mean(np.std(y, axis=0)) / (scale + 1e-12))


def sampled_spread(outputs: object) -> float | None:
    """:func:`output_spread` of an array of outputs (rows = its first dimension, the examples) on an
    evenly spread sample of at most ``MAX_ROWS x MAX_COLS`` values, columns gathered first (a
    sequence model's ``N x T x V`` logits are never copied whole). Any array with ``shape``,
    ``reshape`` and integer-array indexing will do (NumPy, JAX); ``None`` for a scalar or a single
    example.

    Example:
        >>> sampled_spread(np.zeros((1000, 3, 5000))) < COLLAPSED
        True
        >>> sampled_spread(np.eye(4)) > 0.5, sampled_spread(np.ones(1))
        (True, None)
    """
    shape = getattr(outputs, "shape", None)
    if shape is None:
        outputs = np.asarray(outputs)
        shape = outputs.shape
    if len(shape) == 0 or shape[0] < 2:
        return None
    y = outputs.reshape(shape[0], -1)  # type: ignore[attr-defined]
    cols = sample_indices(y.shape[1], MAX_COLS)
    if cols is not None:
        y = y[:, cols]
    rows = sample_indices(y.shape[0], MAX_ROWS)
    if rows is not None:
        y = y[rows]
    return output_spread(np.asarray(y))
