"""LRDoctorCallback (and its guard) with a real transformers.Trainer on a tiny torch module."""
from __future__ import annotations

import doctest
import io
import logging
import contextlib
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from _ddp import run_env_ranks  # noqa: E402
from _recording import RecordingDoctor  # noqa: E402
from lrkit.doctor import Doctor  # noqa: E402
from lrkit.doctor.guard import GuardGaveUp  # noqa: E402
from lrkit.integrations.transformers import callback as hf_integration  # noqa: E402
from lrkit.integrations.transformers import skips as hf_skips  # noqa: E402
from lrkit.integrations.transformers.callback import LRDoctorCallback, _guard_blockers  # noqa: E402


class Tiny(torch.nn.Module):
    """A tanh MLP returning ``{"loss": ...}``; its forward number(s) ``nan_at`` (0-based) get a NaN input,
    and every forward from ``nan_from`` on (a permanently broken run)."""

    def __init__(self, nan_at=None, nan_from=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.calls = 0
        self.nan_at = {nan_at} if isinstance(nan_at, int) else set(nan_at or ())
        self.nan_from = nan_from

    def forward(self, x, y):
        if self.calls in self.nan_at or (self.nan_from is not None and self.calls >= self.nan_from):
            x = x.clone()
            x[0, 0] = float("nan")
        self.calls += 1
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


class Data(torch.utils.data.Dataset):
    def __init__(self, n=512):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.randn(5, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def make_args(tmp_path, lr, *, steps=30, nan_filter=False, optim="sgd", scheduler="constant", **kw):
    kw.setdefault("save_strategy", "no")
    kw.setdefault("logging_steps", 1)
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, report_to=[], use_cpu=True,
        learning_rate=lr, per_device_train_batch_size=16, lr_scheduler_type=scheduler,
        optim=optim, disable_tqdm=True, logging_nan_inf_filter=nan_filter, seed=0, **kw,
    )


def train(tmp_path, lr, cb, *, steps=30, nan_at=None, nan_from=None, nan_filter=False, optim="sgd",
          scheduler="constant", extra_callbacks=(), optimizers=None, eval_dataset=None, **kw):
    args = make_args(tmp_path, lr, steps=steps, nan_filter=nan_filter, optim=optim, scheduler=scheduler, **kw)
    model = Tiny(nan_at, nan_from)
    callbacks = ([cb] if cb is not None else []) + list(extra_callbacks)
    extra = {} if optimizers is None else {"optimizers": optimizers(model)}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), eval_dataset=eval_dataset,
                                   callbacks=callbacks, **extra)
    trainer.train()
    return trainer


def full_loss(trainer):
    """The MSE of the trained model on the whole training set (not one noisy batch)."""
    data = Data()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(trainer.model.net(data.x), data.y))


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_healthy_run_reads_loss_lr_and_grad_norm(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10))
    trainer = train(tmp_path, 0.05, cb)
    assert cb.diagnosis.verdict == "healthy" and cb.detections == [] and cb.stopped_by is None
    assert cb.doctor.n_observations == 30
    assert cb.diagnosis.evidence["lr"] == pytest.approx(0.05)
    assert trainer.state.global_step == 30
    # the trainer's own logs are untouched: no lrkit keys
    assert all(not any(k.startswith("lrkit") for k in h) for h in trainer.state.log_history)


def test_nan_stops_training_when_asked(tmp_path, caplog):
    cb = LRDoctorCallback(doctor=Doctor(window=10), stop_on=("nan", "diverging"))
    with caplog.at_level(logging.WARNING, logger="lrkit.doctor"):
        trainer = train(tmp_path, 0.05, cb, nan_at=12)
    assert cb.stopped_by is not None and cb.stopped_by.verdict == "nan"
    assert trainer.state.global_step == cb.stopped_by.step < 30  # stopped right after the NaN step
    assert any("stopping training" in r.getMessage() for r in caplog.records)


def test_nan_without_stop_is_only_reported(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10))
    trainer = train(tmp_path, 0.05, cb, nan_at=12)
    assert trainer.state.global_step == 30
    assert cb.detections[0].verdict == "nan"


