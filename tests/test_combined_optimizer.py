"""lrkit.torch.combine: Muon for the weight matrices and AdamW for the rest as one optimizer,
through a torch scheduler, lrkit's finder, autopilot and guard, the Hugging Face Trainer and
Lightning's automatic optimization."""
from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrkit.torch as lt  # noqa: E402
from _torch_digits import loaders as _digits, net as _net, one_thread, train as _steps, val_loss as _val  # noqa: E402,F401
from lrkit import scaling  # noqa: E402

RATIO = 3e-4 / 0.02  # torch.optim.Muon's docstring example: Muon at 0.02, AdamW at 3e-4




def _pair(model, lr=0.02):
    muon = torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=lr)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=lr * RATIO)
    return muon, adamw








def test_it_trains_exactly_as_the_two_optimizers_stepped_by_hand():
    loader, _ = _digits()
    a, b = _net(), _net()
    opt_a = lt.combine(*_pair(a))
    muon, adamw = _pair(b)
    _steps(a, opt_a, loader, 12)
    batches = iter(loader)
    for _ in range(12):
        x, y = next(batches)
        muon.zero_grad()
        adamw.zero_grad()
        torch.nn.functional.cross_entropy(b(x), y).backward()
        muon.step()
        adamw.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_groups_and_state_are_the_inner_optimizers_own():
    model = _net()
    muon, adamw = _pair(model)
    opt = lt.combine(muon, adamw)
    assert opt.param_groups[0] is muon.param_groups[0] and opt.param_groups[1] is adamw.param_groups[0]
    opt.param_groups[1]["lr"] = 1e-3
    assert adamw.param_groups[0]["lr"] == 1e-3
    _steps(model, opt, _digits()[0], 2)
    assert len(opt.state) == 4 and set(opt.state) == set(muon.state) | set(adamw.state)
    weight, bias = model[0].weight, model[0].bias
    assert opt.state[weight] is muon.state[weight] and opt.state[bias] is adamw.state[bias]
    saved = opt.state[bias]
    del opt.state[bias]
    assert bias not in adamw.state and bias not in opt.state
    opt.state[bias] = saved
    assert adamw.state[bias] is saved
    with pytest.raises(KeyError, match="none of the combined"):
        opt.state[torch.nn.Parameter(torch.zeros(2))] = {}
    assert "Muon" in repr(opt) and "AdamW" in repr(opt)


def test_state_dict_round_trip_resumes_bitwise_and_a_scheduler_keeps_the_ratio():
    loader, _ = _digits()
    model = _net()
    opt = lt.combine(*_pair(model))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    for _ in range(3):
        _steps(model, opt, loader, 1)
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(0.02 / 4) and lrs[1] / lrs[0] == pytest.approx(RATIO)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    _steps(model, opt, loader, 5)
    reference = [p.detach().clone() for p in model.parameters()]

    again = _net(seed=1)
    again.load_state_dict(ckpt["model"])
    opt2 = lt.combine(*_pair(again, lr=0.5))
    opt2.load_state_dict(ckpt["opt"])
    assert [g["lr"] for g in opt2.param_groups] == lrs
    _steps(again, opt2, loader, 5)
    assert all(torch.equal(p, q) for p, q in zip(reference, again.parameters()))
    assert isinstance(pickle.loads(pickle.dumps(opt2)), lt.CombinedOptimizer)


