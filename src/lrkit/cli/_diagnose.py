"""``lrkit diagnose PATH [--loss NAME] [--json] [--plot PNG] [--fail-on-problem]``.

Reads a training log (CSV, JSONL, JSON, TensorBoard event file or directory, Lightning
``metrics.csv``, Keras ``CSVLogger`` output, a Hugging Face ``trainer_state.json``, the runs of an
MLflow store: ``mlflow.db``, ``mlruns/`` or a tracking URI such as ``sqlite:///mlflow.db`` or
``http://host:5000``; Weights & Biases runs: a ``wandb/`` folder, a run's directory or its
``run-<id>.wandb`` file; the console output of a Hugging Face ``Trainer`` or of Keras ``fit``, as a
``.out``/``.log`` file keeps it; ``-`` or a pipe for standard input), runs the LR doctor over it and reports
the verdict. A directory or store holding several runs (SummaryWriter runs in ``runs/``, Lightning
``version_N``, Trainer output directories, MLflow and W&B runs) gives one verdict per run, named;
``--run NAME`` picks one. ``--follow SECONDS`` watches a run still training
(:mod:`lrkit.cli._follow`). Exit code 0 whatever the verdict (1 with
``--fail-on-problem`` when a run is not healthy); 2 for bad input (unreadable or malformed log),
with one line on stderr. On a terminal a progress bar follows a large log (silent otherwise).
"""
from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import numpy as np
import typer

from lrkit.cli import app
from lrkit.cli._errors import CLIError, check_output


