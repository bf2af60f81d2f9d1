"""TorchTrainer / find_lr: bitwise restore in every exit path, batches, groups, AMP, bad input."""
from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from lrkit.finder import FinderResult
from lrkit.integrations.torch.trainer import TorchTrainer, find_lr

pytestmark = pytest.mark.torch


# -- a bitwise picture of everything -----------------------------------------------------------
def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _freeze(x):
    """A comparable deep picture: tensors as (dtype, shape, raw bytes)."""
    if isinstance(x, torch.Tensor):
        return ("T", str(x.dtype), tuple(x.shape), str(x.device), _bits(x))
    if isinstance(x, dict):
        return {k: _freeze(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_freeze(v) for v in x]
    if isinstance(x, np.ndarray):
        return ("A", str(x.dtype), x.tobytes())
    return x


def picture(model, optimizers, scaler=None, loader=None):
    optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    pic = {
        "params": {n: _freeze(p) for n, p in model.named_parameters()},
        "buffers": {n: _freeze(b) for n, b in model.named_buffers()},
        "grads": {n: None if p.grad is None else _freeze(p.grad) for n, p in model.named_parameters()},
        "modes": [m.training for m in model.modules()],
        "opt": [_freeze(o.state_dict()) for o in optimizers],
        "rng_torch": _freeze(torch.get_rng_state()),
        "rng_numpy": _freeze(list(np.random.get_state())),
        "rng_python": random.getstate(),
    }
    if scaler is not None:
        pic["scaler"] = _freeze(scaler.state_dict())
        pic["scaler_raw"] = _freeze([getattr(scaler, "_scale", None), getattr(scaler, "_growth_tracker", None)])
    if loader is not None and getattr(loader, "generator", None) is not None:
        pic["loader_gen"] = _freeze(loader.generator.get_state())
    return pic


def identities(model, optimizer):
    ids = [id(p) for p in model.parameters()] + [id(b) for b in model.buffers()]
    for st_ in optimizer.state.values():
        ids += [id(v) for v in st_.values() if isinstance(v, torch.Tensor)]
    return ids, [id(g) for g in optimizer.param_groups]


# -- fixtures ----------------------------------------------------------------------------------
def make_data(n=96, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y.clamp(max=classes - 1)


def make_net(d=6, classes=3, bn=True):
    torch.manual_seed(1)
    layers = [torch.nn.Linear(d, 16)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(16))
    layers += [torch.nn.ReLU(), torch.nn.Linear(16, classes)]
    return torch.nn.Sequential(*layers)


def loader(batch=16, shuffle=True, seed=3, n=96):
    x, y = make_data(n)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle, generator=gen)


def warm_up(model, opt, dl, steps=3):
    """A few real steps so the optimizer has state (momentum, moments, step counts) and BN stats move."""
    loss_fn = torch.nn.CrossEntropyLoss()
    it = iter(dl)
    for _ in range(steps):
        x, y = next(it)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-3, amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


def setup(opt_name="adam", warm=True, leftover_grad=True, eval_submodule=True):
    torch.manual_seed(0)
    model = make_net()
    opt = OPTIMIZERS[opt_name](model.parameters())
    dl = loader()
    if warm:
        warm_up(model, opt, dl)
    if leftover_grad:
        model(make_data(8)[0]).sum().backward()  # grads left by the user
    if eval_submodule:
        model[1].eval()  # a frozen BatchNorm: its mode must survive
    np.random.seed(5)
    random.seed(6)
    torch.manual_seed(7)
    return model, opt, dl


# -- bitwise restore ---------------------------------------------------------------------------
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("end_lr", [1e-2, 1e4], ids=["normal_end", "diverges"])
def test_bitwise_restore(opt_name, end_lr):
    model, opt, dl = setup(opt_name)
    before = picture(model, opt, loader=dl)
    ids = identities(model, opt)
    res = find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=1e-5, end_lr=end_lr, num_iter=30,
                  progress=False, verify=False)
    assert res.stopped_early == (end_lr > 1)
    assert picture(model, opt, loader=dl) == before
    assert identities(model, opt) == ids  # restored in place: same tensors, same group dicts


