"""``lrkit tune``: search the learning rate with a few training runs (Optuna underneath).

Same TARGET as ``lrkit find`` (its dict must also hold ``val_loader``: the search minimises the
validation loss); without TARGET it tunes the built-in digits example. ``--json`` prints one JSON
object with ``best_lr``, ``best_value``, ``best_params``, ``n_trials``, ``counts``, ``strategy``,
``direction``, ``train_steps``, ``run_equivalents``, ``prior``, ``study_name``, ``trials`` (each
with ``number, lr, value, state, steps, params, reason, diverged, last_value``), ``target``,
``storage`` and, when asked for, ``plot`` and ``report``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from lrkit.cli import app
from lrkit.cli._errors import CLIError, check_output

_HELP = """Search the learning rate: a few training runs, bad ones stopped early.

Without TARGET, tunes the built-in example (an MLP on scikit-learn's digits). TARGET is the same
'path/to/file.py:function' as for 'lrkit find'; its dict must include val_loader. Every trial
builds a fresh model and optimizer from TARGET and trains --train-steps optimizer steps. Say how
long to search with --trials N or --budget RUNS (training-run equivalents; default 4; --strategy
grid or log without either tries each of its points once). With
--storage (sqlite:///study.db, postgresql://user@host/db) the same command continues an
interrupted study, and several processes or machines can work on one --study.
"""

STRATEGIES = ("lrkit", "tpe", "random", "log", "grid")
PRUNERS = ("auto", "lrkit", "doctor", "median", "halving", "hyperband", "none")


def _parse_values(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise CLIError(f"--values must be comma-separated learning rates > 0 like 1e-3,3e-3,1e-2, got {text!r}")
    return values


def _target(target: Optional[str], seed: int) -> tuple[Callable[..., dict], str, Any]:
    if target is None:
        import functools

        from lrkit.tune._torch import builtin_target

        return functools.partial(builtin_target, seed), "lrkit.examples.digits (built-in)", 300
    from lrkit.cli._find import resolve_target

    func = resolve_target(target)
    return func, target, None


class _Bar:
    """A rich progress bar across trials (finished trials, or run-equivalents of the budget)."""

    def __init__(self, total: float | None, unit: str, enabled: bool, train_steps: int) -> None:
        self.enabled, self.unit, self.train_steps = enabled, unit, train_steps
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]lrkit tune[/]"), BarColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self.task = self.progress.add_task("starting", total=total)

    def __enter__(self) -> "_Bar":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)

    def __call__(self, study: Any, frozen: Any) -> None:
        if self.progress is None:
            return
        from lrkit.tune._run import load_result
        from lrkit.tune.prior import Prior

        saved = study.user_attrs.get("lrkit_prior")
        r = load_result(study, strategy="", train_steps=self.train_steps,
                        prior=Prior.from_dict(saved) if saved else None)
        done = r.run_equivalents if self.unit == "runs" else r.n_trials
        best = f"best lr {r.best_lr:.3g} ({r.best_value:.4g})" if r.best_lr is not None else "no trial complete yet"
        unit = "runs" if self.unit == "runs" else "trials"
        self.progress.update(self.task, completed=done, description=f"{done:.2f} {unit} · {best}"
                             if unit == "runs" else f"{done} {unit} · {best}")


def _worker_args(target: Optional[str], opts: dict[str, Any]) -> list[str]:
    args = [sys.executable, "-m", "lrkit", "tune"] + ([target] if target else [])
    for flag, value in opts.items():
        if value is not None:
            args += [flag, str(value)]
    return args + ["--workers", "1", "--worker"]


@app.command("tune", help=_HELP)
def tune_command(
    target: Annotated[Optional[str], typer.Argument(help="path/to/file.py:function or package.module:function (default: built-in digits example)")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", help="Finished trials the study should have.")] = None,
    budget: Annotated[Optional[float], typer.Option("--budget", help="Training-run equivalents to spend (default 4 when --trials is not given; grid and log without either try each point once).")] = None,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", help="Optimizer steps of one run (default: 300 for the example, one epoch of train_loader for a TARGET).")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="lrkit (finder + line search + doctor), tpe, random, log (powers of ten) or grid.")] = "lrkit",
    pruner: Annotated[str, typer.Option("--pruner", help="auto, lrkit, doctor, median, halving, hyperband or none.")] = "auto",
    storage: Annotated[Optional[str], typer.Option("--storage", help="Where the study lives: sqlite:///study.db, postgresql://user@host/db, journal:PATH (default: in memory).")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (default 'lrkit-tune' with --storage).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes on this machine (needs a database storage; a temporary SQLite file otherwise).")] = 1,
    low: Annotated[Optional[float], typer.Option("--low", help="Lowest LR to search.")] = None,
    high: Annotated[Optional[float], typer.Option("--high", help="Highest LR to search.")] = None,
    values: Annotated[Optional[str], typer.Option("--values", help="Comma-separated LRs for --strategy grid.")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="Schedule of every run: constant, cosine, warmup_cosine, one_cycle, linear.")] = "constant",
    seed: Annotated[int, typer.Option("--seed", help="Seed for building the target and for the samplers.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (no progress bar).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Save the value-vs-LR plot to this PNG file.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a self-contained HTML report (report.html, tune.png) into this directory.")] = None,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="Run as an extra worker: no output.")] = False,
    heartbeat: Annotated[int, typer.Option("--heartbeat", hidden=True, help="Heartbeat interval in seconds (grace: 3x).")] = 10,
) -> None:
    if trials is not None and budget is not None:
        raise CLIError("give --trials or --budget, not both")
    if trials is not None and trials < 1:
        raise CLIError(f"--trials must be >= 1, got {trials}")
    if budget is not None and not budget > 0:
        raise CLIError(f"--budget must be > 0 training-run equivalents, got {budget}")
    if trials is None and budget is None and strategy not in ("grid", "log"):
        budget = 4.0  # grid and log without either try each of their points once
    if train_steps is not None and train_steps < 1:
        raise CLIError(f"--train-steps must be >= 1, got {train_steps}")
    if workers < 1:
        raise CLIError(f"--workers must be >= 1, got {workers}")
    if heartbeat < 1:
        raise CLIError(f"--heartbeat must be >= 1, got {heartbeat}")
    if strategy not in STRATEGIES:
        raise CLIError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if pruner not in PRUNERS:
        raise CLIError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    grid = _parse_values(values) if values is not None else None
    if grid is not None and strategy not in ("grid", "log"):
        raise CLIError(f"--values goes with --strategy grid (or log), got --strategy {strategy}")
    for name, v in (("--low", low), ("--high", high)):
        if v is not None and not v > 0:
            raise CLIError(f"{name} must be a learning rate > 0, got {v}")
    if low is not None and high is not None and low >= high:
        raise CLIError(f"--low must be below --high, got --low {low:g} >= --high {high:g}")
    check_output("--plot", plot, directory=False)
    check_output("--report", report, directory=True)
    from lrkit.tune._schedules import schedule_for

    schedule_for(schedule, 1.0, 10)
    if workers > 1 and storage is None:
        storage = f"sqlite:///{Path(tempfile.mkdtemp(prefix='lrkit-tune-')) / 'study.db'}"
    if storage is not None and study is None:
        study = "lrkit-tune"
    from lrkit.tune.storage import open_storage

    storage_obj = open_storage(storage, heartbeat_interval=heartbeat, grace_period=3 * heartbeat)  # fails fast
    func, target_name, default_steps = _target(target, seed)
    from lrkit.tune._torch import build_target

    if train_steps is None:
        train_steps = default_steps
        if train_steps is None:
            spec = build_target(func, seed)
            n = len(spec["train_loader"]) if hasattr(spec["train_loader"], "__len__") else 0
            if n < 1:
                raise CLIError("--train-steps is needed: the target's train_loader has no length")
            train_steps = n
    children: list[subprocess.Popen] = []

    def start_workers(study_obj: Any) -> None:
        opts = {"--trials": trials, "--budget": None if trials is not None else budget, "--train-steps": train_steps,
                "--strategy": strategy, "--pruner": pruner, "--storage": storage, "--study": study_obj.study_name,
                "--low": low, "--high": high, "--values": values, "--schedule": schedule, "--seed": seed,
                "--heartbeat": heartbeat}
        for _ in range(workers - 1):
            children.append(subprocess.Popen(_worker_args(target, opts), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True))

    show_bar = not json_out and not worker and sys.stderr.isatty()
    whole_grid = trials is None and budget is None
    bar = _Bar(None if whole_grid else float(budget) if trials is None else float(trials),
               "runs" if budget is not None else "trials", show_bar, train_steps)
    from lrkit.tune._torch import tune_torch

    try:
        with bar:
            bar.note("range test" if strategy == "lrkit" else "starting")
            result = tune_torch(func, train_steps=train_steps, n_trials=trials, budget=budget,
                                schedule=schedule, strategy=strategy, pruner=pruner, low=low, high=high,
                                values=grid, seed=seed, storage=storage_obj, study_name=study,
                                callbacks=[bar], on_start=start_workers if workers > 1 else None,
                                heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
    except KeyboardInterrupt:
        for child in children:
            child.terminate()
        where = (f"the study {study!r} is saved in {storage}: run the same command to continue"
                 if storage else "nothing was saved (in-memory study; pass --storage to be able to continue)")
        print(f"lrkit: interrupted; {where}", file=sys.stderr)
        raise typer.Exit(130) from None
    for child in children:
        _, err = child.communicate()
        if child.returncode not in (0, None):
            print(f"lrkit: a worker exited with code {child.returncode}: {' '.join(err.split())[-300:]}", file=sys.stderr)
    if children:  # the other workers' trials too
        from lrkit.tune._run import load_result

        result = load_result(result.study, strategy=strategy, train_steps=train_steps,
                             prior=_prior_of(result))
    if worker:
        return
    _output(result, target_name, storage, json_out, plot, report, seed=seed, study=study)


def _prior_of(result: Any) -> Any:
    from lrkit.tune.prior import Prior

    return Prior.from_dict(result.prior) if result.prior else None


def _output(result: Any, target_name: str, storage: Optional[str], json_out: bool, plot: Optional[Path],
            report: Optional[Path], *, seed: Optional[int] = None, study: Optional[str] = None) -> None:
    written: dict[str, str] = {}
    if plot is not None:
        from lrkit.report.tune_plot import tune_png

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(tune_png(result))
        written["plot"] = str(plot)
    if report is not None:
        from lrkit.report.tune_plot import tune_png, tune_report_html

        report.mkdir(parents=True, exist_ok=True)
        png = tune_png(result)
        (report / "tune.png").write_bytes(png)
        where = {"storage": _redacted(storage), "study": getattr(result.study, "study_name", study)} if storage else None
        page = tune_report_html(result, title=f"lrkit tune: {target_name}", png=png, seed=seed, extra=where)
        (report / "report.html").write_text(page, encoding="utf-8")
        written["report"] = str(report / "report.html")
    if json_out:
        payload = result.to_dict()
        payload.update({"target": target_name, "storage": _redacted(storage), **written})
        typer.echo(json.dumps(payload, allow_nan=False))
        return
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"target: {target_name}", highlight=False)
    console.print(result)
    console.print(result.summary(), highlight=False)
    if storage:
        console.print(f"study {result.study.study_name!r} in {_redacted(storage)} (run the same command to continue)",
                      highlight=False)
    for key, path in written.items():
        console.print(f"{key}: {path}", highlight=False)


def _redacted(storage: Optional[str]) -> Optional[str]:
    if storage is None:
        return None
    from lrkit.tune.storage import _redact

    return _redact(storage)
