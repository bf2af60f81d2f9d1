r"""A Hessian stability probe: is this LR beyond what the loss curvature allows?

On a quadratic :math:`f(\theta) = \tfrac12 \theta^\top H \theta`, gradient descent
:math:`\theta \leftarrow \theta - \eta \nabla f` is stable iff :math:`\eta\,\lambda_{\max}(H) < 2`,
and near a minimum a network's loss is such a quadratic. The *sharpness* :math:`\lambda_{\max}`
is found here by power iteration on Hessian-vector products (double backward,
:func:`torch.autograd.grad` with ``create_graph=True``), averaged over a few batches:

.. math::

    v_{k+1} = \frac{A v_k}{\lVert A v_k\rVert},\qquad \lambda_k = v_k^\top A v_k,\qquad
    A v = \frac1B \sum_{b=1}^{B} \nabla^2_\theta \ell_b(\theta)\, v

stopping when :math:`|\lambda_k - \lambda_{k-1}| \le \text{tol}\,|\lambda_k|`. (If the dominant
eigenvalue is negative, a second, shifted iteration on :math:`A - \lambda I` finds the top one.)

The stability limits used by :func:`stability_report`, for the product
:math:`\eta\,\lambda` (all are the linear stability of the optimizer on a quadratic with the
optimizer's own state frozen; the tests check each one by running the optimizer on a quadratic
just below and just above it):

=====================================  =====================================================
optimizer (PyTorch's update rule)       limit on :math:`\eta\,\lambda`
=====================================  =====================================================
SGD                                    :math:`2`
SGD, momentum :math:`\mu`, dampening   :math:`(2 + 2\mu)/(1 - d)` (heavy ball)
:math:`d`
SGD, Nesterov momentum :math:`\mu`     :math:`(2 + 2\mu)/(1 + 2\mu)`
Adam / AdamW, :math:`\beta_1`          :math:`(2 + 2\beta_1)/(1 - \beta_1)` (38 for 0.9), with
                                       :math:`\lambda = \lambda_{\max}(P^{-1}H)`, the
                                       *preconditioned* sharpness
=====================================  =====================================================

For Adam, :math:`P = (1 - \beta_1^t)\,\operatorname{diag}(\sqrt{\hat v_t} + \epsilon)` is the
preconditioner of the last step (:math:`\hat v_t` the bias-corrected second moment,
``max_exp_avg_sq`` with ``amsgrad``): with :math:`P` frozen, Adam is heavy-ball momentum in the
metric :math:`P`, whence the limit -- Cohen et al., "Adaptive Gradient Methods at the Edge of
Stability" (2022, arXiv:2207.14484), who also observe that full-batch Adam trains with
:math:`\lambda_1(P^{-1}H)` hovering at :math:`38/\eta`. Since :math:`P^{-1}H` is similar to the
symmetric :math:`P^{-1/2} H P^{-1/2}`, the power iteration runs on the latter. Coupled weight
decay (SGD's and Adam's ``weight_decay``) adds :math:`w I` to :math:`H` and is included; AdamW's
decoupled decay only shrinks the weights (it adds stability) and is ignored. For every other
optimizer the report gives :math:`\lambda_{\max}(H)` and ``limit=None``: no grounded limit. With
mini-batches the limits are those of the mean-batch quadratic; noise makes real runs unstable
somewhat earlier (Cohen et al.), so "at the edge" is already a warning.

The probe leaves the model, its gradients, its buffers (BatchNorm statistics), the optimizer and
every RNG exactly as they were (each batch's forward pass runs under a forked RNG seeded from
``seed``, so dropout masks are the same in every Hessian-vector product).

In a training loop, give a :class:`StabilityProbe` (a few batches and the loss) to
:class:`~lrkit.integrations.torch.doctor.TorchDoctor`: it runs :func:`stability_report` when the
doctor finds a problem, puts :func:`explain`'s paragraph in the diagnosis, and answers the
headroom question on demand.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import Any, Callable, Iterable

import torch

from lrkit.doctor.core import Diagnosis

__all__ = [
    "top_hessian_eigenvalue", "stability_report", "stability_limit", "explain", "with_stability", "StabilityProbe",
]


class _NonFiniteCurvature(ValueError):
    """The loss or a Hessian-vector product is not finite: there is no curvature to measure.

    A ``ValueError``; :class:`~lrkit.integrations.torch.doctor.TorchDoctor` catches it (and only
    it) when a probe runs by itself during training, so that a blown-up state ends the probe,
    not the run.
    """


def _check_positive_int(name: str, v: Any, low: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def top_hessian_eigenvalue(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    preconditioner: list[torch.Tensor] | None = None,
    weight_decay: float = 0.0,
) -> tuple[float, dict[str, Any]]:
    r"""The largest eigenvalue of the (batch-averaged) Hessian of the loss, by power iteration.

    .. math::

        \lambda_{\max}\Big(D^{-1/2}\big(\tfrac1B\textstyle\sum_b \nabla^2 \ell_b + w I\big)D^{-1/2}\Big)

    with :math:`D` = ``preconditioner`` (identity by default) and :math:`w` = ``weight_decay``.

    Args:
        model: the ``nn.Module``; its trainable parameters (``requires_grad``) are the variables.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, e.g.
            ``lambda m, b: F.cross_entropy(m(b[0]), b[1])``.
        batches: a few batches (a list, or an iterable read once); the HVPs are averaged.
        iters: at most this many power iterations (>= 1).
        tol: stop when the relative change of the estimate is at most this (> 0).
        seed: seeds the start vector and each batch's forked RNG (dropout).
        preconditioner: one positive tensor per trainable parameter (same shapes) or ``None``.
        weight_decay: :math:`w \ge 0`, coupled L2 decay added to the Hessian.

    Returns:
        ``(lam_max, details)``; ``details`` has ``iterations``, ``converged``, ``estimates``
        (the estimate at each iteration), ``n_batches``, ``n_params`` and ``shifted`` (whether
        the dominant eigenvalue was negative and a shifted iteration found the top one).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = 2 X^T X / n = diag(1, 4)
        >>> lam, info = top_hessian_eigenvalue(model, mse, [(X, y)])
        >>> round(lam, 2), info["converged"]
        (4.0, True)
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    _check_positive_int("iters", iters)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not (
        math.isfinite(weight_decay) and weight_decay >= 0
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches must hold at least one batch, got none")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    inv_sqrt: list[torch.Tensor] | None = None
    if preconditioner is not None:
        if len(preconditioner) != len(params) or any(d.shape != p.shape for d, p in zip(preconditioner, params)):
            raise ValueError(
                "preconditioner must hold one tensor per trainable parameter with the same shapes, got "
                f"{len(preconditioner)} tensors for {len(params)} parameters"
            )
        if any(not bool(torch.all(d > 0)) for d in preconditioner):
            raise ValueError("preconditioner must be > 0 everywhere")
        inv_sqrt = [d.detach().to(p.device, p.dtype).rsqrt() for d, p in zip(preconditioner, params)]

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = sorted({p.device.index for p in params if p.device.type == "cuda" and p.device.index is not None})
    grads_graph: list[tuple[torch.Tensor, ...]] = []
    try:
        return _power_iteration(model, loss_fn, batches, params, inv_sqrt, grads_graph, devices,
                                iters=iters, tol=tol, seed=seed, weight_decay=weight_decay)
    finally:
        # BatchNorm (train mode) updated its statistics during the forward passes; the graph keeps
        # them for the backward passes, so they are put back only now, after the last HVP
        grads_graph.clear()
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])


