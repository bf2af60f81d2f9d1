"""``diagnose(log)``: run the :class:`~lrkit.doctor.core.Doctor` over a whole log."""
from __future__ import annotations

import math
from typing import Any

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.logs import LogRecords, read_log

__all__ = ["diagnose", "default_window", "run_doctor"]


def default_window(n: int) -> int:
    """The ``window`` :func:`diagnose` uses for a log of ``n`` loss values: ``clip(n // 8, 5, 50)``.

    Per-step logs (hundreds of points) get the Doctor's default 50; an epoch log of 40 points
    gets 5, so that its checks can run at all.

    Example:
        >>> default_window(1000), default_window(40), default_window(10)
        (50, 5, 5)
    """
    return int(min(50, max(5, n // 8)))


def run_doctor(records: LogRecords, doctor: Doctor) -> Doctor:
    """Feed every row that has a loss to ``doctor`` (with ``lr``, ``grad_norm``, ``val_loss``
    and the other metrics of the same row) and return it.

    A row without a loss (a validation row logged at a step of its own) is not lost: its
    ``val_loss`` and metrics go with the next row that has a loss (the row's own values win).
    ``lr`` and ``grad_norm`` describe a training step and are not carried.

    Example:
        >>> recs = read_log({"step": [0, 1, 2], "loss": [2.0, None, 1.5], "val_loss": [None, float("nan"), None]})
        >>> d = run_doctor(recs, Doctor(window=5)).diagnosis
        >>> d.verdict, d.step   # the NaN validation loss of step 1 is seen with the loss of step 2
        ('nan', 2)
    """
    has_loss = records.has("loss")
    cols = {n: records.columns[n] for n in records.names if n not in ("step", "loss")}
    masks = {n: records.has(n) for n in cols}
    steps = records.step
    loss = records.loss
    special = ("lr", "grad_norm", "val_loss")
    carried: dict[str, float] = {}  # val_loss and metrics of rows without a loss, for the next one
    for i in range(len(records)):
        if not has_loss[i]:
            carried.update({n: float(cols[n][i]) for n in cols if n not in ("lr", "grad_norm") and masks[n][i]})
            continue
        row = {n: float(cols[n][i]) for n in cols if masks[n][i]}
        values = {**carried, **row}
        carried = {}
        kw: dict[str, Any] = {n: values[n] for n in special if n in values}
        metrics = {n: v for n, v in values.items() if n not in special}
        doctor.observe(int(steps[i]), float(loss[i]), metrics=metrics or None, **kw)
    return doctor


def diagnose(log: Any, **doctor_kwargs: Any) -> Diagnosis:
    """Diagnose a whole training log: the first, most severe problem with its onset step.

    The log is read with :func:`~lrkit.doctor.logs.read_log` and fed row by row to a
    :class:`~lrkit.doctor.core.Doctor` (``window`` defaults to :func:`default_window` of the
    log's length). The overall verdict, from the doctor's history and its final verdict:

    1. ``nan`` if any loss/gradient norm was non-finite (its first step);
    2. ``diverging`` if the run *ends* diverging (the first diverging detection), unless its
       loss was already fluctuating before this last episode began (then ``fluctuating``);
    3. ``fluctuating`` if its loss was ever fluctuating (spikes that came back; a spike that
       lasted long enough to be called diverging for a while and then recovered is part of that);
    4. ``diverging`` if it ever diverged and recovered without further oscillation;
    5. ``fluctuating`` if a validation loss or a metric ever swung up and down without progress
       (the training loss takes precedence over the metrics; a swinging metric over a flat loss);
    6. ``flat`` only if it is still flat at its end (a slow start that then decreased is fine);
    7. otherwise the final (healthy) diagnosis.

    Args:
        log: a path (str/Path) to a CSV/JSONL/JSON/TensorBoard file or directory, a Keras
            ``History`` or its ``.history`` dict, a list of dicts, a dict of lists, or
            :class:`~lrkit.doctor.logs.LogRecords`.
        **doctor_kwargs: thresholds passed to :class:`~lrkit.doctor.core.Doctor` (e.g.
            ``metric_modes={"val_f1": "max"}``).

    Example:
        >>> losses = [2.3 * 0.9 ** t for t in range(30)] + [0.1 * 2 ** t for t in range(10)]
        >>> d = diagnose({"epoch": list(range(40)), "loss": losses, "lr": [0.1] * 40})
        >>> d.verdict, abs(d.step - 30) <= 1   # lowest at epoch 30, rising from epoch 31
        ('diverging', True)

    A validation metric that swings without progress is ``fluctuating``, even under a smooth loss:

        >>> d = diagnose({"loss": [2.3 * 0.95 ** t for t in range(50)], "accuracy": [0.1, 0.9] * 25})
        >>> d.verdict, d.evidence["oscillating_metric:accuracy"] > 1
        ('fluctuating', True)
    """
    records = read_log(log)
    n = int(records.has("loss").sum())
    kwargs = dict(doctor_kwargs)
    kwargs.setdefault("window", default_window(n))
    doctor = run_doctor(records, Doctor(**kwargs))
    return overall(doctor)


def overall(doctor: Doctor) -> Diagnosis:
    """The overall verdict of a finished run (see :func:`diagnose`)."""
    hist = doctor.history
    final = doctor.diagnosis

    def first(verdict: str) -> Diagnosis | None:
        return next((h for h in hist if h.verdict == verdict), None)

    for verdict in ("nan",):
        if first(verdict) is not None:
            return first(verdict)
    fluctuating = [h for h in hist if h.verdict == "fluctuating"]
    flu = next((h for h in fluctuating if "metric_amplitude" not in h.evidence), None)  # of the loss
    metric_flu = next((h for h in fluctuating if "metric_amplitude" in h.evidence), None)
    if final.verdict == "diverging":  # ended diverged (or stuck after blowing up) ...
        if flu is not None and flu.detected_at < final.step:  # ... unless it was a spike among many
            return flu
        return first("diverging") or final
    if flu is not None:  # spikes that came back: fluctuating, even if one spike lasted long
        return flu  # enough to be called diverging for a while
    if first("diverging") is not None:
        return first("diverging")
    if metric_flu is not None:  # outranks a flat loss: a too-low LR cannot make a metric swing
        return metric_flu
    return final