def test_too_high_lr_diverging_stops(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10), stop_on=("nan", "diverging"))
    trainer = train(tmp_path, 3.0, cb, steps=60)
    assert cb.stopped_by is not None and cb.stopped_by.verdict in ("diverging", "nan")
    assert trainer.state.global_step < 60


def test_nan_filter_is_warned_and_grad_norm_still_catches_it(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10), stop_on=("nan",))
    with pytest.warns(UserWarning, match="logging_nan_inf_filter=True"):
        train(tmp_path, 0.05, cb, nan_at=12, nan_filter=True)
    assert cb.stopped_by is not None and cb.stopped_by.verdict == "nan"
    assert "grad_norm" in cb.stopped_by.evidence and math.isnan(cb.stopped_by.evidence["grad_norm"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="stop_on must be a tuple of verdicts"):
        LRDoctorCallback(stop_on=("healthy",))
    with pytest.raises(ValueError, match="doctor must be an lrkit.doctor.Doctor"):
        LRDoctorCallback(doctor=3)


# ---------------------------------------------------------------------------------------- the guard


def test_guard_rescues_a_too_high_lr(tmp_path, caplog):
    clean = full_loss(train(tmp_path, 0.3, None, steps=150))  # the LR the guard will end up using
    lost = train(tmp_path, 3.0, LRDoctorCallback(doctor=Doctor(window=10)), steps=150)
    assert not full_loss(lost) < 10 * clean  # unguarded: lost (NaN or far above the clean run)
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5)
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        trainer = train(tmp_path, 3.0, cb, steps=150, nan_filter=True)
    guarded = full_loss(trainer)
    assert math.isfinite(guarded) and guarded < 2 * clean, (guarded, clean)
    assert [i.verdict for i in cb.interventions] == ["diverging"] and cb.lr_multiplier == pytest.approx(0.1)
    assert trainer.state.global_step == 150  # the clock is not rewound: the run went on to max_steps
    step = cb.interventions[0].step
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert lrs[step] == pytest.approx(3.0) and all(lrs[s] == pytest.approx(0.3) for s in range(step + 1, 151))
    lines = [r.getMessage() for r in caplog.records if r.name == "lrkit.guard"]
    assert len(lines) == 1 and f"diverging at step {step}" in lines[0]  # one line per intervention
    # the rolled-back problem is still on record, as the worst problem seen; and the stretch right
    # after the rollback at a 10x lower LR is not called flat ("raise the LR" just after lowering it)
    assert cb.worst.verdict == "diverging" and "diverging" in [d.verdict for d in cb.detections]
    assert "flat" not in [d.verdict for d in cb.detections]


def test_two_nan_batches_close_together_lower_the_lr_on_probation_and_it_comes_back(tmp_path):
    """The first NaN is forgiven, the second (soon after) halves the schedule; once the run has
    trained on and a newer snapshot is healthy, the schedule's LR is back (the guard's recovery reaches
    the Trainer's scheduler like its lowering)."""
    used = {}

    class Seen(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            used[state.global_step + 1] = optimizer.param_groups[0]["lr"]

    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=4)
    trainer = train(tmp_path, 0.05, cb, steps=80, nan_at=(30, 33), extra_callbacks=[Seen()], nan_filter=True)
    kept, lowered = cb.interventions
    assert (kept.new_multiplier, lowered.new_multiplier) == (1.0, pytest.approx(0.5))
    (back,) = cb.guard.recoveries
    assert cb.lr_multiplier == 1.0 and lowered.step < back < 80
    assert all(used[k] == pytest.approx(0.025) for k in range(lowered.step + 1, back + 1))
    ramp = [used[k] for k in range(back + 1, 81)]  # back up geometrically over 2K = 8 steps
    assert ramp == sorted(ramp) and 0.025 <= ramp[0] < 0.05 and ramp[8:] == [pytest.approx(0.05)] * len(ramp[8:])
    assert trainer.lr_scheduler.base_lrs == [pytest.approx(0.05)] * len(trainer.optimizer.param_groups)


