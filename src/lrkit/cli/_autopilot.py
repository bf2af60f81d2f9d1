"""``lrkit autopilot``: train a PyTorch target with no learning rate given.

TARGET is the same task as ``lrkit find``'s (``path/to/file.py:function`` or
``package.module:function`` returning ``model``, ``optimizer``, ``loss_fn``, ``train_loader`` and
optionally ``val_loader``, ``step_fn``, ``accumulation_steps``, ``grad_clip_norm``, ``amp``); the
optimizer's LR is ignored. The autopilot runs the finder (at most 30% of the run), plans the peak
LR and a schedule for the optimizer family and the run's length, and trains ``--steps`` optimizer
steps under the doctor and the guard (:func:`lrkit.autopilot.fly`), validating every tenth of the
run. ``--shape SPEC`` gives your own schedule shape (:func:`lrkit.schedules.spec.parse_spec`; its
scale is ignored) and ``--peak-lr X`` fixes the scale (the finder still runs: the guard's fallback,
and what it watches above 4x its own peak). It prints the plan and every intervention, and on request writes the report
(``--report DIR``: :func:`lrkit.report.autopilot_report.write_autopilot_report`), the trained
weights (``--save FILE``: the model's ``state_dict``) and one JSON object (``--json``).

Keras, Lightning, Hugging Face and optax users have the autopilot as a callback or helper in their
own loop (see the README): this command drives a plain PyTorch target only.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lrkit.cli import app
from lrkit.cli._errors import CLIError, check_output

_HELP = """Train with no learning rate given: finder, schedule and guard in one run.

