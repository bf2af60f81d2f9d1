"""The cold-start verification's search: step 3 of :mod:`lrkit.finder.suggest` (candidate runs from
the caller's state, the bracketing walk in log-LR, the determinism probe) and the pick of step 4
(the parabola through the best candidate and its neighbours)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from lrkit.collapse import COLLAPSED
from lrkit.finder.range_test import divergence_bound
from lrkit.finder.result import SCORED_BY_SAMPLE, SCORED_BY_TRAINING_LOSSES, SCORED_BY_VALIDATION

#: ratio between neighbouring candidates (half a decade).
GRID_RATIO = math.sqrt(10.0)
#: ratio between candidates when the curve is uninformative (its minimum in the first tenth).
WIDE_RATIO = 10.0
#: most candidates a verification runs to the end (2 decades below the minimum).
MAX_CANDIDATES = 5
#: most candidates tried in all (aborted divergent runs included).
MAX_TRIED = 8
#: relative score difference treated as noise.
NOISE_TOL = 0.02
#: a verification run is aborted when two consecutive losses exceed this multiple of the median
#: of its first three.
ABORT_FACTOR = 4.0
#: the short-run optimum is divided by this before it is returned (short runs favour high LRs).
SHORT_RUN_FACTOR = 2.0
#: optimizer families whose every step has a size set by the LR, not by the gradient (the sign of a
#: momentum: Lion; the orthogonalised momentum of a weight matrix: Muon), and by a further factor:
#: such a step never shrinks as the gradient gets noisy late in a run (Adam's ``m / sqrt(v)``
#: does), so a short run's optimum overstates the full run's more. Lion's 3 is the low end of Chen
#: et al. 2023's "3-10x below AdamW's", measured on the finder benchmark's development tasks with
#: Lion swapped in (``benchmarks/finder_lion.py``); Muon's 6 is the factor that minimised the median
#: and the mean log regret over the development tasks trained with torch's Muon + AdamW recipe
#: (``benchmarks/finder_muon.py``: the short-run optimum, halved, was a geometric median 5.4x their
#: best LR, 0.1x to 14x), applied to the AdamW-matched variant too (the same step, rescaled)
SIGN_UPDATE_FACTOR = {"lion": 3.0, "muon": 6.0, "muon_adamw": 6.0}

#: optimizer steps of the determinism probe (see :func:`deterministic_steps`)
PROBE_STEPS = 2
#: the probe's learning rate: too small to move any weight of a float32 model
PROBE_LR = 1e-30
#: losses of the probe within this relative difference are the same loss
DETERMINISTIC_TOL = 1e-5
#: the fixed sample of training batches a trainer's optional ``sample_loss()`` scores on (see
#: :func:`run_search` and :class:`FirstBatches`): the first batches it drew, until they hold this many
#: examples or number this many batches
SAMPLE_ROWS, SAMPLE_BATCHES = 256, 8
#: scores within this relative difference tie (the lower LR is then preferred).
TIE_TOL = 1e-3
#: a verification whose best candidate improves its start score by less than this is no verification.
MIN_PROGRESS = 0.01


class FirstBatches:
    """The first training batches a trainer draws, kept for its ``sample_loss()``: offered every
    batch it draws, it keeps them until they hold :data:`SAMPLE_ROWS` examples or number
    :data:`SAMPLE_BATCHES`, and none after the sample is first read (:meth:`read`) -- every score,
    the starting one included, is then taken on the same batches, however short the range test that
    drew them (the verification's candidates draw the same first batches again).

    Example:
        >>> kept = FirstBatches()
        >>> for b in range(3):
        ...     kept.offer(b, rows=100)
        >>> kept.read(), kept.offer(3, rows=1), kept.read()
        ([0, 1, 2], None, [0, 1, 2])
    """

    def __init__(self) -> None:
        self._batches: list[Any] = []
        self._rows = 0
        self._read = False

    def offer(self, batch: Any, rows: int) -> None:
        """Keep ``batch`` (of ``rows`` examples) if the sample is neither full nor read yet."""
        if not self._read and self._rows < SAMPLE_ROWS and len(self._batches) < SAMPLE_BATCHES:
            self._batches.append(batch)
            self._rows += rows

    def read(self) -> list[Any]:
        """The sample (empty before the first batch), fixed from now on."""
        if self._batches:
            self._read = True
        return self._batches


def run_candidate(trainer: Any, state: Any, lr: float, steps: int, ref_eval: float | None,
                   check_collapse: bool = True, probe: bool = False,
                   evaluate: Callable[[], float | None] | None = None) -> dict:
    """Restore, run ``steps`` constant-LR steps, score; always leaves the trainer restored.
    ``check_collapse``: reject a run whose model ends giving every input the same output (off when
    the starting model already does, e.g. a zero-initialised head, where a low LR is no death).
    ``probe``: when the run is accepted, :func:`deterministic_steps` on its trained model
    (``"deterministic"`` in the result; its steps are not in ``"steps"``). ``evaluate``: what scores
    the run's end (default ``trainer.evaluate``; ``None`` from it: the mean of the run's last third
    of training losses)."""
    evaluate = trainer.evaluate if evaluate is None else evaluate
    trainer.restore(state)
    losses: list[float] = []
    reason = None
    above = 0
    try:
        for _ in range(steps):
            loss = float(trainer.step(lr))
            losses.append(loss)
            if not math.isfinite(loss):
                reason = "non-finite loss"
                break
            ref = float(np.median(losses[:3]))
            bound = divergence_bound(ref, ref - min(losses[:3]), ABORT_FACTOR)
            above = above + 1 if bound > ref and loss > bound else 0
            if above >= 2:
                reason = (f"loss above {ABORT_FACTOR:g}x its start twice in a row" if ref > 0 else
                          f"loss above {bound:.4g} (start {ref:.4g} + {ABORT_FACTOR - 1:g} x its scale) twice in a row")
                break
        score = start = None
        if reason is None:
            val = evaluate()
            if val is not None and not math.isfinite(float(val)):
                reason = "non-finite validation loss"
            elif val is not None:
                score = float(val)
            else:
                tail = losses[-max(1, len(losses) // 3):]
                score = float(np.mean(tail))
            start = ref_eval if (val is not None and ref_eval is not None) else float(np.median(losses[:3]))
            if reason is None:
                if not score < start:
                    reason = f"no improvement (score {score:.4g} >= start {start:.4g})"
                elif check_collapse and model_collapsed(trainer):
                    reason = DEAD
        deterministic = deterministic_steps(trainer) if probe and reason is None else None
    finally:
        trainer.restore(state)
    out = {"lr": lr, "score": score if reason is None else None, "steps": len(losses), "rejected": reason,
           "start": start, "final": score}
    if deterministic is not None:
        out["deterministic"] = deterministic
    return out


#: why a candidate whose model ends giving every input the same output is rejected
DEAD = "collapsed: every input gets the same output (a dead network, not a trained one)"


def model_collapsed(trainer: Any) -> bool:
    """The trainer's model gives every input the same output (:mod:`lrkit.collapse`); trainers
    without the optional ``output_spread()`` never say so."""
    spread = getattr(trainer, "output_spread", None)
    value = spread() if callable(spread) else None
    return value is not None and value <= COLLAPSED


def default_verify_budget(verify_steps: int) -> int:
    """The verification's budget when none is given: :data:`MAX_CANDIDATES` runs of
    ``verify_steps`` and the determinism probe's :data:`PROBE_STEPS`.

    Example:
        >>> default_verify_budget(10)
        52
    """
    return MAX_CANDIDATES * int(verify_steps) + PROBE_STEPS


def deterministic_steps(trainer: Any) -> bool:
    """Does every step see the same batch? :data:`PROBE_STEPS` steps at :data:`PROBE_LR` from the
    trainer's current weights (they do not move) return the same loss, within
    :data:`DETERMINISTIC_TOL`, exactly when they do: full-batch training without dropout or
    augmentation. The caller restores the trainer afterwards. Taken on a *trained* model (the end of
    a candidate run): an untrained one may score every batch alike (a zero-initialised classifier
    head gives each example the loss :math:`\\ln K`).

    Why it matters: a run whose steps are stochastic settles at a noise floor that grows with the
    LR, which a short run does not reach, so its best LR sits above the full run's (the
    short-run factor); a deterministic run has no such floor, and its best LR is set by
    stability, which a short run sees first (measured on full-batch softmax regression of the raw
    digits pixels: the 10-step optimum 0.7 decades *below* the 300-step one).
    """
    losses = [float(trainer.step(PROBE_LR)) for _ in range(PROBE_STEPS)]
    if not all(math.isfinite(v) for v in losses):
        return False
    ref = max(abs(losses[0]), 1e-12)
    return max(abs(v - losses[0]) for v in losses) <= DETERMINISTIC_TOL * ref


class Search:
    """Step 3: a bracketing search over log-LR on the trainer, within a budget of steps."""

    def __init__(self, trainer: Any, state: Any, steps: int, budget: int, ref_eval: float | None,
                 floor: float, ceiling: float, check_collapse: bool = True,
                 evaluate: Callable[[], float | None] | None = None, scored_by: str = SCORED_BY_VALIDATION) -> None:
        self.trainer, self.state, self.steps, self.budget, self.ref_eval = trainer, state, steps, budget, ref_eval
        self.evaluate = evaluate  # what scores a run's end (None: trainer.evaluate); see run_search
        # what the candidates are scored by, as ``details["score"]`` says it (lrkit.finder.result.SCORED_ON)
        self.scored_by = scored_by if ref_eval is not None else SCORED_BY_TRAINING_LOSSES
        self.floor, self.ceiling = floor, ceiling
        self.results: list[dict] = []
        self.check_collapse = check_collapse
        self.deterministic: bool | None = None  # the probe's answer, on the first accepted run

    # -- bookkeeping -----------------------------------------------------------------------
    def spent(self) -> int:
        """Steps taken: the candidates' and the probe's (:data:`PROBE_STEPS`, once it ran)."""
        return sum(r["steps"] for r in self.results) + (PROBE_STEPS if self.deterministic is not None else 0)

    def affordable(self) -> bool:
        """Another candidate fits: its steps, and the probe's while it has not run yet."""
        probe = PROBE_STEPS if self.deterministic is None else 0
        return len(self.results) < MAX_TRIED and self.spent() + self.steps + probe <= self.budget

    def tried(self, lr: float) -> bool:
        return any(abs(math.log(r["lr"] / lr)) < 1e-6 for r in self.results)

    def run(self, lr: float) -> dict | None:
        if abs(lr / self.floor - 1) < 1e-9:  # a step that lands on a bound by rounding
            lr = self.floor
        if not self.affordable() or self.tried(lr):
            return None
        r = run_candidate(self.trainer, self.state, lr, self.steps, self.ref_eval, self.check_collapse,
                           probe=self.deterministic is None, evaluate=self.evaluate)
        if "deterministic" in r:
            self.deterministic = r.pop("deterministic")
        self.results.append(r)
        return r

    def ok(self) -> list[dict]:
        return [r for r in self.results if r["score"] is not None]

    def best(self) -> dict | None:
        """The lowest score; among scores that tie (within :data:`TIE_TOL`), the lowest LR: where the
        LR makes no difference to a short run, the lower one is the safer for a long one."""
        ok = self.ok()
        if not ok:
            return None
        top = min(ok, key=lambda r: r["score"])
        return min((r for r in ok if self.ties(r, top)), key=lambda r: r["lr"])

    def start_score(self, r: dict) -> float | None:
        return self.ref_eval if self.ref_eval is not None else r.get("start")

    def progress(self, r: dict) -> float:
        """Relative improvement of ``r``'s score over the start (0 when unknown)."""
        start = self.start_score(r)
        if start is None or r["score"] is None or start == 0:
            return 0.0
        return (start - r["score"]) / abs(start)

    def worse(self, r: dict, best: dict) -> bool:
        return r["score"] is None or r["score"] > best["score"] + NOISE_TOL * abs(best["score"])

    def ties(self, r: dict, best: dict) -> bool:
        """``r`` scores the same as ``best`` (within :data:`TIE_TOL`)."""
        return r["score"] is not None and abs(r["score"] - best["score"]) <= TIE_TOL * abs(best["score"])

    def improves(self, r: dict, best: dict) -> bool:
        return r["score"] is not None and r["score"] < best["score"] - NOISE_TOL * abs(best["score"])

    def climbs(self, r: dict, best: dict) -> bool:
        """Going *up*, ``r`` improves on ``best`` by :data:`NOISE_TOL` of the smaller of the best's
        score and the progress it made: where every candidate so far barely moved from the start (an
        LR decades too low), a candidate that made several times their progress is a real step,
        though its score is within 2% of theirs."""
        if r["score"] is None:
            return False
        start = self.start_score(best)
        made = start - best["score"] if start is not None else abs(best["score"])
        return r["score"] < best["score"] - NOISE_TOL * max(0.0, min(abs(best["score"]), made))

    # -- the search ------------------------------------------------------------------------
    def walk(self, lr: float, factor: float, stop_at: float) -> None:
        """From ``lr``, step by ``factor`` while candidates keep improving on the best (rejected ones
        are stepped over going down: an LR too high to train says nothing about the ones below; going
        up, improving is :meth:`climbs`)."""
        while self.affordable():
            lr *= factor
            if (factor < 1 and lr < stop_at * (1 - 1e-9)) or (factor > 1 and lr > stop_at * (1 + 1e-9)):
                return
            best = self.best()
            r = self.run(lr)
            if r is None:
                return
            if best is None:
                continue  # nothing accepted yet: keep looking
            if factor < 1 and self.ties(r, best):
                continue  # the LR does not bind a short run here: only a lower one can tell
            if not (self.climbs(r, best) if factor > 1 else self.improves(r, best)):
                return

    def search(self, top: float, decade: float) -> None:
        first = self.run(top)
        if first is None:
            return
        if first["score"] is not None and self.progress(first) < MIN_PROGRESS:
            # The top candidate trains but makes no progress: too high (chaotic) or too low. A decade
            # down tells which: better there, descend as usual; not, the curve's region is too low.
            below = self.run(top / decade)
            if below is not None and below["score"] is not None and self.improves(below, first):
                self.walk(top / decade, 1 / decade, self.floor)
            else:
                self.walk(top, decade * decade, self.ceiling)
        else:
            self.walk(top, 1 / decade, self.floor)
        best = self.best()
        if best is not None and best["lr"] >= max(r["lr"] for r in self.results) and best["lr"] < self.ceiling:
            self.walk(best["lr"], decade, self.ceiling)  # the best is the highest tried: look past the edge
        self.refine(math.sqrt(decade))

    def refine(self, half: float) -> None:
        """Candidates half a grid step either side of the best (see :meth:`search`)."""
        for _ in range(2):
            best = self.best()
            if best is None:
                return
            sides = []
            for f in (half, 1 / half):
                lr = best["lr"] * f
                if self.tried(lr) or not self.floor * (1 - 1e-9) <= lr <= self.ceiling * (1 + 1e-9):
                    continue
                nb = self.neighbour(best, up=f > 1)
                if nb is None:
                    continue  # an open edge: the walk already went as far as the budget allowed
                # A failed neighbour above is the stability edge, where the optimum often lies: that
                # side first; otherwise the side whose neighbour scored better.
                key = (-math.inf if f > 1 else math.inf) if nb["score"] is None else nb["score"]
                sides.append((key, lr))
            if not sides:
                return
            for _, lr in sorted(sides):
                self.run(lr)

    def neighbour(self, r: dict, *, up: bool) -> dict | None:
        side = [c for c in self.results if (c["lr"] > r["lr"] if up else c["lr"] < r["lr"])]
        if not side:
            return None
        return min(side, key=lambda c: abs(math.log(c["lr"] / r["lr"])))


