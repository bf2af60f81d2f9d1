r"""A torch model's outputs, read for :mod:`lrkit.collapse`: is the network still alive?

:func:`tensor_spread` is :func:`lrkit.collapse.output_spread` of a bounded sample of one output
tensor (at most :data:`~lrkit.collapse.MAX_ROWS` examples and
:data:`~lrkit.collapse.MAX_COLS` flattened values each, evenly spread; a few MB copied to the
host whatever the model's size). :class:`SpreadProbe` measures it on the training run's own
forward passes -- the first, then one every ``every`` optimizer steps, through a forward hook that does nothing
on the others -- and hands it to the doctor as the metric ``output_spread``, where
:class:`lrkit.doctor.signs.Dead` reads it: a run whose outputs stopped depending on its inputs is
rolled back to a state from before.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> probe = SpreadProbe(model, every=2)
    >>> x = torch.randn(16, 4)
    >>> for step in range(4):
    ...     _ = model(x)
    ...     print(step, {k: round(v, 2) for k, v in probe.take(step).items()})
    0 {'output_spread': 1.02}
    1 {}
    2 {'output_spread': 1.02}
    3 {}
    >>> with torch.no_grad():
    ...     _ = model[0].bias.fill_(-100.0)      # every ReLU off: a dead network
    >>> _ = model(x); _ = probe.take(4); _ = model(x)
    >>> probe.take(5)
    {}
    >>> _ = model(x); probe.take(6)["output_spread"] < 1e-6
    True
    >>> probe.close()
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lrkit.collapse import (
    MAX_COLS,
    MAX_ROWS,
    MAX_WEIGHTS,
    OUTPUT_SPREAD,
    WEIGHT_CHANGE,
    check_every_arg,
    output_spread,
    sample_indices,
)
from lrkit.integrations.torch.dist import rank_agree, world_size

# (check_every_arg re-exported)
__all__ = ["SpreadProbe", "WeightSample", "agreed_spread", "check_every_arg", "first_tensor", "tensor_spread"]


def first_tensor(out: Any) -> torch.Tensor | None:
    """A model's output as one tensor: itself, its ``.logits``, a dict's ``"logits"`` or first tensor,
    a sequence's first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        items = [out.get("logits"), *out.values()]
    elif isinstance(out, (list, tuple)):
        items = list(out)
    else:
        return None
    return next((x for x in items if isinstance(x, torch.Tensor)), None)


def tensor_spread(out: torch.Tensor | None) -> float | None:
    """:func:`lrkit.collapse.output_spread` of ``out`` (rows = its first dimension, the examples),
    on an evenly spread sample of at most ``MAX_ROWS x MAX_COLS`` values; ``None`` for no tensor,
    a scalar or a single example."""
    if out is None or out.ndim == 0 or out.shape[0] < 2:
        return None
    y = out.detach().reshape(out.shape[0], -1)  # a view: nothing copied yet
    cols = sample_indices(y.shape[1], MAX_COLS)
    if cols is not None:  # columns first: a gather of N x MAX_COLS, never of N x (T * V)
        y = y[:, torch.as_tensor(cols, device=y.device)]
    rows = sample_indices(y.shape[0], MAX_ROWS)
    if rows is not None:
        y = y[torch.as_tensor(rows, device=y.device)]
    return output_spread(y.float().cpu().numpy())


def agreed_spread(value: float | None, agree: bool = True) -> float | None:
    """The largest spread over the ranks under ``torch.distributed`` (a collective: every rank
    calls it at the same step; ``agree=False``: this rank's own), else ``value``."""
    if not agree or world_size() <= 1:
        return value
    agreed = rank_agree([math.inf if value is None else value], "max")[0]
    return None if math.isinf(agreed) else agreed