def test_bitwise_restore_fresh_optimizer_and_no_grads():
    model, opt, dl = setup("adam", warm=False, leftover_grad=False, eval_submodule=False)
    model.eval()  # a model in eval mode is trained in train mode, then put back in eval
    before = picture(model, opt, loader=dl)
    find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=1e-5, end_lr=1.0, num_iter=20, progress=False,
            verify=False)
    assert picture(model, opt, loader=dl) == before
    assert len(opt.state) == 0 and all(p.grad is None for p in model.parameters())
    assert not model.training


class Boom(Exception):
    pass


class FailingLoader:
    """Yields batches of a real loader, then raises (mid-test)."""

    def __init__(self, dl, fail_at, exc):
        self.dl, self.fail_at, self.exc = dl, fail_at, exc
        self.generator = dl.generator  # a wrapper must expose the generator it shuffles with

    def __iter__(self):
        for i, b in enumerate(self.dl):
            if i == self.fail_at:
                raise self.exc
            yield b

    def __len__(self):
        return len(self.dl)


@pytest.mark.parametrize("exc", [Boom("loader broke"), KeyboardInterrupt()], ids=["exception", "ctrl_c"])
def test_restore_after_loader_raises(exc):
    model, opt, dl = setup("sgd_momentum")
    before = picture(model, opt, loader=dl)
    with pytest.raises(type(exc)):
        find_lr(model, opt, torch.nn.CrossEntropyLoss(), FailingLoader(dl, 4, exc), start_lr=1e-4, end_lr=1.0,
                num_iter=30, progress=False, verify=False)
    assert picture(model, opt, loader=dl) == before


@pytest.mark.parametrize("exc", [Boom("step_fn broke"), KeyboardInterrupt()], ids=["exception", "ctrl_c"])
def test_restore_after_step_fn_raises(exc):
    model, opt, dl = setup("adam")
    calls = {"n": 0}

    def step_fn(m, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise exc
        x, y = batch
        # augmentation noise from the NumPy and Python RNGs: both must be restored too
        x = x + torch.from_numpy(np.random.normal(0, 0.01, size=tuple(x.shape)).astype(np.float32)) * random.random()
        return torch.nn.functional.cross_entropy(m(x), y)

    before = picture(model, opt, loader=dl)
    with pytest.raises(type(exc)):
        find_lr(model, opt, None, dl, step_fn=step_fn, start_lr=1e-4, end_lr=1.0, num_iter=30, progress=False,
                verify=False)
    assert calls["n"] == 6
    assert picture(model, opt, loader=dl) == before


@pytest.mark.parametrize("scaler_enabled", [True, False])
def test_amp_cpu_with_scaler_restored(scaler_enabled):
    model, opt, dl = setup("adam", leftover_grad=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1, enabled=scaler_enabled)
    before = picture(model, opt, scaler, loader=dl)
    seen_dtypes = []

    def step_fn(m, batch):
        x, y = batch
        out = m(x)
        seen_dtypes.append(out.dtype)
        return torch.nn.functional.cross_entropy(out.float(), y)

    trainer = TorchTrainer(model, opt, None, dl, step_fn=step_fn, amp=True, scaler=scaler)
    state = trainer.snapshot()
    losses = [trainer.step(lr) for lr in (1e-4, 1e-3, 1e-2)]
    if scaler_enabled:
        assert scaler.get_scale() == 2.0**13  # grew once per step: the test really changed it
    trainer.restore(state)
    assert all(math.isfinite(v) for v in losses)
    assert seen_dtypes == [torch.bfloat16] * 3  # CPU autocast runs the matmuls in bfloat16
    assert picture(model, opt, scaler, loader=dl) == before
    res = find_lr(model, opt, None, dl, step_fn=step_fn, amp=True, scaler=scaler, start_lr=1e-5, end_lr=1e3,
                  num_iter=40, progress=False, verify=False)
    assert res.stopped_early
    assert picture(model, opt, scaler, loader=dl) == before


def test_amp_default_scaler_on_cpu_is_disabled():
    model, opt, dl = setup("adam", leftover_grad=False)
    t = TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), dl, amp=True)
    assert isinstance(t.scaler, torch.amp.GradScaler) and not t.scaler.is_enabled()
    s = t.snapshot()
    assert math.isfinite(t.step(1e-3))
    t.restore(s)


