r"""Pruners: the doctor (stop a diverging trial at once), behind-the-best, the budget, and a chain.

Optuna asks a pruner after every ``trial.report(value, step)``. lrkit adds what Optuna does not
know:

* :class:`DoctorPruner` feeds the reported values to :class:`lrkit.Doctor` and prunes the moment
  a value is NaN/inf or the doctor says ``diverging``/``nan``; the trial is marked diverged, so
  the ``lrkit`` strategy never goes above that LR again. :class:`DivergenceWatch` does the same
  with the *training* loss of every step, for objectives that have it.
* :class:`BehindBestPruner` prunes a trial that, after a fraction :math:`f` of the run, is worse
  than the best finished trial at the same step by more than a margin :math:`m`
  (:math:`v_t > r_t + m\,|r_t|` for minimisation; :math:`r_t` = the best trial's value at the
  latest step :math:`\le t`) and is not closing that gap: a lower LR starts slower.
* :class:`BudgetPruner` prunes the trial whose next report would take the study over its budget
  of optimizer steps (finished trials at their cost, running ones at their last reported step).
* :class:`ChainPruner` asks each in turn and remembers who pruned (``reason(number)``).

Optuna's own pruners (``MedianPruner``, ``SuccessiveHalvingPruner``, ``HyperbandPruner``) chain in
unchanged: :func:`make_pruner`.

Example:
    >>> import optuna
    >>> study = optuna.create_study(pruner=DoctorPruner())
    >>> trial = study.ask()
    >>> trial.report(2.0, 1); trial.should_prune()
    False
    >>> trial.report(float("nan"), 2); trial.should_prune()
    True
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

__all__ = ["PRUNERS", "DoctorPruner", "DivergenceWatch", "BehindBestPruner", "BudgetPruner", "ChainPruner",
           "make_pruner", "trial_cost"]

PRUNERS = ("auto", "lrkit", "doctor", "median", "halving", "hyperband", "none")
_BAD = ("diverging", "nan")


class DoctorPruner(BasePruner):
    """Prune on a non-finite reported value or the doctor's ``diverging``/``nan`` verdict.

    Args:
        window: the doctor's window over reported values (>= 5; reports are sparse).
    """

    def __init__(self, window: int = 5) -> None:
        from lrkit.doctor import Doctor

        self._window = window
        self._Doctor = Doctor
        self._doctors: dict[int, tuple[Any, int]] = {}  # trial number -> (doctor, last step fed)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        values = sorted(trial.intermediate_values.items())
        if not values:
            return False
        if any(not math.isfinite(v) for _, v in values):
            return True
        doctor, last = self._doctors.get(trial.number, (None, -1))
        if doctor is None:
            doctor = self._Doctor(window=self._window)
        verdict = doctor.diagnosis.verdict if last >= 0 else "healthy"
        for step, value in values:
            if step > last:
                sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
                verdict = doctor.observe(step=int(step), loss=sign * float(value)).verdict
                last = step
        self._doctors[trial.number] = (doctor, last)
        return verdict in _BAD


class DivergenceWatch:
    """Watch a trial's training loss step by step; prune it when the doctor sees it diverge.

    Example:
        >>> import optuna
        >>> trial = optuna.create_study().ask()
        >>> watch = DivergenceWatch(trial)
        >>> watch.observe(0, 2.3, lr=0.1)
        'healthy'
        >>> try:
        ...     watch.observe(1, float("inf"), lr=0.1)
        ... except optuna.TrialPruned as exc:
        ...     print(exc)
        diverged at step 1 (nan)
    """

    def __init__(self, trial: Any, **doctor_kwargs: Any) -> None:
        from lrkit.doctor import Doctor

        self.trial = trial
        self.doctor = Doctor(**doctor_kwargs)

    def observe(self, step: int, loss: float, *, lr: float | None = None) -> str:
        """Feed one training step; raise ``optuna.TrialPruned`` on ``diverging``/``nan``."""
        verdict = self.doctor.observe(step=int(step), loss=float(loss), lr=lr).verdict
        if verdict in _BAD:
            self.trial.set_user_attr("lrkit_diverged", True)
            self.trial.set_user_attr("lrkit_pruned_by", "doctor")
            raise optuna.TrialPruned(f"diverged at step {step} ({verdict})")
        return verdict


class BehindBestPruner(BasePruner):
    r"""Prune a trial that is behind the best finished trial by more than ``margin`` and not catching up.

    From ``fraction`` of ``train_steps`` on, with :math:`g_t = (v_t - r_t)/|r_t|` the relative gap
    to the best trial at the same step (signs flipped for maximisation), the trial is pruned when
    :math:`g_t > m` and :math:`g_t \ge 0.9\,g_{t'}` at the previous report :math:`t'`: a lower LR
    that starts slower but is closing the gap runs on. Where the best trial's reports reach or cross
    zero (a negative log-likelihood, a score around 0) a ratio to :math:`|r_t|` means nothing (any
    difference near 0 is a huge ratio): the gap is measured against the larger of :math:`|r_t|` and
    the span of the best trial's reports, the way its value moved.
    """

    def __init__(self, train_steps: int, *, fraction: float = 0.3, margin: float = 0.2) -> None:
        self.train_steps, self.fraction, self.margin = int(train_steps), float(fraction), float(margin)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        reports = sorted(trial.intermediate_values.items())
        if len(reports) < 2:
            return False
        (s0, v0), (s1, v1) = reports[-2], reports[-1]
        if s1 < self.fraction * self.train_steps or not (math.isfinite(v0) and math.isfinite(v1)):
            return False
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
        if not done:
            return False
        best = min(done, key=lambda t: sign * t.value)
        curve = [v for v in best.intermediate_values.values() if math.isfinite(v)]
        span = max(curve) - min(curve) if curve and min(curve) <= 0 <= max(curve) else 0.0

        def gap(step: int, value: float) -> float | None:
            ref_steps = [s for s in best.intermediate_values if s <= step]
            if not ref_steps:
                return None
            ref = best.intermediate_values[max(ref_steps)]
            scale = max(abs(ref), span)
            return (sign * value - sign * ref) / scale if scale > 0 else None

        g0, g1 = gap(s0, v0), gap(s1, v1)
        if g1 is None or g1 <= self.margin:
            return False
        return g0 is None or g1 >= 0.9 * g0


def trial_cost(trial: FrozenTrial, train_steps: int) -> int:
    """Optimizer steps a trial spent: ``train_steps`` when complete, else its last reported step."""
    if trial.state == TrialState.COMPLETE:
        return int(train_steps)
    return int(max(trial.intermediate_values, default=0))


class BudgetPruner(BasePruner):
    """Prune the trial whose steps would take the study past ``limit_steps``.

    ``spent(study)`` returns the steps already spent by other trials (and the prior).
    """

    def __init__(self, limit_steps: float, spent: Callable[[optuna.Study, int], float]) -> None:
        self.limit_steps = float(limit_steps)
        self._spent = spent

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        steps = sorted(trial.intermediate_values)
        if not steps:
            return False
        mine = steps[-1]
        gap = mine - steps[-2] if len(steps) > 1 else mine  # the next report comes about this much later
        return self._spent(study, trial.number) + mine + gap > self.limit_steps


class ChainPruner(BasePruner):
    """Ask ``(name, pruner)`` pairs in order; the first that prunes wins and is remembered."""

    def __init__(self, pruners: Sequence[tuple[str, BasePruner]]) -> None:
        self.pruners = list(pruners)
        self._reasons: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        for name, pruner in self.pruners:
            if pruner.prune(study, trial):
                self._reasons[trial.number] = name
                return True
        return False

    def reason(self, number: int) -> str | None:
        """Name of the pruner that pruned trial ``number`` in this process, if any."""
        return self._reasons.get(number)


def make_pruner(name: Any, strategy: str, *, train_steps: int | None) -> list[tuple[str, BasePruner]]:
    """The ``(name, pruner)`` list for a pruner name (see :data:`PRUNERS`) or an Optuna pruner.

    ``"auto"``: the doctor for every strategy, plus behind-the-best for ``lrkit`` (when
    ``train_steps`` is known) and Optuna's default ``MedianPruner`` for ``tpe``.
    """
    if isinstance(name, BasePruner):
        return [("optuna", name)]
    if name not in PRUNERS:
        raise ValueError(f"pruner must be one of {', '.join(PRUNERS)} or an optuna pruner, got {name!r}")
    if name == "auto":
        name = {"lrkit": "lrkit", "tpe": "median"}.get(strategy, "doctor")
    if name == "none":
        return [("none", NopPruner())]
    chain: list[tuple[str, BasePruner]] = [("doctor", DoctorPruner())]
    if name == "lrkit" and train_steps:
        chain.append(("behind_best", BehindBestPruner(train_steps)))
    elif name == "median":
        chain.append(("median", MedianPruner()))
    elif name == "halving":
        chain.append(("halving", SuccessiveHalvingPruner()))
    elif name == "hyperband":
        chain.append(("hyperband", HyperbandPruner(max_resource=train_steps or "auto")))
    return chain
