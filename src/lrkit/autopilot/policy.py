r"""The autopilot's choices, written down once: schedule shape, peak LR, guard and plateau policy.

Everything here is a pure function of the optimizer family and the run length :math:`T` (optimizer
steps); the evidence for each choice is cited next to it and measured in
``benchmarks/autopilot.py`` (BENCHMARKS.md, section "autopilot").

**Shape** (:func:`default_shape`). Warmup, then decay to zero:

.. math::

    s(t) = \begin{cases} (t + 1)/W & t < W \\ d\big((t - W)/(T - W)\big) & t \ge W \end{cases}
    \qquad W = \min\big(\lceil w\,T \rceil,\ W_{\max}\big)

=====================================  ====  ==========================  ========================
family                                 w     decay :math:`d(u)`          why
=====================================  ====  ==========================  ========================
adam, adamw, rmsprop, lion, muon,      5%    linear :math:`1 - u`        warmup: the second-moment
muon_adamw, unknown                                                      estimate is noisy for its
                                                                         first :math:`\approx
                                                                         2/(1-\beta_2)` steps (Ma &
                                                                         Yarats 2021); decay:
                                                                         linear-to-zero beat cosine
                                                                         across tasks (Defazio et
                                                                         al. 2023)
sgd, sgd_momentum                      5%    linear :math:`1 - u`        gradual warmup (Goyal et
                                                                         al. 2017: 5 of 90 epochs);
                                                                         the same linear decay
adagrad, adadelta                      2%    constant, then linear over  the accumulator already
                                             the last 20% (WSD)          decays the step as
                                                                         :math:`1/\sqrt{t}`; a late
                                                                         cooldown (Hägele et al.
                                                                         2024) instead of a second
                                                                         full decay
=====================================  ====  ==========================  ========================

The run length enters twice: the warmup is capped at :math:`W_{\max}` = 2000 steps
(:math:`2/(1-\beta_2)` for the usual :math:`\beta_2 = 0.999`), so a long run does not spend 5%
of itself warming up; and a run shorter than :data:`MIN_WARMUP_RUN` steps gets no warmup at all
(a handful of steps of warmup only delays it).

**Peak LR** (:func:`peak_factor`). The finder's suggestion :math:`\eta_f` is the LR of a good
*constant-LR* run. A schedule that decays spends its run below its peak, so its peak can be
higher. With :math:`\bar s` the mean of the shape over the run and :math:`\hat s` its maximum,

.. math::

    \eta_{peak} = \eta_f \cdot \big(\hat s / \bar s\big)^{\alpha}, \qquad \alpha = 1

(:math:`\alpha = 1` keeps the mean LR of the run equal to :math:`\eta_f`; :math:`\alpha=0`
would use :math:`\eta_f` as the peak). :math:`\alpha` was chosen on the development half of the
benchmark tasks only (see BENCHMARKS.md: 0.5 gave a median regret of 11%, 1 about 9% by
interpolation on the oracle grids, the finder's answer there being a median 0.5x the schedule's
best peak): for the default shapes :math:`\hat s/\bar s \approx 2`, so the peak is
:math:`\approx 2\,\eta_f`. The same rule scales a shape the user passes
(``shape=``): a constant shape gets :math:`\eta_f` itself.

**Guard** (:func:`guard_settings`, :func:`lowered_multiplier`). A snapshot every
:math:`\mathrm{clip}(\lfloor T/20 \rfloor, 5, 200)` healthy steps. On ``nan``/``diverging`` the
guard restores the last good state; the LR multiplier :math:`m` then becomes

.. math::

    m' = \min\big(m\,c,\ \eta_{auto} / \eta_{peak}\big),\qquad c = \begin{cases}
      1 & \text{the first problem of a healthy stretch (a bad batch is likelier: keep the LR)} \\
      \gamma = 0.5 & \text{a second one within } 2K \text{ steps} \\
      0.1 & \text{a blow-up in the first window, or a run stuck since one (no healthy stretch}\\
        & \text{came before it, and the LR is past the start's stability edge by an unknown factor)}
    \end{cases}

where :math:`\eta_{auto}` is the peak the autopilot itself would use (when a user-given scale
:math:`\eta_{peak}` is far too high, one rollback brings it straight back to the finder's value).

**Plateau.** With validation losses, :class:`~lrkit.schedules.ReduceOnPlateau` halves the LR
after 3 validations in a row without a 0.1% improvement (patience 2), never during the warmup;
a rollback restarts its count (the restored state is older than the best validation). It reads at
most one validation loss per :math:`T/20` steps (:func:`plateau_gap`): validations closer together
are averaged into the next reading, so that three readings span at least 15% of any run (read one by
one, validations every few steps halved the LR 13-22 times in a 440-step run).

Example:
    >>> s = default_shape("adamw", 1000)
    >>> s.total_steps, round(s(0), 3), s(49), s(999) < 0.01
    (1000, 0.02, 1.0, True)
    >>> round(peak_factor(s), 1)
    2.0
"""
from __future__ import annotations

