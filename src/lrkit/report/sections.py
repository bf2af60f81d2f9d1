"""The pieces of lrkit's HTML reports: each function returns one section as an HTML string.

A report page (:func:`lrkit.report.html.report_page`) is a title plus a list of these sections, so
each command assembles the page that answers its questions -- what LR, why, how sure, how to apply
it, and on what run (versions, command, seed, date). Every value from the outside is escaped;
images are inline ``data:`` PNGs, so a page is one self-contained file. Only :func:`figure_section`
and the plotting helpers import matplotlib (when called).

Example:
    >>> html = run_section(command="lrkit find task.py:task", seed=0)
    >>> "lrkit find task.py:task" in html and "numpy" in html
    True
"""
from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import importlib.metadata
import math
import platform
import sys
from typing import Any, Iterable, Mapping

from lrkit.finder.result import SCORED_BY_SAMPLE, SCORED_BY_VALIDATION

__all__ = ["apply_section", "candidates_section", "comparison_section", "diagnosis_section", "esc",
           "figure_section", "finder_sections", "fmt", "png_figure", "run_section", "table"]

#: packages whose versions a report lists when installed
_PACKAGES = ("lrkit", "numpy", "torch", "keras", "jax", "optax", "lightning", "transformers", "optuna", "matplotlib")


def esc(value: Any) -> str:
    return _html.escape(str(value))


def fmt(x: Any) -> str:
    """A number for people: 4 significant digits; ``-`` for ``None``."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def table(rows: Iterable[Iterable[Any]], header: Iterable[str] | None = None, *, numeric_from: int = 1,
          table_id: str | None = None) -> str:
    """An HTML table; cells are escaped and numbers formatted by :func:`fmt`."""
    out = [f'<table id="{esc(table_id)}">' if table_id else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = [f'<td{" class=num" if j >= numeric_from else ""}>{esc(fmt(c))}</td>' for j, c in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def png_figure(png: bytes, alt: str, img_id: str | None = None) -> str:
    """An ``<img>`` holding ``png`` inline."""
    b64 = base64.b64encode(png).decode("ascii")
    ident = f' id="{esc(img_id)}"' if img_id else ""
    return f'<img{ident} alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def figure_section(title: str, draw, *, alt: str, img_id: str | None = None, size=(8, 4.2), note: str = "") -> str:
    """A section with a matplotlib drawing: ``draw(ax)`` draws on a fresh Axes."""
    from matplotlib.figure import Figure

    from lrkit.report.finder_plot import figure_png

    fig = Figure(figsize=size)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    body = png_figure(figure_png(fig), alt, img_id)
    return f"<h2>{esc(title)}</h2>\n{body}" + (f'\n<p class="muted">{esc(note)}</p>' if note else "")


# -- the run ---------------------------------------------------------------------------------
def _versions() -> list[tuple[str, str]]:
    rows = [("python", platform.python_version())]
    for name in _PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return rows


#: verdicts that say nothing is wrong with the LR (shown in green, the others in red)
_OK_VERDICTS = ("healthy", "converged")


def verdict_tag(verdict: Any, tag_id: str = "verdict") -> str:
    """The verdict in bold for a report's lead line, green when nothing is wrong (``class="ok"``).

    Example:
        >>> verdict_tag("healthy"), verdict_tag("diverging")
        ('<b id="verdict" class="ok">healthy</b>', '<b id="verdict">diverging</b>')
    """
    ok = ' class="ok"' if verdict in _OK_VERDICTS else ""
    return f'<b id="{tag_id}"{ok}>{esc(verdict)}</b>'


def run_section(*, command: str | None = None, seed: int | None = None, extra: Mapping[str, Any] | None = None,
                when: _dt.datetime | None = None) -> str:
    """What produced the page: the command, the seed, the date (UTC), the machine and the versions."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    command = command if command is not None else " ".join(["lrkit", *sys.argv[1:]])
    rows: list[list[Any]] = [["command", command], ["seed", seed], ["date", when.strftime("%Y-%m-%d %H:%M:%S UTC")],
                             ["machine", f"{platform.system()} {platform.machine()}"]]
    rows += [[k, v] for k, v in (extra or {}).items()]
    rows += [[f"version: {name}", version] for name, version in _versions()]
    return "<h2>Command, seed, date and versions</h2>\n" + table(rows, ["", "value"], numeric_from=99, table_id="run")


