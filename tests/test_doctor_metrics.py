"""The doctor on validation losses and metrics: `fluctuating` when one swings without progress.

Synthetic streams with a known truth: oscillations (which must be caught, with the metric named
and the onset placed) and realistic healthy validation curves (which must never alarm).
"""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import lrkit
from lrkit.doctor import Doctor, diagnose, overall, read_log

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def smooth_loss(n, tau=8.0, seed=None, noise=0.0):
    """A training loss that decreases smoothly (optionally with multiplicative noise)."""
    t = np.arange(n)
    loss = 2.3 * np.exp(-t / tau) + 0.05
    if seed is not None:
        loss = loss * np.exp(noise * np.random.default_rng(seed).standard_normal(n))
    return loss


def epoch_log(n, lr=0.3, **metrics):
    return {"epoch": list(range(n)), "loss": smooth_loss(n).tolist(), "lr": [lr] * n, **{k: list(map(float, v)) for k, v in metrics.items()}}


def logistic(n, lo, hi, mid, width):
    t = np.arange(n)
    return lo + (hi - lo) / (1 + np.exp(-(t - mid) / width))


def metric_names(d):
    return [k.split(":", 1)[1] for k in d.evidence if k.startswith("oscillating_metric:")]


# ----------------------------------------------------------------------------- (a) the reviewer's cases
def test_accuracy_and_val_loss_swinging_under_a_smooth_loss_is_fluctuating():
    n = 30
    log = epoch_log(n, accuracy=[0.2, 0.9] * (n // 2), val_loss=[1.0, 4.0] * (n // 2))
    d = diagnose(log)
    assert d.verdict == "fluctuating"
    assert set(metric_names(d)) == {"accuracy", "val_loss"}
    assert "'accuracy'" in d.message and "'val_loss'" in d.message
    # evidence as numbers: the swing, no net progress, a long path, the best not improving
    assert d.evidence["metric_amplitude"] == pytest.approx(0.7)
    assert abs(d.evidence["metric_net_progress"]) < 1e-9
    assert d.evidence["metric_oscillation_ratio"] >= 3 and d.evidence["metric_reversals"] >= 2
    assert d.evidence["metric_best_gain"] <= 0 and d.evidence["metric_best"] == pytest.approx(0.9)
    assert d.evidence["oscillating_metric:val_loss"] == pytest.approx(np.log(4) / np.log(1.3))
    # caught as soon as 6 evaluations are in; onset: the first evaluation that fell back
    assert d.step == 2 and d.detected_at == 5
    assert d.advice == (
        "lower the LR about 3x, from 0.3 to 0.1",
        "add warmup (e.g. 5-10% of the steps)",
        "use a larger batch (or a decaying schedule, e.g. cosine)",
    )
    # the same smooth loss alone is healthy: the verdict comes from the metrics
    assert diagnose({k: log[k] for k in ("epoch", "loss", "lr")}).ok


def test_reviewer_dict_with_an_accuracy_list():
    decreasing = [2.3 * 0.95**t for t in range(50)]
    d = lrkit.diagnose({"loss": decreasing, "accuracy": [0.1, 0.9] * 25})
    assert d.verdict == "fluctuating"
    assert metric_names(d) == ["accuracy"] and "'accuracy' is fluctuating" in d.message
    assert d.evidence["metric_higher_is_better"] == 1.0 and d.evidence["metric_scale"] == 0.0
    out = json.loads(json.dumps(d.to_dict()))  # JSON-ready, names in the keys
    assert out["evidence"]["oscillating_metric:accuracy"] == pytest.approx(8.0)


@pytest.mark.parametrize("name, values", [("val_loss", [1.0, 4.0]), ("val_accuracy", [0.2, 0.9]), ("val_perplexity", [12.0, 40.0])])
def test_each_kind_of_metric_alone(name, values):
    d = diagnose(epoch_log(20, **{name: values * 10}))
    assert d.verdict == "fluctuating" and metric_names(d) == [name]


@SETTINGS
@given(
    k=st.integers(0, 30),
    n_osc=st.integers(6, 30),
    hi=st.floats(0.5, 0.98),
    gap=st.floats(0.2, 0.45),
    noise=st.floats(0.0, 0.02),
    seed=st.integers(0, 10_000),
)
def test_accuracy_that_rises_then_oscillates_is_caught_with_its_onset(k, n_osc, hi, gap, noise, seed):
    rng = np.random.default_rng(seed)
    rise = logistic(k, 0.1, hi, k / 2, max(k / 10, 0.5)) if k else np.array([])
    osc = np.where(np.arange(n_osc) % 2 == 0, hi, hi - gap)  # the first fall back is at epoch k + 1
    acc = np.clip(np.concatenate([rise, osc]) + noise * rng.standard_normal(k + n_osc), 0, 1)
    d = diagnose(epoch_log(k + n_osc, val_accuracy=acc))
    assert d.verdict == "fluctuating" and metric_names(d) == ["val_accuracy"]
    assert k <= d.step <= k + 3
    assert d.detected_at <= max(k + 12, 5)
    assert d.evidence["metric_amplitude"] >= 0.1


@SETTINGS
@given(factor=st.floats(1.8, 6.0), level=st.floats(0.05, 3.0), noise=st.floats(0.0, 0.05), seed=st.integers(0, 10_000), n=st.integers(6, 40))
def test_val_loss_swinging_by_a_factor_is_caught(factor, level, noise, seed, n):
    rng = np.random.default_rng(seed)
    vl = level * np.where(np.arange(n) % 2 == 0, 1.0, factor) * np.exp(noise * rng.standard_normal(n))
    d = diagnose(epoch_log(n, val_loss=vl))
    assert d.verdict == "fluctuating" and metric_names(d) == ["val_loss"]
    assert "swings by a factor" in d.message and d.evidence["metric_higher_is_better"] == 0.0


# ----------------------------------------------------------------------------- (b) healthy runs never alarm
@MANY
@given(
    lo=st.floats(0.0, 0.5),
    hi=st.floats(0.6, 0.99),
    mid=st.floats(-5, 30),
    width=st.floats(0.5, 10),
    sigma=st.floats(0.0, 0.02),
    n=st.integers(6, 80),
    seed=st.integers(0, 10_000),
)
@example(lo=0.1, hi=0.95, mid=3.0, width=0.5, sigma=0.02, n=40, seed=0)  # a sharp knee, then a plateau
def test_noisy_but_improving_val_accuracy_is_healthy(lo, hi, mid, width, sigma, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(4):  # several noise draws per curve
        acc = np.clip(logistic(n, lo, hi, mid, width) + sigma * rng.standard_normal(n), 0, 1)
        vl = (2.3 * np.exp(-np.arange(n) / (2 * width + 1)) + 0.2) * np.exp(0.03 * rng.standard_normal(n))
        log = epoch_log(n, val_accuracy=acc, val_loss=vl)
        log["loss"] = smooth_loss(n, seed=int(rng.integers(1 << 30)), noise=0.02).tolist()
        d = diagnose(log)
        assert d.ok, d


@MANY
@given(level=st.floats(0.9, 0.99), sigma=st.floats(0.0, 0.01), n=st.integers(6, 100), seed=st.integers(0, 10_000))
@example(level=0.97, sigma=0.01, n=100, seed=1)
def test_val_accuracy_plateaued_at_a_good_value_is_healthy(level, sigma, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        acc = np.clip(level + sigma * rng.standard_normal(n), 0, 1)
        vl = 0.1 * np.exp(0.03 * rng.standard_normal(n))
        assert diagnose(epoch_log(n, val_accuracy=acc, val_loss=vl)).ok


@MANY
@given(
    floor=st.floats(0.05, 1.0),
    tau=st.floats(1.0, 20.0),
    turn=st.floats(3.0, 40.0),
    rate=st.floats(0.0, 0.05),
    noise=st.floats(0.0, 0.03),
    n=st.integers(6, 60),
    seed=st.integers(0, 10_000),
)
def test_val_loss_decreasing_or_overfitting_is_healthy(floor, tau, turn, rate, noise, n, seed):
    # decreases to a floor, then (rate > 0) rises again as the model overfits: not an oscillation
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    for _ in range(4):
        vl = (2.0 * np.exp(-t / tau) + floor) * np.exp(rate * np.maximum(0.0, t - turn)) * np.exp(noise * rng.standard_normal(n))
        assert diagnose(epoch_log(n, val_loss=vl)).ok


@SETTINGS
@given(seed=st.integers(0, 10_000), every=st.integers(10, 40), sigma=st.floats(0.0, 0.02))
def test_per_step_run_with_sparse_validation_is_healthy(seed, every, sigma):
    # a per-step loss (window 50) with a validation every `every` steps
    rng = np.random.default_rng(seed)
    n = 800
    clean = smooth_loss(n, tau=150)
    loss = smooth_loss(n, tau=150, seed=seed, noise=0.2)  # minibatch noise
    doc = Doctor()
    for t in range(n):
        kw = {}
        if t % every == every - 1:  # the whole validation set: little noise
            acc = np.clip(0.1 + 0.85 / (1 + np.exp(-(t - 200) / 60)) + sigma * rng.standard_normal(), 0, 1)
            kw = {"val_loss": float(clean[t] * 1.1 * np.exp(0.02 * rng.standard_normal())), "metrics": {"val_accuracy": float(acc)}}
        doc.observe(t, float(loss[t]), lr=0.1, **kw)
    assert doc.history == [] and doc.diagnosis.ok


@pytest.mark.parametrize("seed", range(3))
def test_dense_minibatch_accuracy_is_judged_on_block_medians(seed):
    # a training accuracy on batches of 16 every step: binomial noise (sd ~0.11) is not oscillation
    rng = np.random.default_rng(seed)
    n = 1500
    t = np.arange(n)
    acc = rng.binomial(16, 0.1 + 0.6 / (1 + np.exp(-(t - 200) / 50))) / 16
    loss = smooth_loss(n, tau=200, seed=seed, noise=0.1)
    doc = Doctor()
    for i in range(n):
        doc.observe(i, float(loss[i]), lr=0.1, metrics={"accuracy": float(acc[i])})
    assert doc.history == []
    # ... but the same accuracy jumping between blocks of steps is caught
    doc = Doctor()
    for i in range(n):
        a = 0.9 if (i // 10) % 2 else 0.3
        doc.observe(i, float(loss[i]), lr=0.1, metrics={"accuracy": float(rng.binomial(16, a) / 16)})
    assert overall(doc).verdict == "fluctuating"


@pytest.mark.parametrize("name", ["eval_runtime", "train_steps_per_second", "loss_scale", "learning_rate_pg1", "grad_norm_l2", "timestamp", "batch_size"])
def test_bookkeeping_columns_are_not_judged_unless_named(name):
    log = epoch_log(20, **{name: [1.2, 2.1] * 10})
    assert diagnose(log).ok
    d = diagnose(log, metric_modes={name: "min"})
    assert d.verdict == "fluctuating" and metric_names(d) == [name]


def test_metric_modes_override_the_name_rule():
    # the peaks rise fast (progress for a higher-is-better metric), the troughs stay at 0.1
    n = 16
    v = np.where(np.arange(n) % 2 == 1, np.linspace(0.2, 0.95, n), 0.1)
    assert diagnose(epoch_log(n, auc=v)).ok
    d = diagnose(epoch_log(n, auc=v), metric_modes={"auc": "min"})  # read as an error: no progress
    assert d.verdict == "fluctuating" and d.evidence["metric_higher_is_better"] == 0.0
    assert d.evidence["metric_best"] == pytest.approx(0.1)
    # "ignore" switches a metric off, whatever its name
    assert diagnose(epoch_log(20, val_accuracy=[0.2, 0.9] * 10), metric_modes={"val_accuracy": "ignore"}).ok
    # names with loss/error/perplexity/mse/mae are lower-is-better: onset = the first rise
    for name, mode in [("val_error", 0.0), ("val_rmse", 0.0), ("val_f1", 1.0)]:
        d = diagnose(epoch_log(12, **{name: [0.2, 0.9] * 6}))
        assert d.evidence["metric_higher_is_better"] == mode
        assert d.step == (2 if mode else 1)


def test_signed_metrics_are_judged_only_when_named():
    log = epoch_log(20, margin=[-1.0, 2.0] * 10)
    assert diagnose(log).ok
    d = diagnose(log, metric_modes={"margin": "max"})
    assert d.verdict == "fluctuating" and d.evidence["metric_scale"] == 2.0


def test_a_single_bad_evaluation_is_not_an_oscillation():
    acc = [0.5, 0.7, 0.8, 0.85, 0.88, 0.3, 0.89, 0.9, 0.9, 0.91, 0.9, 0.91]
    assert diagnose(epoch_log(len(acc), val_accuracy=acc)).ok


@MANY
@given(
    n_learn=st.integers(2, 5),
    level=st.floats(0.01, 2.0),
    factor=st.floats(1.5, 6.0),
    up=st.integers(1, 3),
    n_after=st.integers(1, 6),
)
@example(n_learn=3, level=0.046, factor=4.2, up=3, n_after=6)  # Keras fit, raw digits, Adam 2e-3 (per-epoch log)
def test_one_excursion_after_learning_then_new_bests_is_not_fluctuating(n_learn, level, factor, up, n_after):
    """Learning, one excursion of the validation loss (up for ``up`` evaluations, then back down)
    and new bests after it: one dip in quality, not a swing; live and offline both stay quiet."""
    learn = level * 4.0 ** np.linspace(1, 0, n_learn)
    bump = [level * factor ** ((i + 1) / up) for i in range(up)] + [level * 1.3]
    after = level * 0.9 * 0.8 ** np.arange(n_after)
    vl = np.concatenate([learn, bump, after])
    d = diagnose(epoch_log(len(vl), val_loss=vl))
    assert d.ok, d.message
    doc = Doctor(window=6)
    for e, (loss, v) in enumerate(zip(smooth_loss(len(vl)), vl)):
        assert doc.observe(e, float(loss), lr=0.3, val_loss=float(v)).verdict != "fluctuating"


def test_two_excursions_after_learning_without_a_new_best_are_fluctuating():
    vl = [0.8, 0.3, 0.1, 0.3, 0.1, 0.35, 0.11, 0.3, 0.12]
    d = diagnose(epoch_log(len(vl), val_loss=vl))
    assert d.verdict == "fluctuating" and metric_names(d) == ["val_loss"]


# ----------------------------------------------------------------------------- precedence
def test_a_swinging_metric_outranks_a_flat_loss():
    rng = np.random.default_rng(0)
    n = 400
    loss = 2.3 * np.exp(0.05 * rng.standard_normal(n))
    flat = Doctor()
    swinging = Doctor()
    for t in range(n):
        flat.observe(t, float(loss[t]), lr=1e-4)
        kw = {"metrics": {"val_accuracy": 0.9 if (t // 20) % 2 else 0.3}} if t % 20 == 19 else {}
        swinging.observe(t, float(loss[t]), lr=1e-4, **kw)
    assert overall(flat).verdict == "flat"
    d = overall(swinging)
    assert d.verdict == "fluctuating" and metric_names(d) == ["val_accuracy"]
    assert d.advice[0] == "lower the LR about 3x, from 0.0001 to 3.33e-05"
    assert swinging.diagnosis.verdict == "fluctuating"  # live, too


def test_the_training_loss_takes_precedence_over_the_metrics():
    # the loss diverges from step 150; the validation accuracy swings from the start
    rng = np.random.default_rng(1)
    n = 300
    t = np.arange(n)
    loss = np.where(t < 150, 2.3 * np.exp(-t / 30) + 0.1, (2.3 * np.exp(-5) + 0.1) * 1.05 ** (t - 150))
    loss = loss * np.exp(0.05 * rng.standard_normal(n))
    doc = Doctor()
    for i in range(n):
        kw = {"metrics": {"val_accuracy": [0.2, 0.9][(i // 10) % 2]}} if i % 10 == 9 else {}
        doc.observe(i, float(loss[i]), lr=0.5, **kw)
    assert "fluctuating" in [h.verdict for h in doc.history]  # the metric was seen first ...
    d = overall(doc)
    assert d.verdict == "diverging" and 140 <= d.step <= 160  # ... the loss decides
    assert doc.diagnosis.verdict == "diverging"


def test_loss_spikes_keep_their_own_evidence_when_a_metric_also_swings():
    rng = np.random.default_rng(2)
    n = 400
    loss = 0.5 * np.exp(0.05 * rng.standard_normal(n))
    for s in range(60, n, 20):
        loss[s : s + 3] *= 10
    doc = Doctor()
    for i in range(n):
        kw = {"metrics": {"val_accuracy": [0.2, 0.9][(i // 10) % 2]}} if i % 10 == 9 else {}
        doc.observe(i, float(loss[i]), lr=0.05, **kw)
    assert doc.diagnosis.verdict == "fluctuating" and "spike_fraction" in doc.diagnosis.evidence


# ----------------------------------------------------------------------------- (c) log readers
def test_csv_with_an_accuracy_column(tmp_path):
    p = tmp_path / "training.log.csv"  # Keras CSVLogger layout
    rows = ["epoch,accuracy,loss,val_accuracy,val_loss,learning_rate"]
    for e in range(24):
        va = 0.93 if e % 2 else 0.41
        rows.append(f"{e},{0.5 + 0.4 * (1 - 0.9 ** e):.4f},{2.3 * 0.9 ** e + 0.05:.4f},{va},{0.3 + 0.01 * e:.4f},0.01")
    p.write_text("\n".join(rows) + "\n")
    recs = read_log(p)
    assert {"accuracy", "val_accuracy"} <= set(recs.names)
    d = diagnose(p)
    assert d.verdict == "fluctuating" and metric_names(d) == ["val_accuracy"]
    assert d.step == 2 and d.advice[0] == "lower the LR about 3x, from 0.01 to 0.00333"


def test_validation_rows_at_their_own_steps_are_not_lost(tmp_path):
    # Lightning-style metrics.csv where validation is logged at a step with no training loss
    p = tmp_path / "metrics.csv"
    lines = ["epoch,step,train_loss_step,val_loss,val_acc"]
    for e in range(12):
        for s in range(10):
            lines.append(f"{e},{e * 11 + s},{2.3 * 0.98 ** (e * 10 + s) + 0.05:.4f},,")
        lines.append(f"{e},{e * 11 + 10},,{[0.4, 1.6][e % 2]},{[0.9, 0.3][e % 2]}")
    p.write_text("\n".join(lines) + "\n")
    recs = read_log(p)
    assert recs.has("val_accuracy").sum() == 12 and not np.any(recs.has("loss") & recs.has("val_accuracy"))
    d = diagnose(p)
    assert d.verdict == "fluctuating"
    assert set(metric_names(d)) == {"val_accuracy", "val_loss"}
    assert d.step % 11 == 0  # carried to the next row that has a loss (the start of an epoch)


def test_healthy_csv_with_metrics_stays_healthy(tmp_path):
    rng = np.random.default_rng(3)
    p = tmp_path / "ok.csv"
    rows = ["epoch,loss,accuracy,val_loss,val_accuracy,eval_runtime"]
    for e in range(30):
        acc = 0.1 + 0.85 / (1 + np.exp(-(e - 6) / 2))
        rows.append(f"{e},{2.3 * 0.85 ** e + 0.1},{acc},{(2.3 * 0.85 ** e + 0.2) * np.exp(0.02 * rng.standard_normal())},"
                    f"{acc - 0.02 + 0.01 * rng.standard_normal()},{1.0 + rng.random()}")
    p.write_text("\n".join(rows) + "\n")
    assert diagnose(p).ok


# ----------------------------------------------------------------------------- state, bad input
def test_state_dict_resume_with_metrics_gives_the_same_diagnoses():
    rng = np.random.default_rng(4)
    n = 400
    loss = smooth_loss(n, tau=80, seed=4, noise=0.1)
    acc = np.where(np.arange(n) < 200, 0.9, np.where((np.arange(n) // 10) % 2, 0.9, 0.3))

    def step(doc, t):
        kw = {"val_loss": float(loss[t] * 1.1), "metrics": {"val_accuracy": float(acc[t] + 0.01 * rng.standard_normal())}} if t % 10 == 9 else {}
        return doc.observe(t, float(loss[t]), lr=0.1, **kw)

    rng = np.random.default_rng(4)
    straight = Doctor(window=30)
    seq_a = [step(straight, t) for t in range(n)]
    rng = np.random.default_rng(4)
    first = Doctor(window=30)
    seq_b = [step(first, t) for t in range(215)]  # mid-block, with a pending value
    resumed = Doctor(window=30)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    seq_b += [step(resumed, t) for t in range(215, n)]
    assert [d.to_dict() for d in seq_a] == [d.to_dict() for d in seq_b]
    assert overall(resumed).verdict == "fluctuating" and 200 <= overall(resumed).step <= 230


def test_a_state_saved_before_metrics_were_judged_still_loads():
    doc = Doctor(window=10)
    for t in range(30):
        doc.observe(t, 1.0 / (t + 1))
    old = doc.state_dict()
    for k in ("metric_modes", "metric_window", "metric_swing", "metric_rel_swing"):
        del old["config"][k]
    del old["state"]["metrics"], old["state"]["metric_flags"]
    again = Doctor(window=10)
    again.load_state_dict(old)
    assert again.n_observations == 30 and again.observe(30, 0.03).ok


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"metric_modes": {"val_acc": "maximize"}}, ValueError, r"metric_modes\['val_acc'\] must be 'max' .*'min' .*'ignore', got 'maximize'"),
        ({"metric_modes": "max"}, ValueError, r"metric_modes must be a dict"),
        ({"metric_modes": {1: "max"}}, TypeError, r"metric_modes keys must be metric names \(str\), got 1"),
        ({"metric_window": 5}, ValueError, r"metric_window must be an int >= 6, got 5"),
        ({"metric_swing": 0.0}, ValueError, r"metric_swing must be a number in \(0, 1\], got 0.0"),
        ({"metric_swing": 1.5}, ValueError, r"metric_swing must be a number in \(0, 1\]"),
        ({"metric_rel_swing": -0.1}, ValueError, r"metric_rel_swing must be a number > 0, got -0.1"),
    ],
)
def test_bad_metric_settings_name_the_parameter_and_the_range(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        Doctor(**kwargs)


@pytest.mark.parametrize(
    "metrics, exc, pattern",
    [
        ({"val_acc": "high"}, ValueError, r"metrics\['val_acc'\] must be a number, got 'high'"),
        ([0.5], TypeError, r"metrics must be a dict \{name: value\}, got list"),
        ({3: 0.5}, TypeError, r"metric names must be str, got 3"),
    ],
)
def test_bad_metrics_leave_the_doctor_untouched(metrics, exc, pattern):
    doc = Doctor(window=5)
    for t in range(8):
        doc.observe(t, 1.0 / (t + 1), metrics={"val_acc": 0.5 + 0.01 * t})
    before = json.dumps(doc.state_dict())
    with pytest.raises(exc, match=pattern):
        doc.observe(8, 0.1, metrics=metrics)
    assert json.dumps(doc.state_dict()) == before
    assert doc.observe(8, 0.1).ok  # the same step is still free


def test_nonfinite_metrics_are_evidence_and_skipped():
    doc = Doctor(window=5)
    for t in range(20):
        d = doc.observe(t, 1.0 / (t + 1), metrics={"val_acc": float("nan") if t == 10 else 0.5 + 0.02 * t})
        if t == 10:
            assert "nonfinite_metric_val_acc" in d.evidence
    assert d.ok
