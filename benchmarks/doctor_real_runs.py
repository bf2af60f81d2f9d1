"""The doctor on real framework runs, with a held-out half (issue 7).

Run from the repository root:

    .venv/bin/python benchmarks/doctor_real_runs.py             # offline + live + guard; writes BENCHMARKS.md
    .venv/bin/python benchmarks/doctor_real_runs.py --offline    # only `diagnose` on the stored logs (seconds)
    .venv/bin/python benchmarks/doctor_real_runs.py --generate   # re-create the stored logs (minutes)

The corpus (``benchmarks/real_runs/``: the log files each framework wrote by default, and
``manifest.json`` with the ground truth) is made by ``--generate`` from the run specifications
of ``benchmarks/real_runs.py`` (Hugging Face ``Trainer`` on a tiny BERT, Lightning, Keras
``model.fit``, plain torch with ``SummaryWriter``; good, too-low, too-high, spiking and
NaN-injected LRs). The split is fixed there: seed 0 runs are the development half, seed 1 runs
the held-out half (other LRs too). Rules are designed on the development half only; the held-out
half is run to report.

Reported per half:

* **offline**: ``lrkit.diagnose`` on each run's stored log (the path a user would give:
  the ``trainer_state.json`` or checkpoint directory, the Lightning version directory or
  ``metrics.csv``, the Keras ``CSVLogger`` file, the SummaryWriter run directory): verdict
  accuracy (the verdict is one the regime calls for, ``real_runs.EXPECTED``), false alarms
  (a good run given a problem verdict) and detections (a problem run given any problem verdict);
* **live**: the framework callback (``LRDoctorCallback`` for HF, Lightning, Keras;
  ``TorchDoctor`` for torch) watching the run as it trains, judged by the worst verdict it saw;
* **guard**: the same run with ``guard=True``: final validation accuracy guarded vs unguarded.
  On good runs no run may end worse; on broken runs, how much accuracy the guard saved.

Live and guard results need training (about 10 minutes on one core); ``--offline`` reuses the
last ones stored in ``benchmarks/results/doctor_real_runs.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_runs as rr  # noqa: E402

CORPUS = ROOT / "benchmarks" / "real_runs"
MANIFEST = CORPUS / "manifest.json"
RESULTS = ROOT / "benchmarks" / "results" / "doctor_real_runs.json"
COMMAND = ".venv/bin/python benchmarks/doctor_real_runs.py"


def _quiet():
    """Silence the frameworks' own printing (HF's log printer, Lightning's banners)."""
    logging.getLogger("lrkit").setLevel(logging.ERROR)
    return contextlib.redirect_stdout(io.StringIO())


def _run_dir(spec: rr.RunSpec) -> Path:
    if spec.framework == "torch":
        return CORPUS / "torch" / "runs" / spec.name
    return CORPUS / spec.framework / spec.name


def generate(specs: list[rr.RunSpec]) -> None:
    """Train every spec once (watch only) and store its logs and the manifest."""
    manifest = {s["name"]: s for s in json.loads(MANIFEST.read_text())["runs"]} if MANIFEST.exists() else {}
    for spec in specs:
        out = _run_dir(spec)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with _quiet():
            res = rr.run(spec, out, guard=False)
        for junk in out.rglob("hparams.yaml"):
            junk.unlink()
        manifest[spec.name] = {**rr.spec_dict(spec), "final_accuracy": res.final_accuracy, "steps": res.steps}
        print(f"{spec.name:28s} acc {res.final_accuracy:.3f}  live {res.live_verdict:11s} {res.seconds:5.1f} s", flush=True)
    runs = [ground_truth(manifest[k], manifest) for k in sorted(manifest)]
    MANIFEST.write_text(json.dumps({
        "about": "Real framework runs for benchmarks/doctor_real_runs.py; made by --generate. "
                 "half: seed 0 = dev, seed 1 = heldout. expected: the verdicts that count as correct; "
                 "problem: whether the run counts as a problem run (detections) or a healthy one (false alarms); null for a spiking run that recovered.",
        "runs": runs,
    }, indent=1) + "\n")


def ground_truth(run: dict[str, Any], manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The regime's expected verdicts; a spiking run that ended as well as its good twin (the same
    framework, variant and seed; within 0.02 accuracy) recovered: any verdict but flat and nan is
    right, and it counts neither as a detection nor as a false alarm."""
    run = dict(run)
    run["problem"] = run["regime"] not in rr.HEALTHY
    twin = manifest.get(run["name"].replace(f"-{run['regime']}-", "-good-"))
    if run["regime"] == "spiking" and twin is not None and run["final_accuracy"] >= twin["final_accuracy"] - 0.02:
        run["problem"] = None
        run["expected"] = list(rr.QUIET) + ["fluctuating", "diverging"]
        run["outcome"] = "recovered"
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generate", action="store_true", help="re-create the stored logs and manifest")
    ap.add_argument("--offline", action="store_true", help="only diagnose the stored logs; reuse stored live results")
    ap.add_argument("--only", default="", help="comma-separated frameworks (hf, lightning, keras, torch)")
    ap.add_argument("--half", choices=("dev", "heldout", "both"), default="both")
    ap.add_argument("--regime", default="", help="comma-separated regimes (" + ", ".join(rr.REGIMES) + ")")
    ap.add_argument("--variant", default="", help="comma-separated variants (" + ", ".join(rr.VARIANTS) + ")")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    fws = [f for f in args.only.split(",") if f] or list(rr.FRAMEWORKS)
    regimes = [r for r in args.regime.split(",") if r] or list(rr.REGIMES)
    variants = [v for v in args.variant.split(",") if v] or list(rr.VARIANTS)
    specs = [s for s in rr.all_specs() if s.framework in fws and s.regime in regimes and s.variant in variants
             and (args.half == "both" or s.half == args.half)]
    if args.generate:
        generate(specs)
        return 0
    from doctor_real_report import report

    return report(specs, live=not args.offline, write=not args.no_write and args.half == "both" and not args.only
                  and not args.regime and not args.variant)


if __name__ == "__main__":
    sys.exit(main())
