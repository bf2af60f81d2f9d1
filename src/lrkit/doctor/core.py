r"""The LR doctor: an online diagnosis of a training run from its loss (and LR, gradient norm).

A :class:`Doctor` is fed one observation per step (``observe(step, loss, lr=..., grad_norm=...)``)
and returns a :class:`Diagnosis` after each one. Verdicts, most severe first:

``nan``
    the loss, the gradient norm or the validation loss is not finite. Immediate and sticky
    (non-finite weights do not heal): only :meth:`Doctor.reset` or :meth:`Doctor.load_state_dict`
    clear it.
``diverging``
    the loss level has risen well above its best, the gradient norm exploded, the loss blew up
    in the first steps, or it is stuck after an unstable start (dead units).
``fluctuating``
    the loss keeps jumping far above its best and coming back, without net progress; or a
    validation loss or a metric (accuracy, ...) swings up and down between evaluations
    without progress.
``flat``
    after a long stretch, the loss has not really started to decrease (LR too low).
``healthy``
    none of the above.

Everything is computed on the log of the loss above its floor, :math:`y_t = \log(\ell_t - f)`
(``loss_floor`` :math:`f`, 0 for the usual losses), so that "rising by a factor" and the noise
of a converging run are on one scale. Statistics (``W`` = ``window``, ``s`` = ``short``):

.. math::

    m_t = \operatorname{median}(y_{t-s+1..t}) \quad\text{(level)},\qquad
    b_t = \min_{u \le t} m_u \quad\text{(best level)}

    \sigma = 1.4826 \cdot \operatorname{MAD}(\Delta y_{t-W+1..t}) / \sqrt 2
    \quad\text{(minibatch noise of } y\text{; differencing removes the trend)}

    \sigma_s = 1.2533\, \max(\sigma, \bar\sigma) / \sqrt{s}
    \quad\text{(noise of a median of } s\text{;}\ \bar\sigma^2 \text{ an EMA (0.1) of } \sigma^2
    \text{ over the checks)}

(:math:`b_t` only counts medians of at least 3 losses.) **Diverging** when, for ``patience``
consecutive steps,

.. math::

    m_t - b'_t > \max\big(\log \rho,\; z\,\sigma_s\big) + [n < W]\log\rho
    \quad\text{and}\quad
    e^{m_t} - e^{b'_t} > r \cdot L_0, \qquad b'_t = \min(b_t,\ y_1) \text{ if } n < W \text{ else } b_t

with :math:`\rho` = ``diverge_ratio``, :math:`z` = ``noise_z``, :math:`r` = ``min_rise``,
:math:`y_1` the very first loss (taken at the initial weights, so that a blow-up in the first
steps is caught) and :math:`L_0 = \min(\ell_1, \operatorname{median}(\ell_{1..s}))` the initial
loss level (above the floor). The level must rise by a factor *and* by an amount that matters
next to where training started (a rise from 1e-6 to 1e-4 is not a problem); during the first
``W`` steps, while noise and best are poorly known, the factor is :math:`\rho^2` (and the
first loss counts as a best). It is also
diverging when the median gradient norm of the last ``s`` steps exceeds ``grad_ratio`` times its
initial median. The onset is the step after the last loss of the window still within half the margin
of the best level (the loss began rising there).

**Fluctuating** (checked every ``check_every`` steps once ``W`` losses are in): in the last ``W``
steps at least a fraction ``spike_frac`` of losses are *spikes*,

.. math::

    y_i - \max\big(b_t, \operatorname{median}(y_{t-W+1..t})\big) > \max(\log\rho,\; z\,\sigma/2)
    \quad\text{and}\quad \ell_i - e^{b_t} > r \cdot L_0,

in at least two separate episodes (a steady rise is one episode: that is diverging), the level
:math:`m_t` has come back below the diverging threshold, and the window made no significant
progress: the median of its first half minus the median of its second half is below
:math:`\max(\log(1 + \text{progress\_tol}),\ 2 \cdot 1.2533\,\sigma\sqrt{2/W})`.
Onset: the first spike in the window. Also **fluctuating**: two or more ``diverging`` episodes
within the last ``4 W`` steps that each ended with the level back within a factor :math:`\rho`
of the best (loss spikes that come back); onset: the first of them.

**Flat** (checked once ``flat_steps`` losses are in): with the current level
:math:`M = \operatorname{median}(\ell_{t-W+1..t})`, the first window's level
:math:`R = \operatorname{median}(\ell_{1..W})` and the start :math:`R_0 = \max(\operatorname{median}(\ell_{1..s}), R)`,

.. math::

    \frac{R - M}{R} < \text{tol} = \min\big(0.3,\ \max(\text{flat\_tol},\ 1 - e^{-4 \cdot 1.2533\,\sigma\sqrt{2/W}})\big)

    \frac{R_0 - M}{R_0} < \text{tol}_0 = \min\big(0.5,\ \max(2\,\text{flat\_tol},\
        1 - e^{-3 \cdot 1.2533\,\sigma\sqrt{1/s + 1/W}})\big)

(a decrease within the noise of the medians is no decrease): the run *never started* to
decrease. The second test keeps a run that dropped fast in its first steps and then converged
from being called flat. Not reported while the LR is still rising (by 1.5x or more over the
last window: a warmup starts flat). A flat run whose gradient norm fell more than 3x (or its
noise more than 3x) without progress is reported as ``diverging`` instead: units died or
saturated, the LR was too high, and raising it would be the wrong advice. Onset of flat: the
first step observed.

**Fluctuating metrics** (the validation loss and every metric passed to :meth:`Doctor.observe`).
Metrics are usually evaluated rarely (once per epoch), so each is judged on its own window of
its last ``M`` = ``metric_window`` evaluations, from 6 evaluations on. A metric logged on many
steps (e.g. a per-step training accuracy) is first reduced to one median per ``check_every``
losses, so that minibatch noise does not read as oscillation. Direction, from the name
(lower-case): names containing ``loss``, ``error``, ``perplexity``, ``mse`` or ``mae`` are
lower-is-better, all others higher-is-better; ``metric_modes={"name": "max"/"min"/"ignore"}``
overrides the rule. Names that describe the run rather than its quality (a word such as
``time``, ``runtime``, ``epoch``, ``step``, ``lr``, ``learning``, ``momentum``, ``scale``,
``norm``, ``grad``, ``batch``, ``samples``, ``tokens``, ``memory``, ``per``/``second``,
``flos``) are not judged unless named in ``metric_modes``. Scale: a metric whose values all lie
in ``[0, 1]`` (accuracy, an error rate, but not a loss, perplexity, MSE or MAE) is a
*fraction*, in its own units; a positive metric is taken on a log scale (a swing is a factor);
a metric with negative values has no natural scale and is only judged when named in
``metric_modes``, relative to its median magnitude. With
:math:`z_1..z_n` the window in those units, oriented so that larger is better (:math:`z = v`,
:math:`-v`, :math:`\log v` or :math:`-\log v`):

.. math::

    A = \operatorname{median}_{1<i<n} \big|z_i - \tfrac12(z_{i-1} + z_{i+1})\big|
    \quad\text{(swing: how far an evaluation sits from its neighbours' midpoint)}

    P = \operatorname{median}(z_{n-k+1..n}) - \operatorname{median}(z_{1..k}),\ k = \max(2, \lfloor n/3 \rfloor)
    \quad\text{(net progress)},\qquad Q = \frac{\sum_i |z_{i+1} - z_i|}{\max(|P|,\ A/100)}

    G = \max(z_{h+1..n}) - \max\big(z^*, \max(z_{1..h})\big),\ h = \lfloor n/2 \rfloor
    \quad\text{(gain of the best; } z^* \text{ the best before the window)}

A metric is **fluctuating** when :math:`A \ge a` (:math:`a` = ``metric_swing`` for a fraction,
:math:`\log(1 + \text{metric\_rel\_swing})` on the log scale, ``metric_rel_swing`` relative),
:math:`A` is at least 4 noise standard deviations of a block median when a dense metric gives
one, the moves of at least :math:`\max(A/2, a)` reverse direction at least twice and at
least every other time (up-down-up, not a single dip), :math:`Q \ge 3` (the path is three
times longer than the way made) and :math:`G \le A/4` (the best did not improve). A straight
line has :math:`A = 0`, a smooth rise a small :math:`A` and :math:`Q \approx 1`, a noisy
plateau a small :math:`A`. Onset: the first evaluation of the window that fell back by such a
move. Evidence: ``metric_amplitude`` (:math:`A`), ``metric_amplitude_threshold``,
``metric_net_progress`` (:math:`P`), ``metric_oscillation_ratio`` (:math:`Q`),
``metric_reversals``, ``metric_best_gain`` (:math:`G`), ``metric_observations``,
``metric_median`` and ``metric_best`` (in the metric's own units), ``metric_higher_is_better``
(1 or 0) and ``metric_scale`` (0 fraction, 1 log, 2 relative) for the metric reported, and
``oscillating_metric:<name>`` = :math:`A / a` for every fluctuating metric (the metric reported
first has the largest).

**Precedence.** ``nan`` > ``diverging`` > ``fluctuating`` of the training loss > ``fluctuating``
of a metric > ``flat`` > ``healthy``. A metric that swings widely outranks a flat training loss:
an LR too low barely moves the weights, so it cannot make a validation metric jump between
evaluations; the swings point to an LR too high (or to a metric computed on too few samples,
whose noise is above ``metric_swing``: raise it, or ignore the metric in ``metric_modes``).

**Early blow-up**: during the first window, two of three consecutive losses above
:math:`\max(\rho^2, e^{6\sigma_0})\,\operatorname{median}(\ell_{1..s})` (:math:`\sigma_0` the noise
of the first window so far) is reported as ``diverging`` at that step, even if the loss comes
back: the LR is too high for the start of training (lower it, or add warmup).

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
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

__all__ = ["VERDICTS", "SEVERITY", "Diagnosis", "Doctor"]

VERDICTS = ("healthy", "flat", "fluctuating", "diverging", "nan")
#: verdict -> severity rank (higher is worse).
SEVERITY = {v: i for i, v in enumerate(VERDICTS)}

_MAD_TO_SD = 1.4826  # MAD of a normal sample times this is its standard deviation
_MEDIAN_EFF = 1.2533  # sd(median of n normals) ~ 1.2533 * sd / sqrt(n)
_TINY = 1e-30


@dataclass(frozen=True)
class Diagnosis:
    """The doctor's verdict on a run, with the numbers behind it and what to do.

    Attributes:
        verdict: one of :data:`VERDICTS`.
        step: the step where the problem began (onset); ``None`` if healthy.
        detected_at: the step at which it was detected; ``None`` if healthy.
        evidence: the numbers behind the verdict (e.g. ``loss_ratio_to_best``, ``noise_sigma``,
            ``spike_fraction``, ``relative_progress``, ``grad_norm_ratio``, ``lr``).
        advice: concrete remedies, most important first.
        message: one human sentence.

    Example:
        >>> Diagnosis("healthy", None, None, {}, (), "ok").to_dict()["verdict"]
        'healthy'
    """

    verdict: str
    step: int | None
    detected_at: int | None
    evidence: dict[str, float] = field(default_factory=dict)
    advice: tuple[str, ...] = ()
    message: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def ok(self) -> bool:
        """``True`` when the verdict is ``healthy``."""
        return self.verdict == "healthy"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys ``verdict, step, detected_at, evidence, advice, message``.

        Non-finite evidence values become ``None`` (JSON has no NaN).
        """
        ev = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in self.evidence.items()}
        return {
            "verdict": self.verdict,
            "step": self.step,
            "detected_at": self.detected_at,
            "evidence": ev,
            "advice": list(self.advice),
            "message": self.message,
        }

    def __str__(self) -> str:
        if self.ok:
            return f"healthy: {self.message}"
        tips = "; ".join(self.advice)
        return f"{self.verdict} (from step {self.step}, detected at step {self.detected_at}): {self.message}" + (
            f" Advice: {tips}." if tips else ""
        )


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


