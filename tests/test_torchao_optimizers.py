"""torchao's 8- and 4-bit optimizers keep their moments in tensor subclasses (``OptimState8bit``,
``OptimState4bit``) whose ``.to(copy=True)`` shares the quantised codes: a snapshot taken that way
was the live state, so the finder left the moments changed and a rollback did not roll them back.
Snapshots copy such tensors through their inner tensors (:mod:`lrkit.integrations.torch.state`)."""
from __future__ import annotations

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torchao_optim = pytest.importorskip("torchao.optim")

import lrkit.torch as lt  # noqa: E402
from _torch_digits import loaders, one_thread, train, val_loss  # noqa: E402,F401


def _wide_net():
    # torchao quantises moments of 4096 values or more
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def _codes(opt):
    """Every quantised moment's inner tensors, cloned, and how many moments were quantised."""
    out = []
    for state in opt.state.values():
        for value in state.values():
            if type(value) is not torch.Tensor and hasattr(type(value), "__tensor_flatten__"):
                names, _ = value.__tensor_flatten__()
                out.append([getattr(value, n).clone() for n in names])
    return out


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


@pytest.mark.parametrize("name", ["AdamW8bit", "AdamW4bit"])
def test_the_finder_leaves_the_quantised_moments_bitwise(name):
    tr, va = loaders()
    model = _wide_net()
    opt = getattr(torchao_optim, name)(model.parameters(), lr=1e-3)
    train(model, opt, tr, 3)
    before, params = _codes(opt), [p.detach().clone() for p in model.parameters()]
    assert before  # the premise: quantised moments
    result = lt.find_lr(model, opt, torch.nn.functional.cross_entropy, tr, val_loader=va, train_steps=300)
    assert result.details["family"] == "adamw"
    assert _same(before, _codes(opt))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_rollback_restores_the_quantised_moments(storage, tmp_path):
    tr, va = loaders()
    model = _wide_net()
    opt = torchao_optim.AdamW8bit(model.parameters(), lr=1e-3)
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, tr, val_loader=va, train_steps=200,
                         storage=storage, storage_dir=str(tmp_path) if storage == "disk" else None)
    codes_at: dict[int, list] = {}
    step = [0]

    def after(loss):
        pilot.after_step(loss)
        pilot.scheduler.step()
        step[0] += 1
        codes_at[step[0]] = _codes(opt)

    train(model, opt, tr, 200, fault=lambda it, x: x * math.nan if it == 120 else x, after=after)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert [e.step for e in rollbacks] == [120]
    restored_to = rollbacks[0].data["restored_to"]
    # right after the rollback the moments are those the restored state had (before the NaN's update)
    assert _same(codes_at[121], codes_at[restored_to])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert val_loss(model, va) < 0.6


def test_the_trainers_torchao_8bit_optimizer_is_flown_by_the_autopilot(tmp_path):
    transformers = pytest.importorskip("transformers")
    from _hf_digits import Rows, digits

    from lrkit.transformers import AutopilotCallback

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _wide_net()

        def forward(self, pixels, labels=None):
            logits = self.net(pixels)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    x, y = digits()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=120, per_device_train_batch_size=32,
                                          logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True,
                                          use_cpu=True, seed=0, data_seed=0, optim="adamw_torch_8bit")
    cb = AutopilotCallback(restart_on_overfit=False)
    trainer = transformers.Trainer(model=Wide(), args=args, train_dataset=Rows(x[:640], y[:640]),
                                   eval_dataset=Rows(x[1400:], y[1400:]), callbacks=[cb])
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(inner).__module__.startswith("torchao") and _codes(inner)
    assert cb.plan.family == "adamw" and cb.pilot.interventions == []
    assert trainer.evaluate()["eval_loss"] < 1.0


def test_lightning_flies_it_and_its_guard_lowers_the_tensor_lr_in_place():
    """torchao's optimizers keep each group's LR as a tensor and refuse a float in its place: the
    Lightning autopilot and the doctor's guard hooks write into that tensor."""
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.lightning import AutopilotCallback, LRDoctorCallback

    class Net(pl.LightningModule):
        def __init__(self, nan_at=None):
            super().__init__()
            self.net, self.nan_at = _wide_net(), nan_at

        def training_step(self, batch, batch_idx):
            x, y = batch
            if self.global_step == self.nan_at:
                x = x * math.nan
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torchao_optim.AdamW8bit(self.parameters(), lr=1e-3)

    def fit(module, cb, steps):
        trainer = pl.Trainer(max_steps=steps, callbacks=[cb], logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, loaders()[0])
        return trainer

    cb = AutopilotCallback(restart_on_overfit=False)
    trainer = fit(Net(), cb, 100)
    group = trainer.optimizers[0].param_groups[0]
    assert cb.plan.family == "adamw" and isinstance(group["lr"], torch.Tensor)

    guard = LRDoctorCallback(guard=True, snapshot_every=10, forgive_first=False)
    module = Net(nan_at=60)
    trainer = fit(module, guard, 100)
    assert [i.verdict for i in guard.interventions] == ["nan"] and guard.lr_multiplier < 1.0
    assert isinstance(trainer.optimizers[0].param_groups[0]["lr"], torch.Tensor)
    assert all(torch.isfinite(p).all() for p in module.parameters())
