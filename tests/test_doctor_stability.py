"""TorchDoctor with the Hessian stability probe: real runs where lambda_max is known in closed form.

Least squares on scikit-learn's diabetes data: for the mean squared error of a linear model the
Hessian is H = 2/n Xa^T Xa (Xa = [X, 1]) whatever the weights, so the probe's lambda_max, the
limit 2 of plain SGD and the headroom 2 / (lr * lambda_max) are all checkable exactly.
"""
from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_diabetes

from lrkit.integrations.torch.doctor import StabilityProbe, TorchDoctor

N = 352  # rows used: 4 probe chunks of 88


def regression():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return torch.tensor(X[:N], dtype=torch.float32), torch.tensor(y[:N], dtype=torch.float32)[:, None]


def lam_max(X):
    """Top eigenvalue of the Hessian of the MSE of a linear model on X (float64)."""
    Xa = np.hstack([X.numpy().astype(np.float64), np.ones((len(X), 1))])
    return float(np.linalg.eigvalsh(2 * Xa.T @ Xa / len(X))[-1])


def chunks(X, y, k=4):
    """k equal chunks: the mean of their Hessians is the Hessian of the whole set."""
    return [(X[i::k], y[i::k]) for i in range(k)]


def run(lr, *, steps=300, guard=False, stop_on_problem=False, on_step=None, model=None, **kw):
    """Minibatch SGD on the regression; returns the watch."""
    X, y = regression()
    torch.manual_seed(0)
    model = model if model is not None else torch.nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    kw.setdefault("stability_probe", StabilityProbe(chunks(X, y), loss_fn=F.mse_loss, iters=100, tol=1e-8))
    watch = TorchDoctor(model, opt, guard=guard, snapshot_every=20, **kw)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, N, (32,), generator=g)
        opt.zero_grad()
        loss = F.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        before = [p.detach().clone() for p in model.parameters()]
        rolled = watch.after_step(step, loss)
        if on_step is not None:
            on_step(step, model, watch, rolled, before)
        if stop_on_problem and watch.diagnosis.verdict not in ("healthy", "flat"):
            break
    return watch


def test_too_high_lr_is_explained_by_the_curvature():
    """SGD at lr = 2.5 / lambda_max: the doctor says the run is in trouble, and the diagnosis it
    exposes says lr * lambda_max = 2.5 > 2, the largest stable LR and by how much it is exceeded."""
    lam = lam_max(regression()[0])
    lr = 2.5 / lam
    watch = run(lr, stop_on_problem=True)
    d = watch.diagnosis
    assert d.verdict in ("diverging", "fluctuating")
    plain = watch.doctor.diagnosis
    ev = d.evidence
    assert ev["lambda_max"] == pytest.approx(lam, rel=1e-4)
    assert ev["sharpness_ratio"] == pytest.approx(2.5, rel=1e-4)
    assert ev["stability_limit"] == 2.0 and ev["sharpness_ratio"] > ev["stability_limit"]
    assert ev["stability_headroom"] == pytest.approx(0.8, rel=1e-4)
    assert {k: v for k, v in ev.items() if k in plain.evidence} == plain.evidence  # the doctor's numbers kept
    assert d.message.startswith(plain.message) and "beyond the stability limit" in d.message
    assert f"an LR below {2 / lam:.3g} is stable here" in d.message
    assert d.advice[0] == plain.advice[0] and any(f"keep the LR below {2 / lam:.3g}" in a for a in d.advice)
    assert (d.verdict, d.step, d.detected_at) == (plain.verdict, plain.step, plain.detected_at)
    [report] = watch.stability_reports  # probed once, when the problem was first detected
    assert report["trigger"] == d.verdict and report["step"] == d.detected_at and report["lr"] == pytest.approx(lr)
    assert d.to_dict()["evidence"]["stability_headroom"] == pytest.approx(0.8, rel=1e-4)  # JSON-ready


