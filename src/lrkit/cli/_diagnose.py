"""``lrkit diagnose FILE [--json] [--plot PNG] [--fail-on-problem]``.

Reads a training log (CSV, JSONL, JSON, TensorBoard event file or directory, Lightning
``metrics.csv``, Keras ``CSVLogger`` output), runs the LR doctor over it and reports the verdict.
Exit code 0 whatever the verdict (1 with ``--fail-on-problem`` when it is not healthy);
2 for bad input (unreadable or malformed log), with one line on stderr.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from lrkit.cli import app
from lrkit.cli._errors import CLIError


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
    return "\n".join(lines)


@app.command("diagnose")
def diagnose_cmd(
    file: Annotated[Path, typer.Argument(help="Training log: .csv, .jsonl, .json, TensorBoard event file or directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (verdict, step, detected_at, evidence, advice, message).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of the loss (and LR, val_loss) with the onset marked.")] = None,
    window: Annotated[Optional[int], typer.Option("--window", help="Doctor window (default: clip(n // 8, 5, 50) for n logged losses).")] = None,
    fail_on_problem: Annotated[bool, typer.Option("--fail-on-problem", help="Exit 1 when the verdict is not healthy.")] = False,
    loss_floor: Annotated[float, typer.Option("--loss-floor", help="A lower bound of the loss (default 0; e.g. the minimum of a negative log-likelihood).")] = 0.0,
    metric_mode: Annotated[Optional[list[str]], typer.Option("--metric-mode", help="NAME=max|min|ignore: how to judge a metric column (repeatable; default by name: *loss*, *error*, *mse*, ... are min, others max).")] = None,
) -> None:
    """Diagnose the learning rate of a finished (or running) training run from its log."""
    from lrkit.doctor import diagnose, read_log

    if not file.exists():
        raise CLIError(f"{file}: no such file or directory")
    if not math.isfinite(loss_floor):
        raise CLIError(f"--loss-floor must be a finite number, got {loss_floor}")
    records = read_log(file)
    losses = records.loss[records.has("loss")]
    finite = losses[np.isfinite(losses)]
    if finite.size and finite.min() < loss_floor:
        low = float(finite.min())
        at = int(records.step[records.has("loss")][np.isfinite(losses)][np.argmin(finite)])
        if loss_floor == 0.0:
            raise CLIError(
                f"{file}: the loss goes down to {low:.4g} (step {at}), below 0; "
                "pass --loss-floor with a lower bound of this loss (e.g. the minimum of a negative log-likelihood)"
            )
        raise CLIError(f"{file}: the loss {low:.4g} at step {at} is below --loss-floor {loss_floor:g}")
    modes: dict[str, str] = {}
    for item in metric_mode or []:
        name, sep, mode = item.partition("=")
        if not sep or not name.strip() or mode.strip() not in ("max", "min", "ignore"):
            raise CLIError(f"--metric-mode must be NAME=max, NAME=min or NAME=ignore, got {item!r}")
        modes[name.strip()] = mode.strip()
    kwargs = {"loss_floor": loss_floor} if window is None else {"window": window, "loss_floor": loss_floor}
    if modes:
        kwargs["metric_modes"] = modes
    diagnosis = diagnose(records, **kwargs)
    if plot is not None:
        if plot.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise CLIError(f"--plot: expected a .png, .pdf or .svg file name, got {str(plot)!r}")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from lrkit.report.doctor_plot import plot_diagnosis

        ax = plot_diagnosis(records, diagnosis)
        ax.figure.tight_layout()
        ax.figure.savefig(plot, dpi=110)
        plt.close(ax.figure)
    if as_json:
        out = diagnosis.to_dict()
        out["source"] = str(file)
        if plot is not None:
            out["plot"] = str(plot)
        typer.echo(json.dumps(out))
    else:
        typer.echo(format_diagnosis(diagnosis, str(file)))
        if plot is not None:
            typer.echo(f"  plot: {plot}")
    if fail_on_problem and not diagnosis.ok:
        raise typer.Exit(1)
