"""``diagnose(log)``: run the :class:`~lrkit.doctor.core.Doctor` over a whole log."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lrkit.doctor._coarse import rows_per_point
from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.first_row import blown_first_row
from lrkit.doctor.logs import LogRecords, find_runs, read_log
from lrkit.doctor.val_only import MIN_EVALS, judge_validation

__all__ = ["diagnose", "diagnose_runs", "default_window", "doctor_settings", "settings_for_rows", "run_doctor"]

Progress = Callable[[str, float], None]

def default_window(n: int) -> int:
    """The ``window`` :func:`diagnose` uses for a log of ``n`` loss values: ``clip(n // 8, 5, 50)``.

    Per-step logs (hundreds of points) get the Doctor's default 50; an epoch log of 40 points
    gets 5, so that its checks can run at all.

    Example:
        >>> default_window(1000), default_window(40), default_window(10)
        (50, 5, 5)
    """
    return int(min(50, max(5, n // 8)))


def run_doctor(records: LogRecords, doctor: Doctor, progress: Progress | None = None, *,
               rows_per_point: int = 1) -> Doctor:
    """Feed every row that has a loss to ``doctor`` (with ``lr``, ``grad_norm``, ``val_loss``
    and the other metrics of the same row) and return it.

    A row without a loss (a validation row logged at a step of its own) is not lost: its
    ``val_loss`` and metrics go with the next row that has a loss, or with the last one when none
    follows (a final evaluation, logged after the last training loss); the row's own values win.
    ``lr`` and ``grad_norm`` describe a training step and are not carried. The columns are
    lined up with NumPy first, so that the loop does no per-row bookkeeping; ``progress`` is
    called as ``progress("diagnosing", fraction)`` about a hundred times. With
    ``rows_per_point = k > 1`` blocks of ``k`` rows are fed as one point each
    (:mod:`lrkit.doctor._coarse`: very long logs; non-finite values stay exact).

    Example:
        >>> recs = read_log({"step": [0, 1, 2], "loss": [2.0, None, 1.5], "val_loss": [None, float("nan"), None]})
        >>> d = run_doctor(recs, Doctor(window=5)).diagnosis
        >>> d.verdict, d.step   # the NaN validation loss of step 1 is seen with the loss of step 2
        ('nan', 2)
    """
    has_loss = records.has("loss")
    rows = np.nonzero(has_loss)[0]
    n = len(rows)
    # every row has a loss (the usual per-step log): views of the columns, not copies of them
    pick = slice(None) if n == len(has_loss) else rows
    steps = records.step[pick].astype(np.int64, copy=False)
    loss = records.loss[pick].astype(np.float64, copy=False)
    special = ("lr", "grad_norm", "val_loss")
    aligned: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in records.names:
        if name in ("step", "loss"):
            continue
        vals, mask = records.columns[name], records.has(name)
        if name in ("lr", "grad_norm"):
            v, m = vals[pick].astype(np.float64, copy=False), mask[pick]
        else:  # a value on a row without a loss goes with the next row that has one
            v, m = np.full(n, np.nan), np.zeros(n, dtype=bool)
            src = np.nonzero(mask)[0] if n else np.zeros(0, dtype=np.int64)
            # after the last loss row (a final evaluation, logged after the last training loss): with it
            target = np.minimum(np.searchsorted(rows, src), n - 1)
            own = has_loss[src]
            for sel in (~own, own):  # carried values first, the row's own value wins
                v[target[sel]] = vals[src[sel]]
                m[target[sel]] = True
        if m.any():
            aligned[name] = (v, m)
    if "lr" in aligned:  # a logged LR that is not a number (a NaN LR) says nothing about the LR
        vals, mask = aligned["lr"]
        with np.errstate(invalid="ignore"):
            aligned["lr"] = (vals, mask & np.isfinite(vals) & (vals >= 0))
    if "grad_norm" in aligned:
        aligned["grad_norm"] = skipped_overflows(*aligned["grad_norm"], loss)
    if hasattr(doctor, "observe_many"):  # the vectorised offline pass, in chunks for the progress bar
        if rows_per_point > 1:
            _feed_coarse(doctor, steps, loss, aligned, progress, rows_per_point)
        else:
            _feed_many(doctor, steps, loss, aligned, progress)
        return doctor
    kw_cols = {k: aligned.pop(k) for k in special if k in aligned}
    metric_cols = list(aligned.items())
    every = max(1, n // 100)
    for i in range(n):
        kw: dict[str, Any] = {k: float(c[0][i]) for k, c in kw_cols.items() if c[1][i]}
        metrics = {k: float(c[0][i]) for k, c in metric_cols if c[1][i]} if metric_cols else None
        doctor.observe(int(steps[i]), float(loss[i]), metrics=metrics or None, **kw)
        if progress is not None and i % every == 0:
            progress("diagnosing", i / n)
    if progress is not None:
        progress("diagnosing", 1.0)
    return doctor


def skipped_overflows(gn: np.ndarray, present: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A logged gradient-norm column (values, present) with the rows a loss scaler skipped left
    out: a non-finite norm beside a finite loss that a finite norm follows later in the log.

    Under fp16 mixed precision a ``GradScaler`` skips every step whose scaled gradients overflow
    and halves its scale (the first steps of a large model, then about once per 2000 steps): the
    Hugging Face ``Trainer`` logs ``grad_norm`` ``nan`` or ``inf`` there, and no weight changed.
    Without a scaler a non-finite gradient is applied: the weights go non-finite, and so does every
    gradient norm after it (the ``Trainer``'s default ``logging_nan_inf_filter`` may keep the logged
    loss finite), so those rows stay. Live, the callbacks ask the scaler itself
    (:mod:`lrkit.integrations.torch.amp`).

    Example:
        >>> gn = np.array([np.nan, np.inf, 0.8, 0.7, np.nan, np.nan])
        >>> skipped_overflows(gn, np.ones(6, bool), np.full(6, 2.0))[1]   # the last two: never finite again
        array([False, False,  True,  True,  True,  True])
    """
    with np.errstate(invalid="ignore"):
        finite = present & np.isfinite(gn)
    bad = present & ~finite
    if not bad.any():
        return gn, present
    finite_later = np.zeros(len(gn), dtype=bool)
    finite_later[:-1] = np.logical_or.accumulate(finite[::-1])[::-1][1:]
    return gn, present & ~(bad & finite_later & np.isfinite(loss))


def _feed_coarse(doctor: Doctor, steps: np.ndarray, loss: np.ndarray, cols: dict[str, tuple[np.ndarray, np.ndarray]],
                 progress: Progress | None, k: int) -> None:
    """Blocks of ``k`` rows up to the block of the first non-finite value, then that block's rows one
    by one up to it (the ``nan`` verdict is sticky: what follows cannot change it)."""
    from lrkit.doctor._coarse import coarsen, first_non_finite

    bad = first_non_finite(loss, cols)
    end = len(steps) if bad is None else (bad // k) * k
    if end:
        c_steps, c_loss, c_cols = coarsen(steps[:end], loss[:end], {n: (v[:end], m[:end]) for n, (v, m) in cols.items()}, k)
        _feed_many(doctor, c_steps, c_loss, c_cols, progress)
    if bad is not None:
        _feed_many(doctor, steps[end:bad + 1], loss[end:bad + 1],
                   {n: (v[end:bad + 1], m[end:bad + 1]) for n, (v, m) in cols.items()}, None)
    if progress is not None:
        progress("diagnosing", 1.0)


def _feed_many(doctor: Doctor, steps: np.ndarray, loss: np.ndarray,
               aligned: dict[str, tuple[np.ndarray, np.ndarray]], progress: Progress | None) -> None:
    """:meth:`Doctor.observe_many` over the aligned columns, ``chunk`` rows at a time."""
    cols = {k: (np.asarray(v, dtype=np.float64), np.asarray(m, dtype=bool)) for k, (v, m) in aligned.items()}
    n = len(steps)
    chunk = max(50_000, n // 20)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        kw = {k: cols[k][0][a:b] for k in ("lr", "grad_norm", "val_loss") if k in cols}
        metrics = {k: v[a:b] for k, (v, _) in cols.items() if k not in kw}
        present = {k: m[a:b] for k, (_, m) in cols.items()}
        doctor.observe_many(steps[a:b], loss[a:b], metrics=metrics or None, present=present or None, **kw)
        if progress is not None:
            progress("diagnosing", b / n)


def doctor_settings(records: LogRecords) -> dict[str, Any]:
    """The :class:`Doctor` parameters :func:`diagnose` uses for this log.

    A per-step log of 50 or more losses gets ``window=default_window(n)`` and the Doctor's other
    defaults. A short log -- an epoch log (Keras' ``CSVLogger``, one row per epoch), a Trainer
    logging every ``logging_steps``, Lightning's default ``log_every_n_steps=50`` -- holds a
    few dozen rows, each already an average (or a sparse sample) of many steps: it is judged
    as such, row by row: ``window=5`` (the smallest), ``short=1`` (a row is a level, no running
    median), ``patience=2``, ``check_every=1`` and ``flat_steps=5`` (five rows without progress
    are flat). A log whose model configuration gives its chance level
    (:attr:`~lrkit.doctor.logs.LogRecords.chance_loss`) passes it as ``chance_loss``.

    Example:
        >>> doctor_settings(read_log({"epoch": list(range(12)), "loss": [1.0] * 12}))
        {'window': 5, 'short': 1, 'patience': 2, 'check_every': 1, 'flat_steps': 5}
        >>> doctor_settings(read_log({"loss": [1.0] * 400}))
        {'window': 50}
    """
    settings = settings_for_rows(int(records.has("loss").sum()))
    if records.chance_loss is not None:  # a Hugging Face config.json beside the log
        settings["chance_loss"] = records.chance_loss
        has = records.has("loss")
        steps, losses = records.columns["step"][has], records.columns["loss"][has]
        if len(steps) and steps[0] <= 1:  # the first optimizer step's loss: the untrained model's
            probe = Doctor(chance_loss=records.chance_loss)
            if probe.untrained_loss(float(losses[0])):  # far above chance: chance is no reference
                del settings["chance_loss"]
    return settings


def settings_for_rows(n: int) -> dict[str, Any]:
    """:func:`doctor_settings` for a log expected to hold ``n`` losses (a live callback that knows
    how many times it will be fed, e.g. a Trainer logging every ``logging_steps``).

    Example:
        >>> settings_for_rows(19)["short"], settings_for_rows(500)
        (1, {'window': 50})
    """
    if n >= 50:
        return {"window": default_window(n)}
    return {"window": 5, "short": 1, "patience": 2, "check_every": 1, "flat_steps": 5}


def diagnose(log: Any, *, loss: str | None = None, lr: str | None = None, val_loss: str | None = None,
             progress: Progress | None = None, exact: bool = False, **doctor_kwargs: Any) -> Diagnosis:
    """Diagnose a whole training log: the first, most severe problem with its onset step.

    The log is read with :func:`~lrkit.doctor.logs.read_log` and fed row by row to a
    :class:`~lrkit.doctor.core.Doctor` configured for the log by :func:`doctor_settings` (a
    short log, e.g. one row per epoch, is judged row by row). The overall verdict, from the
    doctor's history and its final verdict:

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

    One more rule reads a short log (under 50 rows) as a whole: when its first row is at least
    ``diverge_ratio**2`` (4) times the median of the rest and the rest is stuck, spiked or rose
    at once, the run blew up within the first logged interval (:mod:`lrkit.doctor.first_row`):
    ``diverging`` from the first step, whatever the row-by-row verdict (a NaN stays ``nan``).
    And a log with fewer training losses than a judgement takes (a Trainer under its default
    ``logging_steps=500`` keeps one, or none) is read from its validation losses when those say
    more (:mod:`lrkit.doctor.val_only`); the verdict advises logging the training loss more often.

    Args:
        log: a path (str/Path) to a CSV/JSONL/JSON/TensorBoard file or directory, a Keras
            ``History`` or its ``.history`` dict, a list of dicts, a dict of lists, or
            :class:`~lrkit.doctor.logs.LogRecords`.
        loss, lr, val_loss: the column or tag names, when the defaults do not find them
            (see :func:`~lrkit.doctor.logs.read_log`).
        progress: called as ``progress(stage, fraction)`` while reading and diagnosing.
        exact: feed every row even to a log of more than
            :data:`~lrkit.doctor._coarse.MAX_POINTS` (100,000) losses, which is otherwise read in
            blocks of ``k`` rows (:mod:`lrkit.doctor._coarse`: seconds instead of minutes for
            millions of rows; onsets dated to within ``k`` steps, ``evidence["rows_per_point"]``;
            a non-finite value still at its exact step).
        **doctor_kwargs: thresholds passed to :class:`~lrkit.doctor.core.Doctor` (e.g.
            ``metric_modes={"val_f1": "max"}``); they override :func:`doctor_settings`.

    Raises:
        LogFormatError: the log cannot be read, or ``log`` is a directory holding several runs
            (use :func:`diagnose_runs`).

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
    records = read_log(log, loss=loss, lr=lr, val_loss=val_loss, progress=progress)
    kwargs = {**doctor_settings(records), **doctor_kwargs}
    k = 1 if exact else rows_per_point(int(records.has("loss").sum()))
    doctor = run_doctor(records, Doctor(**kwargs), progress=progress, rows_per_point=k)
    d = overall(doctor)
    if k > 1:  # said in the evidence: onsets are dated to within k steps
        d = replace(d, evidence={**d.evidence, "rows_per_point": float(k)})
    blown = blown_first_row(records, doctor)
    if blown is not None and d.verdict != "nan" and not (d.verdict == "diverging" and d.step <= blown.step):
        return blown
    losses, needed = int(records.has("loss").sum()), doctor.observations_needed
    if losses < needed and d.ok:  # too few training losses to judge: what the validation losses say
        read = lambda vals: diagnose(vals, exact=exact, **doctor_kwargs)  # noqa: E731
        judged = judge_validation(records, read, diverge_ratio=doctor.config["diverge_ratio"],
                                  chance=kwargs.get("chance_loss"), loss_floor=doctor.config["loss_floor"])
        if judged is not None:
            return replace(judged, advice=judged.advice + _sparse_advice(d, losses, needed).advice)
        if losses == 0:
            evals = int(records.has("val_loss").sum())
            d = replace(d, message=f"no training loss in this log; its {evals} validation losses show no problem"
                        + ("" if evals >= MIN_EVALS else f" (judging more than a blow-up takes {MIN_EVALS})"))
    return _sparse_advice(d, losses, needed)


def _sparse_advice(d: Diagnosis, losses: int, needed: int) -> Diagnosis:
    """A healthy verdict on a log with too few training losses to judge says how to log more.

    Example:
        >>> diagnose({"step": [500, 1000], "loss": [2.1, 1.7]}).advice[0].startswith("log the training loss more often")
        True
    """
    if d.verdict != "healthy" or losses >= needed or d.advice:
        return d
    tip = (f"log the training loss more often: this log holds {losses} and judging a flat or fluctuating run "
           f"takes {needed} (a Hugging Face Trainer logs every logging_steps=500 steps by default, Lightning every "
           "log_every_n_steps=50, Keras once per epoch; lrkit's callbacks read every step)")
    return replace(d, advice=(tip,))


def diagnose_runs(path: str | Path, *, loss: str | None = None, lr: str | None = None, val_loss: str | None = None,
                  **doctor_kwargs: Any) -> dict[str, Diagnosis | Exception]:
    """One :func:`diagnose` per run of a directory (:func:`~lrkit.doctor.logs.find_runs`), by name.

    A run that cannot be read gets its :class:`~lrkit.doctor.logs.LogFormatError` in place of a
    diagnosis (the other runs are still diagnosed); a file gives a one-entry dict.

    Raises:
        LogFormatError: a directory with no run in it.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.csv").write_text("step,loss\\n" + "".join(f"{t},{2 * 0.9 ** t}\\n" for t in range(60)))
        >>> _ = (d / "b.csv").write_text("step,loss\\n" + "".join(f"{t},{'nan' if t == 30 else 2.0}\\n" for t in range(60)))
        >>> {name: d.verdict for name, d in diagnose_runs(d).items()}
        {'a.csv': 'healthy', 'b.csv': 'nan'}
    """
    from lrkit.doctor.logs import LogFormatError, _no_runs, read_run
    from lrkit.doctor.mlflow_store import store_target

    p = Path(path)
    if not (store_target(path) or p.is_dir()):
        return {str(p): diagnose(p, loss=loss, lr=lr, val_loss=val_loss, **doctor_kwargs)}
    runs = find_runs(path)
    if not runs:
        raise LogFormatError(_no_runs(path))
    out: dict[str, Diagnosis | Exception] = {}
    for run in runs:
        try:
            records = read_run(run, loss=loss, lr=lr, val_loss=val_loss)
        except LogFormatError as exc:
            out[run.name] = exc
            continue
        out[run.name] = diagnose(records, **doctor_kwargs)
    return out


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