def test_guard_probes_the_restored_state_after_the_rollback():
    """With the guard the probe runs after the rollback: it sees the restored weights (not the
    diverged ones), at the LR that failed, and says the lowered LR has headroom."""
    X, y = regression()
    lam = lam_max(X)
    lr = 2.5 / lam
    seen = []  # the weights each probe loss was computed at

    def loss(model, batch):
        seen.append(model.weight.detach().clone())
        return F.mse_loss(model(batch[0]), batch[1])

    received = []
    checks = []

    def on_step(step, model, watch, rolled, before):
        if rolled:
            checks.append((torch.equal(seen[-1], model.weight.detach()), torch.equal(seen[-1], before[0])))
            # the doctor went back to its snapshot: no earlier (pre-rollback) probe is attached to it
            checks.append("lambda_max" in watch.diagnosis.evidence)

    watch = run(
        lr, steps=200, guard=True, on_step=on_step, on_intervention=received.append,
        stability_probe=StabilityProbe(chunks(X, y), step_fn=loss, every=5, iters=100, tol=1e-8),
    )
    assert len(watch.interventions) == 1 and checks == [(True, False), False]  # restored state, not the bad one
    rec = watch.interventions[0]
    assert received == [rec]  # the user's callback got the record with the probe
    assert rec.evidence["sharpness_ratio"] == pytest.approx(2.5, rel=1e-4)
    assert rec.evidence["stability_headroom"] == pytest.approx(0.8, rel=1e-4)
    assert rec.evidence["stability_headroom_after_rollback"] == pytest.approx(8.0, rel=1e-4)  # lr_factor 0.1
    assert "beyond the stability limit" in rec.message and f"lowered the LR to {0.1 * lr:.3g}" in rec.message
    assert "(headroom 8x)" in rec.message
    triggers = [r["trigger"] for r in watch.stability_reports]
    first = triggers.index("diverging")  # probed every 5 steps until then (one more with a skipped spike)
    assert first >= 3 and set(triggers[:first]) == {"every"}
    report = watch.stability_reports[first]
    assert report["restored_to"] == rec.restored_to and report["lr"] == pytest.approx(lr)
    assert report["lr_after_rollback"] == pytest.approx(0.1 * lr)
    assert watch.guard.interventions[0].message != rec.message  # the guard's own record is untouched
    assert watch.diagnosis.verdict == "healthy"
    assert watch.diagnosis.evidence["stability_headroom"] == pytest.approx(8.0, rel=1e-4)  # `every`, at 0.1x the LR
    now = watch.stability()  # on demand after the rollback: at the lowered LR in force
    assert now["lr"] == pytest.approx(0.1 * lr) and now["headroom"] == pytest.approx(8.0, rel=1e-4)
    assert [g["lr"] for g in watch.optimizer.param_groups] == [lr]  # the base LR is left as it was


def diabetes_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def run_mlp(guard):
    X, y = regression()
    model = diabetes_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    watch = TorchDoctor(model, opt, guard=guard, stability_probe=StabilityProbe(chunks(X, y), loss_fn=F.mse_loss))
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        idx = torch.randint(0, N, (32,), generator=g)
        opt.zero_grad()
        loss = F.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
        if watch.stability_reports:
            break
    return watch


def test_why_the_guard_probes_the_last_good_state():
    """A tanh network at about 2x the limit (momentum 0.9: limit 3.8): at the restored initial
    state the probe finds lr * lambda_max beyond 3.8 and names a sensible LR; at the blown-up state
    of detection (no guard) lambda_max has grown by orders of magnitude and the explanation says
    that its number is no LR to use."""
    guarded = run_mlp(guard=True)
    rec = guarded.interventions[0]
    assert rec.restored_to == 0
    good = guarded.stability_reports[0]
    assert 1.0 < good["sharpness_ratio"] / good["limit"] < 4.0
    assert good["limit"] == pytest.approx(3.8)
    assert f"an LR below {good['lr'] * good['headroom']:.3g} is stable here" in rec.message
    watched = run_mlp(guard=False)
    bad = watched.stability_reports[0]
    assert bad["lambda_max"] > 100 * good["lambda_max"]
    d = watched.diagnosis
    assert "blown up already" in d.message
    assert not any("keep the LR below" in a for a in d.advice)  # no LR advice from a blown-up state