@pytest.mark.parametrize("optim,storage", [("sgd", "memory"), ("adamw_torch", "disk")])
def test_guard_rolls_back_an_injected_nan_to_the_exact_snapshot(tmp_path, optim, storage):
    """The state after a rollback is bitwise the one recorded after the snapshot's step, and the run
    finishes with a finite loss close to a clean run's."""
    lr = 0.05 if optim == "sgd" else 0.01
    clean = full_loss(train(tmp_path, lr, None, steps=80, optim=optim))
    assert math.isnan(full_loss(train(tmp_path, lr, None, steps=80, optim=optim, nan_at=50)))  # unguarded: lost
    recorded, checked = {}, []

    class Recorder(transformers.TrainerCallback):
        def _record(self, state, model, optimizer):
            opt = getattr(optimizer, "optimizer", optimizer)
            recorded[state.global_step] = (
                params(model),
                {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(model.parameters()) if p in opt.state},
            )

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            self._record(state, model, optimizer)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            self._record(state, model, optimizer)

    def check(rec):  # called by the guard right after it restored the snapshot
        model, opt = trainer.model, trainer.optimizer.optimizer  # Accelerate's wrapper -> the torch optimizer
        want_params, want_state = recorded[rec.restored_to - 1]  # label L = the state after step L - 1
        got = params(model)
        assert all(torch.equal(got[k], want_params[k]) for k in want_params)
        got_state = {i: opt.state[p] for i, p in enumerate(model.parameters()) if p in opt.state}
        assert got_state.keys() == want_state.keys()
        assert all(torch.equal(got_state[i][k], v) for i in want_state for k, v in want_state[i].items())
        checked.append(rec.restored_to)

    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=3, storage=storage,
                          on_intervention=check)
    args = make_args(tmp_path, lr, steps=80, optim=optim, nan_filter=True)
    trainer = transformers.Trainer(model=Tiny(nan_at=50), args=args, train_dataset=Data(), callbacks=[cb, Recorder()])
    trainer.train()
    assert [i.verdict for i in cb.interventions] == ["nan"] and checked == [cb.interventions[0].restored_to]
    assert cb.interventions[0].step == 51  # forward number 50 is step 51
    assert 1 < checked[0] <= 51  # a rolling snapshot before the NaN step, not the initial state
    final = full_loss(trainer)
    assert math.isfinite(final) and final < 2 * clean + 0.02, (final, clean)
    assert all(torch.isfinite(t).all() for s in trainer.optimizer.optimizer.state.values() for t in s.values())
    assert trainer.state.global_step == 80


def test_guard_needs_the_nan_filter_and_does_not_warn_about_it(tmp_path):
    """With the (default) filter the NaN reaches the guard through grad_norm, and no warning is
    given; without it one NaN poisons the Trainer's loss sum for good, so guard=True refuses it."""
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train(tmp_path, 0.05, cb, steps=60, nan_at=20, nan_filter=True)
    assert not [w for w in caught if "logging_nan_inf_filter" in str(w.message)]
    assert [i.verdict for i in cb.interventions] == ["nan"]
    (found,) = [d for d in cb.detections if d.verdict == "nan"]
    assert found.step == 21 and math.isnan(found.evidence["grad_norm"])
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(v) for v in logged) and math.isfinite(full_loss(trainer))
    _, _, msg = _refused(tmp_path, "needs TrainingArguments.logging_nan_inf_filter=True", nan_filter=False)
    assert "NaN for the rest of the run" in msg