def test_bad_input_is_refused_with_the_reason():
    model = _net()
    muon, adamw = _pair(model)
    with pytest.raises(TypeError, match=r"optimizers\[1\] must be a torch.optim.Optimizer"):
        lt.combine(muon, "adamw")
    with pytest.raises(ValueError, match="at least one optimizer"):
        lt.combine()
    with pytest.raises(ValueError, match="share a parameter"):
        lt.combine(muon, torch.optim.SGD(model[0].parameters(), lr=0.1))
    opt = lt.combine(muon, adamw)
    with pytest.raises(TypeError, match="add the group to one of the combined"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    with pytest.raises(ValueError, match="2 parts under 'optimizers'"):
        opt.load_state_dict(muon.state_dict())
    assert lt.combine(opt).optimizers == [muon, adamw]  # a combination inside is unpacked


def test_its_family_is_the_first_optimizers():
    model = _net()
    muon, adamw = _pair(model)
    assert scaling.optimizer_family(lt.combine(muon, adamw)) == "muon"
    assert scaling.optimizer_family(lt.combine(adamw, muon)) == "adamw"
    matched = torch.optim.Muon([model[0].weight], adjust_lr_fn="match_rms_adamw")
    assert scaling.optimizer_family(matched) == "muon_adamw"
    assert scaling.default_lr("muon") == 0.02 and scaling.default_lr(matched) == scaling.default_lr("adamw")


def test_the_finder_ramps_muons_lr_keeps_adamws_ratio_and_restores_both():
    loader, val = _digits()
    model = _net()
    muon, adamw = _pair(model)
    opt = lt.combine(muon, adamw)
    _steps(model, opt, loader, 3)  # some state to restore
    before = copy.deepcopy((model.state_dict(), muon.state_dict(), adamw.state_dict()))
    seen = []
    hook = adamw.register_step_pre_hook(lambda o, *a: seen.append(o.param_groups[0]["lr"] / muon.param_groups[0]["lr"]))
    result = lt.find_lr(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=400)
    hook.remove()
    assert len(seen) > 20 and np.allclose(seen, RATIO)
    assert result.details["family"] == "muon" and 1e-4 < result.suggestion < 1.0
    after = (model.state_dict(), muon.state_dict(), adamw.state_dict())
    for x, y in zip(before[0].values(), after[0].values()):
        assert torch.equal(x, y)
    for old, new in zip(before[1:], after[1:]):
        assert old["param_groups"] == new["param_groups"]
        for i, state in old["state"].items():
            assert all(torch.equal(v, new["state"][i][k]) for k, v in state.items())


def test_the_autopilot_drives_both_and_its_guard_rolls_both_back():
    loader, val = _digits()
    model = _net()
    muon, adamw = _pair(model)
    opt = lt.combine(muon, adamw)
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=200)
    assert pilot.plan.family == "muon"
    ratios, start = [], _val(model, val)

    def after(loss):
        pilot.after_step(loss)
        pilot.scheduler.step()
        if muon.param_groups[0]["lr"] > 0:  # the schedule ends at 0
            ratios.append(adamw.param_groups[0]["lr"] / muon.param_groups[0]["lr"])

    _steps(model, opt, loader, 200, fault=lambda it, x: x * math.nan if it == 120 else x, after=after)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert [e.step for e in rollbacks] == [120]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    assert len(ratios) > 150 and np.allclose(ratios, RATIO)
    assert _val(model, val) < 0.5 * start


def test_the_hugging_face_trainer_takes_it_with_the_autopilot(tmp_path):
    transformers = pytest.importorskip("transformers")
    from _hf_digits import Clf, Rows, digits

    from lrkit.transformers import AutopilotCallback

    x, y = digits()
    model = Clf()
    opt = lt.combine(*_pair(model))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=120, per_device_train_batch_size=32,
                                          logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True,
                                          use_cpu=True, seed=0, data_seed=0)
    cb = AutopilotCallback(restart_on_overfit=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(x[:640], y[:640]),
                                   eval_dataset=Rows(x[1400:], y[1400:]), optimizers=(opt, None), callbacks=[cb])
    trainer.train()
    assert cb.plan.family == "muon" and cb.pilot.interventions == []
    groups = opt.param_groups
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * RATIO)
    assert trainer.evaluate()["eval_loss"] < 1.0


def test_lightning_automatic_optimization_takes_it_with_the_autopilot():
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.lightning import AutopilotCallback

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return lt.combine(*_pair(self.net))

    loader, val = _digits()
    cb = AutopilotCallback(restart_on_overfit=False)
    net = Net()
    start = _val(net.net, val)
    trainer = pl.Trainer(max_steps=150, callbacks=[cb], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                         val_check_interval=50, check_val_every_n_epoch=None)
    trainer.fit(net, loader, val)
    assert cb.plan.family == "muon" and cb.pilot.interventions == []
    groups = trainer.optimizers[0].param_groups
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * RATIO)
    assert _val(net.net, val) < 0.5 * start


def test_lightning_manual_optimization_of_two_optimizers_is_refused_with_the_way_out():
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.autopilot import AutopilotError
    from lrkit.lightning import AutopilotCallback

    class TwoOptimizers(pl.LightningModule):  # what Lightning asks for several optimizers
        def __init__(self):
            super().__init__()
            self.net = _net()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            x, y = batch
            muon, adamw = self.optimizers()
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            muon.zero_grad()
            adamw.zero_grad()
            self.manual_backward(loss)
            muon.step()
            adamw.step()

        def configure_optimizers(self):
            return list(_pair(self.net))

    module = TwoOptimizers()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(max_steps=20, callbacks=[AutopilotCallback()], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(AutopilotError, match=r"manual optimization.*lrkit\.torch\.combine\(muon, adamw\)"):
        trainer.fit(module, _digits()[0])
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
