r"""What every sign shares: the :class:`Track` of the loss (level, best, noise), the
:class:`Sign` base class, the :class:`Finding` a sign raises and small numeric helpers.

The :class:`Track` holds the statistics several signs read, computed once per step on the log
of the loss above its floor, :math:`y_t = \log(\ell_t - f)`  (``W`` = ``window``,
``s`` = ``short``):

.. math::

    m_t = \operatorname{median}(y_{t-s+1..t}) \quad\text{(level)},\qquad
    b_t = \min_{u \le t} m_u \quad\text{(best level; medians of at least 5 losses, or } s\text{)}

    \sigma = 1.4826 \cdot \operatorname{MAD}(\Delta y_{t-W+1..t}) / \sqrt 2
    \quad\text{(minibatch noise of } y\text{; differencing removes the trend)}

    \sigma_s = 1.2533\, \max(\sigma, \bar\sigma) / \sqrt{s}
    \quad\text{(noise of a median of } s\text{;}\ \bar\sigma^2 \text{ an EMA (0.1) of } \sigma^2
    \text{ over the window checks)}

and :math:`L_0 = \min(\ell_1, \operatorname{median}(\ell_{1..s}))`, the initial loss level (above
the floor). A sign is a small object with its own state: :meth:`Sign.observe` sees every step,
:meth:`Sign.check` runs at the window checks (every ``check_every`` steps), and
:attr:`Sign.finding` is its current :class:`Finding` (or ``None``). The
:class:`~lrkit.doctor.core.Doctor` ranks the findings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["Finding", "Observation", "Sign", "Track"]

MAD_TO_SD = 1.4826  # MAD of a normal sample times this is its standard deviation
MEDIAN_EFF = 1.2533  # sd(median of n normals) ~ 1.2533 * sd / sqrt(n)
TINY = 1e-30


def median(xs: list[float]) -> float:
    """Median of a short list (pure Python; faster than NumPy below ~50 numbers)."""
    xs = sorted(xs)
    n = len(xs)
    h = n // 2
    return xs[h] if n % 2 else 0.5 * (xs[h - 1] + xs[h])


#: the best level is a median of at least this many losses (or of ``short``, when fewer): two
#: losses drawn 2.5 sd low in a row set a median of three that far under a flat run's level, and a
#: flat noisy run was then "diverging" from its first steps (5 in 1200 simulated flat runs of 400
#: steps at log-noise 0.2-0.4; 0 with five); a median of five needs three such draws. A blow-up in
#: the first steps is measured against the very first loss (:mod:`lrkit.doctor.signs.diverging`)
BEST_MIN_LOSSES = 5
#: an LR falling this many times in one observation, from at least CUT_FROM of the run's peak, is a cut
#: (a guard's rollback, a step schedule): :attr:`Track.lr_peak` starts again from it
CUT, CUT_FROM = 5.0, 0.2

#: losses up to the best level's median that re-estimate the noise at the best (see ``update_noise``)
BEST_NOISE_ROWS = 8


def diff_noise(y: np.ndarray) -> float:
    """:math:`1.4826\\,\\operatorname{MAD}(\\Delta y)/\\sqrt 2`: the noise sd of ``y``, trend removed."""
    dy = np.diff(y)
    return MAD_TO_SD * float(np.median(np.abs(dy - np.median(dy)))) / math.sqrt(2.0)


def fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


#: an LR this many times under the run's peak so far is a schedule's decay: advice names the peak
PEAK_RATIO = 1.5


def scaled(lr: float | None, factor: float, word: str, peak: float | None = None) -> str:
    """'lower the LR about 10x, from 0.3 to 0.03' (or without numbers when the LR is unknown).

    With ``peak`` (the highest LR of the run so far, :attr:`Track.lr_peak`) at least
    :data:`PEAK_RATIO` times ``lr``, the LR was scheduled down since: the advice scales the peak
    -- the number the user set -- and says where the schedule is now (a linear decay's last LR is
    near 0, and "raise it 10x" from there would advise an LR below the one that was too low).

    Example:
        >>> scaled(1e-4, 10, "raise")
        'raise the LR about 10x, from 0.0001 to 0.001'
        >>> scaled(5e-9, 10, "raise", peak=1e-6)
        'raise the LR about 10x, from its peak 1e-06 to 1e-05 (the schedule has it at 5e-09 now)'
    """
    n = int(round(factor)) if factor >= 1 else factor
    if lr is None or not math.isfinite(lr) or lr <= 0:
        return f"{word} the LR about {n}x"
    now = ""
    if peak is not None and math.isfinite(peak) and peak >= PEAK_RATIO * lr:
        lr, now = peak, f" (the schedule has it at {fmt_lr(lr)} now)"
    new = lr / factor if word == "lower" else lr * factor
    return f"{word} the LR about {n}x, from {'its peak ' if now else ''}{fmt_lr(lr)} to {fmt_lr(new)}{now}"


def nan_none(x: float) -> float | None:
    return None if (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else x


#: metric names read as "the validation loss" when no ``val_loss`` is passed (lower-cased)
VALIDATION_LOSS_NAMES = (
    "val_loss", "eval_loss", "valid_loss", "validation_loss", "test_loss",
    "val/loss", "eval/loss", "valid/loss", "validation/loss", "loss/val", "loss/valid", "loss/validation",
)


def validation_loss(obs: "Observation") -> float | None:
    """The validation loss of this step: ``val_loss``, else a metric named as in
    :data:`VALIDATION_LOSS_NAMES` (e.g. Hugging Face's ``eval_loss``), else ``None``."""
    if obs.val_loss is not None:
        return obs.val_loss
    for name, v in obs.metrics.items():
        if name.lower() in VALIDATION_LOSS_NAMES:
            return v
    return None


class Ring:
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
        """The last ``k`` values, oldest first."""
        k = min(k, self.n)
        p = self.pos
        if k <= p:
            return self.vals[p - k : p]
        return self.vals[self.size - (k - p) :] + self.vals[:p]

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, steps)``, oldest first."""
        if self.n < self.size:
            return np.array(self.vals[: self.n]), np.array(self.steps[: self.n])
        idx = list(range(self.pos, self.size)) + list(range(self.pos))
        return np.array([self.vals[i] for i in idx]), np.array([self.steps[i] for i in idx])

    def state(self) -> dict[str, Any]:
        v, s = self.ordered()
        return {"vals": v.tolist(), "steps": s.astype(int).tolist()}

    def load(self, d: Mapping[str, Any]) -> None:
        self.__init__(self.size)  # type: ignore[misc]
        for s, v in zip(d["steps"], d["vals"]):
            self.push(int(s), float(v))


@dataclass(frozen=True)
class Observation:
    """One step as the signs see it (the loss already checked finite and above its floor)."""

    step: int
    loss: float
    lr: float | None = None
    grad_norm: float | None = None
    val_loss: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Finding:
    """What a sign raises: a verdict, the step where the problem began, and the numbers.

    Attributes:
        verdict: one of :data:`lrkit.doctor.VERDICTS` or :data:`lrkit.doctor.INFORMATIONAL`.
        onset: the step where the problem began (``None`` when unknown).
        evidence: the numbers behind it.
    """

    verdict: str
    onset: int | None
    evidence: dict[str, float]


class Track:
    """The shared statistics of the loss (and gradient norm) that the signs read.

    Updated by the :class:`~lrkit.doctor.core.Doctor` before the signs see a step:
    :meth:`push` every step, :meth:`update_noise` at each window check.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.window = int(config["window"])
        self.short = int(config["short"])
        self.check_every = int(config["check_every"])
        self.diverge_ratio = float(config["diverge_ratio"])
        self.noise_z = float(config["noise_z"])
        self.min_rise = float(config["min_rise"])
        self.loss_floor = float(config["loss_floor"])
        self.reset()

    def reset(self) -> None:
        W = self.window
        self.y = Ring(W)  # log(loss - floor)
        self.gn = Ring(W)  # gradient norms
        self.lrs = Ring(W)  # the LR of each loss in `y` (nan while no LR was ever logged)
        self.n = 0
        self.last_step: int | None = None
        self.first_step: int | None = None
        self.first: list[float] = []  # first `short` losses (above floor)
        self.first_window: list[float] = []  # first W losses (above floor)
        self.first_window_steps: list[int] = []
        self.gn_first: list[float] = []  # first `short` gradient norms
        self.best = math.inf  # best level b (log)
        self.best_center_step: int | None = None
        self.best_noise = math.nan  # the per-step noise sd (max(sigma, sigma_slow)) when the best level was set
        self.best_lr = math.nan  # the lowest LR of the losses of the best level
        self.sigma = math.nan  # noise sd of y (latest window)
        self.sigma_slow = math.nan  # its slow average (EMA over checks)
        self.lr: float | None = None
        self.lr_peak = math.nan  # the highest LR since the start, or since the last cut (see set_lr)
        self.level = math.nan

    # ------------------------------------------------------------------ updates
    def set_lr(self, lr: float) -> None:
        """This observation's LR; :attr:`lr_peak` follows the highest since the start, and starts
        again from a cut -- the LR falling :data:`CUT` times or more in one observation from at least
        :data:`CUT_FROM` of the peak (a guard's rollback, a step schedule; not a smooth decay's tail,
        whose last steps also halve it, from near 0)."""
        prev, peak = self.lr, self.lr_peak
        if not math.isfinite(lr):
            self.lr = lr
            return
        cut = prev is not None and math.isfinite(prev) and lr * CUT <= prev
        if cut and math.isfinite(peak) and prev >= CUT_FROM * peak:
            peak = math.nan
        self.lr, self.lr_peak = lr, lr if not peak >= lr else peak

    def push(self, step: int, above: float, gn: float | None) -> None:
        """One finite loss (above the floor) and its gradient norm: level and best."""
        y = math.log(max(above, TINY))
        self.n += 1
        self.y.push(step, y)
        self.lrs.push(step, math.nan if self.lr is None else self.lr)
        if len(self.first) < self.short:
            self.first.append(above)
        if len(self.first_window) < self.window:
            self.first_window.append(above)
            self.first_window_steps.append(step)
        if gn is not None:
            self.gn.push(step, gn)
            if len(self.gn_first) < self.short:
                self.gn_first.append(gn)
        k = min(self.short, self.n)
        level = median(self.y.last(k))
        self.level = level
        if level < self.best and k >= min(self.short, BEST_MIN_LOSSES):
            self.best = level
            # centre of the median's window: the level began rising after it
            self.best_center_step = self.y.steps[(self.y.pos - 1 - k // 2) % self.y.size]
            self.best_noise = math.nan if math.isnan(self.sigma) else max(self.sigma, self.sigma_slow if not math.isnan(self.sigma_slow) else 0.0)
            lrs = [v for v in self.lrs.last(k) if v == v]  # the LRs of the median's losses
            self.best_lr = min(lrs) if lrs else math.nan

    def check_due(self) -> bool:
        """A window check runs this step (every ``check_every`` steps, and early until the noise is known)."""
        return self.n >= 4 and (self.n % self.check_every == 0 or math.isnan(self.sigma))

    def update_noise(self) -> None:
        y, steps = self.y.ordered()
        if len(y) >= 4:
            self.sigma = diff_noise(y)
            if self.n <= self.window and not math.isnan(self.best_noise) and self.best_center_step is not None:
                # a best set early was judged against the noise of a few losses (often far under the
                # truth): until the first window is full, re-estimate it from more of the losses up to
                # the best's median (never from later ones: a run going wrong is noisier, and that
                # noise must not hide it)
                upto = y[steps <= self.best_center_step + self.short // 2]
                if len(upto) >= BEST_NOISE_ROWS:
                    self.best_noise = max(self.best_noise, diff_noise(upto))
            if len(y) >= self.window // 2:
                a = 0.1  # EMA of sigma^2 over checks
                prev = self.sigma**2 if math.isnan(self.sigma_slow) else self.sigma_slow**2
                self.sigma_slow = math.sqrt((1 - a) * prev + a * self.sigma**2)

    # ------------------------------------------------------------------ reads
    def initial_level(self) -> float:
        """:math:`L_0`: the first loss is taken at the initial weights, before any update could blow up."""
        return min(self.first[0], median(self.first)) if self.first else math.nan

    def sigma_short(self) -> float:
        """:math:`\\sigma_s`, the noise sd of the level (a median of ``short`` log-losses)."""
        sig = 0.0 if math.isnan(self.sigma) else max(self.sigma, self.sigma_slow)
        return MEDIAN_EFF * sig / math.sqrt(self.short)

    def max_lr(self, k: int) -> float:
        """The highest LR of the last ``k`` losses (nan when none was logged)."""
        return max((v for v in self.lrs.last(k) if v == v), default=math.nan)

    def lr_raised(self, lr: float | None = None) -> float:
        """How many times the LR (``lr``, default the current one) exceeds the LR at the best
        level (nan when either is unknown or the latter is 0)."""
        lr = self.lr if lr is None else lr
        if lr is None or math.isnan(self.best_lr) or self.best_lr <= 0:
            return math.nan
        return lr / self.best_lr

    def lr_around(self, step: int) -> tuple[float, float]:
        """``(before, since)``: the lowest LR of the ``short`` losses before ``step`` and the
        highest LR since ``step`` (nan when not logged)."""
        lrs, steps = self.lrs.ordered()
        before = lrs[steps < step][-self.short :]
        since = lrs[steps >= step]
        with np.errstate(invalid="ignore"):
            b = float(np.nanmin(before)) if np.isfinite(before).any() else math.nan
            a = float(np.nanmax(since)) if np.isfinite(since).any() else math.nan
        return b, a

    def base_evidence(self) -> dict[str, float]:
        ev: dict[str, float] = {}
        f = self.loss_floor
        if not math.isnan(self.level):
            ev["loss_level"] = math.exp(self.level) + f
        if not math.isinf(self.best):
            ev["best_loss_level"] = math.exp(self.best) + f
            ev["loss_ratio_to_best"] = math.exp(self.level - self.best)
        if self.first:
            ev["initial_loss_level"] = self.initial_level() + f
        if not math.isnan(self.sigma):
            ev["noise_sigma"] = self.sigma
        if self.lr is not None:
            ev["lr"] = self.lr
        return ev

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "y": self.y.state(),
            "gn": self.gn.state(),
            "lrs": self.lrs.state(),
            "best_lr": nan_none(self.best_lr),
            "n": self.n,
            "last_step": self.last_step,
            "first_step": self.first_step,
            "first": list(self.first),
            "first_window": list(self.first_window),
            "gn_first": list(self.gn_first),
            "first_window_steps": list(self.first_window_steps),
            "best": nan_none(self.best),
            "best_center_step": self.best_center_step,
            "best_noise": nan_none(self.best_noise),
            "sigma": nan_none(self.sigma),
            "sigma_slow": nan_none(self.sigma_slow),
            "lr": self.lr,
            "lr_peak": nan_none(self.lr_peak),
        }

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        self.reset()
        self.y.load(s["y"])
        self.gn.load(s["gn"])
        if "lrs" in s:
            self.lrs.load(s["lrs"])
        self.best_lr = math.nan if s.get("best_lr") is None else float(s["best_lr"])
        self.n = int(s["n"])
        self.last_step = s["last_step"]
        self.first_step = s["first_step"]
        self.first = [float(v) for v in s["first"]]
        self.first_window = [float(v) for v in s["first_window"]]
        self.gn_first = [float(v) for v in s["gn_first"]]
        self.first_window_steps = [int(v) for v in s["first_window_steps"]]
        self.best = math.inf if s["best"] is None else float(s["best"])
        self.best_center_step = s["best_center_step"]
        self.best_noise = math.nan if s.get("best_noise") is None else float(s["best_noise"])
        self.sigma = math.nan if s["sigma"] is None else float(s["sigma"])
        self.sigma_slow = math.nan if s["sigma_slow"] is None else float(s["sigma_slow"])
        self.lr = s["lr"]
        self.lr_peak = math.nan if s.get("lr_peak") is None else float(s["lr_peak"])
        if self.n:
            self.level = median(self.y.last(min(self.short, self.n)))


def grad_reference(track: Track) -> tuple[float, float] | None:
    """``(reference, current)`` gradient norm: the median of the window before the last ``s``
    norms and the median of the last ``s`` (``None`` until ``2 s`` norms are in).

    Example:
        >>> t = Track({"window": 10, "short": 3, "check_every": 2, "diverge_ratio": 2.0,
        ...            "noise_z": 8.0, "min_rise": 0.1, "loss_floor": 0.0})
        >>> for i, g in enumerate([0.06, 0.2, 0.5, 0.6, 0.7, 0.6, 9.0, 8.0, 7.0]):
        ...     t.push(i, 1.0, g)
        >>> grad_reference(t)
        (0.55, 8.0)
    """
    g = track.gn
    s = track.short
    if g.n < 2 * s:
        return None
    vals = g.last(g.n)  # oldest first
    return median(vals[:-s]), median(vals[-s:])


class Sign:
    """One sign of a bad (or finished) run: its own state, evidence and ``state_dict``.

    Subclasses set :attr:`name` (the key of their state and of ``Doctor.signs``), and override
    :meth:`observe` (every step), :meth:`check` (every window check), :meth:`explain` (advice
    and message of their finding) and :meth:`state_dict` / :meth:`load_state_dict`.
    :attr:`finding` is the sign's current :class:`Finding` or ``None``.
    """

    name = "sign"

    def __init__(self, track: Track, config: Mapping[str, Any]) -> None:
        self.track = track
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.finding: Finding | None = None

    def observe(self, obs: Observation) -> None:
        """Every step, after the :class:`Track` saw it (and its noise, on a window check)."""

    def check(self) -> None:
        """At every window check, after :meth:`observe`."""

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        """``(advice, message)`` of ``finding`` at ``step``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """This sign's state: keys unique among the Doctor's signs (plain JSON types)."""
        return {}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        """Resume from the Doctor's state (keys missing from an older state keep their reset value)."""
        self.reset()


def finding_state(f: Finding | None) -> list[Any] | None:
    return None if f is None else [f.verdict, f.onset, {k: float(v) for k, v in f.evidence.items()}]


def finding_from(s: Any) -> Finding | None:
    if s is None:
        return None
    v, o, ev = s
    return Finding(v, None if o is None else int(o), {k: float(x) for k, x in ev.items()})
