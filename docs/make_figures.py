"""Regenerate the README's pictures: ``.venv/bin/python docs/make_figures.py``.

Writes docs/schedules.png (a few schedules), docs/finder.png (the range test on the built-in
digits example), docs/diagnose.png (the doctor on a real run whose LR is too high),
docs/tune.png (``lrkit tune`` on the built-in example, budget 4) and docs/autopilot.png (the
autopilot's report figure: the digits MLP given an LR scale 30x too high, and a NaN at step 300)
and docs/autopilot_overfit.png (the autopilot restarting a small-data run that overfits early).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrkit import diagnose, find_lr  # noqa: E402
from lrkit import schedules as S  # noqa: E402
from lrkit.examples.digits import digits_task  # noqa: E402
from lrkit.report.doctor_plot import plot_diagnosis  # noqa: E402

OUT = Path(__file__).resolve().parent


def schedules_figure() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    n = 1000
    S.warmup(S.cosine(base_lr=0.1, total_steps=900, min_lr=1e-3), warmup_steps=100).plot(
        ax=axes[0], steps=n, label="warmup(cosine(...), warmup_steps=100)")
    S.one_cycle(max_lr=0.1, total_steps=n).plot(ax=axes[0], steps=n, label="one_cycle(max_lr=0.1, ...)")
    S.warmup_stable_decay(base_lr=0.1, total_steps=n, warmup_steps=100, decay_steps=200, decay="1-sqrt").plot(
        ax=axes[0], steps=n, label="warmup_stable_decay(..., decay='1-sqrt')")
    S.warm_restarts(base_lr=0.1, first_cycle_steps=100, cycle_mult=2, m_mul=0.8).plot(
        ax=axes[1], steps=n, label="warm_restarts(cycle_mult=2, m_mul=0.8)")
    S.cyclic(base_lr=0.01, max_lr=0.1, step_size_up=100, mode="triangular2").plot(
        ax=axes[1], steps=n, label="cyclic(mode='triangular2')")
    axes[0].set_title("warmup + decay")
    axes[1].set_title("restarts and cycles")
    fig.tight_layout()
    fig.savefig(OUT / "schedules.png", dpi=100)
    plt.close(fig)


def finder_figure() -> None:
    task = digits_task(seed=0)
    result = find_lr(task.model, task.optimizer, task.loss_fn, task.train_loader,
                     val_loader=task.val_loader, progress=False)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    result.plot(ax=ax)
    ax.set_title("lrkit.find_lr on the built-in digits MLP (Adam)")
    fig.tight_layout()
    fig.savefig(OUT / "finder.png", dpi=100)
    plt.close(fig)


def diagnose_figure() -> None:
    """A real run: the digits MLP with SGD at a fine LR, then 30x too high from step 150."""
    task = digits_task(seed=0, optimizer="sgd")
    model = task.make_model()
    opt = task.make_optimizer(model, lr=0.05)
    rows, step = [], 0
    while step < 300:
        for x, y in task.make_train_loader():
            lr = 0.05 if step < 150 else 1.5
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            loss = task.loss_fn(model(x), y)
            loss.backward()
            opt.step()
            rows.append({"step": step, "loss": loss.item(), "lr": lr})
            step += 1
            if step == 300:
                break
    d = diagnose(rows)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    plot_diagnosis(rows, d, ax=ax)
    fig.tight_layout()
    fig.savefig(OUT / "diagnose.png", dpi=100)
    plt.close(fig)
    print(d.verdict, d.step, d.advice)


def tune_figure() -> None:
    """``lrkit tune`` with its defaults: the range test, then lrkit's search, 4 run-equivalents."""
    import functools

    import lrkit.tune
    from lrkit.tune._torch import builtin_target

    result = lrkit.tune.tune_torch(functools.partial(builtin_target, 0), train_steps=300, budget=4)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    result.plot(ax=ax)
    fig.tight_layout()
    fig.savefig(OUT / "tune.png", dpi=100)
    plt.close(fig)


class _TorchLoop:
    """The Trainer protocol over a torch model and optimizer; a subclass gives ``next_batch()``."""

    def __init__(self, model, opt, loss_fn, x_val, y_val):
        self.model, self.opt, self.loss_fn, self.x_val, self.y_val = model, opt, loss_fn, x_val, y_val

    def snapshot(self):
        return ({k: v.clone() for k, v in self.model.state_dict().items()}, self.opt.state_dict())

    def restore(self, s):
        self.model.load_state_dict(s[0])
        self.opt.load_state_dict(s[1])

    def evaluate(self):
        import torch

        with torch.no_grad():
            return float(self.loss_fn(self.model(self.x_val), self.y_val))

    def step(self, lr):
        x, y = self.next_batch()
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.item()