import math

import numpy as np

from lrkit import schedules as S
from lrkit.scaling import FAMILIES
from lrkit.schedules.base import Schedule

__all__ = [
    "ALPHA",
    "CEILING",
    "GAMMA",
    "START_GAMMA",
    "MAX_WARMUP",
    "MIN_WARMUP_RUN",
    "PLATEAU_READS",
    "default_shape",
    "guard_settings",
    "lowered_multiplier",
    "lr_ceiling",
    "peak_factor",
    "plateau_gap",
    "plateau_settings",
    "shape_reason",
    "shape_stats",
]

#: exponent of the peak rule :math:`(\hat s/\bar s)^\alpha` (chosen on the development half).
ALPHA = 1.0
#: factor by which a rollback lowers the LR multiplier.
GAMMA = 0.5
#: ... and after a blow-up at the start (see :func:`lowered_multiplier`).
START_GAMMA = 0.1
#: the doctor's ``lr_ceiling`` is this many times the autopilot's own peak (see :func:`lr_ceiling`).
CEILING = 4.0
#: the warmup never exceeds this many steps (:math:`2/(1-\beta_2)`, :math:`\beta_2 = 0.999`).
MAX_WARMUP = 2000
#: runs shorter than this get no warmup.
MIN_WARMUP_RUN = 40

_ACCUMULATING = frozenset({"adagrad", "adadelta"})
_WARMUP_FRACTION = {"adagrad": 0.02, "adadelta": 0.02}
_DEFAULT_WARMUP_FRACTION = 0.05
_COOLDOWN_FRACTION = 0.2


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return family


def _check_steps(train_steps: object) -> int:
    if isinstance(train_steps, bool) or not isinstance(train_steps, (int, np.integer)) or train_steps < 1:
        raise ValueError(f"train_steps must be an integer >= 1 (optimizer steps of the whole run), got {train_steps!r}")
    return int(train_steps)


def warmup_steps(family: str, train_steps: int) -> int:
    """:math:`W = \\min(\\lceil w T\\rceil, W_{\\max})`, 0 below :data:`MIN_WARMUP_RUN` steps.

    Example:
        >>> warmup_steps("adam", 300), warmup_steps("adagrad", 300), warmup_steps("sgd", 30)
        (15, 6, 0)
        >>> warmup_steps("adamw", 1_000_000)
        2000
    """
    family, train_steps = _check_family(family), _check_steps(train_steps)
    if train_steps < MIN_WARMUP_RUN:
        return 0
    frac = _WARMUP_FRACTION.get(family, _DEFAULT_WARMUP_FRACTION)
    return int(min(math.ceil(frac * train_steps), MAX_WARMUP))


