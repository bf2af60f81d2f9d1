"""``lrkit demo``: the main job on the built-in example, end to end.

1. runs the LR range test on an MLP over scikit-learn's digits (no download) and prints the
   suggestion next to the classic rules in a short table;
2. saves the loss-vs-LR plot with the suggestion marked, and a self-contained HTML report;
3. trains the example briefly (a one-cycle schedule) at the suggested LR and at the optimizer's
   rule-of-thumb default, over a few seeds, and shows the difference in validation loss and
   accuracy; the two schedules are plotted too;
4. trains it once more per seed with the autopilot and no LR at all (:func:`lrkit.autopilot.fly`:
   its own finder within 30% of the run, its schedule, its guard), with the finder's steps counted.
"""
from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lrkit.cli import app
from lrkit.cli._errors import check_output


def _trained(task_factory, lr: float, *, steps: int, seeds: list[int], schedule: str) -> dict[str, Any]:
    from lrkit.examples.digits import train

    runs = [train(task_factory(seed), lr, steps=steps, schedule=schedule) for seed in seeds]
    return {
        "lr": lr,
        "val_loss": statistics.median(r["val_loss"] for r in runs),
        "val_accuracy": statistics.median(r["val_accuracy"] for r in runs),
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "runs": len(runs),
    }


_QUIET = logging.getLogger("lrkit.demo.autopilot")  # the demo's autopilot runs: interventions counted, not logged
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _autopiloted(task_factory, *, steps: int, seeds: list[int]) -> dict[str, Any]:
    """Each seed's example trained by the autopilot (no LR given): its final validation loss and accuracy."""
    from lrkit.autopilot import check_optimizer, fly
    from lrkit.examples.digits import evaluate
    from lrkit.integrations.torch.trainer import TorchTrainer

    runs = []
    for seed in seeds:
        task = task_factory(seed)
        trainer = TorchTrainer(task.model, task.optimizer, task.loss_fn, task.train_loader, val_loader=task.val_loader)
        flight = fly(trainer, family=check_optimizer(task.optimizer), train_steps=steps, seed=seed, logger=_QUIET)
        loss, acc = evaluate(task, task.model)
        runs.append({"val_loss": loss, "val_accuracy": acc, "peak_lr": flight.pilot.plan.peak_lr,
                     "finder_steps": flight.pilot.plan.finder_cost_steps,
                     "plateau_halvings": sum(e.kind == "plateau" for e in flight.pilot.interventions),
                     "rollbacks": sum(e.kind == "rollback" and e.data.get("verdict") != "overfitting"
                                      for e in flight.pilot.interventions),
                     "restarts": sum(e.kind == "rollback" and e.data.get("verdict") == "overfitting"
                                     for e in flight.pilot.interventions),
                     "skipped": sum(e.kind == "skip" for e in flight.pilot.interventions)})
    return {
        "peak_lr": statistics.median(r["peak_lr"] for r in runs),
        "val_loss": statistics.median(r["val_loss"] for r in runs),
        "val_accuracy": statistics.median(r["val_accuracy"] for r in runs),
        "finder_steps": max(r["finder_steps"] for r in runs),
        "plateau_halvings": sum(r["plateau_halvings"] for r in runs),
        "rollbacks": sum(r["rollbacks"] for r in runs),
        "restarts": sum(r["restarts"] for r in runs),
        "skipped": sum(r["skipped"] for r in runs),
        "runs": len(runs),
    }