def test_rng_and_loader_generator_restored_and_reused():
    """After restore, the next test sees the same batches: same losses twice."""
    model, opt, dl = setup("sgd_momentum")
    a = find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=1e-4, end_lr=1.0, num_iter=25, progress=False,
                verify=False)
    b = find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=1e-4, end_lr=1.0, num_iter=25, progress=False,
                verify=False)
    np.testing.assert_array_equal(a.losses, b.losses)


def test_pickled_snapshot_restores_everything_including_the_data_order(tmp_path):
    """A snapshot kept on disk (the guard's storage="disk") restores like one kept in memory."""
    import pickle

    model, opt, dl = setup("adam")
    trainer = TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), dl)
    before = picture(model, opt, loader=dl)
    path = tmp_path / "snap.pkl"
    path.write_bytes(pickle.dumps(trainer.snapshot()))
    first = [trainer.step(1e-2) for _ in range(8)]  # moves weights, optimizer, RNGs, loader order
    trainer.restore(pickle.loads(path.read_bytes()))
    assert picture(model, opt, loader=dl) == before
    assert [trainer.step(1e-2) for _ in range(8)] == first


def test_global_rng_shuffle_restored():
    """A loader without its own generator draws from the global torch RNG: restored too."""
    model, opt, _ = setup("adam")
    x, y = make_data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    torch.manual_seed(11)
    before = picture(model, opt)
    find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=1e-4, end_lr=1.0, num_iter=12, progress=False,
            verify=False)
    assert picture(model, opt) == before


# -- what a step does ----------------------------------------------------------------------------
def test_param_group_ratios_kept():
    torch.manual_seed(0)
    model = make_net(bn=False)
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.01}], lr=0.5)
    dl = loader()
    t = TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), dl)
    seen = []
    orig_step = opt.step

    def spy(*a, **k):
        seen.append([g["lr"] for g in opt.param_groups])
        return orig_step(*a, **k)

    opt.step = spy
    s = t.snapshot()
    for lr in (1e-3, 0.2):
        t.step(lr)
    t.restore(s)
    del opt.step
    assert seen == [pytest.approx([1e-3, 1e-4]), pytest.approx([0.2, 0.02])]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]