def pick(search: Search) -> tuple[float, tuple[float, float], str, dict]:
    """Step 4: the short-run optimum from the scored candidates (parabola in log-LR), and its band."""
    best = search.best()
    assert best is not None
    ok = search.ok()
    s_best = best["score"]
    near = [r["lr"] for r in ok if r["score"] <= s_best + NOISE_TOL * abs(s_best)]
    up, down = search.neighbour(best, up=True), search.neighbour(best, up=False)
    x0 = math.log(best["lr"])
    edges = {"upper_open": up is None, "lower_open": down is None}
    if up is None or down is None:
        lr, how = best["lr"], "best candidate (an edge of the candidates: the band is widened past it)"
    elif down["score"] is None:
        lr, how = best["lr"], "best candidate (the next candidate down failed)"
    elif up["score"] is None and up["lr"] <= best["lr"] * GRID_RATIO * (1 + 1e-9):
        # Half-way to a neighbour half a decade down: a quarter decade, also where the neighbour
        # below is further (the budget ended the refinement before it was tried).
        lr = math.exp(x0 - min(math.log(best["lr"] / down["lr"]), math.log(GRID_RATIO)) / 2)
        how = "half-way to the next candidate below (the next one up, close by, failed)"
    elif up["score"] is None:
        lr, how = best["lr"], "best candidate (the next one up, far above, failed)"
    elif search.ties(up, best):
        lr, how = best["lr"], "best candidate (the next one up scores the same: the lower LR is the safer)"
    else:
        x1, x3 = math.log(down["lr"]), math.log(up["lr"])
        y1, y2, y3 = down["score"], s_best, up["score"]
        num = (x0 - x1) ** 2 * (y2 - y3) - (x0 - x3) ** 2 * (y2 - y1)
        den = (x0 - x1) * (y2 - y3) - (x0 - x3) * (y2 - y1)
        vertex = x0 - 0.5 * num / den if den != 0 else x0
        vertex = min(max(vertex, x0 - (x0 - x1) / 2), x0 + (x3 - x0) / 2)
        lr, how = math.exp(vertex), "vertex of the parabola through the best and its neighbours (log-LR)"
    lo, hi = min(near + [lr]), max(near + [lr])
    # The band never claims more precision than the candidates resolve: half the distance to a
    # neighbour on a closed side, a full grid step past an open edge.
    step_up = up["lr"] / best["lr"] if up is not None else None
    step_down = best["lr"] / down["lr"] if down is not None else None
    grid = step_up or step_down or GRID_RATIO
    hi = max(hi, best["lr"] * (math.sqrt(step_up) if step_up else grid))
    lo = min(lo, best["lr"] / (math.sqrt(step_down) if step_down else grid))
    return lr, (lo, hi), how, edges