def test_with_its_defaults_a_nan_batch_before_the_first_snapshot_keeps_the_lr(tmp_path):
    """``LRDoctorCallback(guard=True)`` as users write it, under the Trainer's defaults (the NaN
    filter on, a linear schedule with warmup): the first snapshot comes after 50 good steps, and a
    NaN batch at step 30 of a run training well goes back to the start with the LR kept (it cut
    the LR 10x for good before) and ends as the clean run does."""
    clean = full_loss(train(tmp_path / "clean", 0.05, None, steps=150, scheduler="linear", warmup_steps=10,
                            nan_filter=True))
    cb = LRDoctorCallback(guard=True)
    trainer = train(tmp_path / "nan", 0.05, cb, steps=150, nan_at=30, scheduler="linear", warmup_steps=10,
                    nan_filter=True)
    # the Trainer numbers its first step 1: the initial snapshot is "before step 1"
    assert [(i.verdict, i.restored_to, i.new_multiplier) for i in cb.interventions] == [("nan", 1, 1.0)]
    # the run's account says what the guard did (kept the LR), not the doctor's "lower it 10x"
    (found,) = [d for d in cb.detections if d.verdict == "nan"]
    assert found.advice == ("rolled back to the state before step 1; LR multiplier now 1",)
    assert "lower the LR" not in cb.summary() and math.isnan(found.evidence["grad_norm"])
    # the 30 steps undone are not trained again (the Trainer's max_steps); a 10x lower LR (what
    # forgive_first=False does on every rollback, and what this rollback did before) costs more
    cut = LRDoctorCallback(guard=True, forgive_first=False)
    lowered = full_loss(train(tmp_path / "cut", 0.05, cut, steps=150, nan_at=30, scheduler="linear",
                              warmup_steps=10, nan_filter=True))
    assert cut.lr_multiplier == pytest.approx(0.1)
    assert full_loss(trainer) < min(lowered, 1.3 * clean), (full_loss(trainer), lowered, clean)


# each example is a real training run: no shrinking (a failure would cost minutes), the example is printed
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(
    lr_factor=st.floats(0.05, 0.9),
    scheduler=st.sampled_from(["linear", "cosine", "constant_with_warmup", "inverse_sqrt", "polynomial"]),
    nan_at=st.integers(8, 25),
)
def test_lr_after_a_rollback_is_the_factor_times_the_schedule(tmp_path, lr_factor, scheduler, nan_at):
    """From the step after the rollback on, every optimizer step uses lr_factor x the scheduler's
    lambda x the original base LR, and the Trainer logs that LR."""
    base, steps, used = 0.05, 40, {}

    class Seen(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            used[state.global_step + 1] = optimizer.param_groups[0]["lr"]  # the LR of this step

    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=4, lr_factor=lr_factor,
                          forgive_first=False)
    trainer = train(tmp_path, base, cb, steps=steps, nan_at=nan_at, scheduler=scheduler, warmup_steps=5,
                    extra_callbacks=[Seen()], nan_filter=True)
    assert len(cb.interventions) == 1
    at = cb.interventions[0].step
    sched = trainer.lr_scheduler
    groups = trainer.optimizer.param_groups  # the Trainer makes two: with and without weight decay
    assert sched.base_lrs == [pytest.approx(base * lr_factor)] * len(groups)
    assert all(g["initial_lr"] == pytest.approx(base * lr_factor) for g in groups)
    lam = sched.lr_lambdas[0]
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    for s in range(1, steps + 1):  # step s runs after s - 1 scheduler steps
        want = base * lam(s - 1) * (lr_factor if s > at else 1.0)
        assert used[s] == pytest.approx(want, rel=1e-9, abs=1e-15), s
        assert logged[s] == pytest.approx(want, rel=1e-9, abs=1e-15), s


def test_max_retries_exhausted_raises_guard_gave_up(tmp_path, caplog):
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, max_retries=2)
    args = make_args(tmp_path, 0.05, steps=60, nan_filter=True)
    model = Tiny(nan_from=25)  # broken from forward 25 on: no LR can fix it
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb])
    with caplog.at_level(logging.WARNING), pytest.raises(GuardGaveUp, match="gave up at step 28") as info:
        trainer.train()
    assert [i.retry for i in cb.interventions] == [1, 2] and len(info.value.interventions) == 2
    assert all(i.restored_to == info.value.restored_to for i in cb.interventions)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # left on the last good state
    assert any(r.levelno == logging.ERROR and "gave up" in r.getMessage() for r in caplog.records)
    assert trainer.state.global_step == 28 < 60


# ------------------------------------------------------------------------- what the guard refuses


def _refused(tmp_path, match, **kw):
    kw.setdefault("nan_filter", True)
    before = params(Tiny())
    cb = LRDoctorCallback(guard=True)
    with pytest.raises(ValueError, match=match) as info:
        trainer = train(tmp_path, 0.05, cb, **kw)
        pytest.fail(f"not refused; trained {trainer.state.global_step} steps")
    return cb, before, str(info.value)


