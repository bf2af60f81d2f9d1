r"""The LR doctor: an online diagnosis of a training run from its loss (and LR, gradient norm,
validation loss and metrics).

A :class:`Doctor` is fed one observation per step (``observe(step, loss, lr=..., grad_norm=...)``)
and returns a :class:`Diagnosis` after each one. It is a composition of small *signs*
(:mod:`lrkit.doctor.signs`, one file each), listed in :meth:`Doctor.signs` in rank order; each
keeps its own state and raises a finding; the most severe finding is the verdict (ties: the
first sign in the list). Verdicts, most severe first:

``nan``
    the loss, the gradient norm or the validation loss is not finite
    (:mod:`~lrkit.doctor.signs.nonfinite`). Immediate and sticky.
``diverging``
    the loss level has risen well above its best (:mod:`~lrkit.doctor.signs.diverging`), the
    gradient norm exploded (:mod:`~lrkit.doctor.signs.gradient`), the loss blew up in the first
    steps (:mod:`~lrkit.doctor.signs.early_blowup`), it is stuck after an unstable start
    (dead units, :mod:`~lrkit.doctor.signs.flat`), it collapsed to chance level after a
    blow-up (with ``chance_loss``, :mod:`~lrkit.doctor.signs.chance`), or the network died: every
    input now gets the same output (the metric ``output_spread``, :mod:`~lrkit.doctor.signs.dead`).
``fluctuating``
    the loss keeps jumping far above its best and coming back, without net progress
    (:mod:`~lrkit.doctor.signs.fluctuating`); or a validation loss or a metric (accuracy, ...)
    swings up and down between evaluations without progress (:mod:`~lrkit.doctor.signs.metric_swing`).
``flat``
    after a long stretch, the loss has not really started to decrease (LR too low;
    :mod:`~lrkit.doctor.signs.flat`).
``healthy``
    none of the above.

Everything is computed on the log of the loss above its floor, :math:`y_t = \log(\ell_t - f)`
(``loss_floor`` :math:`f`, 0 for the usual losses), so that "rising by a factor" and the noise
of a converging run are on one scale; the shared statistics (level, best, noise) are described
in :class:`~lrkit.doctor.signs.Track`, each rule in the docstring of its sign.

Cost: ring buffers of length ``W`` (and ``M`` per metric); a step costs a median of ``s``
numbers, and every ``check_every`` steps a few NumPy passes over ``W`` numbers (and ``M`` per
metric that got a value): O(1) per step, independent of the run's length.

Example:
    >>> doc = Doctor(window=20)
    >>> for step in range(200):
    ...     d = doc.observe(step, 2.3 * 0.98 ** step + 0.01, lr=0.1)
    >>> d.verdict
    'healthy'
    >>> d = doc.observe(200, float("nan"), lr=0.1)
    >>> d.verdict, d.step
    ('nan', 200)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from lrkit.doctor.signs import (
    AtChance,
    BehindReference,
    Converged,
    Dead,
    EarlyBlowUp,
    Finding,
    Flat,
    GradientExplosion,
    LossRise,
    LossSpikes,
    MetricSwing,
    NonFinite,
    Observation,
    Overfitting,
    RaisedAndHeld,
    Sign,
    Track,
)
from lrkit.doctor.signs.chance import ABOVE as ABOVE_CHANCE
from lrkit.doctor.signs.metric_swing import METRIC_MIN_OBS as _METRIC_MIN_OBS
from lrkit.doctor._inputs import FLOOR_ADVICE, _chance_ok, _finite_number, _table_rows, reference_run_ok

__all__ = ["VERDICTS", "INFORMATIONAL", "SEVERITY", "Diagnosis", "Doctor"]

VERDICTS = ("healthy", "flat", "fluctuating", "diverging", "nan")
#: informational verdicts: not a problem of the LR, never a rollback (``Diagnosis.ok`` is True)
INFORMATIONAL = ("converged", "overfitting")
#: verdict -> severity rank (higher is worse; the informational verdicts rank with healthy).
SEVERITY = {**{v: i for i, v in enumerate(VERDICTS)}, **{v: 0 for v in INFORMATIONAL}}


@dataclass(frozen=True)
class Diagnosis:
    """The doctor's verdict on a run, with the numbers behind it and what to do.

    Attributes:
        verdict: one of :data:`VERDICTS` (``healthy`` and the LR problems) or
            :data:`INFORMATIONAL` (``converged``, ``overfitting``: shown when nothing worse is).
        step: the step where the problem began (onset); ``None`` if healthy.
        detected_at: the step at which it was detected; ``None`` if healthy.
        evidence: the numbers behind the verdict (e.g. ``loss_ratio_to_best``, ``noise_sigma``,
            ``spike_fraction``, ``relative_progress``, ``grad_norm_ratio``, ``lr``).
        advice: concrete remedies, most important first.
        message: one human sentence.
        notes: the informational verdicts raised now, even when a problem outranks them
            (``("converged",)``, ``("overfitting",)``, both or none); their evidence
            (``converged_*``, ``overfit_*``) is in ``evidence``.

    Example:
        >>> Diagnosis("healthy", None, None, {}, (), "ok").to_dict()["verdict"]
        'healthy'
        >>> d = Diagnosis("fluctuating", 3, 9, {}, (), "", notes=("converged",))
        >>> d.ok, d.converged, d.overfitting
        (False, True, False)
    """

    verdict: str
    step: int | None
    detected_at: int | None
    evidence: dict[str, float] = field(default_factory=dict)
    advice: tuple[str, ...] = ()
    message: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS + INFORMATIONAL:
            raise ValueError(f"verdict must be one of {VERDICTS + INFORMATIONAL}, got {self.verdict!r}")
        if any(n not in INFORMATIONAL for n in self.notes):
            raise ValueError(f"notes must be among {INFORMATIONAL}, got {self.notes!r}")

    @property
    def ok(self) -> bool:
        """``True`` when there is no LR problem: the verdict is ``healthy``, ``converged`` or ``overfitting``."""
        return self.verdict == "healthy" or self.verdict in INFORMATIONAL

    @property
    def converged(self) -> bool:
        """The monitored validation metric stopped improving (the early-stopping signal)."""
        return "converged" in self.notes

    @property
    def overfitting(self) -> bool:
        """The validation loss rises while the training loss falls."""
        return "overfitting" in self.notes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys ``verdict, step, detected_at, evidence, advice, message``
        (and ``notes`` when there are any).

        Non-finite evidence values become ``None`` (JSON has no NaN).
        """
        ev = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in self.evidence.items()}
        out = {
            "verdict": self.verdict,
            "step": self.step,
            "detected_at": self.detected_at,
            "evidence": ev,
            "advice": list(self.advice),
            "message": self.message,
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def __str__(self) -> str:
        if self.verdict == "healthy":
            return f"healthy: {self.message}"
        tips = "; ".join(self.advice)
        return f"{self.verdict} (from step {self.step}, detected at step {self.detected_at}): {self.message}" + (
            f" Advice: {tips}." if tips else ""
        )



class Doctor:
    r"""Online LR diagnosis from one observation per step (pure Python + NumPy).

    Args:
        window: ``W``, the length of the window of recent steps used for noise, spikes and
            progress (default 50; for epoch-level logs of a few dozen points use 5-10). >= 5.
        short: ``s``, the length of the running median that defines the loss level
            (default ``max(3, W // 5)``). 1 <= s <= W.
        diverge_ratio: :math:`\rho`, the factor above the best level that counts as diverging
            (default 2.0). > 1.
        noise_z: :math:`z`, how many noise standard deviations a rise must exceed on top of
            ``diverge_ratio`` (default 8.0: the best level is a minimum of noisy medians,
            biased low by several of their standard deviations on long runs). >= 0.
        min_rise: :math:`r`, the smallest rise, as a fraction of the initial loss level, that
            counts as diverging or as a spike (default 0.1). >= 0.
        patience: consecutive steps the diverging condition must hold (default 3). >= 1.
        grad_ratio: a median gradient norm of the last ``s`` steps this many times its running
            reference (the median of the window before them) is an explosion, when the loss is
            getting worse too (default 10.0). > 1.
        spike_frac: fraction of spikes in the window that makes a run fluctuating (default 0.1).
            In (0, 1].
        progress_tol: a window whose level dropped by less than this fraction made no progress
            (default 0.1). >= 0.
        flat_tol: a run whose level moved less than this fraction of its initial level is flat
            (default 0.15). In (0, 0.5).
        flat_steps: observations needed before ``flat`` can be reported (default ``4 * W``). >= W.
        check_every: the window checks (fluctuating, flat, noise) run every this many steps
            (default ``max(1, W // 5)``). >= 1.
        loss_floor: a known lower bound of the loss (default 0.0); the doctor works on
            :math:`\log(\ell - f)`. A loss below it raises ``ValueError``.
        metric_modes: ``{"name": "max" | "min" | "ignore"}`` for the validation loss
            (``"val_loss"``) and the metrics passed to :meth:`observe`: overrides the rule by
            name (``loss``, ``error``, ``perplexity``, ``mse``, ``mae`` in the name: ``"min"``,
            lower is better; bookkeeping names such as ``epoch`` or ``runtime``: ``"ignore"``;
            otherwise ``"max"``). Default: no overrides.
        metric_window: ``M``, the number of recent evaluations of a metric judged for
            fluctuation (default 10). >= 6.
        metric_swing: the smallest swing that counts for a metric whose values lie in [0, 1]
            (accuracy, error rate), in its own units (default 0.1: 10 points). In (0, 1].
        metric_rel_swing: the smallest swing that counts for other metrics (a validation loss),
            as a relative change (default 0.3: by a factor 1.3). > 0.
        converge_monitor: the validation metric whose stall is ``converged``: ``None`` (default)
            for the validation loss (``val_loss``, or a metric named ``eval_loss``,
            ``valid_loss``, ``val/loss`` ...), or any name passed in ``metrics`` (direction as
            for the metrics).
        converge_patience: evaluations of ``converge_monitor`` without improvement before
            ``converged``, as Keras ``EarlyStopping(patience=...)`` counts epochs (default 10). >= 0.
        converge_min_delta: the smallest absolute change that counts as an improvement, as
            Keras ``EarlyStopping(min_delta=...)`` (default 0.0). >= 0.
        overfit_tol: ``overfitting`` when the validation loss sits this fraction above its best
            while the training loss keeps falling (default 0.1). > 0.
        chance_loss: the loss of a model that learned nothing (predicts the label prior): for
            cross-entropy over ``K`` balanced classes ``ln K``. ``None`` (default): unknown. Given,
            a loss that blew up above it and came back only to it is ``diverging``
            (:mod:`~lrkit.doctor.signs.chance`), not healthy or flat.
        lr_ceiling: an LR known to be too high for this run (e.g. well above what the LR finder
            verified). A rise of the loss that came with a schedule's LR rise is normally excused
            until the schedule decays (:mod:`~lrkit.doctor.signs.diverging`); not once the LR has
            gone above this. ``None`` (default): no such knowledge.
        reference_run: ``(steps, loss, kind)``: from this model's initial state, ``steps`` steps at an
            LR below ``lr_ceiling`` reached ``loss`` (``kind`` ``"val"``: a validation loss;
            ``"train"``: a training-loss level), e.g. the LR finder's best candidate. With
            ``lr_ceiling``, a run that trained above the ceiling for 4x those steps and is still
            25% behind it is ``diverging`` (:mod:`~lrkit.doctor.signs.behind`). ``None`` (default).

    Informational verdicts (``converged``, ``overfitting``) never outrank a problem and are not
    problems of the LR (``Diagnosis.ok`` is true): they are listed in ``Diagnosis.notes`` (and
    ``Diagnosis.converged`` / ``Diagnosis.overfitting``) even when a problem is the verdict, so
    that a callback can stop training or lower the LR on them.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> doc = Doctor()
        >>> for t in range(300):   # healthy for 150 steps, then the loss grows 5% a step
        ...     loss = 2.0 * np.exp(-t / 40) + 0.1 if t < 150 else 0.12 * 1.05 ** (t - 150)
        ...     d = doc.observe(t, loss * np.exp(0.05 * rng.standard_normal()), lr=0.5)
        >>> first = doc.history[0]
        >>> first.verdict, 140 <= first.step <= 160
        ('diverging', True)
        >>> first.advice[0]
        'lower the LR about 10x, from 0.5 to 0.05'

    A smooth training loss does not hide a validation accuracy that jumps between evaluations:

        >>> doc = Doctor(window=6)
        >>> for epoch in range(12):
        ...     d = doc.observe(epoch, 2.0 * 0.8 ** epoch, lr=0.3,
        ...                     metrics={"val_accuracy": 0.2 if epoch % 2 else 0.9})
        >>> d.verdict, d.evidence["oscillating_metric:val_accuracy"] > 1, d.advice[0]
        ('fluctuating', True, 'lower the LR about 3x, from 0.3 to 0.1')
    """

    def __init__(
        self,
        *,
        window: int = 50,
        short: int | None = None,
        diverge_ratio: float = 2.0,
        noise_z: float = 8.0,
        min_rise: float = 0.1,
        patience: int = 3,
        grad_ratio: float = 10.0,
        spike_frac: float = 0.1,
        progress_tol: float = 0.1,
        flat_tol: float = 0.15,
        flat_steps: int | None = None,
        check_every: int | None = None,
        loss_floor: float = 0.0,
        metric_modes: Mapping[str, str] | None = None,
        metric_window: int = 10,
        metric_swing: float = 0.1,
        metric_rel_swing: float = 0.3,
        converge_monitor: str | None = None,
        converge_patience: int = 10,
        converge_min_delta: float = 0.0,
        overfit_tol: float = 0.1,
        chance_loss: float | None = None,
        lr_ceiling: float | None = None,
        reference_run: tuple[int, float, str] | None = None,
    ) -> None:
        def need(name: str, value: Any, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"Doctor: {name} must be {allowed}, got {value!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        is_num = _finite_number

        need("window", window, is_int(window) and window >= 5, "an int >= 5")
        window = int(window)
        if short is None:
            short = max(3, window // 5)
        need("short", short, is_int(short) and 1 <= short <= window, f"an int in [1, window={window}]")
        need("diverge_ratio", diverge_ratio, is_num(diverge_ratio) and diverge_ratio > 1, "a number > 1")
        need("noise_z", noise_z, is_num(noise_z) and noise_z >= 0, "a number >= 0")
        need("min_rise", min_rise, is_num(min_rise) and min_rise >= 0, "a number >= 0")
        need("patience", patience, is_int(patience) and patience >= 1, "an int >= 1")
        need("grad_ratio", grad_ratio, is_num(grad_ratio) and grad_ratio > 1, "a number > 1")
        need("spike_frac", spike_frac, is_num(spike_frac) and 0 < spike_frac <= 1, "a number in (0, 1]")
        need("progress_tol", progress_tol, is_num(progress_tol) and progress_tol >= 0, "a number >= 0")
        need("flat_tol", flat_tol, is_num(flat_tol) and 0 < flat_tol < 0.5, "a number in (0, 0.5)")
        if flat_steps is None:
            flat_steps = 4 * window
        need("flat_steps", flat_steps, is_int(flat_steps) and flat_steps >= window, f"an int >= window={window}")
        if check_every is None:
            check_every = max(1, window // 5)
        need("check_every", check_every, is_int(check_every) and check_every >= 1, "an int >= 1")
        need("loss_floor", loss_floor, is_num(loss_floor), "a finite number")
        if metric_modes is None:
            metric_modes = {}
        need("metric_modes", metric_modes, isinstance(metric_modes, Mapping),
             'a dict {"name": "max" | "min" | "ignore"}')
        for k, v in metric_modes.items():
            if not isinstance(k, str):
                raise TypeError(f"Doctor: metric_modes keys must be metric names (str), got {k!r}")
            need(f"metric_modes[{k!r}]", v, v in ("max", "min", "ignore"),
                 "'max' (higher is better, e.g. accuracy), 'min' (lower is better, e.g. a loss) or 'ignore'")
        need("metric_window", metric_window, is_int(metric_window) and metric_window >= _METRIC_MIN_OBS,
             f"an int >= {_METRIC_MIN_OBS}")
        need("metric_swing", metric_swing, is_num(metric_swing) and 0 < metric_swing <= 1, "a number in (0, 1]")
        need("metric_rel_swing", metric_rel_swing, is_num(metric_rel_swing) and metric_rel_swing > 0, "a number > 0")
        need("converge_monitor", converge_monitor, converge_monitor is None or (isinstance(converge_monitor, str) and converge_monitor != ""),
             "None (the validation loss) or the name of a validation metric (e.g. 'val_accuracy')")
        need("converge_patience", converge_patience, is_int(converge_patience) and converge_patience >= 0, "an int >= 0")
        need("converge_min_delta", converge_min_delta, is_num(converge_min_delta) and converge_min_delta >= 0,
             "a number >= 0")
        need("overfit_tol", overfit_tol, is_num(overfit_tol) and overfit_tol > 0, "a number > 0")
        need("lr_ceiling", lr_ceiling, lr_ceiling is None or (is_num(lr_ceiling) and lr_ceiling > 0),
             "None or a finite number > 0")
        need("reference_run", reference_run, reference_run_ok(reference_run),
             "None or (steps, loss, kind): an int >= 1, a finite number and 'val' or 'train'")
        need("chance_loss", chance_loss, _chance_ok(chance_loss, loss_floor),
             f"None or a finite number > loss_floor={loss_floor!r}")
        self._config: dict[str, Any] = {
            "window": window,
            "short": int(short),
            "diverge_ratio": float(diverge_ratio),
            "noise_z": float(noise_z),
            "min_rise": float(min_rise),
            "patience": int(patience),
            "grad_ratio": float(grad_ratio),
            "spike_frac": float(spike_frac),
            "progress_tol": float(progress_tol),
            "flat_tol": float(flat_tol),
            "flat_steps": int(flat_steps),
            "check_every": int(check_every),
            "loss_floor": float(loss_floor),
            "metric_modes": {str(k): str(v) for k, v in metric_modes.items()},
            "metric_window": int(metric_window),
            "metric_swing": float(metric_swing),
            "metric_rel_swing": float(metric_rel_swing),
            "converge_monitor": converge_monitor,
            "converge_patience": int(converge_patience),
            "converge_min_delta": float(converge_min_delta),
            "overfit_tol": float(overfit_tol),
            "chance_loss": None if chance_loss is None else float(chance_loss),
            "lr_ceiling": None if lr_ceiling is None else float(lr_ceiling),
            "reference_run": None if reference_run is None else (
                int(reference_run[0]), float(reference_run[1]), str(reference_run[2])),
        }

        self._chance_refuted = False  # the untrained model measured far above chance (untrained_loss)
        self.reset()

    # ------------------------------------------------------------------ composition
    def _build_signs(self) -> list[Sign]:
        """The signs, in rank order (ties between equally severe verdicts go to the first)."""
        t, c = self._track, self._config
        self._nonfinite = NonFinite(t, c)
        self._rise = LossRise(t, c)
        self._dead = Dead(t, c)
        return [
            self._nonfinite,  # nan: loss, gradient norm or validation loss not finite
            self._rise,  # diverging: the loss level far above its best
            GradientExplosion(t, c),  # diverging: the gradient norm exploded
            RaisedAndHeld(t, c),  # diverging: an LR raise held while the loss got worse
            EarlyBlowUp(t, c),  # diverging: a blow-up in the first window
            AtChance(t, c),  # diverging: blew up above chance level, came back only to it (chance_loss)
            self._dead,  # diverging: every input gets the same output (the metric output_spread)
            BehindReference(t, c),  # diverging: above lr_ceiling and behind a known short run (reference_run)
            LossSpikes(t, c, rise=self._rise),  # fluctuating: loss spikes that come back
            MetricSwing(t, c),  # fluctuating: a validation metric swings without progress
            Flat(t, c),  # flat: never started to decrease (diverging when stuck after a blow-up)
            Overfitting(t, c),  # overfitting (informational): validation loss up, training loss down
            Converged(t, c),  # converged (informational): the validation metric stopped improving
        ]

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> dict[str, Any]:
        """The thresholds this doctor was built with (keyword arguments of the constructor)."""
        return dict(self._config)

    @property
    def signs(self) -> dict[str, Sign]:
        """The signs by name, in rank order (each with its own ``finding`` and ``state_dict``)."""
        return {s.name: s for s in self._signs}

    @property
    def diagnosis(self) -> Diagnosis:
        """The latest verdict."""
        return self._diag

    @property
    def history(self) -> list[Diagnosis]:
        """Every non-healthy verdict change, in order (the first detection of each problem)."""
        return list(self._history)

    def set_chance_loss(self, value: float | None) -> None:
        """Set ``chance_loss`` (see the constructor) once it is known, e.g. from the model's
        configuration when training starts; it takes effect at the next window check.

        Example:
            >>> d = Doctor()
            >>> d.set_chance_loss(0.693); d.config["chance_loss"]
            0.693
        """
        if not _chance_ok(value, self._config["loss_floor"]):
            raise ValueError(f"Doctor.set_chance_loss: chance_loss must be None or a finite number > "
                             f"loss_floor={self._config['loss_floor']!r}, got {value!r}")
        self._config["chance_loss"] = None if value is None else float(value)

    def untrained_loss(self, value: float) -> bool:
        """The loss of the untrained model, measured (the first training step's, or before it): when
        it is at least :data:`~lrkit.doctor.signs.chance.ABOVE` times ``chance_loss``, chance is no
        reference for this run -- a model that learned nothing scores far more here (unscaled
        inputs, an overconfident head), and a healthy run falling from it would be read as
        collapsed to chance on its way down -- so ``chance_loss`` is dropped. Returns whether it was.
        Adapters that set ``chance_loss`` from the model call it with the first step's loss.

        Example:
            >>> d = Doctor(chance_loss=1.0986)           # three classes
            >>> d.untrained_loss(30.8), d.config["chance_loss"]   # unscaled features: 28x chance
            (True, None)
        """
        chance = self._config["chance_loss"]
        floor = self._config["loss_floor"]
        if chance is None or not math.isfinite(value) or value - floor < ABOVE_CHANCE * (chance - floor):
            return False
        self._config["chance_loss"] = None
        self._chance_refuted = True  # for this run: a rollback to an older state does not bring it back
        return True

    @property
    def chance_refuted(self) -> bool:
        """:meth:`untrained_loss` dropped ``chance_loss``: adapters do not set it from the model again."""
        return self._chance_refuted

    @property
    def n_observations(self) -> int:
        return self._track.n

    @property
    def current_lr(self) -> float | None:
        """The LR of the latest observation that gave one (``None``: not known)."""
        lr = self._track.lr
        return None if lr is None else float(lr)

    def best_level(self) -> tuple[float, float] | None:
        """``(b, sigma)``: the best loss level seen (log) and the per-step noise sd of the log-loss
        when it was reached; ``None`` before there is one (or while its noise is unknown)."""
        t = self._track
        if math.isinf(t.best) or math.isnan(t.best_noise):
            return None
        return float(t.best), float(t.best_noise)

    def forget_lr(self) -> None:
        """The LR is no longer known (it was logged as NaN or inf): until a finite one is observed,
        messages and advice quote no LR rather than a stale one.

        Example:
            >>> d = Doctor()
            >>> _ = d.observe(0, 2.0, lr=0.1)
            >>> d.forget_lr()
            >>> d.observe(1, float("nan")).message
            'The loss is nan at step 1.'

        """
        self._track.lr = None

    def reset(self) -> None:
        """Forget everything observed (thresholds are kept)."""
        self._track = Track(self._config)
        self._signs = self._build_signs()
        # the signs that do something per step / at the window checks, in list order
        self._observers = [s for s in self._signs if type(s).observe is not Sign.observe]
        self._checkers = [s for s in self._signs if type(s).check is not Sign.check]
        self._diag = Diagnosis("healthy", None, None, {}, (), "no observations yet")
        self._history: list[Diagnosis] = []

    def restart(self) -> None:
        """Start afresh from a restored state (the guard, after a rollback into the opening stretch):
        forget every observation but what the run has shown about the model -- the step where its
        outputs were last seen to depend on its inputs (:mod:`lrkit.doctor.signs.dead`), so that a
        restored state found collapsed is still a death, not a model that never lived."""
        last_live = self._dead.last_live
        self.reset()
        self._dead.last_live = last_live

    def observe(
        self,
        step: int,
        loss: float,
        *,
        lr: float | None = None,
        grad_norm: float | None = None,
        val_loss: float | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Diagnosis:
        """Feed one observation; return the current verdict.

        Args:
            step: the step (or epoch) of this observation; strictly increasing.
            loss: the training loss at that step (may be ``nan``/``inf``: that is the ``nan``
                verdict).
            lr: the learning rate used at that step, if known (used in the advice and to
                recognise schedules); a finite number >= 0.
            grad_norm: the global gradient norm, if known; >= 0 (non-finite -> ``nan``; an
                explosion while the loss gets worse -> ``diverging``).
            val_loss: a validation loss, if one was computed at that step (non-finite -> ``nan``;
                swinging up and down without progress -> ``fluctuating``).
            metrics: other metrics by name (e.g. ``{"val_accuracy": 0.93}``), when computed at
                that step; swinging without progress -> ``fluctuating`` (see
                :mod:`lrkit.doctor.signs.metric_swing` for the direction and scale of each
                name). Non-finite values are reported as evidence (``nonfinite_metric_<name>``)
                and otherwise skipped.

        Returns:
            The :class:`Diagnosis` after this observation (also :attr:`diagnosis`).

        Raises:
            ValueError: a value that cannot be (a step that is not an int or does not increase,
                a loss below ``loss_floor``, a negative or non-finite ``lr``, a negative
                ``grad_norm``, a value that is not a number), naming the parameter and what is
                allowed; the doctor is left untouched.
        """
        t = self._track
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"Doctor.observe: step must be an int, got {step!r}")
        step = int(step)
        if t.last_step is not None and step <= t.last_step:
            raise ValueError(
                f"Doctor.observe: step must increase, got {step} after {t.last_step} "
                "(call reset() or load_state_dict() after a rollback)"
            )
        loss = self._as_float("loss", loss)
        lr_f = None if lr is None else self._as_float("lr", lr)
        if lr_f is not None and not (lr_f >= 0 and math.isfinite(lr_f)):
            raise ValueError(f"Doctor.observe: lr must be a finite number >= 0 (or None when unknown), got {lr!r}")
        gn = None if grad_norm is None else self._as_float("grad_norm", grad_norm)
        if gn is not None and gn < 0:
            raise ValueError(
                f"Doctor.observe: grad_norm must be >= 0 (a norm; nan/inf report a non-finite gradient), got {grad_norm!r}"
            )
        vl = None if val_loss is None else self._as_float("val_loss", val_loss)
        mets: dict[str, float] = {}
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise TypeError(f"Doctor.observe: metrics must be a dict {{name: value}}, got {type(metrics).__name__}")
            for name, v in metrics.items():
                if not isinstance(name, str):
                    raise TypeError(f"Doctor.observe: metric names must be str, got {name!r}")
                mets[name] = self._as_float(f"metrics[{name!r}]", v)
        f = t.loss_floor
        if math.isfinite(loss) and loss < f:
            raise ValueError(f"Doctor.observe: loss must be >= loss_floor={f}, got {loss} at step {step}: "
                             + FLOOR_ADVICE)
        t.last_step = step
        if t.first_step is None:
            t.first_step = step
        if lr_f is not None:
            t.set_lr(lr_f)
        return self._step(step, loss, lr_f, gn, vl, mets)  # type: ignore[return-value]

    def observe_many(
        self,
        steps: Any,
        losses: Any,
        *,
        lr: Any = None,
        grad_norm: Any = None,
        val_loss: Any = None,
        metrics: Mapping[str, Any] | None = None,
        present: Mapping[str, Any] | None = None,
    ) -> Diagnosis:
        """Feed a whole table of observations at once: the same diagnosis, history and state as
        :meth:`observe` row by row, at a fraction of the cost (one validation pass over the
        arrays, no per-row :class:`Diagnosis` while the run is healthy).

        Args:
            steps: integer steps, strictly increasing (and after the last step observed).
            losses: the training losses (``nan``/``inf`` allowed: the ``nan`` verdict).
            lr, grad_norm, val_loss: optional columns of the same length.
            metrics: optional ``{name: column}``.
            present: optional ``{column name: boolean mask}``: the rows where that column
                (``"lr"``, ``"grad_norm"``, ``"val_loss"`` or a metric name) was logged, as if
                ``None`` had been passed to :meth:`observe` elsewhere. Default: every row.

        Returns:
            The :class:`Diagnosis` after the last row (also :attr:`diagnosis`).

        Raises:
            ValueError: as :meth:`observe`, naming the column, the first bad row and what is
                allowed; the doctor is left untouched.

        Example:
            >>> import numpy as np
            >>> t = np.arange(300)
            >>> loss = np.where(t < 200, 2.0 * 0.99 ** t, 0.27 * 1.05 ** (t - 200))
            >>> a, b = Doctor(), Doctor()
            >>> d = a.observe_many(t, loss, lr=np.full(300, 0.1))
            >>> for i in t:
            ...     _ = b.observe(int(i), float(loss[i]), lr=0.1)
            >>> d == b.diagnosis, a.history == b.history, d.verdict
            (True, True, 'diverging')
        """
        t = self._track
        rows = _table_rows("Doctor.observe_many", steps, losses, lr=lr, grad_norm=grad_norm, val_loss=val_loss,
                           metrics=metrics, present=present, last_step=t.last_step, loss_floor=t.loss_floor)
        if rows is None:
            return self._diag
        step_l, loss_l, lr_l, gn_l, vl_l, met_l = rows
        n = len(step_l)
        for i in range(n):
            mets = {k: v[i] for k, v in met_l.items() if v[i] is not None} if met_l else {}
            step, lr_i = step_l[i], lr_l[i]
            t.last_step = step
            if t.first_step is None:
                t.first_step = step
            if lr_i is not None:
                t.set_lr(lr_i)
            self._step(step, loss_l[i], lr_i, gn_l[i], vl_l[i], mets, build=i == n - 1)
        return self._diag

    def _step(self, step: int, loss: float, lr_f: float | None, gn: float | None, vl: float | None,
              mets: dict[str, float], build: bool = True) -> Diagnosis | None:
        """One validated observation (``last_step``, ``first_step`` and ``lr`` already set).

        With ``build=False`` a healthy step leaves a placeholder instead of a :class:`Diagnosis`
        (the next problem, or the last row with ``build=True``, replaces it).
        """
        t = self._track
        if self._nonfinite.step is not None:  # sticky
            return self._diag
        if self._nonfinite.test(step, loss, gn, vl, self._rise.onset if self._rise.count > 0 else None):
            return self._set(self._diagnosis_of(self._nonfinite, self._nonfinite.finding, step))  # type: ignore[arg-type]
        t.push(step, loss - t.loss_floor, gn)
        check = t.check_due()
        if check:
            t.update_noise()
        obs = Observation(step, loss, lr_f, gn, vl, mets)
        for sign in self._observers:
            sign.observe(obs)
        if check:
            for sign in self._checkers:
                sign.check()
        if not build and all(sign.finding is None for sign in self._signs):
            self._diag = _HEALTHY_PENDING
            return None
        d = self._rank(step)
        if mets:
            ev = dict(d.evidence)
            for name, v in mets.items():
                if not math.isfinite(v):
                    ev[f"nonfinite_metric_{name}"] = v
            if ev != d.evidence:
                d = replace(d, evidence=ev)
        return self._set(d)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``{"config": ..., "state": ...}`` (plain JSON types).

        ``state`` holds the shared statistics of the loss and every sign's own state (their keys
        are disjoint), the current diagnosis and the history.
        """
        state = self._track.state_dict()
        for sign in self._signs:
            state.update(sign.state_dict())
        state["diagnosis"] = self._diag.to_dict()
        state["history"] = [h.to_dict() for h in self._history]
        return {"config": self.config, "state": state}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`. The thresholds must match this doctor's; ``chance_loss``
        (a fact about the model, learned once training starts) is taken from the state when set there,
        ``lr_ceiling`` is this doctor's own."""
        if not isinstance(d, Mapping) or "config" not in d or "state" not in d:
            raise ValueError("Doctor.load_state_dict: expected a dict with keys 'config' and 'state' from state_dict()")
        saved = dict(d["config"])
        for k, v in _LATER_DEFAULTS.items():
            # states saved before these thresholds existed: they had the defaults
            saved.setdefault(k, v)
        chance = saved.pop("chance_loss")
        for k in _RUN_FACTS:  # knowledge about the run, not thresholds: this doctor's own stand
            saved.pop(k)
        current = {k: v for k, v in self._config.items() if k not in ("chance_loss",) + _RUN_FACTS}
        if saved != current:
            diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
            raise ValueError(f"Doctor.load_state_dict: config differs from this doctor's (saved, current): {diff}")
        if chance is not None and not self._chance_refuted:
            self.set_chance_loss(chance)
        s = d["state"]
        self.reset()
        self._track.load_state_dict(s)
        for sign in self._signs:
            sign.load_state_dict(s)
        self._diag = _diag_from_dict(s["diagnosis"])
        self._history = [_diag_from_dict(h) for h in s["history"]]

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _as_float(name: str, v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"Doctor.observe: {name} must be a number, got {v!r}") from None

    def _rank(self, step: int) -> Diagnosis:
        """The most severe finding of the signs (ties: the first sign in the list), or healthy."""
        best: tuple[Sign, Finding] | None = None
        for sign in self._signs:
            f = sign.finding
            if f is not None and (best is None or _RANK[f.verdict] > _RANK[best[1].verdict]):
                best = (sign, f)
        notes = [s.finding for s in self._signs if s.finding is not None and s.finding.verdict in INFORMATIONAL]
        if best is None:
            return Diagnosis("healthy", None, None, self._track.base_evidence(), (), self._healthy_message())
        d = self._diagnosis_of(best[0], best[1], step)
        if notes:
            ev = dict(d.evidence)
            for f in notes:
                ev.update(f.evidence)
            d = replace(d, evidence=ev, notes=tuple(sorted((f.verdict for f in notes), key=INFORMATIONAL.index)))
        return d

    def _healthy_message(self) -> str:
        """What "healthy" means after ``n`` observations: before the flat and fluctuating signs can
        judge (``window`` observations, and the flat one ``min(flat_steps, 2 window)``), only a
        NaN or a blow-up can show, and the message says so rather than vouch for the run.

        Example:
            >>> doc = Doctor(window=5, short=1, flat_steps=5)
            >>> for epoch, loss in enumerate([2.3, 1.5, 1.1]):
            ...     _ = doc.observe(epoch, loss)
            >>> doc.diagnosis.message
            'no problem detected after 3 observations, too few to judge a flat or fluctuating loss (that takes 5): only a NaN or a blow-up shows this early'
        """
        n = self._track.n
        said = f"no problem detected after {n} observation{'' if n == 1 else 's'}"
        if n < self.observations_needed:
            said += (f", too few to judge a flat or fluctuating loss (that takes {self.observations_needed}): only a "
                     "NaN or a blow-up shows this early")
        return said

    @property
    def observations_needed(self) -> int:
        """Observations before every sign can judge: ``window`` for the fluctuating one, and
        ``min(flat_steps, 2 window)`` for the flat one (it waits for ``flat_steps``, or for two
        windows when the first is already decisive)."""
        w = self.config["window"]
        return max(w, min(self.config["flat_steps"], 2 * w))

    @staticmethod
    def _diagnosis_of(sign: Sign, f: Finding, step: int) -> Diagnosis:
        advice, message = sign.explain(f, step)
        return Diagnosis(f.verdict, f.onset, step, dict(f.evidence), tuple(advice), message)

    def _set(self, d: Diagnosis) -> Diagnosis:
        prev = self._diag
        if d.verdict != "healthy" and d.verdict == prev.verdict:
            # the same problem goes on: keep the onset and the step of its first detection
            d = replace(d, step=prev.step, detected_at=prev.detected_at)
        if d.verdict != "healthy" and d.verdict != prev.verdict:
            key = (d.verdict, d.step)
            if not any((h.verdict, h.step) == key for h in self._history):
                self._history.append(d)
        self._diag = d
        return d


#: stands for a healthy diagnosis not built (Doctor.observe_many); only its verdict is ever read
_HEALTHY_PENDING = Diagnosis("healthy", None, None, {}, (), "")

#: rank of each verdict when the signs' findings are compared (higher wins)
_RANK = {v: i for i, v in enumerate(("healthy",) + INFORMATIONAL + VERDICTS[1:])}
#: thresholds added after the first release, with their defaults (older states load with them)
_LATER_DEFAULTS: dict[str, Any] = {
    "metric_modes": {},
    "metric_window": 10,
    "metric_swing": 0.1,
    "metric_rel_swing": 0.3,
    "converge_monitor": None,
    "converge_patience": 10,
    "converge_min_delta": 0.0,
    "overfit_tol": 0.1,
    "chance_loss": None,
    "lr_ceiling": None,
    "reference_run": None,
}
#: config entries that are facts about the run a doctor watches (its own stand on load_state_dict)
_RUN_FACTS = ("lr_ceiling", "reference_run")


def _diag_from_dict(d: Mapping[str, Any]) -> Diagnosis:
    ev = {k: (math.nan if v is None else float(v)) for k, v in d["evidence"].items()}
    return Diagnosis(d["verdict"], d["step"], d["detected_at"], ev, tuple(d["advice"]), d["message"], tuple(d.get("notes", ())))