def _power_iteration(model, loss_fn, batches, params, inv_sqrt, grads_graph, devices, *, iters, tol, seed, weight_decay):
    """The body of :func:`top_hessian_eigenvalue` (the caller restores the buffers)."""
    for i, batch in enumerate(batches):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * 1_000_003 + i)
            loss = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss_fn(model, batch) must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
            )
        if not torch.isfinite(loss):
            raise _NonFiniteCurvature(f"the loss of batch {i} is {loss.item()}: the Hessian is undefined there")
        grads_graph.append(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True))

    n_b = len(grads_graph)

    def op(v: list[torch.Tensor]) -> list[torch.Tensor]:
        u = [x * s for x, s in zip(v, inv_sqrt)] if inv_sqrt is not None else v
        acc = [torch.zeros_like(p) for p in params]
        for grads in grads_graph:
            used = [(j, g) for j, g in enumerate(grads) if g is not None and g.requires_grad]
            if not used:
                continue
            hv = torch.autograd.grad([g for _, g in used], [params[j] for j, _ in used],
                                     grad_outputs=[u[j] for j, _ in used], retain_graph=True, allow_unused=True)
            for (j, _), h in zip(used, hv):
                if h is not None:
                    acc[j] += h.detach()
        out = [a / n_b + weight_decay * x for a, x in zip(acc, u)]
        return [o * s for o, s in zip(out, inv_sqrt)] if inv_sqrt is not None else out

    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def power(shift: float) -> tuple[float, int, bool, list[float]]:
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in params]
        norm = torch.sqrt(_dot(v, v))
        v = [x / norm.to(x.dtype) for x in v]
        est: list[float] = []
        converged = False
        k = 0
        for k in range(1, iters + 1):
            av = op(v)
            if shift:
                av = [a - shift * x for a, x in zip(av, v)]
            lam = float(_dot(v, av))
            est.append(lam + shift)
            n = float(torch.sqrt(_dot(av, av)))
            if not math.isfinite(n):
                raise _NonFiniteCurvature("the Hessian-vector product is not finite (non-finite weights or loss?)")
            if n == 0.0:
                converged = True
                break
            v = [a / n for a in av]
            if len(est) > 1 and abs(est[-1] - est[-2]) <= tol * max(abs(est[-1]), 1e-12):
                converged = True
                break
        return est[-1], k, converged, est

    lam, k, conv, est = power(0.0)
    shifted = False
    if lam < 0:  # the dominant eigenvalue is negative: the top one is lam + top(A - lam I)
        shifted = True
        lam, k2, conv, est2 = power(lam)
        k += k2
        est = est + est2
    details = {
        "iterations": k,
        "converged": conv,
        "estimates": est,
        "n_batches": n_b,
        "n_params": int(sum(p.numel() for p in params)),
        "shifted": shifted,
    }
    return float(lam), details


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    if type(optimizer) in (torch.optim.SGD,):
        return "sgd"
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        return "adam"
    return "other"


