"""The framework-free range test: ramp, smoothing, divergence, restore-always, FinderResult."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.finder import FinderResult, find, lr_ramp, run_range_test
from lrkit.finder.range_test import (
    DEFAULT_NUM_ITER, DEFAULT_VERIFY_STEPS, MAX_COST_FRACTION, MIN_VERIFY_STEPS, PLANNED_NUM_ITER, plan_budget,
    plan_verify_budget,
)
from lrkit.finder.suggest import MAX_CANDIDATES, PROBE_STEPS


class Quadratic:
    """Gradient descent on f(w) = w^2 / 2 + noise floor: diverges for lr > 2."""

    def __init__(self, w: float = 1.0, floor: float = 0.01):
        self.w = w
        self.floor = floor
        self.calls = 0
        self.restores = 0

    def snapshot(self):
        return (self.w, self.calls)

    def restore(self, state):
        self.w, self.calls = state
        self.restores += 1

    def step(self, lr):
        self.calls += 1
        self.w -= lr * self.w
        return 0.5 * self.w**2 + self.floor

    def evaluate(self):
        return None


class Scripted:
    """Returns the given losses in turn; can raise at a given step."""

    def __init__(self, losses, raise_at=None, exc=RuntimeError("boom")):
        self.losses = list(losses)
        self.i = 0
        self.raise_at = raise_at
        self.exc = exc
        self.restored = []
        self.seen_lrs = []

    def snapshot(self):
        return "S"

    def restore(self, state):
        self.restored.append(state)

    def step(self, lr):
        if self.raise_at is not None and self.i == self.raise_at:
            raise self.exc
        self.seen_lrs.append(lr)
        v = self.losses[self.i]
        self.i += 1
        return v

    def evaluate(self):
        return None


# -- the ramp ------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(1e-9, 1.0),
    factor=st.floats(1.0001, 1e9),
    n=st.integers(2, 500),
    mode=st.sampled_from(["exp", "linear"]),
)
def test_ramp_shape(start, factor, n, mode):
    end = start * factor
    lrs = lr_ramp(start, end, n, mode)
    assert lrs.shape == (n,)
    assert lrs[0] == start and lrs[-1] == end  # endpoints exact
    assert np.all(np.diff(lrs) >= 0)  # monotone
    if mode == "exp":  # constant ratio between neighbours
        ratios = lrs[1:] / lrs[:-1]
        np.testing.assert_allclose(ratios, (end / start) ** (1 / (n - 1)), rtol=1e-9)
    else:
        np.testing.assert_allclose(np.diff(lrs), (end - start) / (n - 1), rtol=1e-6, atol=1e-12 * end)


def test_ramp_closed_form():
    np.testing.assert_allclose(lr_ramp(1e-4, 1.0, 5), [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    np.testing.assert_allclose(lr_ramp(0.0 + 1, 5.0, 5, "linear"), [1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(start_lr=1.0, end_lr=1.0), "start_lr must be < end_lr"),
        (dict(start_lr=2.0, end_lr=1.0), "start_lr must be < end_lr"),
        (dict(start_lr=0.0, end_lr=1.0), "start_lr must be a finite number > 0, got 0.0"),
        (dict(start_lr=-1e-3, end_lr=1.0), "start_lr"),
        (dict(start_lr=1e-3, end_lr=math.inf), "end_lr must be a finite number > 0, got inf"),
        (dict(start_lr=1e-3, end_lr=1.0, num_iter=1), "num_iter must be an integer >= 2, got 1"),
        (dict(start_lr=1e-3, end_lr=1.0, num_iter=10.0), "num_iter"),
        (dict(start_lr=1e-3, end_lr=1.0, mode="log"), "mode must be 'exp' or 'linear', got 'log'"),
        (dict(start_lr=1e-3, end_lr=1.0, smooth=0.0), r"smooth must be a number in \(0, 1\]"),
        (dict(start_lr=1e-3, end_lr=1.0, smooth=1.5), "smooth"),
        (dict(start_lr=1e-3, end_lr=1.0, diverge_threshold=1.0), "diverge_threshold must be a finite number > 1"),
        (dict(start_lr="0.1", end_lr=1.0), "start_lr"),
    ],
)
def test_bad_arguments_touch_nothing(kwargs, match):
    t = Quadratic()
    with pytest.raises(ValueError, match=match):
        run_range_test(t, **kwargs)
    assert t.calls == 0 and t.w == 1.0 and t.restores == 0


def test_not_a_trainer():
    with pytest.raises(ValueError, match="Trainer protocol.*no method 'snapshot'"):
        run_range_test(object(), start_lr=1e-3, end_lr=1.0)


# -- the loop ------------------------------------------------------------------------------
def test_smoothing_is_bias_corrected_ema():
    losses = [3.0, 1.0, 2.0, 5.0, 4.0]
    t = Scripted(losses)
    rec = run_range_test(t, start_lr=1e-3, end_lr=1.0, num_iter=5, smooth=0.3, diverge_threshold=100)
    m, expected = 0.0, []
    for i, x in enumerate(losses):  # hand-written closed form
        m = 0.7 * m + 0.3 * x
        expected.append(m / (1 - 0.7 ** (i + 1)))
    np.testing.assert_allclose(rec.smoothed, expected, rtol=1e-12)
    np.testing.assert_array_equal(rec.losses, losses)
    assert rec.smoothed[0] == pytest.approx(losses[0], rel=1e-12)  # bias correction: no pull towards 0 at the start
    np.testing.assert_array_equal(rec.lrs, lr_ramp(1e-3, 1.0, 5))
    assert t.seen_lrs == list(rec.lrs)
    assert not rec.stopped_early and rec.reason == "completed 5 steps"
    assert t.restored == ["S"]


def test_smooth_one_is_raw():
    t = Scripted([3.0, 1.0, 2.0])
    rec = run_range_test(t, start_lr=1e-3, end_lr=1.0, num_iter=3, smooth=1.0, diverge_threshold=100)
    np.testing.assert_array_equal(rec.smoothed, rec.losses)


def test_stops_on_divergence_and_restores():
    t = Quadratic()
    rec = run_range_test(t, start_lr=1e-4, end_lr=100.0, num_iter=100)
    assert rec.stopped_early and "diverged" in rec.reason
    assert len(rec.lrs) < 100
    # stopped at the first step whose smoothed loss passed 4x the best
    assert rec.smoothed[-1] > 4 * rec.smoothed.min()
    assert np.all(rec.smoothed[:-1] <= 4 * np.minimum.accumulate(rec.smoothed)[:-1])
    assert (t.w, t.calls) == (1.0, 0) and t.restores == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_without_recording(bad):
    t = Scripted([1.0, 0.9, bad, 0.5])
    rec = run_range_test(t, start_lr=1e-3, end_lr=1.0, num_iter=4)
    assert rec.stopped_early and f"loss is {bad}" in rec.reason
    assert rec.losses.tolist() == [1.0, 0.9] and len(rec.lrs) == 2
    assert rec.steps_run == 3  # the non-finite step was taken, just not recorded
    assert t.restored == ["S"]


def test_nan_at_first_step_is_an_error_after_restore():
    t = Scripted([math.nan, 1.0])
    with pytest.raises(ValueError, match=r"loss is not finite at the first step \(lr=0.001.*lower start_lr"):
        run_range_test(t, start_lr=1e-3, end_lr=1.0, num_iter=4)
    assert t.restored == ["S"]


@pytest.mark.parametrize("exc", [RuntimeError("loader broke"), KeyboardInterrupt()])
def test_restores_on_exception(exc):
    t = Scripted([1.0] * 10, raise_at=4, exc=exc)
    with pytest.raises(type(exc)):
        run_range_test(t, start_lr=1e-3, end_lr=1.0, num_iter=10)
    assert t.restored == ["S"]


def test_progress_callback_and_core_never_prints(capsys):
    seen = []
    run_range_test(Quadratic(), start_lr=1e-3, end_lr=0.1, num_iter=7, progress=lambda i, lr, loss: seen.append((i, lr, loss)))
    assert [s[0] for s in seen] == list(range(7))
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 120), threshold=st.floats(1.5, 20), smooth=st.floats(0.01, 1.0))
def test_record_invariants(n, threshold, smooth):
    t = Quadratic()
    rec = run_range_test(t, start_lr=1e-3, end_lr=10.0, num_iter=n, smooth=smooth, diverge_threshold=threshold)
    k = len(rec.lrs)
    assert 1 <= k <= n and len(rec.losses) == len(rec.smoothed) == k
    np.testing.assert_array_equal(rec.lrs, lr_ramp(1e-3, 10.0, n)[:k])
    assert np.all(np.isfinite(rec.losses))
    assert rec.stopped_early == (k < n)
    assert (t.w, t.calls) == (1.0, 0)


# -- find + FinderResult ---------------------------------------------------------------------
def test_find_on_a_plain_trainer():
    t = Quadratic()
    res = find(t, start_lr=1e-4, end_lr=10.0, num_iter=80)
    assert isinstance(res, FinderResult)
    # gradient descent on w^2/2 converges for lr in (0, 2); the suggestion must be a working LR
    assert 1e-3 < res.suggestion < 2.0
    assert res.band[0] <= res.suggestion <= res.band[1]
    assert (t.w, t.calls) == (1.0, 0)
    q = Quadratic()
    for _ in range(20):
        loss = q.step(res.suggestion)
    assert loss < 0.5 * 0.5 + 0.01  # it trains


def test_find_refuses_too_short_a_curve():
    t = Scripted([1.0, math.nan])
    with pytest.raises(ValueError, match="stopped after 1 step.*lower start_lr or check the model/data"):
        find(t, start_lr=1e-3, end_lr=1.0, num_iter=10)


def test_a_nan_at_a_tiny_start_lr_is_not_blamed_on_the_lr():
    """NaN from the first step at 1e-7 (Keras 3's Adafactor on the torch backend does this at any
    LR): a lower start_lr would not help, and the error says to look at the model, data or optimizer."""
    with pytest.raises(ValueError, match="stopped after 1 step.*1e-07 barely moves a weight.*the optimizer itself") as e:
        find(Scripted([1.0, math.nan]), start_lr=1e-7, end_lr=1.0, num_iter=10)
    assert "lower start_lr" not in str(e.value)


def test_find_verify_steps_validated():
    with pytest.raises(ValueError, match="verify_steps must be an integer >= 0, got -1"):
        find(Quadratic(), start_lr=1e-3, end_lr=1.0, verify_steps=-1)


def _result(**kw):
    lrs = np.geomspace(1e-4, 1, 30)
    loss = 2 - np.tanh(np.log10(lrs) + 2)
    base = dict(lrs=lrs, losses=loss, smoothed_losses=loss, suggestion=1e-2, method="steepest",
                rules={"steepest": 1e-2, "valley": None, "minimum_div_10": math.nan}, band=(5e-3, 2e-2),
                details={"stop_reason": "completed 30 steps", "arr": np.arange(2)}, num_iter=30, batch_size=64)
    base.update(kw)
    return FinderResult(**base)


def test_result_json_round_trip():
    r = _result()
    d = json.loads(r.to_json())
    for key in ("suggestion", "lrs", "losses", "smoothed_losses", "method", "rules", "band"):
        assert key in d
    assert d["suggestion"] == 1e-2 and d["method"] == "steepest" and d["band"] == [5e-3, 2e-2]
    assert d["rules"] == {"steepest": 1e-2, "valley": None, "minimum_div_10": None}  # NaN -> null
    np.testing.assert_array_equal(d["lrs"], r.lrs)
    np.testing.assert_array_equal(d["losses"], r.losses)
    assert d["num_points"] == 30 and d["batch_size"] == 64 and d["details"]["arr"] == [0, 1]


def test_result_text():
    r = _result()
    s = r.summary()
    assert s.splitlines()[0] == "suggested LR: 0.01  (method: steepest, band 0.005 .. 0.02)"
    assert "valley=-" in s and "30/30 steps" in s and "batch size: 64" in s
    assert repr(r).startswith("FinderResult(suggestion=0.01, method='steepest'")


def test_result_rich_table():
    from rich.console import Console

    console = Console(record=True, width=100)
    console.print(_result())
    text = console.export_text()
    assert "suggested LR" in text and "0.01" in text and "rule: steepest" in text


def test_result_validates_shapes():
    with pytest.raises(ValueError, match="same length"):
        _result(losses=np.ones(3))


def test_result_plot_returns_ax():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    r = _result()
    assert r.plot(ax) is ax
    assert ax.get_xscale() == "log"
    xs = {round(float(line.get_xdata()[0]), 12) for line in ax.get_lines() if len(line.get_xdata()) == 2}
    assert 1e-2 in xs  # the suggestion line (and the steepest rule) are drawn
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lab.startswith("suggestion 0.01") for lab in labels) and any(lab.startswith("band") for lab in labels)
    fig2, ax2 = plt.subplots()
    r.plot(ax2, show_rules=False)
    assert not any(t.get_text().startswith("valley") or t.get_text().startswith("steepest")
                   for t in ax2.get_legend().get_texts())
    plt.close("all")


def test_core_imports_with_frameworks_blocked():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch','keras','jax','optax','lightning','transformers','tensorboard','optuna','matplotlib','typer','rich','scipy'}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import lrkit.finder, lrkit.finder.range_test, lrkit.finder.result
from lrkit.finder import find
class Q:
    w = 1.0
    def snapshot(self): return self.w
    def restore(self, s): self.w = s
    def step(self, lr):
        self.w -= lr * self.w
        return self.w ** 2 + 0.01
    def evaluate(self): return None
r = find(Q(), start_lr=1e-4, end_lr=10.0, num_iter=50)
print(r.to_json()[:1], r.summary().splitlines()[0][:9])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["{", "suggested"]


def test_find_with_verification_restores_plain_trainer():
    t = Quadratic()
    res = find(t, start_lr=1e-4, end_lr=10.0, num_iter=80, verify_steps=10, family="sgd")
    assert res.details["verify_steps_used"] > 0
    assert (t.w, t.calls) == (1.0, 0)
    assert res.details["range_test_steps"] >= len(res.lrs)
    assert 1e-3 < res.suggestion < 2.0


# ------------------------------------------------------------------------------- budget plan
@settings(max_examples=200, deadline=None)
@given(train_steps=st.integers(100, 10**7))
def test_planned_finder_costs_at_most_30_percent_of_the_run(train_steps):
    n, v = plan_budget(train_steps=train_steps)
    assert 10 <= n <= PLANNED_NUM_ITER and v == max(train_steps // 30, MIN_VERIFY_STEPS)  # (T >= 100)
    budget = plan_verify_budget(train_steps, n)
    assert n + budget <= MAX_COST_FRACTION * train_steps  # the verification takes what the range test leaves
    if train_steps >= 200:  # long enough for every candidate the suggestion may run
        assert budget >= MAX_CANDIDATES * v + PROBE_STEPS


@given(num_iter=st.integers(2, 500), verify_steps=st.integers(0, 500), train_steps=st.none() | st.integers(1, 10**6))
def test_explicit_counts_win_over_the_plan(num_iter, verify_steps, train_steps):
    assert plan_budget(num_iter=num_iter, verify_steps=verify_steps, train_steps=train_steps) == (num_iter, verify_steps)
    assert plan_budget(num_iter=num_iter, verify=False, train_steps=train_steps) == (num_iter, 0)


def test_plan_defaults_and_short_runs():
    assert plan_budget() == (DEFAULT_NUM_ITER, DEFAULT_VERIFY_STEPS)
    assert plan_budget(verify=False) == (DEFAULT_NUM_ITER, 0)
    assert plan_budget(train_steps=20) == (10, 0)  # no room for verification runs
    assert plan_budget(train_steps=90) == (27, 0)  # too short for 4 of them: the 30% go to the range test
    assert plan_budget(train_steps=120) == (10, MIN_VERIFY_STEPS) and plan_verify_budget(120, 10) == 26


def test_a_run_too_short_to_verify_is_said_to_be_unverified():
    res = find(Quadratic(), start_lr=1e-4, end_lr=10.0, num_iter=27, verify_steps=0, family="sgd", verify_budget=0)
    assert any(w.startswith("unverified: no verification runs") for w in res.details["warnings"])
    assert "warning: unverified" in res.summary()


def test_a_run_shorter_than_the_smallest_range_test_says_what_it_cost():
    # a 3-step run: the range test never takes fewer than 10 steps (333% of it), and says so
    res = find(Quadratic(), start_lr=1e-4, end_lr=10.0, num_iter=10, verify_steps=0, family="adam",
               verify_budget=0, train_steps=3)
    said = [w for w in res.details["warnings"] if w.startswith("the finder took 10 steps, 333% of the 3-step run")]
    assert len(said) == 1 and "lrkit.scaling.default_lr('adam') = 0.001" in said[0]
    ok = find(Quadratic(), start_lr=1e-4, end_lr=10.0, num_iter=10, verify_steps=0, family="adam",
              verify_budget=0, train_steps=34)
    assert not any(w.startswith("the finder took") for w in ok.details["warnings"])  # 10 of 34: within 30%
    forced = find(Quadratic(), start_lr=1e-4, end_lr=10.0, num_iter=100, verify_steps=0, family="adam",
                  verify_budget=0, train_steps=200)  # a user's num_iter beyond the plan: said, without blame
    assert any(w.startswith("the finder took 100 steps, 50% of the 200-step run") and w.endswith(
        "num_iter or verify_steps given explicitly override its plan") for w in forced.details["warnings"])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(5, 60), seed=st.integers(0, 10_000), noise=st.floats(0.0, 0.2),
       family=st.sampled_from(["sgd", "adam"]))
def test_the_rule_answer_is_never_decades_below_the_curves_minimum(n, seed, noise, family):
    """A short ramp over seven decades whose first losses are noise and whose loss only falls near
    its top: the steepest point of the first few losses is no answer (a 12-step ramp once put it at
    4e-7 for Adam on such a curve, a run that would not learn); the rule keeps within
    RULE_FLOOR_DECADES of the lowest smoothed loss (a further 3x on a flat curve)."""
    from lrkit.finder.suggest import RULE_FLOOR_DECADES, suggest

    rng = np.random.default_rng(seed)
    lrs = np.logspace(-7, 0, n)
    losses = 0.8 - 0.25 * np.clip(np.log10(lrs) + 1.5, 0, None) + noise * rng.standard_normal(n)
    s = suggest(lrs, losses, family=family)
    eta_min = s.rules["lr_at_min_loss"]
    assert s.lr >= eta_min * 10 ** -RULE_FLOOR_DECADES / 3 * (1 - 1e-9)
    assert s.band[0] <= s.lr <= s.band[1]


def test_the_rule_floor_is_what_fixes_the_short_noisy_ramp():
    from lrkit.finder.suggest import suggest

    lrs = np.logspace(-7, 0, 12)  # all a 40-step run's 30% allows
    losses = np.array([0.815, 0.792, 0.733, 0.738, 0.788, 0.719, 0.725, 0.806, 0.727, 0.655, 0.68, 0.581])
    s = suggest(lrs, losses, family="adam")
    assert s.rules["lr_at_min_loss"] == 1.0 and s.details["rule"]["steepest"] < 1e-6  # the noise's pick
    assert s.rules["lrkit_rule"] == pytest.approx(10 ** -3.5)  # the rule: not 4e-7
    # and a 12-point ramp is a short one: the answer is kept at least at the rule of thumb
    assert s.method == "rule(short ramp)" and s.lr == pytest.approx(1e-3)
    assert any("too coarse for its rule" in w for w in s.details["warnings"])


@pytest.mark.parametrize("n", [12, 27])
def test_a_short_ramp_answers_at_least_the_rule_of_thumb_and_below_where_it_blew_up(n):
    from lrkit.finder.suggest import SHORT_RAMP, suggest

    lrs = np.logspace(-7, 0, n)
    rng = np.random.default_rng(0)
    quiet = 2.3 + 0.05 * rng.standard_normal(n)  # learns nothing that a coarse ramp can show
    s = suggest(lrs, quiet, family="sgd")
    assert s.lr >= 0.01 and s.method == "rule(short ramp)"  # sgd's rule of thumb at least
    blown = np.where(lrs < 3e-3, 2.3, 2.3 * (lrs / 3e-3) ** 2)  # an ill-conditioned task: breaks by 1e-2
    s = suggest(lrs[lrs <= 2e-2], blown[lrs <= 2e-2], family="sgd")
    assert s.lr <= 2e-2 / 3 and s.lr < 0.01  # below where the ramp blew up, under the rule of thumb
    long = suggest(np.logspace(-7, 0, SHORT_RAMP), 2.3 + 0.05 * rng.standard_normal(SHORT_RAMP), family="sgd")
    assert not long.method.startswith("rule(short")  # a ramp of SHORT_RAMP points is read by the rule


@pytest.mark.parametrize("family", ["adam", "sgd", "adadelta"])
def test_an_uninformative_curve_answers_the_family_rule_of_thumb_not_the_bottom_of_the_ramp(family):
    # a 40-step run's 12-step ramp whose loss only fell at its last two LRs: the smoothed minimum is
    # its first point, which the rule once answered (1e-7 for Adam: a run that never learns)
    from lrkit.finder.suggest import suggest
    from lrkit.scaling import default_lr

    lrs = np.logspace(-7, 0, 12)
    losses = np.array([0.703, 0.725, 0.707, 0.726, 0.726, 0.854, 0.789, 0.778, 0.762, 0.828, 0.642, 0.552])
    s = suggest(lrs, losses, family=family)
    assert s.details["rule"]["informative"] is False
    assert s.lr == pytest.approx(min(default_lr(family), 1.0))
    assert any("never got below its start" in w for w in s.details["warnings"])


# a 40-step Keras range test of a linear regression on TensorFlow (four batches in the same order every
# pass, the first the easiest): the loss falls to 0.02 at LR 1-4 and blows up at 6.2
KERAS_TF_LRS = np.logspace(-7, np.log10(6.236), 39)
KERAS_TF_LOSSES = np.r_[np.tile([4.744, 6.733, 7.701, 12.21], 5), [4.682, 6.617, 7.510, 11.71, 4.351, 5.996, 6.520,
                                                                  9.230, 2.638, 3.077, 2.519, 1.657, 0.215, 0.0421,
                                                                  0.0209, 0.0391, 0.330, 8.311, 643.8]]


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_a_first_loss_from_the_easiest_batch_does_not_hide_the_curves_minimum(family):
    """The smoothed curve starts at the first batch's loss, the cycle's lowest, and only gets under it after
    the loss has fallen 200x: its minimum was point 0, the curve read "never got below its start, then
    rose", and the rule answered the ramp's bottom, 1e-7 (the Keras trainer's docstring example on
    TensorFlow). Measured from the first tenth's median, the minimum is where the loss fell."""
    from lrkit.finder.suggest import suggest

    s = suggest(KERAS_TF_LRS, KERAS_TF_LOSSES, family=family)
    assert s.details["rule"]["informative"] is True and not s.details["rule"]["flat_curve"]
    assert 0.5 < s.rules["lr_at_min_loss"] < 6.0
    assert 1e-2 < s.lr < 6.236 / 3
    assert not any("never got below its start" in w for w in s.details["warnings"])


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 6), spread=st.floats(0.2, 2.0), seed=st.integers(0, 10_000), n=st.integers(30, 100))
def test_the_minimum_is_never_the_easiest_first_batch_of_a_curve_that_fell_far(k, spread, seed, n):
    """Batches of different difficulty in a fixed cycle, the easiest first; the loss falls 100x in the
    upper part of the ramp and blows up at its top: the lowest point is where it fell, not point 0."""
    from lrkit.finder.rule import lowest_point
    from lrkit.finder._rules import ema_bias_corrected

    rng = np.random.default_rng(seed)
    cycle = np.sort(1.0 + spread * rng.random(k))  # the first batch the easiest
    x = np.linspace(0.0, 1.0, n)
    fall = np.where(x < 0.6, 1.0, np.where(x < 0.9, 0.01, 100.0))
    raw = np.resize(cycle, n) * fall
    i, start = lowest_point(ema_bias_corrected(raw, 0.95), raw)
    assert x[i] >= 0.6 and start >= cycle[0] * (1 - 1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_iter=1), "num_iter must be an integer >= 2, got 1"),
    (dict(verify_steps=-1), "verify_steps must be None or an integer >= 0, got -1"),
    (dict(verify_steps=True), "verify_steps must be None or an integer >= 0, got True"),
    (dict(train_steps=0), "train_steps must be None or an integer >= 1"),
    (dict(train_steps=2.5), "train_steps must be None or an integer >= 1"),
    (dict(verify=False, verify_steps=5), "verify=False contradicts verify_steps=5"),
    (dict(verify="yes"), "verify must be True or False"),
])
def test_plan_rejects_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_budget(**kwargs)


