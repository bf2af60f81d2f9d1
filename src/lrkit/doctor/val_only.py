r"""Judging a run from its validation losses when its log holds too few training losses.

A Hugging Face ``Trainer`` logs the training loss every ``logging_steps=500`` steps by default and
evaluates once per epoch: a fine-tuning run of a few hundred steps keeps *no* training loss in its
``trainer_state.json`` (and one of 500-1000 steps keeps one), but an evaluation per epoch. Its
``eval_loss`` still tells an LR far too high from one that trained. With :math:`v_1 \dots v_n` the
validation losses and :math:`c` the chance level when the model's configuration gives it
(:attr:`~lrkit.doctor.logs.LogRecords.chance_loss`):

* a non-finite :math:`v_i`: ``nan``;
* :math:`v_i \ge \rho^2 c` for some :math:`i` (four times what predicting the label prior scores;
  a model that learned nothing scores :math:`c`): ``diverging``, from any number of evaluations;
* from :data:`COLLAPSE_EVALS` evaluations, with :math:`c` known: :math:`v_1 \ge` :data:`ABOVE_CHANCE`
  :math:`\cdot c`, no :math:`v_i` under :math:`0.9\,c` and the last two within 10% of :math:`c`:
  ``diverging`` -- the model got worse than one that learned nothing (an untrained classifier
  scores about :math:`c`), then collapsed to predicting the label prior; an LR too low sits at
  :math:`c` from the first evaluation on;
* with at least :data:`MIN_EVALS` evaluations, the doctor reads the series itself as a coarse log
  (one row per evaluation) and its verdict is kept when it is

  - ``diverging`` or ``fluctuating`` and the series went above its first value at some point
    (worse than after the first epoch: instability; a validation loss that falls to a best and
    rises again under its start is overfitting, and is left alone);
  - ``flat`` and smooth (the median distance of :math:`\ln v_i` from its neighbours' mean at
    most :data:`~lrkit.doctor.signs.flat.VAL_SWING`): the LR too low -- its validation losses
    fall in a straight line, if at all, while a run that has already converged, as fast as a
    small regression does in its first epoch, jitters around its level (1-2% here) and is left
    alone;

Otherwise there is nothing to say beyond the training losses' own verdict. Each verdict says
that it was read from the validation loss.

Example:
    >>> from lrkit.doctor import diagnose
    >>> evals = [1.1449, 1.1319, 1.1198, 1.1084, 1.0971, 1.0855, 1.0743, 1.0637, 1.0540, 1.0432]
    >>> log = {"step": [11 * e for e in range(1, 11)], "eval_loss": evals,
    ...        "loss": [None, None, None, None, 1.12, None, None, None, None, 1.06]}  # two training losses
    >>> d = diagnose(log)   # Lightning's log_every_n_steps=50 on a 110-step run, Adam at 1e-4
    >>> d.verdict, d.message.startswith("Read from the validation loss"), d.advice[0]
    ('flat', True, 'raise the LR about 3x')
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from lrkit.doctor.core import Diagnosis
from lrkit.doctor.logs import LogRecords
from lrkit.doctor.signs._base import TINY
from lrkit.doctor.signs.flat import VAL_SWING, swing

__all__ = ["judge_validation", "validation_as_loss", "MIN_EVALS", "ABOVE_CHANCE"]

#: evaluations the series needs before the doctor reads it as a log
MIN_EVALS = 5
#: a first validation loss this many times chance started worse than a model that learned nothing
ABOVE_CHANCE = 1.3
#: "at chance": within this fraction of it
CHANCE_BAND = 0.1
#: evaluations a collapse to chance needs (the first above it, two at it)
COLLAPSE_EVALS = 3


def validation_as_loss(records: LogRecords) -> LogRecords | None:
    """The validation losses of ``records`` as the loss of a log of their own (one row per
    evaluation, the chance level kept), or ``None`` when it has none."""
    if records.val_loss is None:
        return None
    has = records.has("val_loss")
    if not has.any():
        return None
    return LogRecords({"step": records["step"][has], "loss": records.val_loss[has]},
                      source=f"{records.source} (validation loss)", step_column=records.step_column,
                      chance_loss=records.chance_loss)


def judge_validation(records: LogRecords, read: Callable[[LogRecords], Diagnosis], *,
                     diverge_ratio: float = 2.0, chance: float | None = None,
                     loss_floor: float = 0.0) -> Diagnosis | None:
    """A verdict on ``records`` from its validation losses (see the module docstring), or ``None``.

    ``read`` diagnoses a log (:func:`~lrkit.doctor.diagnosis.diagnose` with the caller's settings);
    ``records`` is the log whose training losses are too few; ``chance`` its chance level as the
    doctor takes it (``None``: unknown, or refuted by an untrained loss far above it);
    ``loss_floor`` the training loss's lower bound (a series that goes below it is not read as a log).
    """
    vals = validation_as_loss(records)
    if vals is None:
        return None
    vals.chance_loss = chance  # as the doctor takes it for this run
    losses = int(records.has("loss").sum())
    v, steps = vals.loss, vals.step
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        return _said(Diagnosis("nan", int(steps[i]), int(steps[i]), {"val_loss": float(v[i])},
                               ("lower the LR about 10x", "clip gradients (e.g. max norm 1.0)"),
                               f"The validation loss is {v[i]} at step {int(steps[i])}."), len(v), losses)
    c = chance
    if c is not None and c > 0 and float(v.max()) >= diverge_ratio**2 * c:
        i = int(np.argmax(v >= diverge_ratio**2 * c))
        return _said(Diagnosis(
            "diverging", int(steps[i]), int(steps[i]), {"val_loss": float(v[i]), "val_over_chance": float(v[i] / c)},
            ("lower the LR about 10x", "add warmup (e.g. 5-10% of the steps)"),
            f"The validation loss reached {v[i]:.4g} at step {int(steps[i])}, {v[i] / c:.3g}x the chance level "
            f"({c:.4g}, what predicting the label prior scores): the LR is far too high."), len(v), losses)
    if c is not None and c > 0 and len(v) >= COLLAPSE_EVALS and _collapsed(v / c):
        return _said(Diagnosis(
            "diverging", int(steps[0]), int(steps[-1]),
            {"val_loss": float(v[0]), "val_over_chance": float(v[0] / c), "val_level_over_chance": float(v[-1] / c)},
            ("lower the LR about 10x", "add warmup (e.g. 5-10% of the steps)"),
            f"The validation loss started at {v[0]:.4g}, {v[0] / c:.3g}x the chance level ({c:.4g}), and has come "
            "back only to chance since: the model got worse than one that learned nothing, then collapsed to "
            "predicting the label prior. The LR is too high; raising it would be the wrong advice."), len(v), losses)
    if len(v) < MIN_EVALS or float(v.min()) <= loss_floor:
        return None
    d = read(vals)
    if d.verdict in ("diverging", "fluctuating") and float(v[1:].max()) > float(v[0]):
        return _said(d, len(v), losses)
    z = np.log(np.maximum(v, TINY))
    if d.verdict == "flat" and swing(z) <= VAL_SWING:
        return _said(d, len(v), losses)
    return None


def _collapsed(r: np.ndarray) -> bool:
    """Validation losses over chance ``r``: the first :data:`ABOVE_CHANCE` times chance or more, none
    clearly below it (0.9), the last two within 10% of it."""
    return bool(r[0] >= ABOVE_CHANCE and r.min() >= 1 - CHANCE_BAND and np.all(np.abs(r[-2:] - 1) <= CHANCE_BAND))


def _said(d: Diagnosis, evals: int, losses: int) -> Diagnosis:
    """``d`` saying that it was read from ``evals`` validation losses, the log holding ``losses`` training losses."""
    held = "no training loss" if losses == 0 else f"only {losses} training loss" + ("es" if losses > 1 else "")
    head = f"Read from the validation loss ({evals} evaluations; the log holds {held}): "
    message = head + d.message.replace(" logged losses (steps", " evaluations (steps").replace(
        " The log starts at step", " The evaluations start at step")
    return replace(d, message=message, evidence={**d.evidence, "validation_evaluations": float(evals)})

