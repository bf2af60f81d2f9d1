"""A ``torch.compile``d model, as users train one: the finder, the autopilot's guard and the Hugging
Face Trainer's ``torch_compile=True``.

A compiled module (``OptimizedModule``) shares its parameters with the original and names its
state ``_orig_mod.*``; dynamo traces the forward. The tests compile with the ``eager`` backend
(dynamo's capture and guards, no code generation: seconds, not minutes, on CI's CPU); inductor was
run by hand on the same flows (the same suggestion, the same run).
"""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import lrkit.torch as lt  # noqa: E402
from _torch_digits import loaders, net, one_thread, val_loss  # noqa: E402,F401
from _torch_digits import train as digits_train  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(seed: int = 0) -> torch.nn.Module:
    return torch.compile(net(seed), backend="eager")


def test_find_lr_on_a_compiled_model_answers_as_on_the_model_and_restores_it():
    train, val = loaders()
    answers = {}
    for compiled in (False, True):
        model = _compiled() if compiled else net()
        opt = torch.optim.Adam(model.parameters())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt_before = repr(opt.state_dict())
        res = lt.find_lr(model, opt, torch.nn.functional.cross_entropy, train, val_loader=val, train_steps=400)
        after = model.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert repr(opt.state_dict()) == opt_before
        answers[compiled] = res.suggestion
    assert list(_compiled().state_dict())[0].startswith("_orig_mod.")
    assert answers[True] == pytest.approx(answers[False], rel=1e-6)


def test_the_autopilots_guard_rolls_a_compiled_model_back_from_a_nan():
    train, val = loaders()
    model = _compiled()
    opt = torch.optim.Adam(model.parameters())
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, train, val_loader=val, train_steps=200)
    steps = iter(range(200))

    def after(loss):
        step = next(steps)
        pilot.after_step(loss, val_loss=val_loss(model, val) if (step + 1) % 50 == 0 else None)
        pilot.scheduler.step()

    digits_train(model, opt, train, 200, fault=lambda step, x: x * math.nan if step == 120 else x, after=after)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert [e.step for e in rollbacks] == [120]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert val_loss(model, val) < 0.6


def test_the_trainers_torch_compile_plans_and_trains_as_without_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lrkit.transformers import AutopilotCallback
    from _hf_digits import Clf, Rows, digits

    x, y = digits()
    train, val = Rows(x[:640], y[:640]), Rows(x[1400:], y[1400:])
    plans, finals = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        extra = {"torch_compile": True, "torch_compile_backend": "eager"} if compiled else {}
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(compiled)), max_steps=120, per_device_train_batch_size=32, logging_steps=1,
            save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0, data_seed=0, **extra)
        pilot = AutopilotCallback()
        trainer = transformers.Trainer(model=Clf(), args=args, train_dataset=train, eval_dataset=val, callbacks=[pilot])
        trainer.train()
        assert (type(trainer.model_wrapped).__name__ == "OptimizedModule") == compiled
        plans[compiled] = pilot.plan.peak_lr
        finals[compiled] = trainer.evaluate()["eval_loss"]
    assert plans[True] == pytest.approx(plans[False], rel=1e-6)
    assert finals[True] == pytest.approx(finals[False], rel=1e-4)
    assert finals[True] < 0.6