def run_search(trainer: Any, lr_top: float, lr_floor: float, lr_ceiling: float, steps: int, decade: float,
            budget: int) -> tuple[Search, int]:
    """The search of step 3 from the trainer's state (the determinism probe's steps included in
    ``budget``): ``(search, steps used)``.

    Each candidate run is scored at its end by ``trainer.evaluate()`` (the validation loss); without
    validation data, by the trainer's optional ``sample_loss()`` -- the loss on a fixed sample of
    training batches, the same for every candidate (``TorchTrainer`` keeps the first ones it drew);
    without either, by the mean of the run's last third of training losses. The last compares
    candidates on a few batch losses of their own trajectories: with 6-step runs, two losses of
    16-example batches, whose noise ranked a tiny BERT's candidates (the Hugging Face autopilot,
    BENCHMARKS.md). Designed on the development half of ``benchmarks.finder_noval`` (the finder
    benchmark's tasks with no validation set): median / worst regret 2.7% / 77% by the last training
    losses, 2.3% / 69% by the fixed sample (BENCHMARKS.md, "The finder without a validation set")."""
    state = getattr(trainer, "candidate_snapshot", trainer.snapshot)()  # optional: lrkit.finder.trainer
    try:
        evaluate, scored_by = trainer.evaluate, SCORED_BY_VALIDATION
        ref_eval = _finite(evaluate())
        sample = getattr(trainer, "sample_loss", None)
        if ref_eval is None and callable(sample):
            evaluate, scored_by = sample, SCORED_BY_SAMPLE
            ref_eval = _finite(evaluate())
        # a model that starts collapsed (a zero-initialised head) cannot be told dead
        search = Search(trainer, state, steps, budget, ref_eval, lr_floor, lr_ceiling,
                         check_collapse=not model_collapsed(trainer), evaluate=evaluate, scored_by=scored_by)
        search.search(lr_top, decade)
    finally:
        trainer.restore(state)
        del state
    return search, search.spent()


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