@settings(max_examples=15, deadline=None)
@given(acc=st.integers(1, 4), lr=st.floats(1e-4, 1e-1))
def test_accumulation_equals_big_batch_sgd(acc, lr):
    """acc micro-batches of 8 with plain SGD == one step on the 8*acc batch; loss is their mean."""
    x, y = make_data(64)
    torch.manual_seed(0)
    m1 = make_net(bn=False)
    m2 = make_net(bn=False)
    o1 = torch.optim.SGD(m1.parameters(), lr=1.0)
    o2 = torch.optim.SGD(m2.parameters(), lr=1.0)
    small = DataLoader(TensorDataset(x, y), batch_size=8)
    t = TorchTrainer(m1, o1, torch.nn.CrossEntropyLoss(), small, accumulation_steps=acc)
    loss = t.step(lr)
    xb, yb = x[: 8 * acc], y[: 8 * acc]
    with torch.no_grad():
        per = [float(torch.nn.functional.cross_entropy(m2(xb[8 * k: 8 * k + 8]), yb[8 * k: 8 * k + 8])) for k in range(acc)]
    o2.param_groups[0]["lr"] = lr
    o2.zero_grad()
    torch.nn.functional.cross_entropy(m2(xb), yb).backward()
    o2.step()
    assert loss == pytest.approx(float(np.mean(per)), rel=1e-5)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_cycles_a_three_batch_loader():
    x, y = make_data(48)
    dl = DataLoader(TensorDataset(x, y), batch_size=16)  # 3 batches
    torch.manual_seed(0)
    model = make_net(bn=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    seen = []

    def step_fn(m, batch):
        seen.append(float(batch[0][0, 0]))
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    res = find_lr(model, opt, None, dl, step_fn=step_fn, start_lr=1e-6, end_lr=1e-5, num_iter=10, progress=False,
                  verify=False)
    assert len(res.lrs) == 10
    firsts = [float(x[0, 0]), float(x[16, 0]), float(x[32, 0])]
    assert seen == (firsts * 4)[:10]


def test_dict_batches():
    x, y = make_data()

    class DictDS(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"input": x[i], "target": y[i]}

    torch.manual_seed(0)
    model = make_net(bn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = picture(model, opt)
    res = find_lr(model, opt, torch.nn.CrossEntropyLoss(), DataLoader(DictDS(), batch_size=16), num_iter=30,
                  progress=False, verify=False)
    assert len(res.lrs) >= 20 and res.lrs[0] == 1e-7  # default Adam range from lrkit.scaling
    assert picture(model, opt) == before
    # the same losses as an (x, y) loader with the same order
    ref = find_lr(model, opt, torch.nn.CrossEntropyLoss(), DataLoader(TensorDataset(x, y), batch_size=16),
                  num_iter=30, progress=False, verify=False)
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-6)


def test_dict_batch_with_wrong_keys_names_them():
    x, y = make_data(16)
    model = make_net(bn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = picture(model, opt)
    with pytest.raises(ValueError, match=r"keys 'input' and 'target', got keys \['features', 'label'\]"):
        find_lr(model, opt, torch.nn.CrossEntropyLoss(), [{"features": x, "label": y}], num_iter=5, progress=False,
                verify=False)
    assert picture(model, opt) == before


class HFStyle(torch.nn.Module):
    """A model that computes its own loss when given labels (Hugging Face convention)."""

    def __init__(self):
        super().__init__()
        self.net = make_net(bn=False)

    def forward(self, input_ids, labels=None):
        logits = self.net(input_ids)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)

        class Out:
            pass

        out = Out()
        out.logits, out.loss = logits, loss
        return out


def test_models_with_loss_attribute():
    x, y = make_data()
    batches = [{"input_ids": x[i: i + 16], "labels": y[i: i + 16]} for i in range(0, 96, 16)]
    model = HFStyle()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = picture(model, opt)
    res = find_lr(model, opt, None, batches, num_iter=40, progress=False, verify=False)
    assert res.losses[0] == pytest.approx(float(torch.nn.functional.cross_entropy(model.net(x[:16]), y[:16]).detach()), rel=1e-6)
    assert picture(model, opt) == before
    # a tuple batch goes in positionally
    res2 = find_lr(model, opt, None, [(b["input_ids"], b["labels"]) for b in batches], num_iter=40, progress=False,
                   verify=False)
    np.testing.assert_array_equal(res.losses, res2.losses)


def test_model_without_loss_attribute_needs_loss_fn():
    model = make_net(bn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"loss_fn is None, so the model's output must have a \.loss"):
        find_lr(model, opt, None, [make_data(16)[0]], num_iter=5, progress=False, verify=False)


def test_gan_two_optimizers():
    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6))
    disc = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1))
    both = torch.nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=4e-4, betas=(0.5, 0.999))  # TTUR: 4x the generator's LR
    real = DataLoader(TensorDataset(make_data(64)[0]), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(0))
    bce = torch.nn.BCEWithLogitsLoss()
    lrs_seen = []

    def step_fn(model, batch, optimizers):
        g_opt, d_opt = optimizers
        lrs_seen.append((g_opt.param_groups[0]["lr"], d_opt.param_groups[0]["lr"]))
        (x,) = batch
        z = torch.randn(len(x), 4)
        fake = model["gen"](z)
        d_opt.zero_grad()
        d_loss = bce(model["disc"](x), torch.ones(len(x), 1)) + bce(model["disc"](fake.detach()), torch.zeros(len(x), 1))
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad()
        g_loss = bce(model["disc"](fake), torch.ones(len(x), 1))
        g_loss.backward()
        g_opt.step()
        return g_loss + d_loss

    warm_state = picture(both, [opt_g, opt_d])
    res = find_lr(both, [opt_g, opt_d], None, real, step_fn=step_fn, start_lr=1e-6, end_lr=1.0, num_iter=30,
                  progress=False, verify=False)
    assert len(res.lrs) >= 2
    for g_lr, d_lr in lrs_seen:
        assert d_lr == pytest.approx(4 * g_lr)
    assert lrs_seen[0][0] == pytest.approx(1e-6)
    assert picture(both, [opt_g, opt_d]) == warm_state
    assert [opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]] == [1e-4, 4e-4]