def stability_limit(optimizer: torch.optim.Optimizer) -> tuple[float | None, str]:
    r"""The limit on :math:`\eta\lambda` for ``optimizer``'s hyper-parameters (see the module
    docstring) and a short description; ``(None, reason)`` when there is no grounded limit.

    Example:
        >>> import torch
        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> stability_limit(torch.optim.SGD(p, lr=0.1))[0], stability_limit(torch.optim.SGD(p, lr=0.1, momentum=0.9))[0]
        (2.0, 3.8)
        >>> round(stability_limit(torch.optim.Adam(p, lr=1e-3))[0], 6)
        38.0
    """
    g = optimizer.param_groups[0]
    kind = _optimizer_kind(optimizer)
    if kind == "sgd":
        mu = float(g.get("momentum", 0.0))
        d = float(g.get("dampening", 0.0))
        if g.get("nesterov", False):
            return (2 + 2 * mu) / (1 + 2 * mu), f"SGD with Nesterov momentum {mu:g}: (2+2mu)/(1+2mu)"
        if mu == 0:
            return 2.0, "gradient descent: 2"
        if d >= 1:
            return None, "SGD with dampening 1 makes no update"
        return (2 + 2 * mu) / (1 - d), f"heavy-ball momentum {mu:g}" + (f", dampening {d:g}" if d else "") + ": (2+2mu)/(1-d)"
    if kind == "adam":
        b1 = float(g["betas"][0])
        return (2 + 2 * b1) / (1 - b1), (
            f"{type(optimizer).__name__} beta1={b1:g}: (2+2b1)/(1-b1) on the preconditioned sharpness "
            "(Cohen et al. 2022, arXiv:2207.14484)"
        )
    return None, f"no grounded stability limit for {type(optimizer).__name__} (SGD, Adam and AdamW only)"