class GaussianNLL:
    """A Trainer whose loss goes negative: the Gaussian negative log-likelihood of a location and a
    log-scale, fitted by gradient descent to 200 draws of N(3, 0.1^2)."""

    def __init__(self) -> None:
        self.y = np.random.default_rng(0).normal(3.0, 0.1, 200)
        self.w = np.array([2.5, 0.0])  # mean, log sd

    def loss(self) -> float:
        mu, ls = self.w
        return float(np.mean(ls + 0.5 * ((self.y - mu) / np.exp(ls)) ** 2))

    def step(self, lr: float) -> float:
        mu, ls = self.w
        r = (self.y - mu) / np.exp(ls)
        grad = np.array([-np.mean(r) / np.exp(ls), np.mean(1.0 - r**2)])
        value = self.loss()
        self.w = self.w - lr * grad
        return value

    def snapshot(self):
        return self.w.copy()

    def restore(self, state) -> None:
        self.w = state.copy()


def test_the_range_test_runs_on_through_a_loss_that_goes_negative_and_still_stops_on_divergence():
    t = GaussianNLL()
    rec = run_range_test(t, start_lr=1e-4, end_lr=10.0, num_iter=200)
    crossed = int(np.argmax(rec.smoothed < 0))
    assert rec.smoothed.min() < -0.5 and crossed > 0  # it went well below zero ...
    assert len(rec.lrs) > crossed + 20  # ... and the ramp went on past the crossing
    assert rec.stopped_early and rec.losses[-1] > 5.0 and "diverged" in rec.reason  # a real blow-up still stops it
    assert np.array_equal(t.w, [2.5, 0.0])  # restored


@pytest.mark.parametrize("lr", [0.1, 0.5, 1.0])
def test_a_candidate_that_blows_up_from_a_negative_start_is_aborted_within_a_few_steps(lr):
    from lrkit.finder.search import run_candidate

    t = GaussianNLL()
    t.w = np.array([3.0, -2.0])  # well fitted: the loss starts near -1.75
    t.evaluate = lambda: None
    state = t.snapshot()
    r = run_candidate(t, state, lr, 30, None, check_collapse=False)
    assert r["steps"] <= 6 and r["score"] is None and "twice in a row" in r["rejected"]
    assert np.array_equal(t.w, state)
    calm = run_candidate(t, state, 0.01, 30, None, check_collapse=False)  # a fine LR runs to its end
    assert calm["steps"] == 30 and calm["rejected"] is None and calm["score"] < -1.75