def default_shape(family: str, train_steps: int) -> Schedule:
    """The autopilot's schedule shape for ``family`` over ``train_steps`` steps, peak 1.0.

    See the module docstring for the table and the evidence. The shape is a plain
    :class:`~lrkit.schedules.Schedule` (JSON and CLI spec like any other).

    Example:
        >>> default_shape("sgd", 20).to_spec()
        'piecewise_linear(steps=[0, 20], lrs=[1.0, 0.0])'
        >>> default_shape("adagrad", 100)(90) < 1.0 == default_shape("adagrad", 100)(50)
        True
    """
    family, train_steps = _check_family(family), _check_steps(train_steps)
    w = warmup_steps(family, train_steps)
    # knots of a piecewise-linear shape; step t < W gets (t + 1) / W (the first update is not
    # wasted at LR 0) and the peak is reached at step W - 1
    steps, values = ([0, w - 1], [1.0 / w, 1.0]) if w > 1 else ([0], [1.0])
    if family in _ACCUMULATING:
        decay_start = max(steps[-1] + 1, train_steps - max(1, int(round(_COOLDOWN_FRACTION * train_steps))))
        if decay_start < train_steps:
            steps.append(decay_start)
            values.append(1.0)
    steps.append(max(train_steps, steps[-1] + 1))
    values.append(0.0)
    return S.piecewise_linear(steps, values)


def shape_reason(family: str, train_steps: int) -> str:
    """One sentence saying which shape :func:`default_shape` chose and why.

    Example:
        >>> shape_reason("adam", 300)
        'warmup 15 steps (5% of 300) then linear decay to 0: adaptive optimizers need a warmup while their second-moment estimate settles (Ma & Yarats 2021); linear-to-zero decay beat cosine across tasks (Defazio et al. 2023)'
    """
    w = warmup_steps(family, train_steps)
    warm = f"warmup {w} steps ({w / train_steps:.0%} of {train_steps})" if w else f"no warmup (a {train_steps}-step run)"
    if family in _ACCUMULATING:
        return (f"{warm}, constant, then linear decay over the last 20%: {family} already shrinks its "
                "steps as its accumulator grows, so only a late cooldown is added (Hägele et al. 2024)")
    if family in ("sgd", "sgd_momentum"):
        return (f"{warm} then linear decay to 0: a gradual warmup lets SGD reach its peak safely "
                "(Goyal et al. 2017); linear-to-zero decay beat cosine across tasks (Defazio et al. 2023)")
    return (f"{warm} then linear decay to 0: adaptive optimizers need a warmup while their "
            "second-moment estimate settles (Ma & Yarats 2021); linear-to-zero decay beat cosine "
            "across tasks (Defazio et al. 2023)")


def shape_stats(shape: Schedule, train_steps: int) -> tuple[float, float]:
    """``(peak, mean)`` of ``shape`` over steps ``0 .. train_steps - 1``.

    Raises:
        ValueError: the shape is zero everywhere, or negative or non-finite somewhere.

    Example:
        >>> shape_stats(S.linear(1.0, 0.0, 100), 100)
        (1.0, 0.505)
    """
    train_steps = _check_steps(train_steps)
    if not isinstance(shape, Schedule):
        raise ValueError(f"shape must be an lrkit.schedules.Schedule, got {type(shape).__name__}")
    values = shape(np.arange(train_steps))
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"shape must be finite and >= 0 over the run, got {shape.to_spec()}")
    peak = float(values.max())
    if peak <= 0:
        raise ValueError(f"shape is 0 over the whole run ({shape.to_spec()}); nothing to scale")
    return peak, float(values.mean())


def peak_factor(shape: Schedule, train_steps: int | None = None) -> float:
    """:math:`(\\hat s / \\bar s)^{\\alpha}`: how far above the finder's constant-LR answer the peak goes.

    Example:
        >>> peak_factor(S.constant(1.0), 100)
        1.0
    """
    steps = train_steps if train_steps is not None else shape.total_steps
    if steps is None:
        raise ValueError("peak_factor: the shape has no end; pass train_steps")
    peak, mean = shape_stats(shape, steps)
    return float((peak / mean) ** ALPHA)


