"""``lrkit schedule SPEC``: evaluate a schedule spec, print a table or JSON, or draw a PNG."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lrkit.cli import app

__all__ = ["schedule_command", "format_table", "schedule_json"]


def format_table(schedule, steps: int, rows: int = 11) -> str:
    """A short human table: the spec, the horizon and the LR at a few evenly spaced steps."""
    import numpy as np

    picks = np.unique(np.linspace(0, steps - 1, min(rows, steps)).round().astype(np.int64))
    lrs = schedule(picks)
    total = schedule.total_steps
    lines = [schedule.to_spec(),
             f"total_steps: {total if total is not None else 'none (never ends)'}",
             f"{'step':>10}  learning rate"]
    lines += [f"{int(t):>10}  {lr:.6g}" for t, lr in zip(picks, lrs)]
    return "\n".join(lines)


def schedule_json(schedule, steps: int) -> dict:
    """``{"spec": ..., "steps": N, "total_steps": ..., "lrs": [N floats for steps 0..N-1]}``."""
    import numpy as np

    lrs = schedule(np.arange(steps))
    return {"spec": schedule.to_spec(), "steps": steps, "total_steps": schedule.total_steps,
            "lrs": [float(x) for x in lrs]}


def _write_png(schedule, steps: int, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lrkit.report.schedule_plot import plot_schedule

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    plot_schedule(schedule, fig.add_subplot(), steps=steps)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _check_finite(schedule, steps: int, chunk: int = 1_000_000) -> None:
    """Refuse a schedule whose LR is not a finite number at some step in ``0 .. steps-1``."""
    import numpy as np

    from lrkit.cli._errors import CLIError

    for start in range(0, steps, chunk):
        with np.errstate(over="ignore", invalid="ignore"):
            lrs = np.asarray(schedule(np.arange(start, min(steps, start + chunk))), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(lrs))
        if bad.size:
            raise CLIError(f"{schedule.to_spec()[:200]} gives the learning rate {lrs[bad[0]]} at step "
                           f"{start + int(bad[0])}; a learning rate must be a finite number (check the "
                           f"factors: their product overflows)")


def _epilog() -> str:
    from lrkit.schedules import SCHEDULE_CONSTRUCTORS

    return ("Schedules: " + ", ".join(SCHEDULE_CONSTRUCTORS) + ". Parameter names are those of "
            "lrkit.schedules (e.g. warmup(schedule=cosine(base_lr=0.1, total_steps=900), "
            "warmup_steps=100)); steps count optimizer steps.")


@app.command("schedule", epilog=_epilog())
def schedule_command(
    spec: Annotated[str, typer.Argument(help="A schedule spec, e.g. \"cosine(base_lr=0.1, total_steps=1000)\".")],
    steps: Annotated[Optional[int], typer.Option("--steps", "-n", help="Evaluate steps 0..N-1 (default: total_steps + 1).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the LR of every step.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG plot of the schedule to this file.")] = None,
) -> None:
    """Evaluate a learning-rate schedule: a table, JSON (--json) or a PNG (--plot FILE)."""
    from lrkit.cli._errors import CLIError
    from lrkit.schedules import parse_spec

    schedule = parse_spec(spec)
    if steps is None:
        if schedule.total_steps is None:
            raise CLIError(f"{schedule.name} has no end: pass --steps N")
        steps = schedule.total_steps + 1
    if steps <= 0:
        raise CLIError(f"--steps must be a whole number >= 1, got {steps}")
    if steps > 50_000_000:
        raise CLIError(f"--steps must be <= 50000000, got {steps}")
    _check_finite(schedule, steps)
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise CLIError(f"--plot: expected a .png file name, got {str(plot)!r}")
        if plot.parent and not plot.parent.exists():
            raise CLIError(f"--plot: directory {str(plot.parent)!r} does not exist")
        _write_png(schedule, steps, plot)
    if as_json:
        typer.echo(json.dumps(schedule_json(schedule, steps)))
    elif plot is None:
        typer.echo(format_table(schedule, steps))
    else:
        typer.echo(f"wrote {plot}")