def test_guard_refuses_a_scheduler_it_cannot_lower(tmp_path):
    model_box = []

    def plateau(model):
        model_box.append(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=10)

    cb, before, msg = _refused(tmp_path, "needs a torch.optim.lr_scheduler.LambdaLR", optimizers=plateau)
    assert "got StepLR" in msg and "stop_on=('nan', 'diverging')" in msg and "resume_from_checkpoint" in msg
    after = params(model_box[0])
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused before the first step
    assert cb.interventions == []
    _, _, msg = _refused(tmp_path, "LambdaLR", scheduler="greedy", eval_strategy="steps",
                         eval_steps=10, eval_dataset=Data(64))
    assert "got GreedyLR" in msg


def test_guard_lowers_a_reduce_on_plateau_schedule_in_place(tmp_path):
    """``lr_scheduler_type="reduce_lr_on_plateau"`` multiplies the groups' LR itself: a rollback lowers
    that LR, and the plateau's own reductions go on from it."""
    plateau = dict(scheduler="reduce_lr_on_plateau", eval_strategy="steps", eval_steps=10, eval_dataset=Data(64),
                   label_names=["y"], lr_scheduler_kwargs={"patience": 2, "factor": 0.5})  # y: an eval_loss
    clean = full_loss(train(tmp_path, 0.3, None, steps=150, **plateau))
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5)
    trainer = train(tmp_path, 3.0, cb, steps=150, nan_filter=True, **plateau)
    guarded = full_loss(trainer)
    assert math.isfinite(guarded) and guarded < 2 * clean, (guarded, clean)
    assert [i.verdict for i in cb.interventions] == ["diverging"] and cb.lr_multiplier == pytest.approx(0.1)
    step = cb.interventions[0].step
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    after = [lrs[k] for k in sorted(lrs) if k > step]
    assert lrs[step] == pytest.approx(3.0)
    # from the lowered LR (0.3) on, the plateau's own halvings (patience 2; one may come with the rollback's
    # evaluation, which saw the blow-up): never above it, in steps of 2x
    assert all(a >= b for a, b in zip(after, after[1:])) and after[0] <= 0.3 * (1 + 1e-9)
    assert all(math.log2(0.3 / a) == pytest.approx(round(math.log2(0.3 / a))) for a in after)


def test_guard_refuses_when_nothing_is_logged(tmp_path):
    _refused(tmp_path, "logging_strategy='no'", logging_strategy="no")


def test_blockers_name_fsdp_and_deepspeed_in_real_training_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("FSDP_CPU_RAM_EFFICIENT_LOADING", raising=False)  # TrainingArguments(fsdp=...) sets it
    plain = make_args(tmp_path, 0.05)
    assert _guard_blockers(plain, Tiny()) == []
    fsdp = make_args(tmp_path, 0.05, fsdp=True)
    found = _guard_blockers(fsdp, Tiny())
    assert any(f.startswith("FSDP") for f in found), found
    with pytest.raises(ValueError, match=r"one process or plain DDP.*FSDP.*stop_on=\('nan', 'diverging'\)"):
        LRDoctorCallback(guard=True).on_init_end(fsdp, None, None, model=Tiny())
    LRDoctorCallback(guard=False).on_init_end(fsdp, None, None, model=Tiny())  # watching is fine anywhere


def _distributed_worker(rank, out):
    args = transformers.TrainingArguments(output_dir=out, use_cpu=True, report_to=[], save_strategy="no", max_steps=2)
    result = {"world_size": args.world_size}
    try:
        # plain DDP: the doctor's guard and the autopilot's take it (tests/test_ddp_transformers.py trains both)
        transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[LRDoctorCallback(guard=True)])
        from lrkit.integrations.transformers.autopilot import AutopilotCallback

        cb = AutopilotCallback(guard=True)
        trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb])
        inner = trainer.create_optimizer()
        cb._check(args, trainer.model, inner, torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1.0))
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available in this build")
def test_the_doctors_and_the_autopilots_guards_take_a_two_process_ddp_run(tmp_path):
    for result in run_env_ranks(_distributed_worker, tmp_path):
        assert result["world_size"] == 2
        assert result["error"] is None


