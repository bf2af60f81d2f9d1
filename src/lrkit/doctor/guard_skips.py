"""The guard's side of skipping a bad batch's update: :class:`SkipsSpikes`, mixed into
:class:`~lrkit.doctor.guard.Guard` (the rule itself is :class:`~lrkit.doctor.spikes.SpikeFilter`).

It keeps which steps were skipped (the latest :data:`SKIPS_KEPT`) and the last skip's numbers,
moves the guard's clock past a skipped step without counting it as trained, logs it, and holds a
skipped step's validation result for the next step the doctor sees.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

from lrkit.doctor.spikes import SpikeFilter

__all__ = ["SkipsSpikes", "SKIPS_KEPT"]

#: the latest skipped steps a guard keeps (and writes to its state and manifest); the count is kept whole
SKIPS_KEPT = 1000


class SkipsSpikes:
    """Mixin: the guard's skip bookkeeping. The host sets ``_clock`` (its step counter) and
    ``logger``, and calls :meth:`_init_skips` in its constructor."""

    _clock: int
    logger: Any

    def _init_skips(self, spikes: SpikeFilter | None) -> None:
        self._spikes = spikes
        self._skipped: deque[int] = deque(maxlen=SKIPS_KEPT)  # the latest skipped steps
        #: the last skip: ``step``, ``loss``, ``ratio`` (to the run's level) and ``in_a_row`` (``None`` before one)
        self.last_skip: dict[str, Any] | None = None
        self._held_val: tuple[float | None, Mapping[str, float] | None] = (None, None)

    def skip(self, loss: float, *, lr: float | None = None, step: int | None = None) -> bool:
        """With ``skip_spikes=True``: ask, with a step's loss and LR, before its update is applied.
        ``step``: your number for it, as in :meth:`~lrkit.doctor.guard.Guard.observe` (default:
        the guard's clock); a skipped step is recorded under it and the clock jumps to ``step + 1``.

        ``True``: the loss is a spike (:mod:`lrkit.doctor.spikes`) -- do not apply the update and
        do not :meth:`~lrkit.doctor.guard.Guard.observe` the step; it is recorded as skipped (:attr:`skipped_steps`; the
        clock moves on, :attr:`~lrkit.doctor.guard.Guard.trained_steps` does not). ``False`` (always, without
        ``skip_spikes``): apply it and observe it as usual.

        Example:
            >>> from lrkit.doctor.guard import Guard
            >>> class T:
            ...     def snapshot(self): return None
            ...     def restore(self, s): pass
            >>> g = Guard(T(), skip_spikes=True)
            >>> for t in range(20):
            ...     _ = g.observe(1.0, lr=0.1) if not g.skip(1.0, lr=0.1) else None
            >>> g.skip(80.0, lr=0.1), g.skipped_steps, g.step_count, g.trained_steps
            (True, [20], 21, 20)
        """
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < self._clock):
            raise ValueError(f"Guard.skip: step must be an int >= {self._clock} (the next step), got {step!r}")
        if self._spikes is None or not self._spikes.check(loss, lr=lr):
            return False
        step = self._clock if step is None else step
        self._skipped.append(step)
        self._clock = step + 1
        self.last_skip = {"step": step, "loss": float(loss), "ratio": self._spikes.last_ratio,
                          "in_a_row": self._spikes.in_a_row}
        log = self.logger.warning if self._spikes.in_a_row == 1 else self.logger.info
        log("lrkit guard: skipped the update of step %d: its loss %.4g is %.3gx the run's level with the LR "
            "unchanged (a bad batch?)%s", step, float(loss), self._spikes.last_ratio,
            "" if self._spikes.in_a_row == 1 else f" ({self._spikes.in_a_row} in a row)")
        return True

    @property
    def skips(self) -> bool:
        """Whether the guard skips spikes (``skip_spikes=True``): then ask :meth:`skip` before each update."""
        return self._spikes is not None

    @property
    def skipped_steps(self) -> list[int]:
        """The steps whose update :meth:`skip` held back (``skip_spikes=True``): the latest
        :data:`SKIPS_KEPT` of them (:attr:`skipped_count` counts them all)."""
        return list(self._skipped)

    @property
    def skipped_count(self) -> int:
        """How many updates :meth:`skip` held back in all."""
        return self._spikes.skipped if self._spikes is not None else 0

    def _hold(self, val_loss: float | None, metrics: Mapping[str, float] | None) -> None:
        """Validation results given with a skipped step: passed on with the next observed one."""
        if val_loss is not None or metrics is not None:
            self._held_val = (val_loss, metrics)

    def _skips_state(self) -> dict[str, Any]:
        """The skip bookkeeping for the guard's state and manifest."""
        return {"skipped": list(self._skipped),
                "spikes": self._spikes.state_dict() if self._spikes is not None else None}

    def _load_skips(self, state: Mapping[str, Any]) -> None:
        self._skipped = deque((int(k) for k in state.get("skipped", [])), maxlen=SKIPS_KEPT)
        if self._spikes is not None:
            self._spikes.load_state_dict(state.get("spikes"))