def test_healthy_run_headroom_on_demand_and_every():
    X, y = regression()
    lam = lam_max(X)
    lr = 0.2 / lam
    probe = StabilityProbe(chunks(X, y), loss_fn=F.mse_loss, every=50, iters=100, tol=1e-8)
    watch = run(lr, steps=200, stability_probe=probe)
    assert watch.diagnosis.verdict == "healthy"
    assert [(r["trigger"], r["step"]) for r in watch.stability_reports] == [("every", s) for s in (49, 99, 149, 199)]
    assert all(r["headroom"] == pytest.approx(10.0, rel=1e-4) for r in watch.stability_reports)
    report = watch.stability()
    assert report["trigger"] == "on demand" and report["step"] == 199
    assert report["headroom"] > 1 and report["headroom"] == pytest.approx(10.0, rel=1e-4)
    assert report["verdict"] == "headroom 10x"
    d = watch.diagnosis
    assert d.evidence["stability_headroom"] == pytest.approx(10.0, rel=1e-4)
    assert "(headroom 10x)." in d.message and d.advice == ()
    # other batches on demand: the curvature of the first 88 rows only
    sub = watch.stability(batches=[(X[:88], y[:88])])
    assert sub["lambda_max"] == pytest.approx(lam_max(X[:88]), rel=1e-4)
    assert sub["details"]["n_batches"] == 1


@settings(max_examples=12, deadline=None)
@given(factor=st.floats(0.05, 4.0), num_batches=st.integers(1, 4), as_loader=st.booleans())
def test_property_on_demand_headroom_is_the_closed_form(factor, num_batches, as_loader):
    """For any LR, the on-demand probe's headroom is 2 / (lr * lambda_max) of exactly the batches
    it was given (the first ``num_batches`` of a list or of a loader)."""
    X, y = regression()
    if as_loader:
        perm = torch.cat([torch.arange(i, N, 4) for i in range(4)])  # the loader yields the 4 chunks in order
        batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[perm], y[perm]), batch_size=N // 4)
    else:
        batches = chunks(X, y)
    lam = lam_max(torch.cat([X[i::4] for i in range(num_batches)]))
    model = torch.nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=factor / lam)
    probe = StabilityProbe(batches, loss_fn=F.mse_loss, num_batches=num_batches, iters=200, tol=1e-9)
    watch = TorchDoctor(model, opt, guard=False, stability_probe=probe)
    r = watch.stability()
    assert r["details"]["n_batches"] == num_batches
    assert r["lambda_max"] == pytest.approx(lam, rel=1e-4)
    assert r["headroom"] == pytest.approx(2.0 / factor, rel=1e-4)
    assert (r["headroom"] < 1) == (r["verdict"] == "beyond the stability limit")


def state_of(model, opt, loader):
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [p.grad.clone() for p in model.parameters()],
        "opt": {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())},
        "lrs": [g["lr"] for g in opt.param_groups],
        "modes": [m.training for m in model.modules()],
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": loader.generator.get_state(),
    }