def stability_report(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Compare the LR with the curvature: ``sharpness_ratio`` :math:`= \eta\lambda` against the
    optimizer's limit (see the module docstring).

    .. math::

        \text{headroom} = \frac{\text{limit}}{\eta\,\lambda}
        \quad (<1: \text{beyond the limit},\ 1\text{--}1.25: \text{at the edge})

    Returns a dict: ``lr`` (of param group 0), ``optimizer``, ``lambda_max`` (of :math:`H + wI`,
    or of :math:`P^{-1}(H + wI)` for Adam), ``preconditioned`` (bool), ``sharpness_ratio``,
    ``limit`` (``None`` if not grounded), ``limit_rule``, ``headroom`` (``None`` likewise),
    ``verdict`` (``"beyond the stability limit"``, ``"at the edge"``, ``"headroom 3.1x"`` or
    ``"no grounded limit"``) and ``details`` from :func:`top_hessian_eigenvalue`.

    Raises ``ValueError`` for param groups with different LRs or hyper-parameters, and for Adam
    before its first step (no preconditioner yet).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.6)
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # lambda_max = 4
        >>> r = stability_report(model, opt, mse, [(X, y)])
        >>> round(r["sharpness_ratio"], 3), r["limit"], r["verdict"]
        (2.4, 2.0, 'beyond the stability limit')
    """
    _check_one_setting(optimizer)
    groups = optimizer.param_groups
    g0 = groups[0]
    lr = float(g0["lr"].item() if isinstance(g0["lr"], torch.Tensor) else g0["lr"])
    kind = _optimizer_kind(optimizer)
    limit, rule = stability_limit(optimizer)
    wd = float(g0.get("weight_decay", 0.0) or 0.0)
    precond = None
    if kind == "adam":
        if type(optimizer) is torch.optim.AdamW or g0.get("decoupled_weight_decay", False):
            wd = 0.0  # decoupled: not part of the gradient
        b1, b2 = (float(b) for b in g0["betas"])
        eps = float(g0["eps"])
        params = [p for p in model.parameters() if p.requires_grad]
        owned = {id(p) for g in groups for p in g["params"]}
        precond = []
        for p in params:
            st = optimizer.state.get(p, {})
            if id(p) not in owned or "exp_avg_sq" not in st:
                raise ValueError(
                    f"{type(optimizer).__name__} has no second-moment state for a trainable parameter of shape "
                    f"{tuple(p.shape)}: run at least one optimizer step before the probe (the preconditioner "
                    "comes from it)"
                )
            t = float(st["step"].item() if isinstance(st["step"], torch.Tensor) else st["step"])
            v = st["max_exp_avg_sq"] if g0.get("amsgrad", False) else st["exp_avg_sq"]
            vhat = v.detach() / (1 - b2**t)
            precond.append((1 - b1**t) * (vhat.sqrt() + eps))
    lam, details = top_hessian_eigenvalue(
        model, loss_fn, batches, iters=iters, tol=tol, seed=seed, preconditioner=precond, weight_decay=wd
    )
    ratio = lr * lam
    headroom = None if limit is None else (limit / ratio if ratio > 0 else math.inf)
    return {
        "lr": lr,
        "optimizer": type(optimizer).__name__,
        "lambda_max": lam,
        "preconditioned": precond is not None,
        "weight_decay_in_hessian": wd,
        "sharpness_ratio": ratio,
        "limit": limit,
        "limit_rule": rule,
        "headroom": headroom,
        "verdict": _headroom_verdict(headroom),
        "details": details,
    }


def _headroom_verdict(headroom: float | None) -> str:
    """The words :func:`stability_report` uses for a headroom (``limit / (lr * lambda)``).

    Example:
        >>> _headroom_verdict(0.8), _headroom_verdict(1.1), _headroom_verdict(3.14), _headroom_verdict(None)
        ('beyond the stability limit', 'at the edge', 'headroom 3.1x', 'no grounded limit')
    """
    if headroom is None:
        return "no grounded limit"
    if headroom < 1:
        return "beyond the stability limit"
    if headroom < 1.25:
        return "at the edge"
    return f"headroom {headroom:.2g}x"


def _check_one_setting(optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` unless every param group of ``optimizer`` has the same LR and
    hyper-parameters (the probe compares one LR with one curvature).

    Example:
        >>> import torch
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> _check_one_setting(torch.optim.SGD([a, b], lr=0.1))   # one group: fine
        >>> _check_one_setting(torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1))
        Traceback (most recent call last):
        ...
        ValueError: stability_report needs one set of hyper-parameters; param group 1 differs from group 0 in ['lr'] (probe each group's parameters separately)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    groups = optimizer.param_groups
    keys = [k for k in groups[0] if k != "params"]
    for i, g in enumerate(groups[1:], start=1):
        diff = [k for k in keys if k in g and not _same(g[k], groups[0][k])]
        if diff:
            raise ValueError(
                f"stability_report needs one set of hyper-parameters; param group {i} differs from group 0 in "
                f"{diff} (probe each group's parameters separately)"
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return float(a) == float(b)
    return a == b


def with_stability(diagnosis: Diagnosis, report: dict[str, Any]) -> Diagnosis:
    """The diagnosis with the probe's numbers added to its evidence (``lambda_max``,
    ``sharpness_ratio``, ``stability_limit``, ``stability_headroom``; the last two only when the
    limit is grounded).

    Example:
        >>> d = Diagnosis("diverging", 10, 13, {"lr": 0.6}, (), "The loss is diverging.")
        >>> r = {"lambda_max": 4.0, "sharpness_ratio": 2.4, "limit": 2.0, "headroom": 2.0 / 2.4}
        >>> sorted(with_stability(d, r).evidence)
        ['lambda_max', 'lr', 'sharpness_ratio', 'stability_headroom', 'stability_limit']
    """
    ev = dict(diagnosis.evidence)
    ev["lambda_max"] = float(report["lambda_max"])
    ev["sharpness_ratio"] = float(report["sharpness_ratio"])
    if report.get("limit") is not None:
        ev["stability_limit"] = float(report["limit"])
        ev["stability_headroom"] = float(report["headroom"])
    return dataclasses.replace(diagnosis, evidence=ev)


def explain(diagnosis: Diagnosis, report: dict[str, Any]) -> str:
    """One paragraph that puts the doctor's verdict next to the curvature probe.

    Example:
        >>> d = Diagnosis("diverging", 10, 13, {"lr": 0.6}, (), "The loss is diverging since step 10.")
        >>> r = {"lr": 0.6, "lambda_max": 4.0, "sharpness_ratio": 2.4, "limit": 2.0, "headroom": 2.0 / 2.4,
        ...      "verdict": "beyond the stability limit", "preconditioned": False}
        >>> print(explain(d, r))  # doctest: +NORMALIZE_WHITESPACE
        The loss is diverging since step 10. Curvature probe: lr x lambda_max = 0.6 x 4 = 2.4, the
        stability limit is 2 (beyond the stability limit): the LR is too high for this curvature;
        an LR below 0.5 is stable here.

    A state more than 10x beyond the limit has usually blown up already (its curvature grew with
    its weights), so the text then says that the stable LR it computes is an underestimate.
    """
    lam, ratio, lr = report["lambda_max"], report["sharpness_ratio"], report["lr"]
    what = "preconditioned sharpness" if report.get("preconditioned") else "lambda_max"
    msg = diagnosis.message.rstrip()
    if msg and msg[-1] not in ".!?":
        msg += "."
    head = f"{msg} Curvature probe: lr x {what} = {lr:.3g} x {lam:.3g} = {ratio:.3g}"
    limit = report.get("limit")
    if limit is None:
        return head + f" ({report.get('limit_rule', 'no grounded limit')})."
    hr = report["headroom"]
    text = f"{head}, the stability limit is {limit:.3g} ({report['verdict']})"
    safe = lr * hr
    if hr < 0.1:
        tail = (
            f": the LR is far too high for this curvature. Below {safe:.3g} is stable here, but this state has "
            "likely blown up already and its curvature grown with its weights: measure again at a state "
            "before the blow-up for the LR to use."
        )
    elif hr < 1:
        tail = f": the LR is too high for this curvature; an LR below {safe:.3g} is stable here."
    elif hr < 1.25:
        tail = (
            f": training sits at the edge of stability, where loss spikes are expected; an LR below "
            f"{safe:.3g} is stable here, and lowering it makes the oscillation stop."
        )
    elif diagnosis.verdict in ("diverging", "fluctuating", "nan"):
        tail = (
            f": the LR is {hr:.2g}x below the limit of the local curvature, so the {diagnosis.verdict} "
            "verdict is not explained by the curvature where the model is now (look at the data, the "
            "loss, mini-batch noise, or a sharper region visited earlier)."
        )
    else:
        tail = "."
    return text + tail


def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with its tensors moved to ``device`` (through tuples, lists and dicts)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _check_batches(batches: Any, who: str) -> Any:
    """A tuple of the batches of a list/tuple, or the re-iterable loader itself."""
    if batches is None or isinstance(batches, (torch.Tensor, str, bytes)) or not isinstance(batches, Iterable):
        got = "None" if batches is None else type(batches).__name__
        raise ValueError(
            f"{who}: batches must be a list of batches or a re-iterable data loader (e.g. a DataLoader), got {got}"
        )
    if isinstance(batches, Iterator):
        raise ValueError(
            f"{who}: batches must be a list of batches or a re-iterable data loader, got a one-shot iterator "
            f"({type(batches).__name__}) that a second probe would find empty; pass a list, e.g. "
            "list(itertools.islice(loader, 4))"
        )
    if isinstance(batches, (list, tuple)):
        if not batches:
            raise ValueError(f"{who}: batches must hold at least one batch, got an empty {type(batches).__name__}")
        return tuple(batches)
    return batches


@dataclasses.dataclass(frozen=True, eq=False)
class StabilityProbe:
    r"""How to run :func:`stability_report` during training: the batches and the loss.

    Given to :class:`~lrkit.integrations.torch.doctor.TorchDoctor` as ``stability_probe=``; the
    doctor then probes the curvature when its verdict turns ``diverging`` or ``fluctuating`` (and
    after every rollback of its guard), optionally every ``every`` steps of a healthy run, and on
    demand (:meth:`TorchDoctor.stability() <lrkit.integrations.torch.doctor.TorchDoctor.stability>`).

    The loss of a batch, as in :class:`~lrkit.integrations.torch.trainer.TorchTrainer` (tensors
    are moved to the device of the model's first parameter first):

    * ``loss_fn(model(x), y)`` for an ``(x, y)`` pair, ``loss_fn(model(b["input"]), b["target"])``
      for a dict ``b`` with those keys;
    * ``step_fn(model, batch) -> scalar tensor`` for any other layout.

    Args:
        batches: the batches the Hessian is averaged over: a list or tuple of batches, or a
            re-iterable loader (a ``DataLoader``), from which each probe draws a fresh iterator.
            Held-out or training batches both work; a few (2-8) are enough.
        loss_fn: ``loss_fn(output, target) -> scalar tensor``, e.g. ``F.cross_entropy``.
        step_fn: ``step_fn(model, batch) -> scalar tensor``. Exactly one of ``loss_fn``, ``step_fn``.
        every: also probe every this many steps while the verdict is ``healthy`` or ``flat``, to
            report the headroom of a good run; an int >= 1, or ``None`` (default: only on problems).
        num_batches: batches per probe, an int >= 1; default ``None``: all of a list or tuple,
            the first 4 of a loader.
        iters, tol, seed: power iterations, their tolerance and seed (see :func:`stability_report`).

    Each probe costs ``iters`` Hessian-vector products per batch (one double-backward pass each),
    about ``2 * iters * num_batches`` training steps' worth of compute, and one copy of the
    training state (see :class:`~lrkit.integrations.torch.doctor.TorchDoctor`).

    Example:
        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)
        >>> probe = StabilityProbe([(X, y)], loss_fn=torch.nn.functional.mse_loss)
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> probe.batch_loss(model, probe.select()[0]).shape   # mse_loss(model(X), y)
        torch.Size([])
        >>> StabilityProbe(None, loss_fn=torch.nn.functional.mse_loss)
        Traceback (most recent call last):
        ...
        ValueError: StabilityProbe: batches must be a list of batches or a re-iterable data loader (e.g. a DataLoader), got None
    """

    batches: Any = dataclasses.field(repr=False)
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    step_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    every: int | None = None
    num_batches: int | None = None
    iters: int = 20
    tol: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        who = "StabilityProbe"
        object.__setattr__(self, "batches", _check_batches(self.batches, who))
        if (self.loss_fn is None) == (self.step_fn is None):
            raise ValueError(
                f"{who}: pass exactly one of loss_fn (loss_fn(model(x), y) for (x, y) batches) and step_fn "
                f"(step_fn(model, batch) -> loss), got {'both' if self.loss_fn is not None else 'neither'}"
            )
        fn_name = "loss_fn" if self.loss_fn is not None else "step_fn"
        if not callable(getattr(self, fn_name)):
            raise ValueError(f"{who}: {fn_name} must be callable, got {type(getattr(self, fn_name)).__name__}")
        for name in ("every", "num_batches"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{who}: {name} must be an int >= 1 or None, got {v!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"{who}: iters must be an int >= 1, got {self.iters!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not (math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"{who}: tol must be a finite number > 0, got {self.tol!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"{who}: seed must be an int, got {self.seed!r}")

    def select(self, batches: Any = None) -> list[Any]:
        """The batches of one probe: ``batches`` (default: this probe's), all of a list or tuple
        or the first ``num_batches`` (default 4) of a fresh iterator over a loader."""
        src = self.batches if batches is None else _check_batches(batches, "StabilityProbe.select")
        if isinstance(src, tuple):
            return list(src if self.num_batches is None else src[: self.num_batches])
        out = list(itertools.islice(src, 4 if self.num_batches is None else self.num_batches))
        if not out:
            raise ValueError(f"StabilityProbe: the loader of the probe ({type(src).__name__}) yielded no batch")
        return out

    def batch_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The loss of one batch (see the class docstring); the ``loss_fn(model, batch)`` of
        :func:`stability_report`."""
        device = next((p.device for p in model.parameters()), None)
        if device is not None:
            batch = _to_device(batch, device)
        if self.step_fn is not None:
            return self.step_fn(model, batch)
        if isinstance(batch, dict) and "input" in batch and "target" in batch:
            return self.loss_fn(model(batch["input"]), batch["target"])
        if isinstance(batch, (list, tuple)) and len(batch) == 2:
            return self.loss_fn(model(batch[0]), batch[1])
        shape = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (list, tuple)) else type(batch).__name__
        hint = " (one (x, y) batch goes in a list: batches=[(x, y)])" if isinstance(batch, torch.Tensor) else ""
        raise ValueError(
            f"StabilityProbe: with loss_fn, batches must be (input, target) pairs or dicts with 'input' and "
            f"'target', got {shape}{hint}; pass step_fn(model, batch) -> loss for other layouts"
        )

    def report(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Any = None) -> dict[str, Any]:
        """:func:`stability_report` of ``model`` at ``optimizer``'s current LR on :meth:`select`'s batches.

        Like :func:`stability_report` it leaves the model, the optimizer and the torch RNG as they
        were, but not the RNG a shuffling loader draws from when iterated, nor anything ``step_fn``
        changes: :class:`~lrkit.integrations.torch.doctor.TorchDoctor` snapshots all of that around it.
        """
        return stability_report(
            model, optimizer, self.batch_loss, self.select(batches), iters=self.iters, tol=self.tol, seed=self.seed
        )