def _autopilot_plot(pilot, title: str, name: str) -> None:
    """The autopilot report's figure of ``pilot`` (a line at each intervention), saved as ``name``."""
    from lrkit.report.autopilot_report import history_records

    fig, ax = plt.subplots(figsize=(8, 4.2))
    plot_diagnosis(history_records(pilot), pilot.doctor.diagnosis, ax=ax)
    for e in pilot.interventions:
        ax.axvline(e.step, color="#cf222e", ls="--", lw=1.2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(OUT / name, dpi=100)
    plt.close(fig)
    print([e.message for e in pilot.interventions])


def autopilot_figure() -> None:
    """The figure of the autopilot's report: the digits MLP, Adam, its scale 30x too high, a NaN at 300."""
    import dataclasses
    import math

    import torch

    from lrkit.autopilot import fly

    task = digits_task(seed=0)

    class Trainer(_TorchLoop):  # the built-in example; the loss of step `nan_at` is NaN
        def __init__(self, nan_at=None):
            torch.manual_seed(0)
            model = task.make_model()
            super().__init__(model, task.make_optimizer(model, lr=1e-3), task.loss_fn, task.x_val, task.y_val)
            self.batches = task.make_train_loader()
            self.it, self.clock, self.nan_at = iter(self.batches), 0, nan_at

        def next_batch(self):
            try:
                return next(self.it)
            except StopIteration:
                self.it = iter(self.batches)
                return next(self.it)

        def step(self, lr):
            self.clock += 1
            loss = super().step(lr)
            return math.nan if self.clock == self.nan_at else loss

    own = fly(Trainer(), family="adam", train_steps=600, guard=False).pilot.plan  # the autopilot's own plan
    trainer = Trainer(nan_at=301)  # (with the plan given, fly runs no finder: clock = step + 1)
    pilot = fly(trainer, family="adam", train_steps=600, plan=dataclasses.replace(own, peak_lr=30 * own.peak_lr)).pilot
    _autopilot_plot(pilot, "the autopilot given an LR scale 30x too high, and a NaN at step 300", "autopilot.png")


def autopilot_overfit_figure() -> None:
    """The autopilot restarting a run that overfits early: an MLP on wine (130 training examples,
    standardised), SGD with momentum, 300 steps of batch 16 (37 epochs), validated every 30 steps,
    its batches given as a stream: the finder cannot tell the run's shape (lrkit.finder.regime),
    and the plan cannot expect the overfitting. (Told the shape, its plan does, and needs no restart.)"""
    import numpy as np
    import torch
    from sklearn.datasets import load_wine

    from lrkit.autopilot import fly

    d = load_wine()
    x = torch.tensor((d.data - d.data.mean(0)) / d.data.std(0), dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.as_tensor(np.random.default_rng(21).permutation(len(x)))
    x_val, y_val, x_train, y_train = x[perm[:48]], y[perm[:48]], x[perm[48:]], y[perm[48:]]

    class Trainer(_TorchLoop):  # shuffled batches of 16, validation on the 48 held-out wines
        def __init__(self):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
            super().__init__(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
                             torch.nn.functional.cross_entropy, x_val, y_val)
            self.gen, self.batches = torch.Generator().manual_seed(0), []

        def next_batch(self):
            if not self.batches:
                self.batches = list(torch.randperm(len(x_train), generator=self.gen).split(16))
            idx = self.batches.pop()
            return x_train[idx], y_train[idx]

        def data_shape(self):  # as TorchTrainer reports it for a DataLoader over these rows
            return {"steps_per_epoch": len(x_train) / 16, "examples": len(x_train),
                    "parameters": sum(p.numel() for p in self.model.parameters())}

    own = fly(Trainer(), family="sgd_momentum", train_steps=300, eval_every=30)
    print("own plan:", own.pilot.plan.peak_lr, "many epochs:", own.pilot.plan.many_epochs,
          "final validation loss:", own.final_val_loss)

    class Stream(Trainer):  # the same batches as a stream: the finder cannot tell the run's shape
        data_shape = None

    flight = fly(Stream(), family="sgd_momentum", train_steps=300, eval_every=30)
    print("as a stream:", flight.pilot.plan.peak_lr, "final validation loss:", flight.final_val_loss)
    _autopilot_plot(flight.pilot, "37 epochs of wine as a stream: overfitting early, restarted at a lower LR",
                    "autopilot_overfit.png")


if __name__ == "__main__":
    schedules_figure()
    finder_figure()
    diagnose_figure()
    tune_figure()
    autopilot_figure()
    autopilot_overfit_figure()