# -- the finder ------------------------------------------------------------------------------
def _why(result: Any) -> str:
    d = result.details
    cands = d.get("candidates") or []
    rule = d.get("rule") or {}
    if cands:
        tried = len(cands)
        steps = d.get("verify_steps", "?")
        score = {SCORED_BY_VALIDATION: "the validation loss",
                 SCORED_BY_SAMPLE: "the loss on a fixed sample of training batches"}.get(d.get("score"),
                                                                                         "the training loss")
        text = (f"The range test raised the LR from {fmt(float(result.lrs[0]))} to {fmt(float(result.lrs[-1]))} "
                f"and found the lowest smoothed loss at {fmt(rule.get('loss_min_lr'))}. Below it, {tried} candidate "
                f"LRs were each trained for {steps} steps from the same cold start (the optimizer state your run "
                f"begins with) and scored on {score} (table below). The short-run optimum, "
                f"{fmt(d.get('short_run_optimum'))}, comes from a parabola through the best candidate and its "
                f"neighbours in log-LR; " + (
                    "it is the answer as it is: every step sees the same batch (full-batch training), so there is "
                    "no noise floor for a short run to miss and the best LR is set by stability, which a short "
                    "run sees first." if d.get("deterministic_steps") else
                    "it is halved, because a short run's best LR sits above a long run's (a long run settles at a "
                    "noise floor that grows with the LR, which a short one does not reach)."))
    else:
        text = (f"The LR was chosen from the range-test curve alone (method {result.method!r}): the smaller of the "
                f"steepest descent ({fmt(rule.get('steepest'))}) and the LR at the loss minimum "
                f"({fmt(rule.get('loss_min_lr'))}) divided by {fmt(rule.get('cap_divisor'))}. No candidate was "
                f"verified by training (pass verify_steps or train_steps to check them).")
    return f"<h2>Why this LR</h2>\n<p id=\"why\">{esc(text)}</p>"


def _how_sure(result: Any) -> str:
    lo, hi = result.band
    unc = result.details.get("uncertainty") or {}
    spread = unc.get("rules_spread_decades")
    band_dec = unc.get("band_decades")
    words = ("narrow" if band_dec is not None and band_dec < 0.35 else "wide") if band_dec is not None else "unknown"
    lines = [f"Any LR in the band {fmt(lo)} .. {fmt(hi)} scored about as well ({words}: "
             f"{fmt(band_dec)} decades)."]
    if spread is not None:
        lines.append(f"The classic rules disagree by {spread:.2f} decades: that is how far a rule picked "
                     f"from a blog could have been off on this model.")
    rows = []
    for name, lr in result.rules.items():
        ratio = lr / result.suggestion if (lr is not None and result.suggestion > 0 and math.isfinite(lr)) else None
        rows.append([name, lr, None if ratio is None else f"{ratio:.2f}x"])
    body = "<p>" + esc(" ".join(lines)) + "</p>"
    if rows:
        body += "\n" + table(rows, ["classic rule", "learning rate", "relative to the suggestion"], table_id="rules")
    return "<h2>How sure</h2>\n" + body


def scored_in_lr_order(cands: list[dict]) -> tuple[list[float], list[float]]:
    """The LRs and scores of the candidates that got a finite score, in LR order (the search tries
    them out of order: the curve is drawn left to right, the table keeps the search's order).

    Example:
        >>> scored_in_lr_order([{"lr": 0.1, "score": 1.8}, {"lr": 0.01, "score": 0.2},
        ...                     {"lr": 1.0, "score": None, "rejected": "diverged"}, {"lr": 0.03, "score": 0.3}])
        ([0.01, 0.03, 0.1], [0.2, 0.3, 1.8])
    """
    ok = sorted((c for c in cands if c.get("score") is not None and math.isfinite(c["score"])), key=lambda c: c["lr"])
    return [c["lr"] for c in ok], [c["score"] for c in ok]