def assert_same(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # BatchNorm statistics included
    assert all(torch.equal(x, y) for x, y in zip(a["grads"], b["grads"]))
    assert a["opt"].keys() == b["opt"].keys()
    for i in a["opt"]:
        assert all(torch.equal(a["opt"][i][k], b["opt"][i][k]) for k in a["opt"][i])
    assert a["lrs"] == b["lrs"] and a["modes"] == b["modes"]
    assert torch.equal(a["torch"], b["torch"]) and torch.equal(a["loader"], b["loader"])
    na, nb = a["numpy"], b["numpy"]
    assert na[0] == nb[0] and np.array_equal(na[1], nb[1]) and na[2:] == nb[2:]
    assert a["python"] == b["python"]


def noisy_training(probe_every):
    """Adam on a dropout + BatchNorm net, a shuffling training loader with its own generator;
    the probe (if any) draws from a shuffling loader *without* a generator (that consumes the
    global torch RNG) and its loss uses NumPy's and Python's RNGs."""
    X, y = regression()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.utils.data.TensorDataset(X, y)
    train = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    probe_loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)

    def loss(m, b):
        jitter = 1.0 + 0.0 * (np.random.rand() + random.random())  # consumes both RNGs
        return F.mse_loss(m(b[0]), b[1]) * jitter

    probe = StabilityProbe(probe_loader, step_fn=loss, num_batches=2, every=probe_every, iters=5)
    watch = TorchDoctor(model, opt, guard=False, loaders=[train], stability_probe=probe if probe_every else None)
    step = 0
    for _ in range(2):
        for xb, yb in train:
            opt.zero_grad()
            out = F.mse_loss(model(xb), yb) * (1.0 + 0.01 * torch.rand(()))  # uses the torch RNG each step
            out.backward()
            watch.after_backward(out)
            opt.step()
            watch.after_step(step, out)
            step += 1
    return model, opt, train, watch


def test_probe_leaves_the_training_bitwise_untouched():
    model, opt, train, watch = noisy_training(probe_every=3)
    assert [r["step"] for r in watch.stability_reports] == [2, 5, 8, 11, 14, 17, 20]  # 22 steps, every 3
    probed = state_of(model, opt, train)
    model0, opt0, train0, watch0 = noisy_training(probe_every=None)
    assert watch0.stability_reports == []
    assert_same(probed, state_of(model0, opt0, train0))  # a run with 7 probes == a run without
    # and one probe on demand, directly
    before = state_of(model, opt, train)
    report = watch.stability()
    assert report["preconditioned"] and math.isfinite(report["lambda_max"])
    assert_same(before, state_of(model, opt, train))


def test_non_finite_probe_is_skipped_with_a_warning(caplog):
    """An automatic probe that meets a non-finite loss logs a warning and leaves the run going;
    on demand the error reaches the caller."""
    X, y = regression()
    broken = {"on": False}

    def loss(m, b):
        out = F.mse_loss(m(b[0]), b[1])
        return out * float("nan") if broken["on"] else out

    probe = StabilityProbe(chunks(X, y), step_fn=loss, every=10)
    model = torch.nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = TorchDoctor(model, opt, guard=False, stability_probe=probe)
    broken["on"] = True
    with caplog.at_level(logging.WARNING, logger="lrkit.stability"):
        for step in range(20):
            opt.zero_grad()
            loss_t = F.mse_loss(model(X[:32]), y[:32])
            loss_t.backward()
            opt.step()
            watch.after_step(step, loss_t)
    assert watch.stability_reports == [] and "lambda_max" not in watch.diagnosis.evidence
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["lrkit stability probe (every, step 9) skipped"] + [
        "lrkit stability probe (every, step 19) skipped"
    ]
    with pytest.raises(ValueError, match="the loss of batch 0 is nan"):
        watch.stability()