def _scaled(lr: float | None, factor: float, word: str) -> str:
    """'lower the LR about 10x, from 0.3 to 0.03' (or without numbers when the LR is unknown)."""
    n = int(round(factor)) if factor >= 1 else factor
    if lr is None or not math.isfinite(lr) or lr <= 0:
        return f"{word} the LR about {n}x"
    new = lr / factor if word == "lower" else lr * factor
    return f"{word} the LR about {n}x, from {_fmt_lr(lr)} to {_fmt_lr(new)}"


class _Ring:
    """Fixed-size ring buffer of floats (and the step of each)."""

    __slots__ = ("size", "vals", "steps", "n", "pos")

    def __init__(self, size: int) -> None:
        self.size = size
        self.vals = [0.0] * size
        self.steps = [0] * size
        self.n = 0
        self.pos = 0

    def push(self, step: int, value: float) -> None:
        self.vals[self.pos] = value
        self.steps[self.pos] = step
        self.pos = (self.pos + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def last(self, k: int) -> list[float]:
        k = min(k, self.n)
        out = []
        i = self.pos
        for _ in range(k):
            i = (i - 1) % self.size
            out.append(self.vals[i])
        return out

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < self.size:
            return np.array(self.vals[: self.n]), np.array(self.steps[: self.n])
        idx = list(range(self.pos, self.size)) + list(range(self.pos))
        return np.array([self.vals[i] for i in idx]), np.array([self.steps[i] for i in idx])

    def state(self) -> dict[str, Any]:
        v, s = self.ordered()
        return {"vals": v.tolist(), "steps": s.astype(int).tolist()}

    def load(self, d: Mapping[str, Any]) -> None:
        self.__init__(self.size)
        for s, v in zip(d["steps"], d["vals"]):
            self.push(int(s), float(v))


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    h = n // 2
    return xs[h] if n % 2 else 0.5 * (xs[h - 1] + xs[h])


# ---------------------------------------------------------------------------- metrics
_LOWER_IS_BETTER = ("loss", "error", "perplexity", "mse", "mae")
_UNBOUNDED = ("loss", "perplexity", "mse", "mae")  # never read as a fraction, even when <= 1
# words (split at non-alphanumerics) that name bookkeeping, not quality: not judged by default
_BOOKKEEPING = frozenset(
    "time runtime timestamp epoch epochs step steps lr learning momentum beta1 beta2 scale flos "
    "memory mem throughput tokens samples batch size norm grad count second seconds sec per gpu cpu".split()
)
_METRIC_MIN_OBS = 6  # evaluations a metric needs before it can be called fluctuating
_METRIC_RATIO = 3.0  # path length over net progress (Q) that counts as going nowhere
_METRIC_NOISE_Z = 4.0  # the swing must exceed this many block-median noise sds (dense metrics)


def _metric_mode(name: str, modes: Mapping[str, str]) -> str:
    """``"max"``, ``"min"`` or ``"ignore"`` for metric ``name`` (see :class:`Doctor`)."""
    if name in modes:
        return modes[name]
    low = name.lower()
    words = set(re.split(r"[^a-z0-9]+", low))
    if words & _BOOKKEEPING:
        return "ignore"
    return "min" if any(w in low for w in _LOWER_IS_BETTER) else "max"


def _metric_oscillation(
    values: np.ndarray,
    *,
    mode: str,
    name: str = "",
    swing: float = 0.1,
    rel_swing: float = 0.3,
    best_before: float | None = None,
    block_noise: float | None = None,
    judge_signed: bool = False,
) -> dict[str, float] | None:
    r"""Is this window of metric values oscillating without progress? (see *Fluctuating metrics*)

    Args:
        values: the window, oldest first (at least 3 values; the Doctor waits for 6).
        mode: ``"max"`` (higher is better) or ``"min"``.
        name: the metric's name (a loss, perplexity, MSE or MAE is never a fraction).
        swing: the smallest swing :math:`A` of a fraction (absolute units).
        rel_swing: the smallest relative swing of any other metric.
        best_before: the best raw value before the window, if any.
        block_noise: the noise sd of one window value in raw units, if known (dense metrics).
        judge_signed: judge a metric with negative values (relative to its median magnitude).

    Returns:
        ``None`` when not fluctuating, else the evidence: ``scale`` (0: a fraction, in its own
        units; 1: log scale; 2: relative to the median magnitude), ``amplitude`` (:math:`A`, on
        that scale), ``threshold``, ``net_progress`` (:math:`P`), ``ratio`` (:math:`Q`),
        ``reversals``, ``best_gain`` (:math:`G`) and ``onset_index`` (the first value that fell
        back by ``max(A/2, threshold)`` or more).

    Example:
        >>> ev = _metric_oscillation(np.array([0.2, 0.9] * 4), mode="max")
        >>> round(ev["amplitude"], 3), ev["onset_index"]
        (0.7, 2.0)
        >>> _metric_oscillation(np.array([0.5, 0.7, 0.8, 0.86, 0.9, 0.91, 0.93, 0.92]), mode="max") is None
        True
    """
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 3 or not np.all(np.isfinite(v)):
        return None
    low = name.lower()
    sign = 1.0 if mode == "max" else -1.0
    if np.all((v >= 0) & (v <= 1)) and not any(w in low for w in _UNBOUNDED):
        kind, z, thr = 0.0, sign * v, swing
        to_z = lambda x: sign * x  # noqa: E731
        noise = block_noise
    elif np.all(v > 0):
        kind, z, thr = 1.0, sign * np.log(v), math.log1p(rel_swing)
        to_z = lambda x: sign * math.log(x) if x > 0 else -math.inf * sign  # noqa: E731
        noise = None if block_noise is None else block_noise / float(np.median(v))
    elif np.all(v >= 0) or judge_signed:
        scale = float(np.median(np.abs(v)))
        if scale <= 0:
            return None
        kind, z, thr = 2.0, sign * v / scale, rel_swing
        to_z = lambda x: sign * x / scale  # noqa: E731
        noise = None if block_noise is None else block_noise / scale
    else:
        return None
    mid = z[1:-1] - 0.5 * (z[:-2] + z[2:])
    A = float(np.median(np.abs(mid)))
    if A < thr or (noise is not None and A < _METRIC_NOISE_Z * noise):
        return None
    d = np.diff(z)
    move = max(A / 2, thr)  # a move that counts: half the swing, and at least the threshold
    big = d[np.abs(d) >= move]
    reversals = int(np.sum(np.sign(big[1:]) != np.sign(big[:-1])))
    if reversals < 2 or 2 * reversals < len(big) - 1:
        return None
    k = max(2, n // 3)
    P = float(np.median(z[-k:]) - np.median(z[:k]))
    tv = float(np.sum(np.abs(d)))
    Q = tv / max(abs(P), A / 100.0)
    if Q < _METRIC_RATIO:
        return None
    h = n // 2
    ref = float(np.max(z[:h]))
    if best_before is not None and math.isfinite(best_before):
        ref = max(ref, to_z(best_before))
    G = float(np.max(z[h:])) - ref
    if G > A / 4:
        return None
    onset = int(np.argmax(d <= -move)) + 1
    return {
        "scale": kind,
        "amplitude": A,
        "threshold": thr,
        "net_progress": P,
        "ratio": Q,
        "reversals": float(reversals),
        "best_gain": G,
        "onset_index": float(onset),
    }


class _Metric:
    """One metric's recent evaluations (block medians), its pending block and its best so far."""

    __slots__ = ("vals", "steps", "pending", "pending_steps", "noise", "best_out")

    def __init__(self) -> None:
        self.vals: list[float] = []
        self.steps: list[int] = []
        self.pending: list[float] = []
        self.pending_steps: list[int] = []
        self.noise: list[float] = []  # noise sd of recent block medians (blocks of >= 3 values)
        self.best_out: float | None = None  # best raw value that has left the window

    def state(self) -> dict[str, Any]:
        return {
            "vals": list(self.vals),
            "steps": list(self.steps),
            "pending": list(self.pending),
            "pending_steps": list(self.pending_steps),
            "noise": list(self.noise),
            "best_out": self.best_out,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "_Metric":
        m = cls()
        m.vals = [float(x) for x in d["vals"]]
        m.steps = [int(x) for x in d["steps"]]
        m.pending = [float(x) for x in d["pending"]]
        m.pending_steps = [int(x) for x in d["pending_steps"]]
        m.noise = [float(x) for x in d["noise"]]
        m.best_out = None if d["best_out"] is None else float(d["best_out"])
        return m


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
        grad_ratio: a median gradient norm this many times its initial median is an explosion
            (default 10.0). > 1.
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
    ) -> None:
        def need(name: str, value: Any, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"Doctor: {name} must be {allowed}, got {value!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

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
        }
        for k, v in self._config.items():
            setattr(self, "_" + k, v)
        self._metric_modes = dict(self._config["metric_modes"])
        self._mode_cache: dict[str, str] = {}  # name -> "max" / "min" / "ignore"
        self.reset()

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> dict[str, Any]:
        """The thresholds this doctor was built with (keyword arguments of the constructor)."""
        return dict(self._config)

    @property
    def diagnosis(self) -> Diagnosis:
        """The latest verdict."""
        return self._diag

    @property
    def history(self) -> list[Diagnosis]:
        """Every non-healthy verdict change, in order (the first detection of each problem)."""
        return list(self._history)

    @property
    def n_observations(self) -> int:
        return self._n

    def reset(self) -> None:
        """Forget everything observed (thresholds are kept)."""
        W = self._window
        self._y = _Ring(W)  # log(loss - floor)
        self._gn = _Ring(W)  # gradient norms
        self._n = 0
        self._last_step: int | None = None
        self._first_step: int | None = None
        self._first: list[float] = []  # first `short` losses (above floor)
        self._first_window: list[float] = []  # first W losses (above floor)
        self._first_window_steps: list[int] = []
        self._early_checked = False  # the first window was searched for a blow-up
        self._gn_first: list[float] = []
        self._best = math.inf  # best level b (log)
        self._best_window = math.inf  # lowest window median (raw, above floor), for `flat`
        self._lr_window: list[float] = []  # LR at each window check, for warmup detection
        self._best_center_step: int | None = None
        self._sigma = math.nan  # noise sd of y (latest window)
        self._sigma_slow = math.nan  # its slow average (EMA over checks), for the diverging margin
        self._div_count = 0
        self._div_onset: int | None = None
        self._recovered: list[list[int]] = []  # [onset, n at recovery] of the last diverging episodes that came back
        self._slow_verdict = "healthy"  # result of the last window check (fluctuating/flat)
        self._slow_onset: int | None = None
        self._slow_evidence: dict[str, float] = {}
        self._nan_step: int | None = None
        self._nan_what = ""
        self._lr: float | None = None
        self._lr_at: dict[str, float] = {}
        self._diag = Diagnosis("healthy", None, None, {}, (), "no observations yet")
        self._history: list[Diagnosis] = []
        self._level = math.nan
        # running sums of the least-squares trend of y on the observation index since the start
        # (n, sum t, sum t^2, sum y, sum t*y, sum y^2): O(1) per step, for the `flat` check
        self._trend = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self._metrics: dict[str, _Metric] = {}  # val_loss and metrics: recent evaluations
        self._metric_flags: dict[str, list[Any]] = {}  # name -> [onset step, evidence] while fluctuating

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
            lr: the learning rate used at that step, if known (used in the advice).
            grad_norm: the global gradient norm, if known (non-finite -> ``nan``; an explosion
                -> ``diverging``).
            val_loss: a validation loss, if one was computed at that step (non-finite -> ``nan``;
                swinging up and down without progress -> ``fluctuating``).
            metrics: other metrics by name (e.g. ``{"val_accuracy": 0.93}``), when computed at
                that step; swinging without progress -> ``fluctuating`` (see the module
                docstring for the direction and scale of each name). Non-finite values are
                reported as evidence (``nonfinite_metric_<name>``) and otherwise skipped.

        Returns:
            The :class:`Diagnosis` after this observation (also :attr:`diagnosis`).
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"Doctor.observe: step must be an int, got {step!r}")
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"Doctor.observe: step must increase, got {step} after {self._last_step} "
                "(call reset() or load_state_dict() after a rollback)"
            )
        loss = self._as_float("loss", loss)
        lr_f = None if lr is None else self._as_float("lr", lr)
        gn = None if grad_norm is None else self._as_float("grad_norm", grad_norm)
        vl = None if val_loss is None else self._as_float("val_loss", val_loss)
        mets: dict[str, float] = {}
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise TypeError(f"Doctor.observe: metrics must be a dict {{name: value}}, got {type(metrics).__name__}")
            for name, v in metrics.items():
                if not isinstance(name, str):
                    raise TypeError(f"Doctor.observe: metric names must be str, got {name!r}")
                mets[name] = self._as_float(f"metrics[{name!r}]", v)
        self._last_step = step
        if self._first_step is None:
            self._first_step = step
        if lr_f is not None:
            self._lr = lr_f

        if self._nan_step is not None:  # sticky
            return self._diag
        bad = None
        if not math.isfinite(loss):
            bad = f"loss is {loss}"
        elif gn is not None and not math.isfinite(gn):
            bad = f"gradient norm is {gn}"
        elif vl is not None and not math.isfinite(vl):
            bad = f"validation loss is {vl}"
        if bad is not None:
            self._nan_step = step
            self._nan_what = bad
            return self._set(self._nan_diagnosis(step, loss, gn, vl))

        f = self._loss_floor
        if loss < f:
            raise ValueError(
                f"Doctor.observe: loss must be >= loss_floor={f}, got {loss} at step {step} "
                "(pass Doctor(loss_floor=...) a lower bound of your loss)"
            )
        above = loss - f
        y = math.log(max(above, _TINY))
        self._n += 1
        n = self._n
        self._y.push(step, y)
        if y > math.log(_TINY):
            tr = self._trend
            tr[0] += 1.0
            tr[1] += n
            tr[2] += float(n) * n
            tr[3] += y
            tr[4] += n * y
            tr[5] += y * y
        if len(self._first) < self._short:
            self._first.append(above)
        if len(self._first_window) < self._window:
            self._first_window.append(above)
            self._first_window_steps.append(step)
        if gn is not None:
            self._gn.push(step, gn)
            if len(self._gn_first) < self._short:
                self._gn_first.append(gn)

        # --- level and best (every step, O(short)) -------------------------------------
        s = self._short
        k = min(s, n)
        level = _median(self._y.last(k))
        self._level = level
        if level < self._best and k >= min(s, 3):  # a median of at least 3 losses
            self._best = level
            # centre of the median's window: the level began rising after it
            self._best_center_step = self._y.steps[(self._y.pos - 1 - k // 2) % self._y.size]

        # --- metrics: collect this step's values; judge them at the end of each block ------
        if vl is not None:
            self._metric_add("val_loss", step, vl)
        for name, v in mets.items():
            if name != "val_loss" or vl is None:
                self._metric_add(name, step, v)
        if n % self._check_every == 0:
            self._metric_check()

        # --- window checks every `check_every` steps (O(W)) -----------------------------
        if n >= 4 and (n % self._check_every == 0 or math.isnan(self._sigma)):
            self._window_check()

        # --- diverging ---------------------------------------------------------------------
        div_ev = self._diverging_evidence(level)
        if div_ev is not None:
            self._div_count += 1
            if self._div_count == 1:
                self._div_onset = self._onset(step, div_ev)
        else:
            if self._div_count >= self._patience and level - self._best < math.log(self._diverge_ratio):
                # a reported diverging episode ended with the level back near the best
                self._recovered = (self._recovered + [[int(self._div_onset), n]])[-8:]
            self._div_count = 0
            self._div_onset = None
        if div_ev is not None and self._div_count >= self._patience:
            d = self._make("diverging", self._div_onset, step, div_ev)
        elif self._slow_verdict in ("diverging", "fluctuating"):
            d = self._make(self._slow_verdict, self._slow_onset, step, dict(self._slow_evidence))
        elif self._metric_flags:  # a metric swinging without progress outranks a flat loss
            onset, ev = self._metric_verdict()
            d = self._make("fluctuating", onset, step, ev)
        elif self._slow_verdict != "healthy":
            d = self._make(self._slow_verdict, self._slow_onset, step, dict(self._slow_evidence))
        else:
            d = Diagnosis(
                "healthy",
                None,
                None,
                self._base_evidence(),
                (),
                f"no problem detected after {n} observations",
            )
        if mets:
            ev = dict(d.evidence)
            for name, v in mets.items():
                if not math.isfinite(v):
                    ev[f"nonfinite_metric_{name}"] = v
            if ev != d.evidence:
                d = Diagnosis(d.verdict, d.step, d.detected_at, ev, d.advice, d.message)
        return self._set(d)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``{"config": ..., "state": ...}`` (plain JSON types)."""
        state = {
            "y": self._y.state(),
            "gn": self._gn.state(),
            "n": self._n,
            "last_step": self._last_step,
            "first_step": self._first_step,
            "first": list(self._first),
            "first_window": list(self._first_window),
            "gn_first": list(self._gn_first),
            "first_window_steps": list(self._first_window_steps),
            "early_checked": self._early_checked,
            "best": None if math.isinf(self._best) else self._best,
            "best_center_step": self._best_center_step,
            "best_window": None if math.isinf(self._best_window) else self._best_window,
            "lr_window": list(self._lr_window),
            "sigma": None if math.isnan(self._sigma) else self._sigma,
            "sigma_slow": None if math.isnan(self._sigma_slow) else self._sigma_slow,
            "div_count": self._div_count,
            "div_onset": self._div_onset,
            "recovered": [list(e) for e in self._recovered],
            "slow_verdict": self._slow_verdict,
            "slow_onset": self._slow_onset,
            "slow_evidence": dict(self._slow_evidence),
            "nan_step": self._nan_step,
            "nan_what": self._nan_what,
            "lr": self._lr,
            "trend": list(self._trend),
            "metrics": {k: m.state() for k, m in self._metrics.items()},
            "metric_flags": {k: [o, dict(ev)] for k, (o, ev) in self._metric_flags.items()},
            "diagnosis": self._diag.to_dict(),
            "history": [h.to_dict() for h in self._history],
        }
        return {"config": self.config, "state": state}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`. The thresholds must match this doctor's."""
        if not isinstance(d, Mapping) or "config" not in d or "state" not in d:
            raise ValueError("Doctor.load_state_dict: expected a dict with keys 'config' and 'state' from state_dict()")
        saved = dict(d["config"])
        for k in ("metric_modes", "metric_window", "metric_swing", "metric_rel_swing"):
            # states saved before metrics were judged: they had the defaults
            saved.setdefault(k, Doctor.__init__.__kwdefaults__[k] if k != "metric_modes" else {})
        if saved != self._config:
            diff = {k: (saved.get(k), v) for k, v in self._config.items() if saved.get(k) != v}
            raise ValueError(f"Doctor.load_state_dict: config differs from this doctor's (saved, current): {diff}")
        s = d["state"]
        self.reset()
        self._y.load(s["y"])
        self._gn.load(s["gn"])
        self._n = int(s["n"])
        self._last_step = s["last_step"]
        self._first_step = s["first_step"]
        self._first = [float(v) for v in s["first"]]
        self._first_window = [float(v) for v in s["first_window"]]
        self._gn_first = [float(v) for v in s["gn_first"]]
        self._first_window_steps = [int(v) for v in s["first_window_steps"]]
        self._early_checked = bool(s["early_checked"])
        self._best = math.inf if s["best"] is None else float(s["best"])
        self._best_center_step = s["best_center_step"]
        self._best_window = math.inf if s["best_window"] is None else float(s["best_window"])
        self._lr_window = [float(v) for v in s["lr_window"]]
        self._sigma = math.nan if s["sigma"] is None else float(s["sigma"])
        self._sigma_slow = math.nan if s["sigma_slow"] is None else float(s["sigma_slow"])
        self._div_count = int(s["div_count"])
        self._trend = [float(v) for v in s.get("trend", self._trend)]
        self._div_onset = s["div_onset"]
        self._recovered = [[int(a), int(b)] for a, b in s["recovered"]]
        self._slow_verdict = s["slow_verdict"]
        self._slow_onset = s["slow_onset"]
        self._slow_evidence = {k: float(v) for k, v in s["slow_evidence"].items()}
        self._nan_step = s["nan_step"]
        self._nan_what = s["nan_what"]
        self._lr = s["lr"]
        self._diag = _diag_from_dict(s["diagnosis"])
        self._history = [_diag_from_dict(h) for h in s["history"]]
        self._metrics = {k: _Metric.from_state(m) for k, m in s.get("metrics", {}).items()}
        self._metric_flags = {
            k: [None if o is None else int(o), {a: float(b) for a, b in ev.items()}]
            for k, (o, ev) in s.get("metric_flags", {}).items()
        }
        if self._n:
            self._level = _median(self._y.last(min(self._short, self._n)))

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _as_float(name: str, v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"Doctor.observe: {name} must be a number, got {v!r}") from None

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

    def _initial_level(self) -> float:
        # the first loss is taken at the initial weights, before any update could blow up
        return min(self._first[0], _median(self._first)) if self._first else math.nan

    def _onset(self, step: int, ev: dict[str, float]) -> int:
        r"""Where the rise began (computed once, at the first diverging step; O(W^2) then).

        A continuous two-segment line is fitted by least squares to the window's log-losses,
        :math:`y_i \approx a + \beta t_i + \gamma \max(0, t_i - c)`, for every break ``c``; the
        break with the smallest residual and :math:`\gamma > 0` (the slope went up) gives the
        onset, the step after ``c``, if it fits significantly better than a single line
        (F-statistic > 25).
        Otherwise, if the window rises steadily (a single line with :math:`R^2 > 0.5`: a slow
        rise that began before it), the line is extrapolated back to the best level :math:`b`.
        Otherwise, if the loss jumped to a noisy higher level, the split ``c`` maximising
        :math:`(\operatorname{med}(y_{c..}) - \operatorname{med}(y_{..c}))\sqrt{c(n-c)/n}` (when
        the jump exceeds the diverging margin). Otherwise (e.g. a gradient-norm explosion with a
        still-falling loss), the step after the best level's median window centre.
        """
        y, steps = self._y.ordered()
        n = len(y)
        if "log_margin" in ev and n >= 6:
            t = np.arange(n, dtype=float)
            best_c, best_sse = None, math.inf
            ones = np.ones(n)
            X1 = np.column_stack([ones, t])
            c1, *_ = np.linalg.lstsq(X1, y, rcond=None)
            sse_line = float(np.sum((y - X1 @ c1) ** 2))
            for c in range(1, n - 2):
                X = np.column_stack([ones, t, np.maximum(0.0, t - c)])
                coef, *_ = np.linalg.lstsq(X, y, rcond=None)
                if coef[2] <= 0:
                    continue
                sse = float(np.sum((y - X @ coef) ** 2))
                if sse < best_sse:
                    best_c, best_sse = c, sse
            # keep the break only if it explains the data much better than one line (F statistic
            # with 1 and n - 3 degrees of freedom > 25: the best of ~W candidate breaks is taken,
            # so the usual F > 10 would let noise through)
            if best_c is not None and sse_line - best_sse > 25.0 * max(best_sse, 1e-12 * n) / (n - 3):
                return int(steps[best_c + 1])
            r2 = 1.0 - sse_line / max(float(np.sum((y - y.mean()) ** 2)), 1e-300)
            if c1[1] > 0 and r2 > 0.5 and not math.isinf(self._best):
                # a steady rise that began before the window: extrapolate the line back to the
                # best level (steps assumed evenly spaced within the window)
                t_cross = (self._best - c1[0]) / c1[1]
                spacing = (steps[-1] - steps[0]) / (n - 1)
                onset = int(round(steps[0] + (t_cross + 1) * spacing))
                lo = self._best_center_step + 1 if self._best_center_step is not None else int(steps[0])
                return int(min(max(onset, lo), step))
            # a jump to a noisy higher level: the split that best separates low from high medians
            c = np.arange(2, n - 1)
            shift = np.array([np.median(y[i:]) - np.median(y[:i]) for i in c]) * np.sqrt(c * (n - c) / n)
            i = int(np.argmax(shift))
            if shift[i] > 0 and np.median(y[c[i]:]) - np.median(y[: c[i]]) > ev["log_margin"]:
                return int(steps[c[i]])
        if self._best_center_step is None:
            return step
        return min(self._best_center_step + 1, step)

    def _base_evidence(self) -> dict[str, float]:
        ev: dict[str, float] = {}
        f = self._loss_floor
        if not math.isnan(self._level):
            ev["loss_level"] = math.exp(self._level) + f
        if not math.isinf(self._best):
            ev["best_loss_level"] = math.exp(self._best) + f
            ev["loss_ratio_to_best"] = math.exp(self._level - self._best)
        if self._first:
            ev["initial_loss_level"] = self._initial_level() + f
        if not math.isnan(self._sigma):
            ev["noise_sigma"] = self._sigma
        if self._lr is not None:
            ev["lr"] = self._lr
        return ev

    def _diverging_evidence(self, level: float) -> dict[str, float] | None:
        ev = None
        if self._first:
            log_rho = math.log(self._diverge_ratio)
            # during the first window, the very first loss (initial weights) is a reference too
            best = self._best
            if self._n < self._window:
                best = min(best, math.log(max(self._first[0], _TINY)))
            # the larger of the current and the slowly averaged noise: a window that happens to be
            # calm must not shrink the margin
            sig = 0.0 if math.isnan(self._sigma) else max(self._sigma, self._sigma_slow)
            sig_s = _MEDIAN_EFF * sig / math.sqrt(self._short)
            margin = max(log_rho, self._noise_z * sig_s)
            if self._n < self._window:  # noise and best are still poorly known: one more factor rho
                margin += log_rho
            rise = math.exp(level) - math.exp(best)
            L0 = self._initial_level()
            if level - best > margin and rise > self._min_rise * L0:
                ev = self._base_evidence()
                ev["log_margin"] = margin
                ev["log_best"] = best
                ev["rise_over_initial"] = rise / L0 if L0 > 0 else math.inf
        if self._gn.n >= self._short and self._gn_first:
            ref = _median(self._gn_first)
            cur = _median(self._gn.last(self._short))
            if ref > 0 and cur > self._grad_ratio * ref:
                ev = ev if ev is not None else self._base_evidence()
                ev["grad_norm_ratio"] = cur / ref
        if ev is not None and self._gn.n and self._gn_first and "grad_norm_ratio" not in ev:
            ref = _median(self._gn_first)
            if ref > 0:
                ev["grad_norm_ratio"] = _median(self._gn.last(self._short)) / ref
        return ev

    def _window_check(self) -> None:
        y, steps = self._y.ordered()
        W = self._window
        if len(y) >= 4:
            dy = np.diff(y)
            mad = float(np.median(np.abs(dy - np.median(dy))))
            self._sigma = _MAD_TO_SD * mad / math.sqrt(2.0)
            if len(y) >= W // 2:
                a = 0.1  # EMA of sigma^2 over checks
                prev = self._sigma**2 if math.isnan(self._sigma_slow) else self._sigma_slow**2
                self._sigma_slow = math.sqrt((1 - a) * prev + a * self._sigma**2)
        self._slow_verdict, self._slow_onset, self._slow_evidence = "healthy", None, {}
        # a blow-up in the first window that came back (the level may never have risen for long)
        if not self._early_checked and self._n >= self._short + 3:
            e = self._early_spike()
            if e is not None:
                self._early_checked = True
                ev = self._base_evidence()
                fw = self._first_window
                ev["early_max_ratio"] = max(fw) / min(fw[0], _median(fw[: self._short]))
                self._slow_verdict, self._slow_onset, self._slow_evidence = "diverging", e, ev
                return
            if self._n >= W:
                self._early_checked = True
        # loss spikes that came back: two or more diverging episodes recovered within 4 W steps
        recent = [e for e in self._recovered if e[1] >= self._n - 4 * W]
        if len(recent) >= 2:
            ev = self._base_evidence()
            ev["recovered_episodes"] = float(len(recent))
            self._slow_verdict, self._slow_onset, self._slow_evidence = "fluctuating", recent[0][0], ev
            return
        if self._n < W or math.isinf(self._best):
            return
        M = float(np.median(np.exp(y)))
        self._best_window = min(self._best_window, M)
        if self._lr is not None:
            self._lr_window = (self._lr_window + [self._lr])[-(W // self._check_every + 1):]
        L0 = self._initial_level()
        sig = self._sigma
        # fluctuating: spikes far above the best, and no progress over the window
        spike_margin = max(math.log(self._diverge_ratio), self._noise_z * sig / 2.0)
        thr = max(self._best, float(np.median(y))) + spike_margin
        best_raw = math.exp(self._best)
        spikes = (y > thr) & (np.exp(y) - best_raw > self._min_rise * L0)
        frac = float(spikes.mean())
        h = W // 2
        progress = float(np.median(y[:h]) - np.median(y[h:]))
        prog_thr = max(math.log1p(self._progress_tol), 2 * _MEDIAN_EFF * sig * math.sqrt(2.0 / W))
        ev = self._base_evidence()
        ev["spike_fraction"] = frac
        ev["window_log_progress"] = progress
        dm = np.diff(y)
        signs = np.sign(dm[dm != 0])
        ev["osc_index"] = float(np.mean(signs[1:] != signs[:-1])) if len(signs) > 1 else 0.0
        # separate spike episodes (runs of consecutive spikes); a steady rise is one episode
        episodes = int(spikes[0]) + int(np.sum(spikes[1:] & ~spikes[:-1]))
        ev["spike_episodes"] = float(episodes)
        level_back = self._level - self._best <= max(math.log(self._diverge_ratio), self._noise_z * _MEDIAN_EFF * sig / math.sqrt(self._short))
        if frac >= self._spike_frac and episodes >= 2 and level_back and progress < prog_thr:
            self._slow_verdict = "fluctuating"
            self._slow_onset = int(steps[int(np.argmax(spikes))])
            self._slow_evidence = ev
            return
        # flat: never really started to decrease
        # (not while the LR is still rising by half or more over a window: a warmup starts flat)
        warming_up = len(self._lr_window) > 1 and self._lr_window[-1] > 1.5 * self._lr_window[0]
        if self._n >= self._flat_steps and not warming_up:
            R = _median(self._first_window)
            R0 = max(_median(self._first), R)
            rel = (R - M) / R if R > 0 else 0.0
            best_raw_rel = (R0 - M) / R0 if R0 > 0 else 0.0
            # the start (median of s losses) is noisier than a window median: its own tolerance,
            # 3 sd of the difference of a median of s and a median of W
            tol0 = min(0.5, max(2 * self._flat_tol, 1.0 - math.exp(-3.0 * _MEDIAN_EFF * sig * math.sqrt(1.0 / self._short + 1.0 / W))))
            # a decrease within 4 noise sd of the difference of two window medians is no decrease
            tol = min(0.3, max(self._flat_tol, 1.0 - math.exp(-4.0 * _MEDIAN_EFF * sig * math.sqrt(2.0 / W))))
            trend_t, trend_rel = self._trend_since_start()
            ev["trend_t"] = trend_t
            # a clear downward trend since the start (least-squares slope of log-loss more than
            # 4 standard errors below 0, fitted decrease above flat_tol) is progress, however noisy
            # the two window medians are
            decreasing = trend_t < -4.0 and trend_rel > self._flat_tol
            if rel < tol and best_raw_rel < tol0 and not decreasing:
                ev["relative_progress"] = rel
                ev["best_relative_progress"] = best_raw_rel
                early = self._early_spike()
                # stuck after an unstable start: the gradient norm (or the noise) collapsed while
                # the loss made no progress -- saturated/dead units, the LR was too high
                gn_drop = math.nan
                if self._gn.n >= self._short and self._gn_first:
                    ref = _median(self._gn_first)
                    cur = _median(self._gn.last(self._short))
                    gn_drop = ref / cur if cur > 0 else math.inf
                fw = np.log(np.maximum(np.array(self._first_window), _TINY))
                d0 = np.diff(fw)
                sig0 = _MAD_TO_SD * float(np.median(np.abs(d0 - np.median(d0)))) / math.sqrt(2.0)
                noise_drop = sig0 / sig if sig > 0 else math.inf
                if early is None and (gn_drop > 3.0 or (noise_drop > 3.0 and sig0 > 0.05)):
                    early = self._first_step
                    ev["grad_norm_drop"] = gn_drop
                    ev["noise_drop"] = noise_drop
                if early is not None:
                    # blew up in the first window, then stuck: a dead network, the LR is too high
                    ev["early_max_ratio"] = max(self._first_window) / L0 if L0 > 0 else math.inf
                    ev["stuck"] = 1.0
                    self._slow_verdict = "diverging"
                    self._slow_onset = early
                else:
                    self._slow_verdict = "flat"
                    self._slow_onset = self._first_step
                self._slow_evidence = ev

    def _metric_add(self, name: str, step: int, value: float) -> None:
        """Queue one evaluation of a metric into the current block (non-finite values are skipped)."""
        mode = self._mode_cache.get(name)
        if mode is None:
            mode = self._mode_cache[name] = _metric_mode(name, self._metric_modes)
        if mode == "ignore" or not math.isfinite(value):
            return
        m = self._metrics.get(name)
        if m is None:
            m = self._metrics[name] = _Metric()
        m.pending.append(value)
        m.pending_steps.append(step)

    def _metric_check(self) -> None:
        """End of a block: push each metric's block median and judge the metrics that got one."""
        M = self._metric_window
        for name, m in self._metrics.items():
            if not m.pending:
                continue
            value = _median(m.pending)
            if len(m.pending) >= 3:  # a dense metric: the noise of this block's median
                mad = _median([abs(x - value) for x in m.pending])
                m.noise = (m.noise + [_MEDIAN_EFF * _MAD_TO_SD * mad / math.sqrt(len(m.pending))])[-M:]
            m.vals.append(value)
            m.steps.append(m.pending_steps[-1])
            m.pending, m.pending_steps = [], []
            mode = self._mode_cache[name]
            if len(m.vals) > M:
                old = m.vals.pop(0)
                m.steps.pop(0)
                better = max if mode == "max" else min
                m.best_out = old if m.best_out is None else better(m.best_out, old)
            self._metric_flags.pop(name, None)
            if len(m.vals) < _METRIC_MIN_OBS:
                continue
            res = _metric_oscillation(
                np.array(m.vals),
                mode=mode,
                name=name,
                swing=self._metric_swing,
                rel_swing=self._metric_rel_swing,
                best_before=m.best_out,
                block_noise=_median(m.noise) if m.noise else None,
                judge_signed=name in self._metric_modes,
            )
            if res is None:
                continue
            best = max(m.vals) if mode == "max" else min(m.vals)
            if m.best_out is not None:
                best = max(best, m.best_out) if mode == "max" else min(best, m.best_out)
            ev = {
                "metric_amplitude": res["amplitude"],
                "metric_amplitude_threshold": res["threshold"],
                "metric_net_progress": res["net_progress"],
                "metric_oscillation_ratio": res["ratio"],
                "metric_reversals": res["reversals"],
                "metric_best_gain": res["best_gain"],
                "metric_observations": float(len(m.vals)),
                "metric_median": _median(m.vals),
                "metric_best": best,
                "metric_higher_is_better": 1.0 if mode == "max" else 0.0,
                "metric_scale": res["scale"],
            }
            self._metric_flags[name] = [m.steps[int(res["onset_index"])], ev]

    def _metric_verdict(self) -> tuple[int | None, dict[str, float]]:
        """The fluctuating metrics, most severe (largest swing over its threshold) first."""
        def severity(name: str) -> float:
            ev = self._metric_flags[name][1]
            return ev["metric_amplitude"] / ev["metric_amplitude_threshold"]

        names = sorted(self._metric_flags, key=lambda k: (-severity(k), k))
        onset, ev = self._metric_flags[names[0]]
        out = self._base_evidence()
        out.update(ev)
        for k in names:
            out[f"oscillating_metric:{k}"] = severity(k)
        return onset, out

    def _trend_since_start(self) -> tuple[float, float]:
        """Least-squares fit :math:`y_i = a + b\\,i` of log-loss on the observation index since the
        start: returns ``(t, d)``, the slope's t-statistic :math:`b / \\mathrm{se}(b)` and the
        fitted relative decrease :math:`d = 1 - e^{b (n-1)}` over the ``n`` observations."""
        n, st, stt, sy, sty, syy = self._trend
        if n < 3:
            return 0.0, 0.0
        sxx = stt - st * st / n
        sxy = sty - st * sy / n
        syy_c = syy - sy * sy / n
        if sxx <= 0:
            return 0.0, 0.0
        b = sxy / sxx
        resid = max(syy_c - b * sxy, 0.0) / (n - 2)
        se = math.sqrt(resid / sxx)
        t = b / se if se > 0 else (-math.inf if b < 0 else (math.inf if b > 0 else 0.0))
        return float(t), float(1.0 - math.exp(b * (n - 1)))

    def _early_spike(self) -> int | None:
        """First step of the first window whose loss exceeds ``max(rho**2, exp(6 sigma0)) * L_i``,
        as two of three consecutive losses do
        (``sigma0`` the noise of that window, ``L_i`` the lowest 3-point running median of the
        losses before step ``i``, but at least ``L0 = min(first loss, median of the first s
        losses)``).

        Comparing each loss with the best before it makes this a test of a *rise*: a run whose loss
        falls fast from a high start (a geometric decay) has no loss above its earlier best, while
        a blow-up does, however long it lasts. The floor ``L0`` keeps a noisy start from making
        ordinary noise look like a rise."""
        fw = np.array(self._first_window)
        yw = np.log(np.maximum(fw, _TINY))
        dy = np.diff(yw)
        sig0 = _MAD_TO_SD * float(np.median(np.abs(dy - np.median(dy)))) / math.sqrt(2.0)
        factor = max(self._diverge_ratio**2, math.exp(6.0 * sig0))
        # the best *robust* level before step i: the running minimum of 3-point medians that end
        # before i, so one low outlier batch does not lower the bar
        m3 = fw.copy()
        if len(fw) >= 3:
            m3[1:-1] = np.median(np.stack([fw[:-2], fw[1:-1], fw[2:]]), axis=0)
        best_before = np.full(len(fw), np.inf)
        if len(fw) >= 2:
            best_before[1] = fw[0]
        if len(fw) >= 3:
            best_before[2:] = np.minimum(fw[0], np.minimum.accumulate(m3)[: len(fw) - 2])
        # ... but never below the start level L0 = min(first loss, median of the first s losses):
        # a noisy start must not turn ordinary noise into a "rise" (L0 <= first loss, so a real
        # blow-up above rho**2 times the first loss is still caught)
        L0 = min(float(fw[0]), float(np.median(fw[: self._short])))
        best_before = np.maximum(best_before, L0)
        high = (fw > factor * best_before) & (fw - best_before > self._min_rise * fw[0])
        # two of three consecutive losses at least: outlier batches here and there are no blow-up
        for i in range(len(high) - 2):
            if int(high[i]) + int(high[i + 1]) + int(high[i + 2]) >= 2:
                return int(self._first_window_steps[i if high[i] else i + 1])
        return None

    def _nan_diagnosis(self, step: int, loss: float, gn: float | None, vl: float | None) -> Diagnosis:
        ev = self._base_evidence()
        ev["loss"] = loss
        if gn is not None:
            ev["grad_norm"] = gn
        if vl is not None:
            ev["val_loss"] = vl
        advice = [
            _scaled(self._lr, 10, "lower"),
            "clip gradients (e.g. max norm 1.0)",
            "add warmup" if self._n < 2 * self._window else "check the data and the loss for inf/NaN (e.g. log(0), division by zero)",
            "with fp16, use bf16 or a loss scaler",
        ]
        if self._div_count > 0 and self._div_onset is not None:
            ev["rising_since_step"] = float(self._div_onset)
        msg = f"the {self._nan_what} at step {step}" + (f" (LR {_fmt_lr(self._lr)})" if self._lr is not None else "")
        return Diagnosis("nan", step, step, ev, tuple(advice), msg[0].upper() + msg[1:] + ".")

    def _make(self, verdict: str, onset: int | None, step: int, ev: dict[str, float]) -> Diagnosis:
        lr = self._lr
        if verdict == "diverging":
            advice = [_scaled(lr, 10, "lower")]
            if onset is not None and self._first_step is not None and self._n <= 2 * self._window:
                advice.append("add warmup (e.g. 5-10% of the steps)")
            if "grad_norm_ratio" in ev and ev["grad_norm_ratio"] > self._grad_ratio:
                advice.insert(1, "clip gradients (e.g. max norm 1.0)")
            else:
                advice.append("clip gradients (e.g. max norm 1.0)")
            ratio = ev.get("loss_ratio_to_best", math.nan)
            why = (
                f"the loss level is {ratio:.3g}x its best"
                if math.isfinite(ratio) and ratio > 1
                else f"the gradient norm is {ev.get('grad_norm_ratio', math.nan):.3g}x its initial value"
            )
            msg = f"The loss is diverging since step {onset}: {why}."
            if "grad_norm_drop" in ev:
                msg = (
                    "The loss has not decreased since an unstable start (gradient norm fell "
                    f"{ev['grad_norm_drop']:.3g}x, noise fell {ev['noise_drop']:.3g}x): units likely saturated or died."
                )
            elif "early_max_ratio" in ev:
                msg = (
                    f"The loss blew up to {ev['early_max_ratio']:.3g}x its initial value at step {onset} and has "
                    "not decreased since (the network is likely dead)."
                )
        elif verdict == "fluctuating" and "metric_amplitude" in ev:
            names = [k.split(":", 1)[1] for k in ev if k.startswith("oscillating_metric:")]
            advice = [
                _scaled(lr, 3, "lower"),
                "add warmup (e.g. 5-10% of the steps)",
                "use a larger batch (or a decaying schedule, e.g. cosine)",
            ]
            quoted = [repr(k) for k in names]
            what = quoted[0] if len(names) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
            A, scale = ev["metric_amplitude"], ev.get("metric_scale", 0.0)
            by = {1.0: f"a factor {math.exp(A):.3g}", 2.0: f"{100 * A:.0f}% of its median"}.get(scale, f"{A:.3g}")
            msg = (
                f"{what} {'is' if len(names) == 1 else 'are'} fluctuating without progress: {quoted[0]} swings by {by} "
                f"between evaluations, with no new best over its last {ev['metric_observations']:.0f} evaluations."
            )
        elif verdict == "fluctuating":
            advice = [
                _scaled(lr, 3, "lower"),
                "use a decaying schedule (e.g. cosine) or a larger batch",
                "clip gradients (e.g. max norm 1.0)",
            ]
            if "recovered_episodes" in ev:
                msg = (
                    f"The loss is fluctuating: it rose far above its best and came back "
                    f"{ev['recovered_episodes']:.0f} times in the last {4 * self._window} steps."
                )
            else:
                msg = (
                    f"The loss is fluctuating without progress: {100 * ev.get('spike_fraction', 0):.0f}% of the last "
                    f"{self._window} steps spiked far above its best."
                )
        elif verdict == "flat":
            rel = ev.get("relative_progress", 0.0)
            advice = [
                _scaled(lr, 10 if rel < 0.02 else 3, "raise"),
                "run an LR range test (lrkit find)",
                "check that gradients reach the parameters (frozen layers, zero grad norm)",
            ]
            msg = f"The loss is flat: it moved {100 * rel:.1f}% of its initial level in {self._n} steps."
        else:  # pragma: no cover - internal
            raise ValueError(f"unknown verdict {verdict!r}")
        return Diagnosis(verdict, onset, step, ev, tuple(advice), msg)


def _diag_from_dict(d: Mapping[str, Any]) -> Diagnosis:
    ev = {k: (math.nan if v is None else float(v)) for k, v in d["evidence"].items()}
    return Diagnosis(d["verdict"], d["step"], d["detected_at"], ev, tuple(d["advice"]), d["message"])
