"""lrkit.transformers.AutopilotCallback: Trainer(..., callbacks=[...]) with no learning_rate; resume; refusals."""
from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lrkit.integrations.torch.trainer as torch_trainer  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402
from lrkit.transformers import AutopilotCallback  # noqa: E402
from _hf_digits import Clf, Rows, digits  # noqa: E402
from _overfit import check_planned_and_restarted  # noqa: E402
from _wine import check_death_answered, unscaled_wine  # noqa: E402
from _torch_digits import one_thread  # noqa: E402,F401 - autouse: one torch thread per test




class LogTrace(transformers.TrainerCallback):
    def __init__(self):
        self.lrs = {}

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "learning_rate" in logs and "loss" in logs:
            self.lrs[state.global_step] = logs["learning_rate"]


def _data():
    x, y = digits()
    return Rows(x[:640], y[:640]), Rows(x[1400:], y[1400:])


def _args(out, steps, **kw):
    base = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=32, logging_steps=1,
                save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0, data_seed=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_trains_with_no_learning_rate_and_logs_the_autopilots_lr(tmp_path):
    train, val = _data()
    cb, trace = AutopilotCallback(restart_on_overfit=False), LogTrace()
    trainer = transformers.Trainer(model=Clf(), args=_args(tmp_path, 120, eval_strategy="steps", eval_steps=40),
                                   train_dataset=train, eval_dataset=val, callbacks=[cb, trace])
    trainer.train()
    assert cb.pilot.restart_on_overfit is False  # passed through (the default is covered by the other tests)
    plan = cb.plan
    assert plan.train_steps == 120 and plan.family == "adamw"
    assert 0 < plan.finder_cost_steps <= 36
    assert cb.pilot.interventions == []
    # the Trainer logs the LR its last optimizer step used: step global_step - 1 of the schedule
    for step, lr in trace.lrs.items():
        assert lr == pytest.approx(plan.schedule(step - 1), rel=1e-6)
    assert max(trace.lrs.values()) == pytest.approx(plan.peak_lr, rel=1e-6)
    assert trainer.evaluate()["eval_loss"] < 1.0


@pytest.mark.parametrize("with_eval", [True, False])
def test_the_finder_scores_its_candidates_on_the_trainers_eval_dataset(tmp_path, with_eval):
    """The Trainer hands its callbacks no eval dataloader before its first evaluation: the
    callback finds the Trainer itself and scores the finder's candidates on its validation batches,
    as lrkit.transformers.find_lr(trainer) does (without an eval_dataset: a fixed sample of training batches)."""
    from lrkit.integrations.transformers.autopilot import owning_trainer

    train, val = _data()
    cb = AutopilotCallback(restart_on_overfit=False)
    assert owning_trainer(cb) is None  # not inside a Trainer's event
    trainer = transformers.Trainer(model=Clf(), args=_args(tmp_path, 200), train_dataset=train,
                                   eval_dataset=val if with_eval else None, callbacks=[cb])
    untrained = None
    if with_eval:  # the untrained model's mean loss over the finder's at most 20 validation batches
        model = trainer.model.eval()
        with torch.no_grad():
            losses = [float(model(**b)["loss"]) for _, b in zip(range(20), trainer.get_eval_dataloader())]
        untrained = sum(losses) / len(losses)
    trainer.train()
    details = cb.finder.details
    if with_eval:
        assert details["score"] == "evaluate()"
        assert details["start_score"] == pytest.approx(untrained, rel=1e-5)
    else:
        assert details["score"] == "sample_loss()"  # no eval_dataset: the first training batches drawn


class NaNFrom(transformers.TrainerCallback):
    """Makes the inputs of optimizer step ``at`` NaN (its loss, gradients and update then are)."""

    def __init__(self, at):
        self.at = at

    def on_step_begin(self, args, state, control, model=None, **kw):
        model.nan = state.global_step == self.at


class NaNClf(Clf):
    nan = False

    def forward(self, pixels, labels=None):
        return super().forward(pixels * math.nan if self.nan else pixels, labels)