def guard_settings(train_steps: int) -> dict:
    """Keyword arguments for :class:`~lrkit.doctor.guard.Guard` under the autopilot.

    Example:
        >>> guard_settings(300)
        {'snapshot_every': 15, 'lr_factor': 0.5, 'max_retries': 3}
    """
    train_steps = _check_steps(train_steps)
    return {"snapshot_every": int(min(200, max(5, train_steps // 20))), "lr_factor": GAMMA, "max_retries": 3}


#: most validation losses the plateau rule reads in a run (:func:`plateau_gap`): its patience was
#: set on runs validated every tenth of the run; every few steps, it halved the LR 13-22 times in a
#: 440-step run (Lightning, ``val_check_interval=0.1`` epoch) and cost 6% of the final validation loss
PLATEAU_READS = 20


def plateau_settings() -> dict:
    """Keyword arguments for :class:`~lrkit.schedules.ReduceOnPlateau` under the autopilot.

    Example:
        >>> plateau_settings()["patience"]
        2
    """
    return {"mode": "min", "factor": 0.5, "patience": 2, "threshold": 1e-3, "threshold_mode": "rel", "cooldown": 1}


def plateau_gap(train_steps: int) -> int:
    """Fewest steps between two validation losses the plateau rule reads (and from the warmup's end
    to the first): :math:`\\lfloor T / \\text{PLATEAU\\_READS} \\rfloor`. Validations closer together
    (every few steps) are averaged until the gap has passed, so that its patience, counted in
    readings, spans a similar share of any run.

    Example:
        >>> plateau_gap(1000), plateau_gap(10)
        (50, 1)
    """
    return max(1, _check_steps(train_steps) // PLATEAU_READS)


def lr_ceiling(auto_peak_lr: float | None) -> float | None:
    r"""The LR above which the doctor does not wait for the schedule to bring a rising loss back:
    :data:`CEILING` :math:`\times\,\eta_{auto}` (``None`` without a finder answer).

    The doctor excuses a loss that rises with a schedule's LR (a warmup, a restart) until the
    schedule decays. A user-given scale far above the autopilot's own peak (30x in the benchmark's
    ``lr_x30`` fault) would then be waited out through the whole decay; above 4x the autopilot's
    peak -- beyond the spread of the oracle's best peaks around it on the benchmark tasks, 0.4-2.7x
    -- a rise is judged at once.

    Example:
        >>> lr_ceiling(0.01), lr_ceiling(None)
        (0.04, None)
    """
    return None if auto_peak_lr is None else CEILING * float(auto_peak_lr)


def lowered_multiplier(multiplier: float, *, verdict: str, first: bool, auto_ratio: float | None,
                       unstable_start: bool = False) -> float:
    r"""The LR multiplier after a rollback (see the module docstring).

    Args:
        multiplier: the multiplier in force when the run went wrong.
        verdict: the doctor's verdict (``"nan"``, ``"diverging"``, ...).
        first: this is the first problem of a healthy stretch (no rollback in the last
            ``2 * snapshot_every`` steps, and the run got past the snapshot the last rollback
            restored): one bad batch is the likelier cause, and a lower LR would cost the rest of
            the run for nothing; a second problem soon after, or one that sends the run back to
            the same snapshot however slowly it came, lowers it.
        auto_ratio: :math:`\eta_{auto}/\eta_{peak}` (``None`` when the autopilot has no
            finder answer of its own); the multiplier never stays above it after a rollback.
        unstable_start: the run blew up in its first window, or has been stuck since such a
            blow-up: no healthy stretch came before (never ``first``), and the LR is past the
            stability edge of the start by an unknown factor: a decade (:data:`START_GAMMA`), as
            the guard's own default, not a halving (a finder answer 5x too high on unscaled
            wine/Adagrad blew up at step 1, was halved, blew up again and ended at 5.7x the
            oracle's loss; cut 10x once, at 1.6x).

    Example:
        >>> lowered_multiplier(1.0, verdict="nan", first=True, auto_ratio=1.0)
        1.0
        >>> lowered_multiplier(1.0, verdict="diverging", first=True, auto_ratio=1 / 30)
        0.03333333333333333
        >>> lowered_multiplier(0.5, verdict="diverging", first=False, auto_ratio=1.0)
        0.25
        >>> lowered_multiplier(1.0, verdict="diverging", first=True, auto_ratio=1.0, unstable_start=True)
        0.1
    """
    if unstable_start:
        lowered = multiplier * START_GAMMA
    else:
        lowered = multiplier if first else multiplier * GAMMA
    if auto_ratio is not None and auto_ratio < lowered:
        lowered = auto_ratio
    return float(lowered)
