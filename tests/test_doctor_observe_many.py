"""``Doctor.observe_many`` (the offline fast path) gives the same diagnosis, history and state as
feeding the rows one by one to ``Doctor.observe``, on random logs; bad columns are refused by
name with the first bad row, and leave the doctor untouched."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lrkit.doctor import Doctor

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def logs(draw):
    n = draw(st.integers(1, 400))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    kind = draw(st.sampled_from(["healthy", "rise", "spikes", "flat", "sgdr"]))
    noise = draw(st.floats(0, 0.5))
    loss = 2.3 * np.exp(-t / draw(st.floats(10, 300))) + 0.05
    lr = np.full(n, 0.1)
    if kind == "rise":
        k = draw(st.integers(0, n))
        loss[k:] = loss[k - 1 if k else 0] * 1.05 ** np.arange(n - k)
    elif kind == "spikes":
        loss[rng.random(n) < 0.1] *= 20
    elif kind == "flat":
        loss = np.full(n, 2.3)
    elif kind == "sgdr":
        lr = 0.1 * 0.5 * (1 + np.cos(np.pi * (t % 40) / 40))
        loss = loss * (1 + lr / 0.1)
    loss = loss * np.exp(noise * rng.standard_normal(n))
    if draw(st.booleans()):
        loss[rng.integers(0, n)] = draw(st.sampled_from([np.nan, np.inf]))
    gn = np.abs(1 + 0.3 * rng.standard_normal(n)) * (1 + 50 * (loss > 5))
    val_every = draw(st.sampled_from([0, 1, 7]))
    val = np.where(t % max(val_every, 1) == 0, loss * 1.1 * np.exp(0.2 * rng.standard_normal(n)), np.nan)
    acc = np.clip(0.5 + 0.4 * rng.standard_normal(n), 0, 1)
    present = {
        "lr": rng.random(n) < draw(st.sampled_from([1.0, 0.8])),
        "grad_norm": rng.random(n) < draw(st.sampled_from([1.0, 0.5, 0.0])),
        "val_loss": ~np.isnan(val) if val_every else np.zeros(n, bool),
        "val_accuracy": (t % 5 == 4) if val_every else np.zeros(n, bool),
    }
    window = draw(st.sampled_from([5, 10, 50]))
    steps = np.cumsum(rng.integers(1, 3, n)) + draw(st.integers(-3, 10))
    return dict(steps=steps, loss=loss, lr=lr, gn=gn, val=val, acc=acc, present=present, window=window)


def row_by_row(log, doc, lo=0, hi=None):
    hi = len(log["steps"]) if hi is None else hi
    p = log["present"]
    for i in range(lo, hi):
        mets = {"val_accuracy": float(log["acc"][i])} if p["val_accuracy"][i] else None
        doc.observe(
            int(log["steps"][i]),
            float(log["loss"][i]),
            lr=float(log["lr"][i]) if p["lr"][i] else None,
            grad_norm=float(log["gn"][i]) if p["grad_norm"][i] else None,
            val_loss=float(log["val"][i]) if p["val_loss"][i] else None,
            metrics=mets,
        )
    return doc


def at_once(log, doc, lo=0, hi=None):
    sl = slice(lo, hi)
    return doc.observe_many(
        log["steps"][sl], log["loss"][sl], lr=log["lr"][sl], grad_norm=log["gn"][sl], val_loss=log["val"][sl],
        metrics={"val_accuracy": log["acc"][sl]}, present={k: v[sl] for k, v in log["present"].items()},
    )


def as_json(d):
    return json.dumps(d.to_dict())  # NaN evidence compares equal as JSON


def same(a, b):
    assert as_json(a.diagnosis) == as_json(b.diagnosis)
    assert [as_json(h) for h in a.history] == [as_json(h) for h in b.history]
    assert json.dumps(a.state_dict()) == json.dumps(b.state_dict())


@SETTINGS
@given(log=logs())
def test_observe_many_equals_observe_row_by_row(log):
    a = row_by_row(log, Doctor(window=log["window"]))
    b = Doctor(window=log["window"])
    d = at_once(log, b)
    assert as_json(d) == as_json(a.diagnosis)
    same(a, b)


@SETTINGS
@given(log=logs(), cut=st.floats(0, 1))
def test_observe_many_in_chunks_and_mixed_with_observe(log, cut):
    n = len(log["steps"])
    k = int(cut * n)
    a = row_by_row(log, Doctor(window=log["window"]))
    b = Doctor(window=log["window"])
    at_once(log, b, 0, k) if k else None
    row_by_row(log, b, k, (k + n) // 2)
    if (k + n) // 2 < n:
        at_once(log, b, (k + n) // 2, n)
    same(a, b)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"steps": [0, 1, 1]}, r"steps must be strictly increasing, got 1 at row 2 \(step 1\)"),
        ({"steps": [0.0, 1.0, 2.0]}, r"steps must be a 1-d array of ints"),
        ({"losses": [1.0, -2.0, 1.0]}, r"losses must be >= loss_floor=0.0 .*got -2.0 at row 1 \(step 1\): .*Doctor\(loss_floor=F\)"),
        ({"lr": [0.1, -1.0, 0.1]}, r"lr must be a finite number >= 0, got -1.0 at row 1"),
        ({"lr": [0.1, np.nan, 0.1]}, r"lr must be a finite number >= 0, got nan at row 1"),
        ({"grad_norm": [1.0, 1.0, -3.0]}, r"grad_norm must be >= 0, got -3.0 at row 2"),
        ({"lr": [0.1, 0.1]}, r"lr must have one value per step \(3\)"),
        ({"present": {"momentum": [True] * 3}}, r"present\['momentum'\] names no column"),
    ],
)
def test_bad_columns_name_the_column_and_row_and_leave_the_doctor_untouched(kwargs, pattern):
    doc = Doctor(window=5)
    doc.observe_many(np.arange(-10, 0), np.linspace(2, 1, 10), lr=np.full(10, 0.1))
    before = json.dumps(doc.state_dict())
    args = {"steps": [0, 1, 2], "losses": [1.0, 0.9, 0.8], **kwargs}
    with pytest.raises(ValueError, match=pattern):
        doc.observe_many(np.asarray(args.pop("steps")), args.pop("losses"), **args)
    assert json.dumps(doc.state_dict()) == before


def test_a_masked_lr_is_not_validated_where_it_was_not_logged():
    doc = Doctor(window=5)
    d = doc.observe_many(np.arange(3), [1.0, 0.9, 0.8], lr=[0.1, np.nan, 0.1], present={"lr": [True, False, True]})
    assert d.ok and d.evidence["lr"] == 0.1