class WeightSample:
    """A fixed sample of a model's trainable weights, kept from where they started:
    :meth:`change` is :func:`lrkit.collapse.relative_change` of the sample since then.

    At most ``size`` values (each tensor gives an evenly spread share in proportion to its size, at
    least one value), copied once on their own devices; a reading gathers the same positions and
    reads one number per device. ``None`` where the weights cannot be read so (sharded parameters,
    weights that started at zero).

    Example:
        >>> lin = torch.nn.Linear(4, 2)
        >>> w = WeightSample(lin)
        >>> w.change()
        0.0
        >>> with torch.no_grad():
        ...     _ = lin.weight.mul_(1.5); _ = lin.bias.mul_(1.5)
        >>> round(w.change(), 6)
        0.5
    """

    def __init__(self, model: torch.nn.Module, size: int = MAX_WEIGHTS) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in params)
        self._items: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        norm2: dict[torch.device, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for p in params:
                    cols = sample_indices(p.numel(), max(1, round(size * p.numel() / total)))
                    idx = None if cols is None else torch.as_tensor(cols, device=p.device)
                    start = self._values(p, idx).clone()
                    self._items.append((p, idx, start))
                    norm2[p.device] = norm2.get(p.device, 0.0) + start.pow(2).sum()
            self._norm = math.sqrt(sum(float(v) for v in norm2.values()))
        except (RuntimeError, TypeError, NotImplementedError):  # parameters that do not read as one tensor
            self._items, self._norm = [], 0.0

    @staticmethod
    def _values(p: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        flat = p.detach().reshape(-1)
        return (flat if idx is None else flat[idx]).float()

    def change(self) -> float | None:
        r""":math:`\lVert w_S - w_{S,0} \rVert / \lVert w_{S,0} \rVert` on the sample :math:`S`
        (``None``: nothing to measure)."""
        if not self._items or not self._norm > 0:
            return None
        sums: dict[torch.device, list[torch.Tensor]] = {}
        try:
            with torch.no_grad():
                for p, idx, start in self._items:
                    sums.setdefault(start.device, []).append((self._values(p, idx) - start).pow(2).sum())
            total = sum(float(torch.stack(v).sum()) for v in sums.values())  # one read per device
        except (RuntimeError, TypeError, NotImplementedError):
            return None
        return math.sqrt(total) / self._norm if math.isfinite(total) else None


class SpreadProbe:
    """Measures :func:`tensor_spread` on the model's forward of every ``every``-th optimizer step.

    :meth:`take` (called once per optimizer step, after it, with its index) returns the metrics to
    report with that step -- ``{"output_spread": s}`` on a measured step, else ``{}`` -- and arms the
    hook for the next step's first forward when that step is due: the first step after the probe
    was built (the state the run starts from, live or not), then step indices divisible by
    ``every``. Under ``torch.distributed`` with ``agree=True`` every rank must call :meth:`take`
    at every step (the ranks agree on the largest spread at the measured steps); with
    ``agree=False`` each rank reads its own. With ``weights=True`` a measured step also reports
    how far the trainable weights moved since the probe was built (:class:`WeightSample`, the
    metric ``weight_change``; every rank holds the same weights under DDP, so no collective).
    """

    def __init__(self, model: torch.nn.Module, every: int = 25, *, agree: bool = True, weights: bool = False) -> None:
        check_every_arg("SpreadProbe: every", every)
        if every == 0:
            raise ValueError("SpreadProbe: every must be >= 1 (build no probe to measure nothing)")
        self.every, self.agree = every, bool(agree)
        self._armed = True  # the hook measures the next forward (the first one: the run's start)
        self._due = True  # the step being trained is a measured one (the same on every rank)
        self._value: float | None = None
        self._weights = WeightSample(model) if weights else None
        self._hook = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: Any, args: Any, out: Any) -> None:
        if self._armed:
            self._armed = False
            self._value = tensor_spread(first_tensor(out))

    def take(self, step: int) -> dict[str, float]:
        """The metrics of optimizer step ``step`` (see the class docstring)."""
        due, self._due = self._due, (step + 1) % self.every == 0
        value = agreed_spread(self._value, self.agree) if due else None
        self._armed, self._value = self._due, None
        out = {} if value is None else {OUTPUT_SPREAD: float(value)}
        moved = self._weights.change() if due and self._weights is not None else None
        if moved is not None:
            out[WEIGHT_CHANGE] = moved
        return out

    def restart(self) -> None:
        """Measure the next step's forward again (after a rollback: the restored state's liveness
        is the new reference; a doctor that started afresh has seen none)."""
        self._armed = self._due = True
        self._value = None

    def close(self) -> None:
        """Remove the forward hook."""
        self._hook.remove()

    remove = close  # a torch hook handle's name: the probe can be kept with the handles it outlives
