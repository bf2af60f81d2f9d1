"""The Hessian stability probe against closed forms, and its limits against real divergence."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.doctor import Diagnosis
from lrkit.integrations.torch.hessian import (
    explain,
    stability_limit,
    stability_report,
    top_hessian_eigenvalue,
    with_stability,
)


def mse(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean()


def problem(seed=0, n=64, d=4, scale=1.0, bias=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    X[:, 0] *= 3.0  # some anisotropy
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=bias).double()
    Xa = np.hstack([X.numpy(), np.ones((n, 1))]) if bias else X.numpy()
    H = 2 * Xa.T @ Xa / n  # Hessian of the mean squared error in (w, b)
    return model, X, y, H


def test_quadratic_lambda_max_matches_eigvalsh():
    model, X, y, H = problem()
    batches = [(X[i::4], y[i::4]) for i in range(4)]  # 4 equal batches: mean of HVPs = full Hessian
    lam, info = top_hessian_eigenvalue(model, mse, batches, iters=200, tol=1e-10)
    assert lam == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-6)
    assert info["converged"] and info["n_batches"] == 4 and info["n_params"] == 5
    assert not info["shifted"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 6), scale=st.floats(0.1, 10.0), wd=st.floats(0.0, 2.0))
def test_property_lambda_max_with_weight_decay(seed, d, scale, wd):
    model, X, y, H = problem(seed, d=d, scale=scale)
    lam, _ = top_hessian_eigenvalue(model, mse, [(X, y)], iters=500, tol=1e-12, seed=seed, weight_decay=wd)
    want = np.linalg.eigvalsh(H + wd * np.eye(d + 1))[-1]
    assert lam == pytest.approx(want, rel=1e-4)


def test_negative_dominant_eigenvalue_is_shifted():
    # f(w) = w0^2 - 3 w1^2: eigenvalues 2 and -6; the top one is 2
    model = torch.nn.Linear(2, 1, bias=False).double()
    loss = lambda m, _: m.weight[0, 0] ** 2 - 3 * m.weight[0, 1] ** 2  # noqa: E731
    lam, info = top_hessian_eigenvalue(model, loss, [None], iters=300, tol=1e-10)
    assert info["shifted"] and lam == pytest.approx(2.0, rel=1e-6)


def _run(opt_factory, model, X, y, steps=300):
    opt = opt_factory(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        loss = mse(model, (X, y))
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(mse(model, (X, y)))


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("sgd", {}),
        ("momentum", {"momentum": 0.9}),
        ("dampened", {"momentum": 0.5, "dampening": 0.3}),
        ("nesterov", {"momentum": 0.8, "nesterov": True}),
        ("decay", {"momentum": 0.5, "weight_decay": 0.5}),
    ],
)
def test_sgd_limits_are_real_divergence_boundaries(kind, kwargs):
    """Full-batch SGD at 0.95x the reported limit converges, at 1.05x it diverges."""
    model0, X, y, H = problem(seed=1)
    finals = {}
    for f in (0.95, 1.05):
        model = torch.nn.Linear(4, 1).double()
        model.load_state_dict(model0.state_dict())
        probe = torch.optim.SGD(model.parameters(), lr=1.0, **kwargs)
        r = stability_report(model, probe, mse, [(X, y)], iters=300, tol=1e-10)
        lr = f * r["limit"] / r["lambda_max"]
        finals[f] = _run(lambda p: torch.optim.SGD(p, lr=lr, **kwargs), model, X, y, steps=1500)
    wd = kwargs.get("weight_decay", 0.0)
    assert r["lambda_max"] == pytest.approx(np.linalg.eigvalsh(H)[-1] + wd, rel=1e-6)
    assert finals[0.95] < 10.0  # converged (to the ridge solution with weight decay)
    assert not (math.isfinite(finals[1.05]) and finals[1.05] < 1e6)


def test_report_verdicts_and_headroom():
    model, X, y, H = problem()
    lam = np.linalg.eigvalsh(H)[-1]
    for lr, verdict in ((2.2 / lam, "beyond the stability limit"), (1.8 / lam, "at the edge"), (0.5 / lam, "headroom 4x")):
        r = stability_report(model, torch.optim.SGD(model.parameters(), lr=lr), mse, [(X, y)], iters=300, tol=1e-10)
        assert r["verdict"] == verdict
        assert r["headroom"] == pytest.approx(2.0 / (lr * lam), rel=1e-5)
        assert r["sharpness_ratio"] == pytest.approx(lr * lam, rel=1e-5)


def test_adam_preconditioned_sharpness_matches_numpy():
    model, X, y, H = problem(seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    _run(lambda p: opt, model, X, y, steps=7)
    r = stability_report(model, opt, mse, [(X, y)], iters=500, tol=1e-12)
    t = 7
    v = np.concatenate([opt.state[model.weight]["exp_avg_sq"].numpy().ravel(), opt.state[model.bias]["exp_avg_sq"].numpy()])
    P = (1 - 0.9**t) * (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
    A = np.diag(P**-0.5) @ (H + 0.1 * np.eye(5)) @ np.diag(P**-0.5)
    assert r["preconditioned"] and r["limit"] == pytest.approx(38.0)
    assert r["lambda_max"] == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-6)
    assert r["sharpness_ratio"] == pytest.approx(0.01 * r["lambda_max"])
    adamw = torch.optim.AdamW(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="run at least one optimizer step"):
        stability_report(model, adamw, mse, [(X, y)])


def test_frozen_adam_limit_is_a_real_boundary():
    """Adam with its preconditioner frozen (the premise of the limit) converges just below
    (2+2b1)/(1-b1) on lr * lambda(P^-1 H) and diverges just above it."""
    model, X, y, H = problem(seed=4)
    P = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7], dtype=torch.float64)
    b1 = 0.8
    A = np.diag(P.numpy() ** -0.5) @ H @ np.diag(P.numpy() ** -0.5)
    lam = np.linalg.eigvalsh(A)[-1]
    limit = (2 + 2 * b1) / (1 - b1)
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    for f, ok in ((0.97, True), (1.03, False)):
        lr = f * limit / lam
        th = torch.zeros(5, dtype=torch.float64)
        m = torch.zeros(5, dtype=torch.float64)
        for _ in range(3000):
            g = 2 * Xa.T @ (Xa @ th - y[:, 0]) / len(y)
            m = b1 * m + (1 - b1) * g
            th = th - lr * m / P
        grad = 2 * Xa.T @ (Xa @ th - y[:, 0]) / len(y)
        assert (float(grad.norm()) < 1e-3) == ok, (f, float(grad.norm()))


def test_probe_leaves_model_optimizer_and_rng_untouched():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    X, y = torch.randn(32, 5), torch.randn(32, 1)
    for _ in range(3):
        opt.zero_grad()
        mse(model, (X, y)).backward()
        opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())}
    rng = torch.get_rng_state()
    modes = [m.training for m in model.modules()]
    r = stability_report(model, opt, mse, [(X[:16], y[:16]), (X[16:], y[16:])], iters=10)
    assert math.isfinite(r["lambda_max"]) and r["lambda_max"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm running stats and num_batches_tracked too
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    for i, s in enumerate(opt.state.values()):
        for k, v in s.items():
            assert torch.equal(v, opt_state[i][k])
    # deterministic: the same seed gives the same estimate (dropout masks fixed per batch)
    r2 = stability_report(model, opt, mse, [(X[:16], y[:16]), (X[16:], y[16:])], iters=10)
    assert r2["lambda_max"] == r["lambda_max"]


def test_other_optimizers_have_no_limit():
    model, X, y, _ = problem()
    r = stability_report(model, torch.optim.RMSprop(model.parameters(), lr=0.01), mse, [(X, y)], iters=5)
    assert r["limit"] is None and r["headroom"] is None and r["verdict"] == "no grounded limit"
    assert "RMSprop" in r["limit_rule"]
    assert stability_limit(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, nesterov=True))[0] == pytest.approx(3 / 2)


def test_explain_and_with_stability():
    model, X, y, H = problem()
    lam = np.linalg.eigvalsh(H)[-1]
    opt = torch.optim.SGD(model.parameters(), lr=2.5 / lam)
    r = stability_report(model, opt, mse, [(X, y)], iters=300, tol=1e-10)
    d = Diagnosis("diverging", 5, 8, {"lr": 2.5 / lam}, ("lower the LR",), "The loss is diverging since step 5.")
    text = explain(d, r)
    assert "beyond the stability limit" in text and f"{2.0 / lam:.3g}" in text
    d2 = with_stability(d, r)
    assert d2.verdict == "diverging" and d2.advice == d.advice
    assert d2.evidence["sharpness_ratio"] == pytest.approx(2.5, rel=1e-5)
    assert d2.evidence["stability_headroom"] == pytest.approx(0.8, rel=1e-5)
    assert d.evidence == {"lr": 2.5 / lam}  # the original is untouched
    fine = stability_report(model, torch.optim.SGD(model.parameters(), lr=0.2 / lam), mse, [(X, y)], iters=300, tol=1e-10)
    assert "not explained by the curvature" in explain(d, fine)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iters": 0}, "iters must be an int >= 1, got 0"),
        ({"tol": 0.0}, "tol must be a finite number > 0, got 0.0"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        ({"preconditioner": [torch.ones(3)]}, "preconditioner must hold one tensor per trainable parameter"),
    ],
)
def test_bad_arguments(kwargs, match):
    model, X, y, _ = problem()
    with pytest.raises(ValueError, match=match):
        top_hessian_eigenvalue(model, mse, [(X, y)], **kwargs)


def test_bad_inputs():
    model, X, y, _ = problem()
    with pytest.raises(ValueError, match="batches must hold at least one batch"):
        top_hessian_eigenvalue(model, mse, [])
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        top_hessian_eigenvalue(model, lambda m, b: m(b[0]), [(X, y)])
    with pytest.raises(ValueError, match="the loss of batch 0 is nan"):
        top_hessian_eigenvalue(model, lambda m, b: mse(m, b) * float("nan"), [(X, y)])
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.2}])
    with pytest.raises(ValueError, match=r"param group 1 differs from group 0 in \['lr'\]"):
        stability_report(model, opt, mse, [(X, y)])


def test_probe_explains_a_diverging_verdict_of_a_real_run():
    """Full-batch GD on least squares at lr = 2.4 / lambda_max: the doctor says diverging, the
    probe (taken at the last healthy state) says it is beyond the limit and by how much."""
    from lrkit.doctor import Doctor
    from lrkit.integrations.torch.doctor import TorchDoctor

    model, X, y, H = problem(seed=2)
    lam = float(np.linalg.eigvalsh(H)[-1])
    opt = torch.optim.SGD(model.parameters(), lr=2.4 / lam)
    watch = TorchDoctor(model, opt, guard=False, doctor=Doctor(window=10))
    report = stability_report(model, opt, mse, [(X, y)], iters=300, tol=1e-10)
    for step in range(100):
        opt.zero_grad()
        loss = mse(model, (X, y))
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
        if watch.diagnosis.verdict != "healthy":
            break
    d = watch.diagnosis
    assert d.verdict in ("diverging", "nan")
    assert report["verdict"] == "beyond the stability limit"
    assert report["headroom"] == pytest.approx(2 / 2.4, rel=1e-5)
    text = explain(d, report)
    assert text.startswith(d.message) and f"below {2 / lam:.3g}" in text


def test_explain_far_beyond_the_limit_and_a_message_without_a_period():
    d = Diagnosis("diverging", 5, 8, {}, (), "The loss is diverging since step 5.")
    r = {"lr": 1.0, "lambda_max": 400.0, "sharpness_ratio": 400.0, "limit": 2.0, "headroom": 0.005,
         "verdict": "beyond the stability limit", "preconditioned": False}
    text = explain(d, r)
    assert "far too high" in text and "blown up already" in text and "Below 0.005 is stable" in text
    r_edge = dict(r, lambda_max=1.8, sharpness_ratio=1.8, headroom=2 / 1.8, verdict="at the edge")
    assert "blown up" not in explain(d, r_edge) and "edge of stability" in explain(d, r_edge)
    healthy = Diagnosis("healthy", None, None, {}, (), "no problem detected after 9 observations")
    fine = dict(r, lambda_max=0.5, sharpness_ratio=0.5, headroom=4.0, verdict="headroom 4x")
    assert explain(healthy, fine) == (
        "no problem detected after 9 observations. Curvature probe: lr x lambda_max = 1 x 0.5 = 0.5, "
        "the stability limit is 2 (headroom 4x)."
    )


def test_non_finite_curvature_is_a_value_error_subclass():
    """TorchDoctor catches exactly this subclass during training; callers still see a ValueError."""
    from lrkit.integrations.torch.hessian import _NonFiniteCurvature

    model, X, y, _ = problem()
    with pytest.raises(_NonFiniteCurvature):
        top_hessian_eigenvalue(model, lambda m, b: mse(m, b) * float("inf"), [(X, y)])
    assert issubclass(_NonFiniteCurvature, ValueError)