def candidates_section(result: Any) -> str:
    """The verification runs as a table and a plot (score against LR); empty without any."""
    cands = result.details.get("candidates") or []
    if not cands:
        return ""
    rows = []
    best = min((c["score"] for c in cands if c.get("score") is not None and not c.get("rejected")), default=None)
    for c in cands:
        status = f"rejected: {c['rejected']}" if c.get("rejected") else ("best" if c.get("score") == best else "")
        rows.append([c.get("lr"), c.get("score"), c.get("steps"), status])
    start = result.details.get("start_score")

    def draw(ax):
        ax.plot(*scored_in_lr_order(cands), "o-", color="#1f6feb", label="candidate score")
        bad = [c for c in cands if c.get("rejected")]
        if bad:
            ax.plot([c["lr"] for c in bad], [start or 0.0] * len(bad), "x", color="#57606a", label="rejected")
        if start is not None:
            ax.axhline(start, color="#57606a", lw=0.8, ls=":", label="score before training")
        ax.axvline(result.suggestion, color="#d62728", lw=1.5, label=f"suggestion {result.suggestion:.3g}")
        lo, hi = result.band
        if math.isfinite(lo) and math.isfinite(hi):
            ax.axvspan(lo, hi, color="#d62728", alpha=0.12, label="band")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("score after the short run (lower is better)")
        ax.legend(fontsize=8)

    head = (f"<h2>The verification runs</h2>\n<p>Each candidate trained {esc(result.details.get('verify_steps'))} "
            f"steps from the same starting state; the score is measured after them.</p>\n")
    return (head + table(rows, ["learning rate", "score", "steps", ""], table_id="candidates") + "\n"
            + figure_section("", draw, alt="verification scores against the learning rate", img_id="candidates-plot",
                             size=(7, 3.6)).replace("<h2></h2>\n", ""))


_SNIPPETS = {
    "torch": """optimizer = torch.optim.{opt}(model.parameters(), lr={lr})
# or as the peak of a schedule:
schedule = lrkit.schedules.warmup(lrkit.schedules.cosine({lr}, total_steps - warmup), warmup_steps=warmup)
scheduler = lrkit.torch.to_torch(schedule, optimizer)   # scheduler.step() after each optimizer.step()""",
    "keras": """schedule = lrkit.schedules.warmup(lrkit.schedules.cosine({lr}, total_steps - warmup), warmup_steps=warmup)
model.compile(optimizer=keras.optimizers.{opt}(learning_rate=lrkit.keras.to_keras(schedule)), loss=...)
# or a constant LR: keras.optimizers.{opt}(learning_rate={lr})""",
    "optax": """schedule = lrkit.schedules.warmup(lrkit.schedules.cosine({lr}, total_steps - warmup), warmup_steps=warmup)
optimizer = optax.{opt_lower}(learning_rate=lrkit.jax.to_optax(schedule))
# or a constant LR: optax.{opt_lower}(learning_rate={lr})""",
    "lightning": """# in your LightningModule: self.lr = {lr}, read in configure_optimizers; or let the callback set it:
trainer = lightning.Trainer(callbacks=[lrkit.lightning.LRFinder()])""",
    "transformers": """args = transformers.TrainingArguments(..., learning_rate={lr})
# or let lrkit write it into an existing Trainer: lrkit.transformers.find_lr(trainer)""",
}

_OPT_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "sgd_momentum": "SGD", "rmsprop": "RMSprop",
              "adagrad": "Adagrad"}


def apply_section(lr: float, framework: str = "torch", family: str | None = None) -> str:
    """How to apply the LR: a code snippet for ``framework`` (torch, keras, optax, lightning, transformers)."""
    template = _SNIPPETS.get(framework, _SNIPPETS["torch"])
    opt = _OPT_NAMES.get(family or "", "AdamW")
    code = template.format(lr=f"{lr:.3g}", opt=opt, opt_lower=opt.lower())
    return (f"<h2>How to apply it ({esc(framework)})</h2>\n<p>Use it as the peak LR of your schedule "
            f"(it was found for a warmup-free start; a warmup only makes it safer).</p>\n"
            f'<pre id="snippet"><code>{esc(code)}</code></pre>')


def finder_sections(result: Any, *, png: bytes | None = None, framework: str = "torch") -> list[str]:
    """What LR, why, how sure, the candidates, how to apply it, and the range-test curve."""
    from lrkit.report.finder_plot import figure_png, plot_finder

    if png is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.5))
        plot_finder(result, ax=fig.add_subplot(1, 1, 1))
        png = figure_png(fig)
    lo, hi = result.band
    lead = (f'<p class="lead">Suggested learning rate: <b id="suggestion">{esc(fmt(result.suggestion))}</b> '
            f"(band {esc(fmt(lo))} .. {esc(fmt(hi))}; method {esc(result.method)})</p>")
    test = result.details
    cost = int(test.get("range_test_steps", len(result.lrs))) + int(test.get("verify_steps_used", 0) or 0)
    facts = [["range test", f"{len(result.lrs)} of {result.num_iter} steps, LR {fmt(float(result.lrs[0]))} .. "
              f"{fmt(float(result.lrs[-1]))}" + (f" ({test['stop_reason']})" if test.get("stop_reason") else "")],
             ["verification", f"{test.get('verify_steps_used', 0) or 0} steps"], ["finder cost", f"{cost} steps"],
             ["optimizer family", test.get("family", "-")], ["batch size", result.batch_size]]
    curve = [[i, float(a), float(b), float(c)] for i, (a, b, c) in
             enumerate(zip(result.lrs, result.losses, result.smoothed_losses))]
    return [
        lead,
        _why(result),
        _how_sure(result),
        candidates_section(result),
        apply_section(result.suggestion, framework, test.get("family")),
        "<h2>Loss against learning rate</h2>\n" + png_figure(png, "LR range test plot", "plot"),
        "<h2>The range test</h2>\n" + table(facts, ["", "value"], numeric_from=99, table_id="facts"),
        "<details><summary>The recorded curve</summary>\n"
        + table(curve, ["step", "lr", "loss", "smoothed loss"], numeric_from=0) + "\n</details>",
    ]