def test_with_the_trainers_default_logging_the_guard_reads_every_step_itself(tmp_path, caplog):
    """logging_steps=500 (the default) over a 120-step run writes no training log before its end:
    the guard reads each step's loss from the model's output instead, says so, and rolls a NaN
    back at its step (read from the logs, it would never have seen it)."""
    import warnings

    train, val = _data()
    cb = AutopilotCallback()
    with caplog.at_level("INFO", logger="lrkit.autopilot"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer = transformers.Trainer(model=NaNClf(), args=_args(tmp_path, 120, logging_steps=500),
                                       train_dataset=train, callbacks=[cb, NaNFrom(70)])
        trainer.train()
    assert any("the guard reads every step's loss from the model's output" in r.getMessage() for r in caplog.records)
    assert not [w for w in seen if "training logs" in str(w.message)]
    rollbacks = [e for e in cb.events if e.kind == "rollback"]
    assert [e.step for e in rollbacks] == [70]
    model = trainer.model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(model.net(val.x), val.y) < 0.5  # it went on learning
    assert not model._forward_hooks


def test_resume_from_checkpoint_runs_no_finder_and_continues(tmp_path, monkeypatch):
    train, _ = _data()
    full = LogTrace()
    transformers.Trainer(model=Clf(), args=_args(tmp_path / "a", 80), train_dataset=train,
                         callbacks=[AutopilotCallback(), full]).train()
    out = tmp_path / "b"
    first = LogTrace()
    transformers.Trainer(model=Clf(), args=_args(out, 80, save_strategy="steps", save_steps=40), train_dataset=train,
                         callbacks=[AutopilotCallback(), first]).train()

    def no_finder(*a, **k):
        raise AssertionError("the finder ran again on resume")

    monkeypatch.setattr(torch_trainer, "find_lr", no_finder)
    second, cb = LogTrace(), AutopilotCallback()
    transformers.Trainer(model=Clf(), args=_args(out, 80), train_dataset=train,
                         callbacks=[cb, second]).train(resume_from_checkpoint=str(out / "checkpoint-40"))
    assert cb.finder is None and cb.events[-1].kind == "resume"
    assert sorted(second.lrs) == list(range(41, 81))
    for step, lr in second.lrs.items():
        assert lr == pytest.approx(full.lrs[step], rel=1e-9)


def test_refuses_a_learning_rate_free_optimizer(tmp_path):
    from prodigyopt import Prodigy

    train, _ = _data()
    model = Clf()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 20), train_dataset=train,
                                   optimizers=(Prodigy(model.parameters(), lr=1.0), None),
                                   callbacks=[AutopilotCallback()])
    with pytest.raises(AutopilotError, match="learning-rate-free"):
        trainer.train()


def test_refuses_a_scheduler_it_cannot_drive(tmp_path):
    train, _ = _data()
    trainer = transformers.Trainer(model=Clf(), args=_args(tmp_path, 20, lr_scheduler_type="reduce_lr_on_plateau",
                                                           eval_strategy="steps", eval_steps=10),
                                   train_dataset=train, eval_dataset=_data()[1], callbacks=[AutopilotCallback()])
    with pytest.raises(AutopilotError, match="ReduceLROnPlateau"):
        trainer.train()


class Poisoned(Clf):
    """Clf whose batch is garbage (inputs x50, labels shuffled) while ``poison`` is set."""

    poison = False

    def forward(self, pixels, labels=None):
        if self.poison:
            pixels = pixels * 50.0
            labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
        return super().forward(pixels, labels)


class PoisonAt(transformers.TrainerCallback):
    """Poisons the batch of optimizer step ``at`` and records the parameters around it."""

    def __init__(self, at):
        self.at, self.around = at, {}

    def on_step_begin(self, args, state, control, model=None, **kw):
        model.poison = state.global_step == self.at
        if state.global_step == self.at:
            self.around["before"] = [p.detach().clone() for p in model.parameters()]

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.at + 1:
            self.around["after"] = [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("logging_steps", [1, 10])
def test_a_bad_batch_is_skipped_and_said(tmp_path, logging_steps):
    train, _ = _data()
    cb, poison = AutopilotCallback(), PoisonAt(100)
    trainer = transformers.Trainer(model=Poisoned(), args=_args(tmp_path, 140, logging_steps=logging_steps),
                                   train_dataset=train, callbacks=[cb, poison])
    trainer.train()
    skips = [e for e in cb.events if e.kind == "skip"]
    assert [e.step for e in skips] == [100] and [e for e in cb.pilot.interventions if e.kind != "skip"] == []
    assert all(torch.equal(a, b) for a, b in zip(poison.around["before"], poison.around["after"]))
    assert not trainer.model._forward_hooks  # the loss hook left with the run


class _Wine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

    def forward(self, pixels, labels=None):
        logits = self.net(pixels)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


@pytest.mark.parametrize("every", [25, 0])
def test_a_network_that_dies_is_rolled_back_and_its_probe_taken_off(tmp_path, every):
    x, y = map(torch.from_numpy, unscaled_wine())  # an LR too high kills the ReLUs in a few steps
    model = _Wine()
    cb = AutopilotCallback(peak_lr=0.1, check_outputs_every=every)
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 200, per_device_train_batch_size=16),
                                   train_dataset=Rows(x[:130], y[:130]), eval_dataset=Rows(x[130:], y[130:]),
                                   callbacks=[cb])
    trainer.train()
    died = [e for e in cb.events if "network died" in e.message]
    with torch.no_grad():
        val = torch.nn.functional.cross_entropy(model.net(x[130:]), y[130:]).item()
    if every:
        assert died and "lowered the LR" in died[0].message
        assert val < 0.8
    else:  # unmeasured, the same run ends at the constant prediction's loss
        assert not died and val > 1.0
    assert not model._forward_hooks