def test_gan_mode_refuses_builtin_update_options():
    both = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})
    opts = [torch.optim.SGD(both["a"].parameters(), lr=0.1), torch.optim.SGD(both["b"].parameters(), lr=0.1)]
    with pytest.raises(ValueError, match="step_fn.*must do the update; got step_fn=None"):
        TorchTrainer(both, opts, None, [1])
    with pytest.raises(ValueError, match="accumulation_steps, grad_clip_norm apply to the built-in"):
        TorchTrainer(both, opts, None, [1], step_fn=lambda m, b, o: 0.0, accumulation_steps=2, grad_clip_norm=1.0)


def test_grad_clipping_bounds_the_update():
    x, y = make_data(16)
    torch.manual_seed(0)
    m = make_net(bn=False)
    w0 = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    t = TorchTrainer(m, opt, torch.nn.CrossEntropyLoss(), [(x, y)], grad_clip_norm=1e-3)
    t.step(1.0)
    delta = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(m.parameters(), w0)))
    assert float(delta) == pytest.approx(1e-3, rel=1e-3)  # plain SGD step of a clipped gradient


def test_scheduler_attached_is_allowed_with_a_warning():
    model, opt, dl = setup("sgd_momentum")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    opt.step()
    sched.step()
    before = picture(model, opt, loader=dl)
    sched_state = dict(sched.state_dict())
    with pytest.warns(UserWarning, match="LR scheduler attached"):
        find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=1e-4, end_lr=1.0, num_iter=15,
                progress=False, verify=False)
    assert picture(model, opt, loader=dl) == before
    assert sched.state_dict() == sched_state
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5)


def test_tensor_lr_groups():
    model, _, dl = setup("adam", warm=False, leftover_grad=False)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3))
    before = picture(model, opt, loader=dl)
    find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, num_iter=15, progress=False, verify=False)
    assert picture(model, opt, loader=dl) == before


def test_default_range_and_batch_size_from_optimizer_and_loader():
    model, opt, dl = setup("sgd_momentum")
    res = find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, num_iter=10, progress=False, verify=False,
                  accumulation_steps=2)
    assert res.lrs[0] == 1e-7  # lrkit.scaling.lr_range("sgd_momentum")[0]
    assert res.batch_size == 32 and res.num_iter == 10
    assert isinstance(res, FinderResult)


def test_start_lr_zero_is_not_unset():
    model, opt, dl = setup("adam")
    with pytest.raises(ValueError, match="start_lr must be a finite number > 0, got 0.0"):
        find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, start_lr=0.0, progress=False, verify=False)