@settings(max_examples=25, deadline=None)
@given(bad=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(float("nan"))))
def test_guard_arguments_are_validated(bad):
    with pytest.raises(ValueError, match="lr_factor must be a number in"):
        LRDoctorCallback(guard=True, lr_factor=bad)


def test_bad_guard_arguments():
    with pytest.raises(ValueError, match="guard must be True or False"):
        LRDoctorCallback(guard=1)
    with pytest.raises(ValueError, match="snapshot_every must be an int >= 1"):
        LRDoctorCallback(guard=True, snapshot_every=0)
    with pytest.raises(ValueError, match="max_retries must be an int >= 1"):
        LRDoctorCallback(guard=True, max_retries=0)
    with pytest.raises(ValueError, match=r"stop_on and act_on share \['nan'\]"):
        LRDoctorCallback(guard=True, stop_on=("nan", "flat"))
    LRDoctorCallback(guard=True, stop_on=("flat",))  # a verdict the guard does not act on may stop the run


@pytest.mark.parametrize("module", [hf_integration, hf_skips])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_a_checkpoint_saved_after_a_rollback_resumes_with_the_lowered_lr(tmp_path):
    """The scheduler's state_dict carries the lowered base_lrs and the callback's state."""
    def run(steps, cb, **kw):
        args = make_args(tmp_path, 0.1, steps=steps, nan_filter=True, scheduler="linear", save_strategy="steps",
                         save_steps=40)
        trainer = transformers.Trainer(model=Tiny(nan_at=20), args=args, train_dataset=Data(), callbacks=[cb])
        trainer.train(**kw)
        return trainer

    first = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, forgive_first=False)
    run(60, first)  # the linear schedule decays to 0 at step 60; the NaN comes at step 21
    assert first.lr_multiplier == pytest.approx(0.1)
    second = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, forgive_first=False)
    trainer = run(60, second, resume_from_checkpoint=str(tmp_path / "checkpoint-40"))
    assert trainer.lr_scheduler.base_lrs == [pytest.approx(0.01)] * len(trainer.optimizer.param_groups)
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert logged[41] == pytest.approx(0.1 * 0.1 * (60 - 40) / 60)  # 0.1 x the schedule, from the checkpoint
    # the callback's state rode in the checkpoint's scheduler.pt: the records and the doctor go on
    saved = torch.load(tmp_path / "checkpoint-40" / "scheduler.pt", weights_only=True)["lrkit_doctor"]
    assert saved["guard"]["multiplier"] == pytest.approx(0.1) and saved["last_step"] == 40
    assert second.lr_multiplier == pytest.approx(0.1) and [i.verdict for i in second.interventions] == ["nan"]
    at_checkpoint = Doctor(window=10)
    at_checkpoint.load_state_dict(saved["doctor"])
    assert second.doctor.n_observations == at_checkpoint.n_observations + 20  # logs 41..60


def test_a_reduce_on_plateau_run_resumes_with_the_lowered_lr_applied_once(tmp_path):
    """Under ``ReduceLROnPlateau`` the lowered LR lives in the optimizer's groups, which the checkpoint
    saves: a resume goes on from it, without the guard's multiplier applied a second time."""
    def run(steps, cb, nan_at=None, **kw):
        args = make_args(tmp_path, 0.1, steps=steps, nan_filter=True, scheduler="reduce_lr_on_plateau",
                         save_strategy="steps", save_steps=40, eval_strategy="steps", eval_steps=20,
                         label_names=["y"])
        trainer = transformers.Trainer(model=Tiny(nan_at=nan_at), args=args, train_dataset=Data(), eval_dataset=Data(64),
                                       callbacks=[cb])
        trainer.train(**kw)
        return trainer

    first = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, forgive_first=False)
    run(60, first, nan_at=15)  # a NaN batch at step 16
    assert first.lr_multiplier == pytest.approx(0.1) and [i.verdict for i in first.interventions] == ["nan"]
    saved_lr = torch.load(tmp_path / "checkpoint-40" / "optimizer.pt", weights_only=True)["param_groups"][0]["lr"]
    assert saved_lr <= 0.1 * 0.1 * (1 + 1e-9)  # lowered by the rollback (and perhaps by the plateau since)
    second = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, forgive_first=False)
    trainer = run(60, second, resume_from_checkpoint=str(tmp_path / "checkpoint-40"))
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert logged[41] == pytest.approx(saved_lr)  # as saved: not lowered again
    assert second.lr_multiplier == pytest.approx(0.1) and [i.verdict for i in second.interventions] == ["nan"]


