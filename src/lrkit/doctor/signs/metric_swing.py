r"""Sign ``fluctuating`` of a metric: the validation loss or a metric swings without progress.

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
least every other time (up-down-up, not a single dip; the window's opening run of improving
moves is learning and not counted, so "better, worse, better again" is one dip), :math:`Q \ge 3` (the path is three
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

A metric that swings widely outranks a flat training loss: an LR too low barely moves the
weights, so it cannot make a validation metric jump between evaluations; the swings point to an
LR too high (or to a metric computed on too few samples, whose noise is above ``metric_swing``:
raise it, or ignore the metric in ``metric_modes``).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from lrkit.collapse import OUTPUT_SPREAD
from lrkit.doctor.signs._base import MAD_TO_SD, MEDIAN_EFF, Finding, Observation, Sign, median, scaled

__all__ = ["MetricSwing", "metric_mode", "metric_oscillation"]

_LOWER_IS_BETTER = ("loss", "error", "perplexity", "mse", "mae")
_UNBOUNDED = ("loss", "perplexity", "mse", "mae")  # never read as a fraction, even when <= 1
# words (split at non-alphanumerics) that name bookkeeping, not quality: not judged by default
_BOOKKEEPING = frozenset(
    "time runtime timestamp epoch epochs step steps lr learning momentum beta1 beta2 scale flos "
    "memory mem throughput tokens samples batch size norm grad count second seconds sec per gpu cpu".split()
)
METRIC_MIN_OBS = 6  # evaluations a metric needs before it can be called fluctuating
_METRIC_RATIO = 3.0  # path length over net progress (Q) that counts as going nowhere
_METRIC_NOISE_Z = 4.0  # the swing must exceed this many block-median noise sds (dense metrics)


def metric_mode(name: str, modes: Mapping[str, str]) -> str:
    """``"max"``, ``"min"`` or ``"ignore"`` for metric ``name`` (see the module docstring)."""
    if name in modes:
        return modes[name]
    if name == OUTPUT_SPREAD:  # the adapters' liveness probe (lrkit.doctor.signs.dead), not a quality
        return "ignore"
    low = name.lower()
    words = set(re.split(r"[^a-z0-9]+", low))
    if words & _BOOKKEEPING:
        return "ignore"
    return "min" if any(w in low for w in _LOWER_IS_BETTER) else "max"


def metric_oscillation(
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
    r"""Is this window of metric values oscillating without progress? (see the module docstring)

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
        >>> ev = metric_oscillation(np.array([0.2, 0.9] * 4), mode="max")
        >>> round(ev["amplitude"], 3), ev["onset_index"]
        (0.7, 2.0)
        >>> metric_oscillation(np.array([0.5, 0.7, 0.8, 0.86, 0.9, 0.91, 0.93, 0.92]), mode="max") is None
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
    # the window's opening descent is learning, not a leg of a swing: without it, a single dip
    # after learning (better, worse, better again) is one reversal, not two
    big = big[int(np.argmax(big <= 0)) if np.any(big <= 0) else len(big):]
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