# -- bad input leaves the model untouched --------------------------------------------------------
def _bad_cases():
    x, y = make_data(32)
    good = [(x[:16], y[:16]), (x[16:], y[16:])]
    ce = torch.nn.CrossEntropyLoss()
    return [
        ("empty loader", dict(train_loader=[]), "train_loader is empty"),
        ("empty iterable", dict(train_loader=iter([])), "train_loader is empty"),
        ("non-scalar loss", dict(loss_fn=torch.nn.CrossEntropyLoss(reduction="none")),
         r"the loss must be a scalar tensor, got shape \(16,\)"),
        ("nan at first step", dict(loss_fn=lambda out, t: ce(out, t) * float("nan")),
         "loss is not finite at the first step"),
        ("start >= end", dict(start_lr=1.0, end_lr=0.1), "start_lr must be < end_lr"),
        ("negative lr", dict(start_lr=-1.0, end_lr=0.1), "start_lr must be a finite number > 0"),
        ("num_iter", dict(num_iter=1), "num_iter must be an integer >= 2, got 1"),
        ("accumulation", dict(accumulation_steps=0), "accumulation_steps must be an integer >= 1, got 0"),
        ("clip", dict(grad_clip_norm=-1.0), "grad_clip_norm must be None or a finite number > 0"),
        ("mode", dict(mode="cosine"), "mode must be 'exp' or 'linear'"),
        ("triple batch", dict(train_loader=[(x, y, y)]), "batches must be .* got a tuple of length 3"),
        ("float loss", dict(loss_fn=lambda out, t: 1.0), "the loss must be a scalar torch.Tensor, got float"),
        ("verify conflict", dict(verify=False, verify_steps=5), "verify=False contradicts verify_steps=5"),
    ], good


@pytest.mark.parametrize("case", range(13))
def test_bad_input_leaves_model_untouched(case):
    cases, good = _bad_cases()
    name, override, match = cases[case]
    model, opt, _ = setup("adam")
    before = picture(model, opt)
    kwargs = dict(model=model, optimizer=opt, loss_fn=torch.nn.CrossEntropyLoss(), train_loader=good,
                  num_iter=10, progress=False, verify=False)
    kwargs.update(override)
    with pytest.raises(ValueError, match=match):
        find_lr(**kwargs)
    assert picture(model, opt) == before, name


def test_no_trainable_parameters():
    model = make_net(bn=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"model has no trainable parameters \(4 parameters"):
        TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), [make_data(8)])


def test_optimizer_of_another_model():
    model = make_net(bn=False)
    other = make_net(bn=False)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer does not hold the model's parameters \(4 of its 4"):
        TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), [make_data(8)])


def test_not_an_optimizer_and_zero_lr():
    model = make_net(bn=False)
    with pytest.raises(ValueError, match=r"optimizer\[0\] must be a torch.optim.Optimizer, got list"):
        TorchTrainer(model, [[1]], None, [1], step_fn=lambda *a: 0.0)
    with pytest.raises(ValueError, match="must be a torch.optim.Optimizer, got str"):
        TorchTrainer(model, "adam", None, [1])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match=r"param groups need finite LRs >= 0, one of them above 0.*got \[0.0\]"):
        TorchTrainer(model, opt, None, [1])


def test_lazy_module_refused():
    model = torch.nn.Sequential(torch.nn.LazyLinear(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="uninitialised \\(lazy\\) parameter '0.weight'"):
        TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), [make_data(8)])


def test_evaluate_uses_val_loader_in_eval_mode_and_keeps_modes():
    model, opt, dl = setup("adam")
    x, y = make_data(40, seed=9)
    val = DataLoader(TensorDataset(x, y), batch_size=8)
    t = TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), dl, val_loader=val, max_val_batches=2)
    modes = [m.training for m in model.modules()]
    model.eval()
    with torch.no_grad():
        expect = np.mean([float(torch.nn.functional.cross_entropy(model(x[i: i + 8]), y[i: i + 8])) for i in (0, 8)])
    for m, mode in zip(model.modules(), modes):
        m.training = mode
    assert t.evaluate() == pytest.approx(expect, rel=1e-6)
    assert [m.training for m in model.modules()] == modes
    assert TorchTrainer(model, opt, torch.nn.CrossEntropyLoss(), dl).evaluate() is None


def test_progress_callback_and_bar(capfd):
    model, opt, dl = setup("adam")
    calls = []
    find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, num_iter=12, verify=False,
            progress=lambda i, lr, loss: calls.append(i))
    assert calls == list(range(len(calls))) and len(calls) >= 2
    find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, num_iter=12, verify=False, progress=True)
    out = capfd.readouterr()
    assert out.out == ""  # a progress bar never goes to stdout