def format_diagnosis(diagnosis, source: str) -> str:
    """A short human summary (a few lines)."""
    lines = [f"{source}: {diagnosis.verdict.upper()}", f"  {diagnosis.message}"]
    if not diagnosis.ok:
        lines.append(f"  onset: step {diagnosis.step}; detected at step {diagnosis.detected_at}")
    for tip in diagnosis.advice:
        lines.append(f"  - {tip}")
    keys = ("loss_ratio_to_best", "grad_norm_ratio", "spike_fraction", "relative_progress", "noise_sigma",
            "metric_amplitude", "metric_net_progress", "metric_oscillation_ratio", "lr")
    ev = ", ".join(f"{k}={diagnosis.evidence[k]:.4g}" for k in keys if k in diagnosis.evidence)
    if ev:
        lines.append(f"  evidence: {ev}")
    k = diagnosis.evidence.get("rows_per_point")
    if k:
        lines.append(f"  read in blocks of {k:.0f} rows (a long log: onsets within {k:.0f} steps; --exact reads every row)")
    return "\n".join(lines)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """``progress(stage, fraction)`` drawing a rich bar on stderr when ``enabled`` (a terminal)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]lrkit diagnose[/] {task.description}"), BarColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("reading", total=1.0)
    with bar:
        yield lambda stage, fraction: bar.update(task, description=stage, completed=fraction)


def _check_floor(records: Any, source: str, loss_floor: float) -> None:
    losses = records.loss[records.has("loss")]
    finite = losses[np.isfinite(losses)]
    if finite.size and finite.min() < loss_floor:
        low = float(finite.min())
        at = int(records.step[records.has("loss")][np.isfinite(losses)][np.argmin(finite)])
        if loss_floor == 0.0:
            raise CLIError(
                f"{source}: the loss goes down to {low:.4g} (step {at}), below 0; "
                "pass --loss-floor with a lower bound of this loss (e.g. the minimum of a negative log-likelihood)"
            )
        raise CLIError(f"{source}: the loss {low:.4g} at step {at} is below --loss-floor {loss_floor:g}")


def _modes(metric_mode: Optional[list[str]]) -> dict[str, str]:
    modes: dict[str, str] = {}
    for item in metric_mode or []:
        name, sep, mode = item.partition("=")
        if not sep or not name.strip() or mode.strip() not in ("max", "min", "ignore"):
            raise CLIError(f"--metric-mode must be NAME=max, NAME=min or NAME=ignore, got {item!r}")
        modes[name.strip()] = mode.strip()
    return modes


def _tensorboard_without_tensorflow() -> None:
    """This process reads event files only: TensorBoard's reader uses its TF stub even where
    TensorFlow is installed (``tensorboard.compat.notf``), instead of importing all of TensorFlow --
    seconds, and its C++ log lines on stderr -- to read a few scalars."""
    import sys
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


@app.command("diagnose")
def diagnose_cmd(
    file: Annotated[str, typer.Argument(help="Training log: .csv, .jsonl, .json, TensorBoard event file, a console log (.out, .log), a directory of one or several runs, an MLflow store or tracking URI (mlflow.db, sqlite:///mlflow.db, http://host:5000), a W&B wandb/ folder or run, or - for standard input.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (verdict, step, detected_at, evidence, advice, message); for a directory of runs, {'source', 'runs': [...]}.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of the loss (and LR, val_loss) with the onset marked (one run).")] = None,
    window: Annotated[Optional[int], typer.Option("--window", help="Doctor window (default: chosen for the log; 5, row by row, for a short or per-epoch log).")] = None,
    fail_on_problem: Annotated[bool, typer.Option("--fail-on-problem", help="Exit 1 when a verdict is not healthy.")] = False,
    loss_floor: Annotated[float, typer.Option("--loss-floor", help="A lower bound of the loss (default 0; e.g. the minimum of a negative log-likelihood).")] = 0.0,
    metric_mode: Annotated[Optional[list[str]], typer.Option("--metric-mode", help="NAME=max|min|ignore: how to judge a metric column (repeatable; default by name: *loss*, *error*, *mse*, ... are min, others max).")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="The column or TensorBoard tag holding the training loss (default: loss, train_loss, train/loss, Loss/train, ...).")] = None,
    lr: Annotated[Optional[str], typer.Option("--lr", help="The column or tag holding the learning rate (default: lr, learning_rate, lr-<Optimizer>, ...).")] = None,
    val_loss: Annotated[Optional[str], typer.Option("--val-loss", help="The column or tag holding the validation loss (default: val_loss, eval_loss, Loss/test, ...).")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Feed every row to the doctor even in a log of more than 100,000 losses (read in blocks of rows otherwise: seconds instead of minutes; onsets dated to within a block, NaN steps exact).")] = False,
    chance_loss: Annotated[Optional[float], typer.Option("--chance-loss", help="The loss of a model that learned nothing (ln K for K balanced classes): a run that blew up and came back only to it is diverging. Default: from a Hugging Face checkpoint's config.json, else unknown.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a self-contained HTML report (report.html) into this directory: the verdict, its onset and advice on the plotted run (one run).")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Diagnose one run of a directory or MLflow store: its name as listed (or an MLflow run id).")] = None,
    follow: Annotated[Optional[float], typer.Option("--follow", help="Watch a run still training: read the log again every SECONDS and print a line when a verdict changes (JSON lines with --json); stops after --idle seconds without growth, or Ctrl-C.", metavar="SECONDS")] = None,
    idle: Annotated[float, typer.Option("--idle", help="With --follow: stop when no log has grown for this many seconds.", metavar="SECONDS")] = 600.0,
) -> None:
    """Diagnose the learning rate of a finished (or running) training run from its log."""
    _tensorboard_without_tensorflow()
    from lrkit.doctor import diagnose, read_log
    from lrkit.doctor.logs import Run, _no_runs, find_runs, read_run, select_run
    from lrkit.doctor.mlflow_store import store_target

    path = Path(file)
    uri = file != "-" and store_target(file) is not None
    if file != "-" and not uri and not path.exists():
        raise CLIError(f"{file}: no such file or directory")
    if run is not None and (file == "-" or not (uri or path.is_dir())):
        raise CLIError(f"--run picks one run of a directory or an MLflow store, and {file} is a single log")
    if not math.isfinite(loss_floor):
        raise CLIError(f"--loss-floor must be a finite number, got {loss_floor}")
    for opt, value in (("--loss", loss), ("--lr", lr), ("--val-loss", val_loss)):
        if value is not None and not value.strip():
            raise CLIError(f"{opt} must name a column or tag, got an empty name")
    if chance_loss is not None and not (math.isfinite(chance_loss) and chance_loss > loss_floor):
        raise CLIError(f"--chance-loss must be a finite number above --loss-floor ({loss_floor}), got {chance_loss}")
    if follow is not None:
        if not (math.isfinite(follow) and follow > 0):
            raise CLIError(f"--follow must be a number of seconds > 0, got {follow}")
        if not (math.isfinite(idle) and idle > 0):
            raise CLIError(f"--idle must be a number of seconds > 0, got {idle}")
        if file == "-":
            raise CLIError("--follow reads the log again and again, and standard input can be read once; pass its path")
        if plot is not None or report is not None:
            raise CLIError(f"--{'plot' if plot is not None else 'report'} draws a finished run; run it without --follow")
    if plot is not None and plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CLIError(f"--plot: expected a .png, .pdf or .svg file name, got {str(plot)!r}")
    check_output("--plot", plot, directory=False)
    check_output("--report", report, directory=True)
    kwargs: dict[str, Any] = {"loss_floor": loss_floor, "exact": exact}
    if chance_loss is not None:
        kwargs["chance_loss"] = chance_loss
    if window is not None:
        kwargs["window"] = window
    modes = _modes(metric_mode)
    if modes:
        kwargs["metric_modes"] = modes
    names = {"loss": loss, "lr": lr, "val_loss": val_loss}
    if follow is not None:
        _follow(file, path, uri, run, names, kwargs, follow, idle, as_json, fail_on_problem)
        return
    source = "<stdin>" if file == "-" else str(file)
    target: Optional[Run] = None  # one run of a directory or a store (--run, or the only one)
    if uri or (file != "-" and path.is_dir()):
        runs = find_runs(file)
        if not runs:
            raise CLIError(_no_runs(file))
        if run is not None:
            runs = [select_run(runs, run, file)]
        if len(runs) > 1:
            if plot is not None or report is not None:
                raise CLIError(f"--{'plot' if plot is not None else 'report'} draws one run, and {file} holds "
                               f"{len(runs)}; pick one with --run: " + ", ".join(r.name for r in runs[:3]))
            _diagnose_runs(file, runs, names, kwargs, as_json, fail_on_problem)
            return
        target = runs[0]
        if run is not None or target.store is not None:
            source = f"{file}: {target.name}"
    with _progress_bar(sys.stderr.isatty() and not as_json) as progress:
        if target is not None:
            records = read_run(target, progress=progress, **names)
        else:
            records = read_log(file if file == "-" else path, progress=progress, **names)
        _check_floor(records, source, loss_floor)
        diagnosis = diagnose(records, progress=progress, **kwargs)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from lrkit.report.doctor_plot import plot_diagnosis

        ax = plot_diagnosis(records, diagnosis)
        ax.figure.tight_layout()
        ax.figure.savefig(plot, dpi=110)
        plt.close(ax.figure)
    if report is not None:
        from lrkit.report.html import diagnosis_report_html

        report.mkdir(parents=True, exist_ok=True)
        (report / "report.html").write_text(diagnosis_report_html(records, diagnosis, source=source), encoding="utf-8")
    if as_json:
        out = diagnosis.to_dict()
        out["source"] = source
        if plot is not None:
            out["plot"] = str(plot)
        if report is not None:
            out["report"] = str(report / "report.html")
        typer.echo(json.dumps(out))
    else:
        typer.echo(format_diagnosis(diagnosis, source))
        if plot is not None:
            typer.echo(f"  plot: {plot}")
        if report is not None:
            typer.echo(f"  report: {report / 'report.html'}")
    if fail_on_problem and not diagnosis.ok:
        raise typer.Exit(1)


def _checked(name: str, read: Any, loss_floor: float) -> Any:
    """``read()``'s records with the loss-floor check of a one-run diagnosis, or the
    ``LogFormatError``/``CLIError`` that keeps the run unread."""
    from lrkit.doctor import LogFormatError

    try:
        records = read()
        _check_floor(records, name, loss_floor)
        return records
    except (LogFormatError, CLIError) as exc:
        return exc


def _follow(file: str, path: Path, uri: bool, run: Optional[str], names: dict[str, Any], kwargs: dict[str, Any],
            interval: float, idle: float, as_json: bool, fail_on_problem: bool) -> None:
    """``--follow``: the runs read again every ``interval`` seconds (:mod:`lrkit.cli._follow`)."""
    from lrkit.cli._follow import follow
    from lrkit.doctor import diagnose, read_log
    from lrkit.doctor.logs import find_runs, read_run, select_run

    floor = kwargs["loss_floor"]

    def read_all() -> dict[str, Any]:  # an unread run is said, and read again next time
        if not (uri or path.is_dir()):
            return {file: _checked(file, lambda: read_log(path, **names), floor)}
        runs = find_runs(file)  # again each time: a run started since (a new version_N) joins
        if run is not None:
            runs = [select_run(runs, run, file)]
        return {r.name: _checked(r.name, lambda r=r: read_run(r, **names), floor) for r in runs}

    last = follow(read_all, lambda records: diagnose(records, **kwargs), interval=interval, idle=idle,
                  as_json=as_json)
    if not as_json:
        typer.echo(f"{file}: stopped following; last verdicts:")
        for name, d in last.items():
            typer.echo(f"NOT READ {name}: {d}" if isinstance(d, Exception) else format_diagnosis(d, name))
    if fail_on_problem and any(isinstance(d, Exception) or not d.ok for d in last.values()):
        raise typer.Exit(1)


def _diagnose_runs(path: str, runs: list[Any], names: dict[str, Any], kwargs: dict[str, Any], as_json: bool,
                   fail_on_problem: bool) -> None:
    """One verdict per run of a directory; a run that cannot be read is reported and skipped."""
    from lrkit.doctor import diagnose
    from lrkit.doctor.logs import read_run

    results: list[dict[str, Any]] = []
    texts: list[str] = []
    problems = 0
    for run in runs:
        records = _checked(run.name, lambda: read_run(run, **names), kwargs["loss_floor"])
        if isinstance(records, Exception):
            problems += 1
            results.append({"run": run.name, "error": str(records)})
            texts.append(f"{run.name}: NOT READ\n  {records}")
            continue
        d = diagnose(records, **kwargs)
        problems += not d.ok
        results.append({"run": run.name, **d.to_dict()})
        texts.append(format_diagnosis(d, run.name))
    if as_json:
        typer.echo(json.dumps({"source": path, "runs": results}))
    else:
        typer.echo(f"{path}: {len(runs)} runs")
        typer.echo("\n".join(texts))
    if fail_on_problem and problems:
        raise typer.Exit(1)