@pytest.mark.parametrize("every", [25, 0])
def test_the_doctor_callbacks_guard_rolls_back_a_network_that_dies(tmp_path, every):
    from lrkit.transformers import LRDoctorCallback

    x, y = map(torch.from_numpy, unscaled_wine())
    model = _Wine()
    cb = LRDoctorCallback(guard=True, snapshot_every=10, check_outputs_every=every)
    # a constant LR far too high for unscaled inputs: the network dies within a few steps
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 200, per_device_train_batch_size=16,
                                                            learning_rate=0.3, lr_scheduler_type="constant"),
                                   train_dataset=Rows(x[:130], y[:130]), callbacks=[cb])
    trainer.train()
    check_death_answered(cb.interventions, model.net, x[130:], y[130:], probed=bool(every))
    assert not model._forward_hooks


class Marked(torch.utils.data.Dataset):
    """A sequence is positive when it holds the token 7 (the real-runs benchmark's task)."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, 64, (n, 12), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)
        pos = torch.randint(1, 12, (n,), generator=g)
        self.ids[self.y == 1, pos[self.y == 1]] = 7
        self.ids[:, 0] = 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.y[i]}


@pytest.mark.parametrize("accumulation", [1, 4])
def test_sgd_under_gradient_accumulation_trains_at_the_plans_lr(tmp_path, accumulation, caplog):
    """BertForSequenceClassification ignores num_items_in_batch, so with accumulation the Trainer sums
    its micro-batch losses: the gradient is m times the mean the finder measured. SGD's update is
    linear in it, so the autopilot sets the optimizer's LR to the plan's / m; the guard's reference
    loss is put on the logged scale."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cb, trace = AutopilotCallback(), LogTrace()
    args = _args(tmp_path, 100, per_device_train_batch_size=16 // accumulation, gradient_accumulation_steps=accumulation)
    with caplog.at_level("INFO", logger="lrkit.autopilot"):
        transformers.Trainer(model=model, args=args, train_dataset=Marked(512, 0), eval_dataset=Marked(128, 1),
                             optimizers=(opt, sched), callbacks=[cb, trace]).train()
    said = [r.getMessage() for r in caplog.records if "micro-batch losses" in r.getMessage()]
    for step in (20, 60):  # the log of global step s carries the LR of optimizer step s - 1
        assert trace.lrs[step] == pytest.approx(cb.pilot.lr(step - 1) / accumulation, rel=1e-6)
    assert bool(said) == (accumulation > 1)
    assert not [e for e in cb.events if e.kind == "rollback"]


class _Listing(transformers.TrainerCallback):
    def __init__(self, cb):
        self.cb, self.names = cb, []

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 60:
            self.names = os.listdir(self.cb.pilot.guard.storage_path)


def test_disk_snapshots_live_in_storage_dir_during_training_and_go_at_its_end(tmp_path):
    train, val = _data()
    cb = AutopilotCallback(storage="disk", storage_dir=tmp_path / "snaps")
    listing = _Listing(cb)
    trainer = transformers.Trainer(model=Clf(), args=_args(tmp_path / "out", 100), train_dataset=train,
                                   eval_dataset=val, callbacks=[cb, listing])
    trainer.train()
    assert "manifest.json" in listing.names and any(n.endswith(".pkl") for n in listing.names)
    assert os.listdir(tmp_path / "snaps") == []
    with pytest.raises(AutopilotError, match="AutopilotCallback: storage must be 'memory' or 'disk'"):
        AutopilotCallback(storage=None)


def test_a_run_that_overfits_early_is_restarted_at_a_lower_lr_through_the_trainer(tmp_path):
    # 60 training digits for 300 steps of 16 (80 epochs), evaluated every 15 steps. The autopilot's
    # own scale expects the overfitting (the finder divides its answer for many epochs,
    # lrkit.finder.regime); at the scale it would take without that (5x), the run fits them within a
    # few epochs and the evaluation loss climbs from there, and the early-overfitting restart steps in
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)

    def run(**kw):
        cb = AutopilotCallback(**kw)
        out = tmp_path / str(kw.get("restart_on_overfit", "own"))  # one output directory per run
        trainer = transformers.Trainer(
            model=Clf(), args=_args(out, 300, per_device_train_batch_size=16, eval_strategy="steps", eval_steps=15),
            train_dataset=Rows(x[:60], y[:60]), eval_dataset=Rows(x[1400:], y[1400:]), callbacks=[cb])
        trainer.train()
        return cb, trainer.evaluate()["eval_loss"]

    check_planned_and_restarted(run, 0.7)


class StopAt(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= 30:
            control.should_training_stop = True


def test_a_run_stopped_well_short_of_its_plan_is_said(tmp_path, caplog):
    train, _ = _data()
    cb = AutopilotCallback(restart_on_overfit=False)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        transformers.Trainer(model=Clf(), args=_args(tmp_path, 120), train_dataset=train,
                             callbacks=[cb, StopAt()]).train()
    said = [r.getMessage() for r in caplog.records if "the run ended after" in r.getMessage()]
    assert len(said) == 1 and "after 30 of the 120 steps planned (25%)" in said[0], said