def test_evaluation_results_reach_the_doctor_with_the_next_log(tmp_path):
    doctor = RecordingDoctor()
    cb = LRDoctorCallback(doctor=doctor)
    trainer = train(tmp_path, 0.05, cb, eval_dataset=Data(64), eval_strategy="steps", eval_steps=10,
                    label_names=["y"])
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    carried = doctor.carried()
    assert [e[0] for e in evals][:2] == [10, 20]
    # each evaluation rides on the next training log, with its eval_* metrics (runtime included:
    # the doctor skips bookkeeping columns itself)
    assert [(s, v) for s, v, _ in carried] == [(s + 1, pytest.approx(v, rel=1e-6)) for s, v in evals if s < 30]
    assert all("eval_runtime" in m for _, _, m in carried)
    assert cb.diagnosis.verdict == "healthy"


@pytest.mark.parametrize("guard", [False, True])
def test_the_initial_loss_is_read_before_training_without_touching_the_run(tmp_path, guard):
    """With logging_steps > 1 the first log averages several steps: the callback reads the model's
    loss on the first training examples before step 1 (no gradient, the sampler and every RNG
    untouched) and gives it to the doctor as step 0. The run itself is bitwise the same."""
    def run(initial_loss):
        doctor = RecordingDoctor()
        cb = LRDoctorCallback(guard=guard, doctor=doctor, initial_loss=initial_loss)
        trainer = train(tmp_path, 0.05, cb, steps=30, nan_filter=True, logging_steps=5)
        return doctor, params(trainer.model)

    with_read, p1 = run(True)
    without, p2 = run(False)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)  # the read changed nothing in training
    assert [s for s, _, _ in with_read.seen] == [0, 5, 10, 15, 20, 25, 30]
    assert [s for s, _, _ in without.seen] == [5, 10, 15, 20, 25, 30]
    data, model = Data(), Tiny()
    with torch.no_grad():
        first = float(torch.nn.functional.mse_loss(model.net(data.x[:16]), data.y[:16]))
    assert with_read.history == [] and with_read.n_observations == 7
    start = with_read._track.first_window[0]  # what the doctor was given as step 0
    assert start == pytest.approx(first, rel=1e-6)


# ------------------------------------------------------------------ a bad batch skipped (skip_spikes)
class ShardTiny(Tiny):
    """Tiny (with ReLU: unbounded outputs) whose forward numbers in ``shard`` see garbage inputs
    (x50): a bad data shard."""

    def __init__(self, shard):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.shard = set(shard)
        self.train_calls = 0  # training forwards only (not the callback's initial-loss read)

    def forward(self, x, y):
        if self.training:
            if self.train_calls in self.shard:
                x = x * 50.0
            self.train_calls += 1
        return super().forward(x, y)