class MetricSwing(Sign):
    """``fluctuating`` when the validation loss or a metric swings without progress.

    State: each metric's recent block medians (:class:`_Metric`) and the metrics flagged at
    their last judgement. Metric values are queued every step and judged every
    ``check_every`` observations (the end of a block).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=6)
        >>> for epoch in range(12):
        ...     d = doc.observe(epoch, 2.0 * 0.8 ** epoch, lr=0.3,
        ...                     metrics={"val_accuracy": 0.2 if epoch % 2 else 0.9})
        >>> d.verdict, d.evidence["oscillating_metric:val_accuracy"] > 1
        ('fluctuating', True)
    """

    name = "metric_swing"

    def reset(self) -> None:
        super().reset()
        self.modes: dict[str, str] = dict(self.config["metric_modes"])
        self.mode_cache: dict[str, str] = {}  # name -> "max" / "min" / "ignore"
        self.metrics: dict[str, _Metric] = {}  # val_loss and metrics: recent evaluations
        self.flags: dict[str, list[Any]] = {}  # name -> [onset step, evidence] while fluctuating

    def mode(self, name: str) -> str:
        """``"max"``, ``"min"`` or ``"ignore"`` for ``name`` (cached)."""
        m = self.mode_cache.get(name)
        if m is None:
            m = self.mode_cache[name] = metric_mode(name, self.modes)
        return m

    def observe(self, obs: Observation) -> None:
        if obs.val_loss is not None:
            self._add("val_loss", obs.step, obs.val_loss)
        for name, v in obs.metrics.items():
            if name != "val_loss" or obs.val_loss is None:
                self._add(name, obs.step, v)
        if self.track.n % self.track.check_every == 0:
            self._judge()
        self.finding = self._verdict() if self.flags else None

    def _add(self, name: str, step: int, value: float) -> None:
        """Queue one evaluation of a metric into the current block (non-finite values are skipped)."""
        if self.mode(name) == "ignore" or not math.isfinite(value):
            return
        m = self.metrics.get(name)
        if m is None:
            m = self.metrics[name] = _Metric()
        m.pending.append(value)
        m.pending_steps.append(step)

    def _judge(self) -> None:
        """End of a block: push each metric's block median and judge the metrics that got one."""
        M = self.config["metric_window"]
        for name, m in self.metrics.items():
            if not m.pending:
                continue
            value = median(m.pending)
            if len(m.pending) >= 3:  # a dense metric: the noise of this block's median
                mad = median([abs(x - value) for x in m.pending])
                m.noise = (m.noise + [MEDIAN_EFF * MAD_TO_SD * mad / math.sqrt(len(m.pending))])[-M:]
            m.vals.append(value)
            m.steps.append(m.pending_steps[-1])
            m.pending, m.pending_steps = [], []
            mode = self.mode(name)
            if len(m.vals) > M:
                old = m.vals.pop(0)
                m.steps.pop(0)
                better = max if mode == "max" else min
                m.best_out = old if m.best_out is None else better(m.best_out, old)
            self.flags.pop(name, None)
            if len(m.vals) < METRIC_MIN_OBS:
                continue
            res = metric_oscillation(
                np.array(m.vals),
                mode=mode,
                name=name,
                swing=self.config["metric_swing"],
                rel_swing=self.config["metric_rel_swing"],
                best_before=m.best_out,
                block_noise=median(m.noise) if m.noise else None,
                judge_signed=name in self.modes,
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
                "metric_median": median(m.vals),
                "metric_best": best,
                "metric_higher_is_better": 1.0 if mode == "max" else 0.0,
                "metric_scale": res["scale"],
            }
            self.flags[name] = [m.steps[int(res["onset_index"])], ev]

    def _verdict(self) -> Finding:
        """The fluctuating metrics, most severe (largest swing over its threshold) first."""
        def severity(name: str) -> float:
            ev = self.flags[name][1]
            return ev["metric_amplitude"] / ev["metric_amplitude_threshold"]

        names = sorted(self.flags, key=lambda k: (-severity(k), k))
        onset, ev = self.flags[names[0]]
        out = self.track.base_evidence()
        out.update(ev)
        for k in names:
            out[f"oscillating_metric:{k}"] = severity(k)
        return Finding("fluctuating", onset, out)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        ev = finding.evidence
        names = [k.split(":", 1)[1] for k in ev if k.startswith("oscillating_metric:")]
        advice = (
            scaled(self.track.lr, 3, "lower", self.track.lr_peak),
            "add warmup (e.g. 5-10% of the steps)",
            "use a larger batch (or a decaying schedule, e.g. cosine)",
        )
        quoted = [repr(k) for k in names]
        what = quoted[0] if len(names) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
        A, scale = ev["metric_amplitude"], ev.get("metric_scale", 0.0)
        by = {1.0: f"a factor {math.exp(A):.3g}", 2.0: f"{100 * A:.0f}% of its median"}.get(scale, f"{A:.3g}")
        msg = (
            f"{what} {'is' if len(names) == 1 else 'are'} fluctuating without progress: {quoted[0]} swings by {by} "
            f"between evaluations, and the later half of its last {ev['metric_observations']:.0f} evaluations "
            "brought no new best."
        )
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {
            "metrics": {k: m.state() for k, m in self.metrics.items()},
            "metric_flags": {k: [o, dict(ev)] for k, (o, ev) in self.flags.items()},
        }

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.metrics = {k: _Metric.from_state(m) for k, m in s.get("metrics", {}).items()}
        self.flags = {
            k: [None if o is None else int(o), {a: float(b) for a, b in ev.items()}]
            for k, (o, ev) in s.get("metric_flags", {}).items()
        }
        self.finding = self._verdict() if self.flags else None