Without TARGET, trains the built-in example (an MLP on scikit-learn's digits, 600 steps). TARGET is
'path/to/file.py:function' or 'package.module:function' returning the same dict as for 'lrkit find'
(a PyTorch model, optimizer, loss_fn, train_loader, optionally val_loader, ...). Prints the plan
and every intervention; --report DIR writes a self-contained HTML page of the run. --shape SPEC
and --peak-lr X give your own schedule shape or scale.
"""


def _steps(steps: Optional[int], epochs: Optional[int], loader: Any, accumulation: int, builtin: bool) -> int:
    if steps is not None and epochs is not None:
        raise CLIError("give --steps or --epochs, not both")
    if steps is not None:
        if steps < 1:
            raise CLIError(f"--steps must be >= 1 (optimizer steps of the run), got {steps}")
        return steps
    if epochs is not None:
        if epochs < 1:
            raise CLIError(f"--epochs must be >= 1, got {epochs}")
        try:
            n = len(loader)
        except TypeError:
            raise CLIError("--epochs needs a train_loader with a len(); this one has none: pass --steps N") from None
        return epochs * max(1, math.ceil(n / max(1, accumulation)))
    if builtin:
        return 600
    raise CLIError("pass --steps N (optimizer steps of the run) or --epochs N: the autopilot plans the "
                   "schedule for the run's length")


class _Bar:
    """A rich progress bar on stderr (a terminal only): the finder's steps (at most 30% of the run),
    then the run's, with the latest loss."""

    def __init__(self, train_steps: int, enabled: bool) -> None:
        self.train_steps, self.enabled, self.progress, self.task = train_steps, enabled, None, None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            import random

            state = random.getstate()  # rich draws on Python's random when first imported
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            random.setstate(state)
            console = Console(stderr=True)
            if console.is_terminal:
                self.progress = Progress(TextColumn("[bold]lrkit autopilot[/] {task.description}"), BarColumn(),
                                         MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                         TimeRemainingColumn(), console=console, transient=True)
                self.progress.start()
                self.task = self.progress.add_task("finding the LR", total=math.ceil(0.3 * self.train_steps), loss="-")
        return self

    def training(self) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description="training", total=self.train_steps, completed=0)

    def trainer_step(self, lr: float, loss: float) -> None:
        """After every trainer step (the finder's and the run's): :func:`lrkit.integrations._progress.watched`'s hook."""
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=f"{loss:.4g}")

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command("autopilot", help=_HELP)
def autopilot_command(
    target: Annotated[Optional[str], typer.Argument(help="path/to/file.py:function or package.module:function (default: built-in digits example)")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps of the run (the built-in example: 600).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Or the run's length in epochs of train_loader (it needs a len()).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a self-contained HTML report (report.html) into this directory.")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Save the trained model's state_dict to this file (torch.save).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (plan, events, final validation loss, steps, paths written).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for torch/numpy/random before building the target, and for the finder.")] = 0,
    shape: Annotated[Optional[str], typer.Option("--shape", help="Your schedule shape as a spec (e.g. 'cosine(base_lr=1, total_steps=600)'); its scale is ignored, the autopilot sets it.")] = None,
    peak_lr: Annotated[Optional[float], typer.Option("--peak-lr", help="Fix the peak LR yourself; the finder still runs (the guard's fallback and what it watches).")] = None,
    storage_dir: Annotated[Optional[Path], typer.Option("--storage-dir", help="Keep the guard's snapshots (up to six copies of model and optimizer) on disk, in a run directory under this one deleted at the end, instead of in memory.")] = None,
) -> None:
    from lrkit.cli._find import _seed_everything, _their_errors, load_target

    if peak_lr is not None and not (math.isfinite(peak_lr) and peak_lr > 0):
        raise CLIError(f"--peak-lr must be a finite number > 0, got {peak_lr}")
    user_shape = None
    if shape is not None:
        from lrkit.schedules.spec import parse_spec

        try:
            user_shape = parse_spec(shape)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"--shape: {exc}") from None
    for name, path in (("--report", report), ("--save", save), ("--storage-dir", storage_dir)):
        check_output(name, path, directory=name != "--save")
    if target is None:
        from lrkit.examples.digits import digits_task

        _seed_everything(seed)
        spec, target_name = digits_task(seed=seed).as_target(), "lrkit.examples.digits (built-in)"
    else:
        spec, target_name = load_target(target, seed=seed), target
    if spec.get("framework", "torch") != "torch":
        raise CLIError(f"{target_name} is a {spec['framework']} task; lrkit autopilot trains PyTorch targets "
                       "(Keras, optax: use their autopilot callback/helper in your loop, see the README)")
    from lrkit.autopilot import AutopilotError, check_optimizer, fly, plan_for
    from lrkit.doctor.guard import GuardGaveUp
    from lrkit.integrations.torch.autopilot import check_no_scheduler
    from lrkit.integrations._progress import Watched  # the trainer, each step reported to the bar
    from lrkit.integrations.torch.trainer import TorchTrainer

    accumulation = int(spec.get("accumulation_steps") or 1)
    train_steps = _steps(steps, epochs, spec["train_loader"], accumulation, builtin=target is None)
    try:
        family = check_optimizer(spec["optimizer"])
        check_no_scheduler(spec["optimizer"], where="lrkit autopilot")
    except AutopilotError as exc:
        raise CLIError(str(exc)) from None
    with _their_errors("building the trainer failed on your model, loss or data"):
        trainer = TorchTrainer(spec["model"], spec["optimizer"], spec["loss_fn"], spec["train_loader"],
                               val_loader=spec.get("val_loader"), step_fn=spec.get("step_fn"),
                               accumulation_steps=accumulation, grad_clip_norm=spec.get("grad_clip_norm"),
                               amp=bool(spec.get("amp", False)))
    try:
        with _Bar(train_steps, enabled=True) as bar, _their_errors("training failed in your model, loss or data"):
            counted = Watched(trainer, bar)
            plan, _ = plan_for(counted, family=family, train_steps=train_steps, shape=user_shape, peak_lr=peak_lr,
                               seed=seed)
            bar.training()
            flight = fly(counted, family=family, train_steps=train_steps, plan=plan, seed=seed,
                         storage="memory" if storage_dir is None else "disk", storage_dir=storage_dir)
    except GuardGaveUp as exc:
        typer.echo(f"lrkit: the run was lost: {exc}", err=True)
        raise typer.Exit(1) from None
    except AutopilotError as exc:  # NotTrainable included: said before training
        raise CLIError(str(exc)) from None
    pilot = flight.pilot
    final = flight.val_losses[-1][1] if flight.val_losses else None
    written: dict[str, str] = {}
    if report is not None:
        from lrkit.report.autopilot_report import write_autopilot_report

        written["report"] = str(write_autopilot_report(pilot, report, title=f"lrkit autopilot: {target_name}",
                                                       command=" ".join(["lrkit", *sys.argv[1:]]), seed=seed))
    if save is not None:
        import torch

        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(spec["model"].state_dict(), save)
        written["save"] = str(save)
    if json_out:
        payload = {"target": target_name, "plan": pilot.plan.to_dict(), "events": [e.to_dict() for e in pilot.events],
                   "final_val_loss": final, "train_steps": train_steps,
                   "finder_steps": pilot.plan.finder_cost_steps, **written}
        typer.echo(json.dumps(payload, allow_nan=False, default=lambda v: None))
        return
    typer.echo(f"target: {target_name}")
    typer.echo(pilot.report())
    if final is not None:
        typer.echo(f"final validation loss {final:.4g} after {train_steps} steps "
                   f"(+{pilot.plan.finder_cost_steps} finder steps)")
    for key, path in written.items():
        typer.echo(f"{key}: {path}")
