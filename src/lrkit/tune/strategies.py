r"""Search strategies as Optuna samplers: ``grid``, ``log``, ``random``, ``tpe`` and ``lrkit``.

=========  =================================================================================
strategy   what it tries (all on Optuna's samplers, except lrkit's line search)
=========  =================================================================================
grid       the given values (``optuna.samplers.GridSampler``); default half-decade points
           :math:`10^{k/2}` inside ``[low, high]``
log        powers of ten inside ``[low, high]`` (the classic log-scale sweep, ``GridSampler``)
random     log-uniform in ``[low, high]`` (``optuna.samplers.RandomSampler``)
tpe        Optuna's ``TPESampler`` over ``log10`` of the LR
lrkit      :class:`LrkitSampler`: the bracketing line search of :mod:`lrkit.tune._linesearch`
           started at the finder's suggestion (:class:`~lrkit.tune.prior.Prior`)
=========  =================================================================================

Example:
    >>> grid_values(1e-4, 1e-2, per_decade=1)
    [0.0001, 0.001, 0.01]
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from lrkit.tune._linesearch import next_point
from lrkit.tune.prior import Prior

__all__ = ["STRATEGIES", "LrkitSampler", "grid_points", "grid_values", "make_sampler"]

STRATEGIES = ("lrkit", "tpe", "random", "log", "grid")
LR = "lr"


def grid_values(low: float, high: float, per_decade: int = 2) -> list[float]:
    r"""Points :math:`10^{k/n}` (``n = per_decade``) inside ``[low, high]``, rounded to 12 digits."""
    k0 = math.ceil(math.log10(low) * per_decade - 1e-9)
    k1 = math.floor(math.log10(high) * per_decade + 1e-9)
    return [float(f"{10 ** (k / per_decade):.12g}") for k in range(k0, k1 + 1)]


def grid_points(strategy: str, low: float, high: float, values: Sequence[float] | None = None) -> list[float]:
    """The LRs of the ``grid`` or ``log`` strategy: ``values`` when given (sorted, repeats dropped),
    else :func:`grid_values` of ``[low, high]`` (two points a decade for ``grid``, one for ``log``).

    Example:
        >>> grid_points("grid", 1e-4, 1e-2, [1e-2, 1e-3, 1e-2])
        [0.001, 0.01]
        >>> grid_points("log", 1e-4, 1e-2)
        [0.0001, 0.001, 0.01]
    """
    if values is not None:
        return sorted({float(v) for v in values})
    pts = grid_values(low, high, 1 if strategy == "log" else 2)
    if not pts:
        raise ValueError(f"the {strategy} strategy has no grid point inside [{low:g}, {high:g}]; widen the range")
    return pts


class LrkitSampler(BaseSampler):
    """lrkit's line search in log-LR as an Optuna sampler (other parameters: ``fallback``).

    Each call reads the study's trials (so several workers sharing a storage cooperate): finished
    trials with their value, pruned ones with their last value carried to the end of the run by
    the best trial's ratio, diverged or failed ones as bad, running ones as taken, and asks
    :func:`lrkit.tune._linesearch.next_point` where to go next. When the interval is exhausted at
    its finest resolution it samples log-uniformly.

    Args:
        prior: the :class:`~lrkit.tune.prior.Prior` (centre, step, interval).
        seed: seed of the fallback sampler.
        fallback: sampler for parameters other than ``"lr"`` (default ``RandomSampler(seed)``).
    """

    def __init__(self, prior: Prior, *, seed: int | None = 0, fallback: BaseSampler | None = None) -> None:
        self.prior = prior
        self._fallback = fallback or RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if isinstance(param_distribution, CategoricalDistribution):
            return self._least_tried(study, param_name, param_distribution)
        if param_name != LR or not isinstance(param_distribution, FloatDistribution):
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        lo = max(math.log10(self.prior.low), math.log10(param_distribution.low))
        hi = min(math.log10(self.prior.high), math.log10(param_distribution.high))
        # one line search per combination of the other parameters (batch size, schedule family)
        others = {k: v for k, v in trial.params.items() if k != LR}
        same = [t for t in study.get_trials(deepcopy=False)
                if all(t.params.get(k) == v for k, v in others.items())]
        center = self.prior.center_for(others.get("batch_size"))
        obs = observations(same, exclude=trial.number,
                           maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)
        x = next_point(obs["finished"], obs["bad"], obs["pending"], x0=math.log10(center),
                       h=self.prior.step, lo=lo, hi=hi, diverged=obs["diverged"])
        if x is None:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        return float(min(max(10 ** x, param_distribution.low), param_distribution.high))


    @staticmethod
    def _least_tried(study: optuna.Study, name: str, dist: CategoricalDistribution) -> Any:
        """Categorical parameters in turn: the choice with the fewest trials so far."""
        counts = {i: 0 for i in range(len(dist.choices))}
        for t in study.get_trials(deepcopy=False):
            if name in t.params and t.params[name] in dist.choices:
                counts[dist.choices.index(t.params[name])] += 1
        return dist.choices[min(counts, key=lambda i: (counts[i], i))]


def _carried(trial: FrozenTrial, best: FrozenTrial | None, sign: float) -> float:
    """A pruned trial's last value times the best trial's (final / same-step) ratio."""
    if best is None or not trial.intermediate_values:
        return math.inf
    step, value = max(trial.intermediate_values.items())
    ref_steps = [s for s in best.intermediate_values if s <= step]
    if not ref_steps or not math.isfinite(value):
        return math.inf
    ref = best.intermediate_values[max(ref_steps)]
    final = best.value
    if not (math.isfinite(ref) and ref != 0 and final is not None):
        return math.inf
    return sign * value * (final / ref)


def observations(trials: Sequence[FrozenTrial], *, exclude: int | None = None, maximize: bool = False) -> dict:
    """Trials as line-search input: ``finished`` (x, signed y), ``bad``, ``pending``, ``diverged``."""
    sign = -1.0 if maximize else 1.0
    superseded = retried_numbers(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE and LR in t.params and t.value is not None]
    best = min(done, key=lambda t: sign * t.value) if done else None
    out: dict[str, list] = {"finished": [], "bad": [], "pending": [], "diverged": []}
    for t in trials:
        if t.number == exclude or LR not in t.params or t.number in superseded:
            continue
        x = math.log10(t.params[LR])
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            out["finished"].append((x, sign * t.value))
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            out["pending"].append(x)
        elif t.user_attrs.get("lrkit_diverged"):
            out["diverged"].append(x)
            out["bad"].append(x)
        elif t.state == TrialState.PRUNED:
            y = _carried(t, best, sign)
            if math.isfinite(y):
                out["finished"].append((x, y))
            else:
                out["bad"].append(x)
        else:
            out["bad"].append(x)
    return out


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials that were interrupted or went stale and were queued again."""
    out: set[int] = set()
    for t in trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", ()))
    return out


def make_sampler(strategy: str, *, low: float, high: float, seed: int | None = 0, prior: Prior | None = None,
                 values: Sequence[float] | None = None, extra: dict[str, list] | None = None) -> BaseSampler:
    """The Optuna sampler of a strategy (see the module docstring)."""
    if strategy == "lrkit":
        return LrkitSampler(prior or Prior.from_range(low, high), seed=seed)
    if strategy == "tpe":
        return TPESampler(seed=seed)
    if strategy == "random":
        return RandomSampler(seed=seed)
    if strategy in ("log", "grid"):
        return GridSampler({LR: grid_points(strategy, low, high, values), **(extra or {})}, seed=seed)
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
