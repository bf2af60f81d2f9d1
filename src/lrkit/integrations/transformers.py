"""The LR doctor as a Hugging Face ``TrainerCallback``.

:class:`LRDoctorCallback` reads each training log in ``on_log`` (``loss``, ``learning_rate``,
``grad_norm``; ``state.global_step`` as the step), feeds a :class:`~lrkit.doctor.core.Doctor`, logs
a WARNING line (logger ``"lrkit.doctor"``) the first time each problem is detected, and, for a
verdict in ``stop_on``, sets ``control.should_training_stop = True`` so that the ``Trainer``
stops cleanly after the current step (its normal end-of-training path: callbacks, final save if
configured). The logs dict is never modified; the verdicts are in :attr:`diagnosis` and
:attr:`detections`.

What it sees is what the ``Trainer`` logs: with ``logging_steps=k`` each loss is the mean of
``k`` steps (use ``logging_steps=1`` for per-step detection). **``logging_nan_inf_filter``**
(``True`` by default) replaces a NaN/inf step loss by the running average before logging, so
that a run with NaN weights keeps logging finite losses: the doctor can then only see the NaN
through ``grad_norm`` (logged when ``max_grad_norm > 0``, the default). The callback warns about it
in ``on_train_begin``; pass ``logging_nan_inf_filter=False`` for a reliable ``nan`` verdict.

**Why no rollback here.** A sound in-place rollback inside ``transformers.Trainer`` would have to
restore the model through Accelerate's wrappers (and DeepSpeed/FSDP shards), the wrapped
optimizer, the GradScaler, the LR scheduler and the Trainer's internal loss accumulators
(``tr_loss``), none of which a callback owns. The sound recipe is: stop (``stop_on``), then
resume from the last checkpoint (``trainer.train(resume_from_checkpoint=...)``) with a lower
``learning_rate`` -- the diagnosis' advice says by how much. For an in-loop guard use
:class:`lrkit.integrations.torch_doctor.TorchDoctor` or the Lightning callback.

Example::

    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   callbacks=[LRDoctorCallback(stop_on=("nan", "diverging"))])
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

from transformers import TrainerCallback

from lrkit.doctor.core import VERDICTS, Diagnosis, Doctor

__all__ = ["LRDoctorCallback"]


class LRDoctorCallback(TrainerCallback):
    """Diagnose a ``transformers.Trainer`` run from its logs; optionally stop it.

    Args:
        doctor: the :class:`~lrkit.doctor.core.Doctor` (default ``Doctor()``). For
            ``logging_steps`` > 1 a smaller ``window`` suits (the doctor sees one point per log).
        stop_on: verdicts that stop training (default ``()``: only report); a subset of
            ``("nan", "diverging", "fluctuating", "flat")``.
        logger: where detections are reported (default ``logging.getLogger("lrkit.doctor")``).

    Attributes:
        diagnosis: the latest verdict. detections: each problem's first detection, in order.
        stopped_by: the diagnosis that stopped training, or ``None``.
    """

    def __init__(
        self,
        *,
        doctor: Doctor | None = None,
        stop_on: tuple[str, ...] = (),
        logger: logging.Logger | None = None,
    ) -> None:
        if doctor is not None and not isinstance(doctor, Doctor):
            raise ValueError(f"LRDoctorCallback: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        problems = tuple(v for v in VERDICTS if v != "healthy")
        if not isinstance(stop_on, (tuple, list)) or any(v not in problems for v in stop_on):
            raise ValueError(f"LRDoctorCallback: stop_on must be a tuple of verdicts from {problems}, got {stop_on!r}")
        self.doctor = doctor if doctor is not None else Doctor()
        self.stop_on = tuple(stop_on)
        self.logger = logger if logger is not None else logging.getLogger("lrkit.doctor")
        self.detections: list[Diagnosis] = []
        self.stopped_by: Diagnosis | None = None
        self._last_step: int | None = None

    @property
    def diagnosis(self) -> Diagnosis:
        return self.doctor.diagnosis

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:  # a fresh run (not a resume): forget a previous one
            self.doctor.reset()
            self.detections = []
            self.stopped_by = None
            self._last_step = None
        if getattr(args, "logging_nan_inf_filter", False):
            warnings.warn(
                "LRDoctorCallback: TrainingArguments.logging_nan_inf_filter=True replaces NaN/inf losses in the "
                "logs by a running average, so the doctor can only see a NaN through grad_norm; pass "
                "logging_nan_inf_filter=False for a reliable 'nan' verdict",
                stacklevel=2,
            )

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return  # an evaluation log or the end-of-training summary
        step = int(state.global_step)
        if self._last_step is not None and step <= self._last_step:
            return  # the same step logged twice (e.g. a resumed run)
        self._last_step = step
        lr = logs.get("learning_rate")
        gn = logs.get("grad_norm")
        d = self.doctor.observe(
            step,
            float(logs["loss"]),
            lr=None if lr is None else float(lr),
            grad_norm=None if gn is None else float(gn),
        )
        if d.verdict != "healthy" and not any(h.verdict == d.verdict and h.step == d.step for h in self.detections):
            self.detections.append(d)
            self.logger.warning("lrkit doctor at step %d: %s", step, d)
        if d.verdict in self.stop_on and self.stopped_by is None:
            self.stopped_by = d
            control.should_training_stop = True
            self.logger.warning("lrkit doctor: stopping training at step %d (%s)", step, d.verdict)
