"""8-bit and paged optimizers (bitsandbytes, on its CPU kernels): recognised by their family, their
quantised state left bitwise by the finder and rolled back by the guard, and the Hugging Face
Trainer's own ``optim="adamw_8bit"`` / ``"paged_adamw_8bit"`` (the QLoRA recipe's) flown by the
autopilot."""
from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

import lrkit.torch as lt  # noqa: E402
from _torch_digits import loaders as _digits, net as _net, one_thread, train as _steps, val_loss as _val  # noqa: E402,F401
from lrkit import scaling  # noqa: E402






@pytest.mark.parametrize(("name", "family"), [
    ("AdamW8bit", "adamw"), ("PagedAdamW8bit", "adamw"), ("PagedAdamW", "adamw"), ("AdamW32bit", "adamw"),
    ("Adam8bit", "adam"), ("Lion8bit", "lion"), ("PagedLion8bit", "lion"), ("RMSprop8bit", "rmsprop"),
    ("Adagrad8bit", "adagrad"),
])
def test_the_family_of_a_quantised_or_paged_optimizer_is_its_update(name, family):
    opt = getattr(bnb.optim, name)(_net().parameters(), lr=1e-3)
    assert scaling.optimizer_family(opt) == family
    assert scaling.optimizer_family(name) == family


def test_sgd8bit_keeps_its_momentum_in_betas():
    params = list(_net().parameters())
    assert scaling.optimizer_family(bnb.optim.SGD8bit(params, lr=0.1, momentum=0.9)) == "sgd_momentum"




def _quantised(opt):
    return [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dtype == torch.uint8]


def test_the_finder_leaves_the_quantised_state_bitwise():
    loader, val = _digits()
    model = _net()
    opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-3, min_8bit_size=0)
    _steps(model, opt, loader, 3)
    assert _quantised(opt)  # the premise: 8-bit moments
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    result = lt.find_lr(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=300)
    assert result.details["family"] == "adamw" and 1e-5 < result.suggestion < 1.0
    assert _same(before, (model.state_dict(), opt.state_dict()))


def _same(a, b):
    """Equal, tensors bitwise (dtype included), through dicts, lists and tuples."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_the_autopilot_rolls_a_nan_back_in_an_8bit_run():
    loader, val = _digits()
    model = _net()
    opt = bnb.optim.PagedAdamW8bit(model.parameters(), lr=1e-3, min_8bit_size=0)
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=200)
    assert pilot.plan.family == "adamw"

    def after(loss):
        pilot.after_step(loss)
        pilot.scheduler.step()

    start = pilot.plan.train_steps
    _steps(model, opt, loader, start, fault=lambda it, x: x * math.nan if it == 120 else x, after=after)
    assert [e.step for e in pilot.events if e.kind == "rollback"] == [120]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _quantised(opt) and all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values()
                                   if torch.is_tensor(v) and v.is_floating_point())
    assert _val(model, val) < 0.6


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit"])
def test_the_trainers_8bit_optimizer_is_flown_by_the_autopilot(tmp_path, optim):
    transformers = pytest.importorskip("transformers")
    from _hf_digits import Clf, Rows, digits

    from lrkit.transformers import AutopilotCallback

    x, y = digits()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=120, per_device_train_batch_size=32,
                                          logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True,
                                          use_cpu=True, seed=0, data_seed=0, optim=optim)
    cb = AutopilotCallback(restart_on_overfit=False)
    trainer = transformers.Trainer(model=Clf(), args=args, train_dataset=Rows(x[:640], y[:640]),
                                   eval_dataset=Rows(x[1400:], y[1400:]), callbacks=[cb])
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(inner).__module__.startswith("bitsandbytes")
    assert cb.plan.family == "adamw" and cb.pilot.interventions == []
    assert trainer.evaluate()["eval_loss"] < 1.0