def test_snapshot_is_one_cpu_copy():
    from lrkit.integrations.torch.state import TorchSnapshot, _SavedTensor

    model, opt, dl = setup("adam")
    snap = TorchSnapshot.take(model, [opt], loaders=[dl])
    saved = []

    def walk(x):
        if isinstance(x, _SavedTensor):
            saved.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk([snap.model_tensors, snap.model_buffers, snap.grads, snap.optimizers])
    assert all(s.tensor.device.type == "cpu" for s in saved)
    nbytes = sum(s.tensor.numel() * s.tensor.element_size() for s in saved)
    live = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    live += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    live += sum(v.numel() * v.element_size() for st_ in opt.state.values() for v in st_.values()
                if isinstance(v, torch.Tensor))
    assert nbytes == live  # exactly one copy of everything, nothing more


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not exercised here")
def test_cuda_bitwise_restore_with_amp():  # pragma: no cover - needs a GPU
    model, opt, _ = setup("adam", leftover_grad=False)
    model = model.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = make_data()
    dl = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    scaler = torch.amp.GradScaler("cuda")
    torch.cuda.manual_seed_all(3)
    before = picture(model, opt, scaler, loader=dl)
    cuda_rng = torch.cuda.get_rng_state_all()
    res = find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, amp=True, scaler=scaler, start_lr=1e-6, end_lr=1e3,
                  num_iter=40, progress=False, verify=False)
    assert res.stopped_early
    assert picture(model, opt, scaler, loader=dl) == before
    assert all(torch.equal(a, b) for a, b in zip(cuda_rng, torch.cuda.get_rng_state_all()))


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
def test_bitwise_restore_after_verification_runs(opt_name):
    model, opt, dl = setup(opt_name)
    x, y = make_data(32, seed=4)
    val = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    before = picture(model, opt, loader=dl)
    val_gen = val.generator.get_state().clone()
    res = find_lr(model, opt, torch.nn.CrossEntropyLoss(), dl, val_loader=val, num_iter=40, verify_steps=8,
                  progress=False, batch_size=16, target_batch_size=64)
    assert res.details["verify_steps_used"] > 0 and len(res.details["candidates"]) >= 1
    assert res.method.endswith("+scaled") and res.details["batch_scaling"]["to_batch_size"] == 64
    assert picture(model, opt, loader=dl) == before
    assert torch.equal(val.generator.get_state(), val_gen)


@settings(max_examples=25, deadline=None)
@given(ratios=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=3), lr=st.floats(1e-6, 10.0))
def test_any_group_ratios_are_kept(ratios, lr):
    layers = [torch.nn.Linear(3, 3) for _ in range(len(ratios) + 1)]
    model = torch.nn.Sequential(*layers)
    base = 0.1
    groups = [{"params": layers[0].parameters(), "lr": base}]
    groups += [{"params": layer.parameters(), "lr": base * r} for layer, r in zip(layers[1:], ratios)]
    opt = torch.optim.SGD(groups, lr=base)
    t = TorchTrainer(model, opt, torch.nn.MSELoss(), [(torch.ones(2, 3), torch.zeros(2, 3))])
    state = t.snapshot()
    t.set_lr(lr)
    got = [g["lr"] for g in opt.param_groups]
    t.restore(state)
    assert got[0] == lr
    for g, r in zip(got[1:], ratios):
        assert g == pytest.approx(lr * (base * r) / base, rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [base] + [base * r for r in ratios]


def test_a_guard_over_a_torch_trainer_takes_its_timings_through_the_trainers_agree():
    """One process: ``agree`` hands the numbers back; a Guard over the trainer uses it (under
    ``torch.distributed`` it is the ranks' mean, tests/test_ddp_guard.py)."""
    from lrkit.doctor.guard import Guard

    model, dl = make_net(), loader()
    t = TorchTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), dl)
    assert t.agree([0.25, float("nan")])[0] == 0.25 and math.isnan(t.agree([0.25, float("nan")])[1])
    assert t.agree([3.0, 1.0], "min") == [3.0, 1.0]
    with pytest.raises(ValueError, match="op must be"):
        t.agree([1.0], "median")
    assert Guard(t).agree == t.agree

    def own(values, op):
        return values

    assert Guard(t, agree=own).agree is own  # one given wins