# -- the demo's comparison ---------------------------------------------------------------------
def comparison_section(at_suggestion: Mapping[str, Any], at_default: Mapping[str, Any], *, steps: int,
                       schedule: str = "one_cycle", schedules_png: bytes | None = None) -> str:
    """Training at the suggestion vs at the default LR: the table the terminal showed, and the schedules."""
    rows = [[f"suggested {fmt(at_suggestion['lr'])}", at_suggestion["val_loss"], at_suggestion["val_accuracy"],
             at_suggestion["diverged"]],
            [f"default {fmt(at_default['lr'])}", at_default["val_loss"], at_default["val_accuracy"],
             at_default["diverged"]]]
    dl = at_suggestion["val_loss"] - at_default["val_loss"]
    da = at_suggestion["val_accuracy"] - at_default["val_accuracy"]
    body = (f"<h2>Training at the suggestion vs the default</h2>\n<p>{esc(steps)} steps with a {esc(schedule)} "
            f"schedule, median of {esc(at_suggestion.get('runs', '?'))} seeds: the suggestion changes the validation "
            f"loss by {dl:+.4f} and the accuracy by {da:+.3f}.</p>\n"
            + table(rows, ["peak LR", "val loss", "val accuracy", "diverged runs"], table_id="comparison"))
    if schedules_png is not None:
        body += "\n" + png_figure(schedules_png, "the two schedules", "schedules")
    return body


# -- the doctor --------------------------------------------------------------------------------
def diagnosis_section(records: Any, diagnosis: Any, *, interventions: Iterable[Any] = ()) -> list[str]:
    """The verdict, its onset, evidence and advice, and the run plotted with the onset (and rollbacks) marked."""
    interventions = list(interventions)
    verdict = getattr(diagnosis, "verdict", "?")
    onset = getattr(diagnosis, "step", None)
    lead = (f'<p class="lead">Verdict: {verdict_tag(verdict)}'
            + (f" from step {esc(onset)}" if onset is not None else "") + "</p>")
    evidence = getattr(diagnosis, "evidence", None) or {}
    advice = getattr(diagnosis, "advice", None) or []
    if isinstance(advice, str):
        advice = [advice]
    parts = [lead]
    if advice:
        parts.append("<h2>What to do</h2>\n<ul id=\"advice\">" + "".join(f"<li>{esc(a)}</li>" for a in advice) + "</ul>")
    if evidence:
        rows = [[k, v if isinstance(v, (int, float, str, type(None))) else str(v)] for k, v in dict(evidence).items()]
        parts.append("<h2>Evidence</h2>\n" + table(rows, ["", "value"], numeric_from=99, table_id="evidence"))

    def draw(ax):
        from lrkit.report.doctor_plot import plot_diagnosis

        plot_diagnosis(records, diagnosis, ax=ax)
        for i, act in enumerate(interventions):
            step = getattr(act, "step", None)
            if step is not None:
                ax.axvline(step, color="#8250df", ls="--", lw=1.2, label="intervention" if i == 0 else None)
        if interventions:
            ax.legend(fontsize=8)

    parts.append(figure_section("The run", draw, alt="the run with the onset marked", img_id="diagnosis-plot",
                                size=(8, 4.5), note="The dashed red line marks the onset of the problem."
                                if onset is not None else ""))
    if interventions:
        rows = [[getattr(a, "step", None), getattr(a, "kind", getattr(a, "action", "")), str(a)] for a in interventions]
        parts.append("<h2>Interventions</h2>\n" + table(rows, ["step", "what", "detail"], numeric_from=99,
                                                         table_id="interventions"))
    return parts