class Around(transformers.TrainerCallback):
    """The parameters before the first and after the last step of the shard."""

    def __init__(self, first, last):
        self.first, self.last, self.seen = first, last, {}

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.first:
            self.seen["before"] = params(model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.last + 1:
            self.seen["after"] = params(model)


@pytest.mark.parametrize("logging_steps", [1, 5])
def test_the_guard_skips_a_bad_shard_and_the_doctor_never_sees_it(tmp_path, logging_steps):
    shard = range(60, 66)  # forward numbers = steps 61..66 (global_step 60..65 before each)
    seen_losses = []

    class Loss(Doctor):
        def observe(self, step, loss, **kw):
            seen_losses.append(loss)
            return super().observe(step, loss, **kw)

    cb = LRDoctorCallback(guard=True, doctor=Loss(window=10), snapshot_every=10)  # skip_spikes: on with the guard
    around = Around(shard.start, shard.stop - 1)
    args = make_args(tmp_path, 0.05, steps=100, nan_filter=True, logging_steps=logging_steps)
    trainer = transformers.Trainer(model=ShardTiny(shard), args=args, train_dataset=Data(), callbacks=[cb, around])
    trainer.train()
    assert cb.guard.skipped_steps == [k + 1 for k in shard] and cb.interventions == []  # the Trainer's step numbers
    assert all(torch.equal(around.seen["before"][k], v) for k, v in around.seen["after"].items())  # nothing applied
    assert max(seen_losses) < 20  # the doctor saw no garbage loss (they are > 1000; the start is ~5)
    assert trainer.state.global_step == 100


def test_without_skipping_the_hf_guard_rolls_the_shard_back(tmp_path):
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, skip_spikes=False)
    args = make_args(tmp_path, 0.05, steps=100, nan_filter=True)
    trainer = transformers.Trainer(model=ShardTiny(range(60, 66)), args=args, train_dataset=Data(), callbacks=[cb])
    with contextlib.suppress(GuardGaveUp):
        trainer.train()
    assert cb.interventions and cb.guard.skipped_count == 0


def test_skip_spikes_arguments():
    with pytest.raises(ValueError, match="skip_spikes=True needs guard=True"):
        LRDoctorCallback(skip_spikes=True)
    with pytest.raises(ValueError, match="skip_spikes must be True, False or None"):
        LRDoctorCallback(guard=True, skip_spikes=1)
    assert LRDoctorCallback(guard=True).guard.skips and not LRDoctorCallback(guard=True, skip_spikes=False).guard.skips


class Exact(torch.nn.Module):
    """A linear model on (nearly) linear data: SGD drives its loss to the noise floor.
    Training forward number ``bad`` sees garbage inputs (x50)."""

    def __init__(self, bad):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(5, 1, bias=False)
        self.bad, self.train_calls = bad, 0

    def forward(self, x, y):
        if self.training:
            if self.train_calls == self.bad:
                x = x * 50.0
            self.train_calls += 1
        return {"loss": torch.nn.functional.mse_loss(self.lin(x), y)}


def test_a_skipped_step_in_a_log_of_a_converged_run_raises_no_alarm(tmp_path):
    """A log of 10 steps, one of them a skipped garbage batch (loss ~1e3) among losses ~1e-6: the
    doctor reads the trained steps' mean, not the log's mean minus the skipped loss (whose float32
    rounding, ~1e-4, would look like a rise of two decades, or come out negative)."""
    seen = []

    class Seen(Doctor):
        def observe(self, step, loss, **kw):
            seen.append((step, loss))
            return super().observe(step, loss, **kw)

    cb = LRDoctorCallback(guard=True, doctor=Seen(window=5), snapshot_every=5)
    args = make_args(tmp_path, 0.2, steps=150, nan_filter=True, logging_steps=10)
    data = Data()
    data.y = data.y + 1e-3 * torch.randn(data.y.shape, generator=torch.Generator().manual_seed(1))  # floor ~1e-6
    trainer = transformers.Trainer(model=Exact(bad=124), args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    assert cb.guard.skipped_steps == [125]
    assert cb.interventions == [] and cb.detections == []
    assert max(loss for step, loss in seen if step > 100) < 1e-4  # the log of steps 121-130 too
    with torch.no_grad():
        assert float(torch.nn.functional.mse_loss(trainer.model.lin(data.x), data.y)) < 1e-5


def test_at_the_trainers_default_logging_every_step_is_read():
    """logging_steps=500 (the default) over a 192-step run writes no training log: the callback was
    blind (a NaN LR from mid-run: 'healthy', the guard never acted, accuracy 0). It now reads each
    step's loss from the model's output (benchmarks/real_runs.py, variant d: the Trainer's defaults)."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import real_runs as rr

    transformers.logging.set_verbosity_error()
    spec = rr.RunSpec("hf", "nan", "d", 0)
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its evaluations
        watched = rr.run(spec, None, guard=False)
        guarded = rr.run(spec, None, guard=True)
    assert watched.live_verdict == "nan" and watched.final_accuracy == 0.0  # the weights are NaN
    assert guarded.interventions >= 1 and guarded.final_accuracy > 0.9, guarded