def test_bad_arguments_name_the_parameter():
    X, y = regression()
    good = chunks(X, y)
    with pytest.raises(TypeError, match="batches"):
        StabilityProbe(loss_fn=F.mse_loss)  # the probe requested without batches
    with pytest.raises(ValueError, match=r"StabilityProbe: batches must be a list of batches or a re-iterable data loader .* got None"):
        StabilityProbe(None, loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="batches must hold at least one batch, got an empty list"):
        StabilityProbe([], loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="one-shot iterator"):
        StabilityProbe(iter(good), loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="batches must be a list of batches .* got Tensor"):
        StabilityProbe(X, loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="exactly one of loss_fn .* and step_fn .* got neither"):
        StabilityProbe(good)
    with pytest.raises(ValueError, match="got both"):
        StabilityProbe(good, loss_fn=F.mse_loss, step_fn=lambda m, b: m(b[0]).sum())
    with pytest.raises(ValueError, match="loss_fn must be callable, got str"):
        StabilityProbe(good, loss_fn="mse")
    for kw, msg in [
        ({"every": 0}, "every must be an int >= 1 or None, got 0"),
        ({"num_batches": True}, "num_batches must be an int >= 1 or None, got True"),
        ({"iters": 0}, "iters must be an int >= 1, got 0"),
        ({"tol": float("nan")}, "tol must be a finite number > 0, got nan"),
        ({"seed": 1.5}, "seed must be an int, got 1.5"),
    ]:
        with pytest.raises(ValueError, match=msg):
            StabilityProbe(good, loss_fn=F.mse_loss, **kw)

    model = torch.nn.Linear(10, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="TorchDoctor: stability_probe must be a StabilityProbe.* got True"):
        TorchDoctor(model, opt, stability_probe=True)
    with pytest.raises(ValueError, match="TorchDoctor.stability: this TorchDoctor has no stability probe"):
        TorchDoctor(model, opt).stability()
    two = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.2}], lr=0.1)
    with pytest.raises(ValueError, match=r"stability_probe: .*param group 1 differs from group 0 in \['lr'\]"):
        TorchDoctor(model, two, stability_probe=StabilityProbe(good, loss_fn=F.mse_loss))
    # a loss that cannot be differentiated fails when the TorchDoctor is built, not at the first problem
    with pytest.raises(ValueError, match="must return a scalar tensor that depends on the model's parameters"):
        TorchDoctor(model, opt, stability_probe=StabilityProbe(good, step_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]).item()))
    with pytest.raises(ValueError, match="does not require grad"):
        TorchDoctor(model, opt, stability_probe=StabilityProbe(good, step_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]).detach()))
    with pytest.raises(ValueError, match=r"batches must be \(input, target\) pairs .* got a tuple of length 3"):
        TorchDoctor(model, opt, stability_probe=StabilityProbe([(X, y, y)], loss_fn=F.mse_loss))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the model untouched by every failed construction
    assert model.weight.grad is None


def test_each_diverging_or_fluctuating_episode_is_probed_once():
    """Just past the limit (lr * lambda_max = 2.05) minibatch SGD alternates between fluctuating
    and diverging episodes: each one is probed once, when first detected, and explained (every
    time it is the diagnosis)."""
    X, y = regression()
    lam = lam_max(X)
    seen, bare = [], []

    def on_step(step, model, watch, rolled, before):
        d = watch.diagnosis
        if d.verdict == "fluctuating" and "lambda_max" in d.evidence:
            seen.append(d)
        if d.verdict in ("diverging", "fluctuating") and "lambda_max" not in d.evidence:
            bare.append((step, d.verdict, d.step))

    watch = run(2.05 / lam, steps=200, on_step=on_step)
    # an episode seen again after another verdict (diverging since step 8, back after a fluctuating
    # one) is not probed again, but its numbers come back with it
    assert not bare
    episodes = [(h.verdict, h.detected_at) for h in watch.doctor.history if h.verdict in ("diverging", "fluctuating")]
    assert [(r["trigger"], r["step"]) for r in watch.stability_reports] == episodes
    assert {"diverging", "fluctuating"} <= {v for v, _ in episodes}
    assert all(r["sharpness_ratio"] == pytest.approx(2.05, rel=1e-4) for r in watch.stability_reports)
    assert seen and all("beyond the stability limit" in d.message and d.message.startswith("The loss is fluctuating") for d in seen)


def test_readme_example_output_is_real():
    """The README's stability-probe example, run on its task, prints what the README shows."""
    import contextlib
    import io
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(
        r"```python\n(from lrkit\.torch import StabilityProbe, TorchDoctor\n.*?)```\n\n```\n(.*?)```",
        readme,
        re.S,
    )
    assert m, "the stability-probe example is missing from the README"
    code, shown = m.groups()
    torch.manual_seed(0)
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    data = torch.utils.data.TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None])
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"F": F, "loader": loader, "model": model, "opt": opt})  # noqa: S102 - our own README
    assert out.getvalue().split() == shown.split()