def run_demo(
    out: Path, *, steps: int, seeds: int, optimizer: str, progress: bool
) -> dict[str, Any]:
    """Run the demo; write the pictures under ``out``; return a JSON-ready summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrkit import schedules
    from lrkit.examples.digits import digits_task
    from lrkit.integrations.torch.trainer import find_lr
    from lrkit.report.html import demo_report_html

    out.mkdir(parents=True, exist_ok=True)
    task = digits_task(seed=0, optimizer=optimizer)
    result = find_lr(
        task.model, task.optimizer, task.loss_fn, task.train_loader,
        val_loader=task.val_loader, progress=progress,
        train_steps=steps,  # the comparison runs' length: the finder spends at most 30% of it
    )
    fig, ax = plt.subplots(figsize=(7, 4.2))
    result.plot(ax=ax)
    ax.set_title(f"LR range test: digits MLP ({optimizer})")
    fig.tight_layout()
    fig.savefig(out / "finder.png", dpi=110)
    plt.close(fig)

    seed_list = list(range(seeds))
    factory = lambda seed: digits_task(seed=seed, optimizer=optimizer)  # noqa: E731
    at_suggestion = _trained(factory, result.suggestion, steps=steps, seeds=seed_list, schedule="one_cycle")
    at_default = _trained(factory, task.default_lr, steps=steps, seeds=seed_list, schedule="one_cycle")
    autopilot = _autopiloted(factory, steps=steps, seeds=seed_list)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    schedules.one_cycle(max_lr=result.suggestion, total_steps=steps).plot(ax=ax, steps=steps, label="one_cycle at the suggestion")
    schedules.one_cycle(max_lr=task.default_lr, total_steps=steps).plot(ax=ax, steps=steps, label="one_cycle at the default")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "schedules.png", dpi=110)
    plt.close(fig)

    summary = {
        "suggestion": result.suggestion,
        "method": result.method,
        "band": list(result.band),
        "rules": result.rules,
        "uncertainty": result.details.get("uncertainty"),
        "finder_steps": int(result.details.get("range_test_steps", 0)) + int(result.details.get("verify_steps_used", 0)),
        "default_lr": task.default_lr,
        "optimizer": optimizer,
        "steps": steps,
        "at_suggestion": at_suggestion,
        "at_default": at_default,
        "autopilot": autopilot,
        "files": {"finder_plot": str(out / "finder.png"), "report": str(out / "report" / "report.html"),
                  "schedules_plot": str(out / "schedules.png")},
    }
    # the page shows what the terminal shows: the finder, and training at its suggestion vs the default
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    png = (out / "finder.png").read_bytes()
    (report_dir / "finder.png").write_bytes(png)
    (report_dir / "report.html").write_text(
        demo_report_html(result, summary, png=png, schedules_png=(out / "schedules.png").read_bytes(), seed=0),
        encoding="utf-8")
    return summary


def format_demo(summary: dict[str, Any]) -> str:
    """The human summary of :func:`run_demo` as plain text (two small tables)."""
    labels = {
        "steepest": "torch-lr-finder steepest", "steepest_lightning": "Lightning steepest",
        "valley": "fastai valley", "minimum_div_10": "fastai minimum/10",
        "lrkit_rule": "lrkit, curve only", "lr_at_min_loss": "LR at the loss minimum",
    }
    unc = summary.get("uncertainty") or {}
    lines = [
        f"LR range test on the digits MLP ({summary['optimizer']}):",
        f"  {'lrkit suggestion':<26}{summary['suggestion']:.3g}   ({summary['method']}; band "
        f"{summary['band'][0]:.3g} .. {summary['band'][1]:.3g})",
    ]
    if summary.get("finder_steps"):
        spent = summary["finder_steps"]
        lines.append(f"  {'finder cost':<26}{spent} steps ({spent / summary['steps']:.0%} of one {summary['steps']}-step run)")
    if unc.get("rules_spread_decades") is not None:
        lines.append(f"  {'classic rules disagree by':<26}{unc['rules_spread_decades']:.2f} decades")
    for name, value in summary["rules"].items():
        lines.append(f"  {labels.get(name, name):<26}{'-' if value is None else format(value, '.3g')}")
    lines.append(f"  {'rule of thumb':<26}{summary['default_lr']:.3g}")
    s, d = summary["at_suggestion"], summary["at_default"]
    lines += [
        "",
        f"Training {summary['steps']} steps with a one-cycle schedule (median of {s['runs']} seeds):",
        f"  {'peak LR':<22}{'val loss':>10}{'val acc':>10}{'diverged':>10}",
        f"  {'suggested ' + format(s['lr'], '.3g'):<22}{s['val_loss']:>10.4f}{s['val_accuracy']:>10.3f}{s['diverged']:>10}",
        f"  {'default ' + format(d['lr'], '.3g'):<22}{d['val_loss']:>10.4f}{d['val_accuracy']:>10.3f}{d['diverged']:>10}",
        f"  difference: val loss {s['val_loss'] - d['val_loss']:+.4f}, accuracy {s['val_accuracy'] - d['val_accuracy']:+.3f}",
    ]
    a = summary.get("autopilot")
    if a is not None:
        lines += [
            "",
            f"The autopilot, no LR given ({summary['steps']} steps, its own finder within 30% of the run and "
            f"its schedule; median of {a['runs']} seeds):",
            f"  {'peak LR ' + format(a['peak_lr'], '.3g'):<22}{a['val_loss']:>10.4f}{a['val_accuracy']:>10.3f}"
            f"   (finder {a['finder_steps']} steps; {_count(a['plateau_halvings'], 'LR halving')} on plateaus, "
            f"{_count(a['rollbacks'], 'rollback')}"
            + (f", {_count(a['restarts'], 'restart')} at a lower LR on early overfitting" if a.get("restarts") else "")
            + (f", {_count(a['skipped'], 'bad batch', 'bad batches')} skipped" if a.get("skipped") else "")
            + ", over all seeds)",
        ]
    lines += [
        "",
        "Wrote " + ", ".join(summary["files"].values()),
    ]
    return "\n".join(lines)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Directory for the plots and the HTML report.")] = Path("demo-out"),
    steps: Annotated[int, typer.Option(min=10, max=100_000, help="Training steps of each comparison run.")] = 300,
    seeds: Annotated[int, typer.Option(min=1, max=20, help="Seeds per comparison run.")] = 3,
    optimizer: Annotated[str, typer.Option(help="Optimizer of the example: 'adam' or 'sgd' (momentum 0.9).")] = "adam",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Run the LR finder on the built-in digits example, then train at the suggestion and at the default."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"--optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    check_output("--out", out, directory=True)
    summary = run_demo(out, steps=steps, seeds=seeds, optimizer=optimizer,
                       progress=sys.stderr.isatty() or not as_json)
    print(json.dumps(summary) if as_json else format_demo(summary))


def _count(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun, singular for 1.

    Example:
        >>> _count(1, "rollback"), _count(2, "bad batch", "bad batches")
        ('1 rollback', '2 bad batches')
    """
    return f"{n} {one if n == 1 else (many or one + 's')}"
