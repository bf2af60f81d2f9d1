"""Export an lrkit :class:`~lrkit.schedules.Schedule` to an optax schedule (``count -> lr``).

:func:`to_optax` gives a callable usable wherever optax takes a schedule
(``optax.sgd(learning_rate=...)``, ``optax.inject_hyperparams``), inside ``jax.jit``. How it
computes (see ``method``):

* ``"table"`` — looks the LR up in the schedule's own float64 values (computed by lrkit with
  NumPy), rounded once to JAX's float type: with ``jax_enable_x64`` the values are *exactly*
  ``schedule(count)``; in float32 they are correctly rounded.
* ``"formula"`` — traces the schedule's formula with ``jax.numpy`` (the same formulas as the
  core): within a few ulps of the core in float64; in float32 constants are rounded, so e.g.
  ``gamma**t`` drifts (about 1e-7 relative per 100 steps for ``gamma`` near 1).
* ``"auto"`` (default) — a table when the schedule ends within 2**21 steps (every finite
  schedule in practice), the formula otherwise.

Reactive schedules: optax's own ``optax.contrib.reduce_on_plateau`` scales the *updates* by a
factor driven by a metric passed as ``value=`` to ``update``; :func:`plateau_transform` builds
it from an lrkit :class:`~lrkit.schedules.ReduceOnPlateau` (chain it after the optimizer that
uses ``to_optax(rop.schedule)``), and ``rop.to_optax(optax.adam)`` (:func:`plateau_optimizer`)
builds the whole chain.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lrkit.integrations._schedule_table import plan
from lrkit.schedules.base import Schedule
from lrkit.schedules.plateau import ReduceOnPlateau

__all__ = ["OptaxSchedule", "plateau_optimizer", "plateau_transform", "to_optax"]


class OptaxSchedule:
    """An optax schedule (``count -> lr``) computing an lrkit schedule; see :func:`to_optax`.

    Attributes:
        schedule: the lrkit schedule.
        method: ``"table"`` or ``"formula"`` (what ``"auto"`` resolved to).
    """

    def __init__(self, schedule: Schedule, method: str, table_steps: int | None) -> None:
        p = plan(schedule, method, table_steps, "to_optax")
        self.schedule = schedule
        self.method = "formula" if p.table is None else "table"
        self._table = p.table
        self._tail = p.tail
        self._device_tables: dict = {}

    def _jax_table(self):
        """The table as a concrete JAX array of the default float type (cached per dtype)."""
        dtype = jnp.result_type(float)  # float64 with jax_enable_x64, float32 otherwise
        if dtype not in self._device_tables:
            with jax.ensure_compile_time_eval():  # concrete even when first called under jit
                self._device_tables[dtype] = jnp.asarray(self._table, dtype=dtype)
        return self._device_tables[dtype]

    def __call__(self, count):
        """The LR at optimizer step ``count`` (int or array; negative counts are treated as 0)."""
        count = jnp.asarray(count)
        t = jnp.maximum(count, 0)
        if self._table is None:
            return self.schedule.evaluate(t, xp=jnp)
        table = self._jax_table()
        n = self._table.shape[0]
        looked_up = table[jnp.minimum(t, n - 1).astype(jnp.int32 if n < 2**31 else jnp.int64)]
        if self._tail == "hold":
            return looked_up
        return jnp.where(t < n, looked_up,
                         self.schedule.evaluate(t, xp=jnp).astype(table.dtype))

    def __repr__(self) -> str:
        return f"to_optax({self.schedule.to_spec()}, method={self.method!r})"


def to_optax(schedule: Schedule, *, method: str = "auto",
             table_steps: int | None = None) -> OptaxSchedule:
    r"""An optax schedule with the learning rates of ``schedule``, usable inside ``jax.jit``.

    .. math::
        \text{lr}(c) = s(\max(c, 0))

    where :math:`s` is the schedule and :math:`c` optax's step count (0 at the first update).

    Args:
        schedule: an lrkit :class:`~lrkit.schedules.Schedule`. A
            :class:`~lrkit.schedules.ReduceOnPlateau` is not a function of the count: export
            its ``.schedule`` and add :func:`plateau_transform`.
        method: ``"auto"``, ``"table"`` or ``"formula"`` (see the module docstring).
        table_steps: with ``"table"``, tabulate steps ``0 .. table_steps - 1`` (default:
            ``total_steps + 1``); past the table the formula continues if the schedule has
            not ended by then.

    Returns:
        An :class:`OptaxSchedule` (callable ``count -> jax.Array``).

    Raises:
        ValueError: an unknown ``method``, a bad ``table_steps``, a plateau schedule, or a
            schedule that the chosen method cannot represent (the message says what to pass).

    Example:
        >>> import jax, optax
        >>> from lrkit.schedules import cosine, warmup
        >>> lr = to_optax(warmup(cosine(0.1, 900), warmup_steps=100))
        >>> round(float(jax.jit(lr)(100)), 6), float(lr(1000))
        (0.1, 0.0)
        >>> opt = optax.sgd(learning_rate=lr)
    """
    if isinstance(schedule, ReduceOnPlateau):
        raise ValueError("to_optax: a ReduceOnPlateau reacts to metrics, it is not a function of "
                         "the step count; use rop.to_optax(optax.adam) (an optimizer on the schedule, "
                         "then the plateau), or pass to_optax(rop.schedule) to the optimizer and chain "
                         "plateau_transform(rop) after it")
    return OptaxSchedule(schedule, method, table_steps)


def plateau_transform(rop: ReduceOnPlateau, *, accumulation_size: int = 1):
    r"""``optax.contrib.reduce_on_plateau`` configured like an lrkit ``ReduceOnPlateau``.

    Use it as ``optax.chain(optax.adam(to_optax(rop.schedule)), plateau_transform(rop))`` and
    pass the metric as ``update(..., value=metric)``. It multiplies the updates — equivalent
    to multiplying the LR for optimizers whose update is proportional to the LR (SGD, Adam,
    AdamW, ...). The parameters map as

    .. math::
        \text{patience}_{optax} = \text{patience} + 1, \quad
        \text{rtol} = \tau \;(\text{rel}), \quad \text{atol} = \tau \;(\text{abs}), \quad
        \text{min\_scale} = \eta_{min} / P

    (optax reduces when the count of bad observations *reaches* its patience, torch and lrkit
    when it *exceeds* theirs; :math:`P` is ``rop.reference_lr``). With a constant schedule the
    sequence of scales equals lrkit's (and torch's ``ReduceLROnPlateau``) up to ``eps``;
    with a time-varying schedule lrkit floors the *LR* at ``min_lr`` while optax floors the
    *scale* at ``min_scale``.

    Args:
        rop: an lrkit :class:`~lrkit.schedules.ReduceOnPlateau` with ``mode="min"`` and
            ``threshold > 0`` (optax's restrictions).
        accumulation_size: metrics averaged before each decision (optax's parameter; 1 when
            the metric is already an epoch's validation loss).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Raises:
        ValueError: ``mode="max"``, ``threshold == 0``, or ``threshold > 1`` with ``"rel"``.

    Example:
        >>> import optax
        >>> from lrkit.schedules import reduce_on_plateau
        >>> rop = reduce_on_plateau(0.1, patience=2, factor=0.5)
        >>> tx = optax.chain(optax.sgd(to_optax(rop.schedule)), plateau_transform(rop))
    """
    import optax.contrib

    where = "plateau_transform"
    if not isinstance(rop, ReduceOnPlateau):
        raise ValueError(f"{where}: rop must be a ReduceOnPlateau, got {rop!r}")
    if rop.mode != "min":
        raise ValueError(f"{where}: optax's reduce_on_plateau only minimises; got mode={rop.mode!r} "
                         f"(pass the negated metric and build rop with mode='min')")
    if rop.threshold == 0:
        raise ValueError(f"{where}: optax needs a positive tolerance; got threshold=0 "
                         f"(pass threshold > 0, e.g. 1e-4)")
    if rop.threshold_mode == "rel" and rop.threshold > 1:
        raise ValueError(f"{where}: optax's rtol must be <= 1; got threshold={rop.threshold!r} "
                         f"with threshold_mode='rel'")
    rel = rop.threshold_mode == "rel"
    ref = rop.reference_lr
    min_scale = 0.0 if ref == 0 else rop.min_lr / ref
    return optax.contrib.reduce_on_plateau(
        factor=rop.factor, patience=rop.patience + 1, rtol=rop.threshold if rel else 0.0,
        atol=0.0 if rel else rop.threshold, cooldown=rop.cooldown,
        accumulation_size=accumulation_size, min_scale=min_scale)


def plateau_optimizer(rop: ReduceOnPlateau, optimizer: Any, *, accumulation_size: int = 1,
                      method: str = "auto", table_steps: int | None = None):
    r"""``optimizer`` on ``rop``'s schedule, then :func:`plateau_transform` (``rop.to_optax``).

    .. math::
        u_t = c_t\,\text{opt}_{s(t)}(g_t)

    with :math:`s` the wrapped schedule and :math:`c_t` optax's plateau scale (the metric goes in
    as ``update(..., value=metric)``).

    Args:
        rop: the :class:`~lrkit.schedules.ReduceOnPlateau`.
        optimizer: an optax optimizer factory taking ``learning_rate`` (e.g. ``optax.adam``).
        accumulation_size: see :func:`plateau_transform`.
        method, table_steps: see :func:`to_optax`.

    Raises:
        ValueError: ``optimizer`` is not a callable factory (e.g. an already built optimizer),
            or the plateau cannot be expressed in optax (see :func:`plateau_transform`).

    Example:
        >>> import optax
        >>> from lrkit.schedules import cosine, reduce_on_plateau
        >>> tx = reduce_on_plateau(cosine(0.1, 100), patience=2).to_optax(optax.sgd)
        >>> type(tx).__name__
        'GradientTransformationExtraArgs'
    """
    import optax

    if isinstance(optimizer, optax.GradientTransformation) or not callable(optimizer):
        raise ValueError(f"ReduceOnPlateau.to_optax: optimizer must be an optax optimizer factory that takes "
                         f"learning_rate (e.g. optax.adam, or functools.partial(optax.adamw, weight_decay=0.01)), "
                         f"got {optimizer!r}")
    plateau = plateau_transform(rop, accumulation_size=accumulation_size)
    inner = optimizer(learning_rate=to_optax(rop.schedule, method=method, table_steps=table_steps))
    return optax.chain(inner, plateau)
