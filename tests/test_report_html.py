"""The self-contained HTML report: parse it, decode the embedded plot, render it in a real browser."""
from __future__ import annotations

import base64
import io
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from lrkit.finder.result import FinderResult
from lrkit.report.html import finder_report_html, write_finder_report

CHROMIUM = "/usr/bin/chromium"


def make_result() -> FinderResult:
    lrs = np.geomspace(1e-5, 1, 60)
    smooth = 2.3 - 1.3 * (1 + np.tanh(2 * (np.log10(lrs) + 2.5))) / 2 + np.where(lrs > 0.2, 10 * (lrs - 0.2), 0)
    noise = 0.03 * np.sin(np.arange(60))
    return FinderResult(lrs=lrs, losses=smooth + noise, smoothed_losses=smooth, suggestion=3.2e-3,
                        method="lrkit<&>", rules={"steepest": 3.2e-3, "valley": 8e-4, "minimum_div_10": None},
                        band=(1.5e-3, 6e-3), details={"stop_reason": "completed 60 steps", "note": "<script>x</script>"},
                        num_iter=60, batch_size=64)


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Collect:
    c = Collect()
    c.feed(page)
    c.close()
    return c


def test_report_structure_and_embedded_png():
    r = make_result()
    page = finder_report_html(r, title="my run")
    doc = parse(page)
    tags = [t for t, _ in doc.tags]
    assert tags.count("img") == 1 and "script" not in tags and "link" not in tags
    # no external resources of any kind
    for _, attrs in doc.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith("data:"), attrs
    img = next(a for t, a in doc.tags if t == "img")
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    png = base64.b64decode(img["src"][len(prefix):], validate=True)
    from matplotlib import image as mpimg

    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert float(pixels[..., :3].std()) > 0.05  # a drawing, not a blank image
    text = " ".join(" ".join(doc.text).split())
    assert "Suggested learning rate: 0.0032" in text
    assert "steepest" in text and "valley" in text and "0.0008" in text and "0.25x" in text  # valley / suggestion
    assert "0.0015" in text and "0.006" in text  # the band
    assert "lrkit<&>" in text and "lrkit&lt;&amp;&gt;" in page  # user strings are escaped, not markup
    assert "<script>" not in page and '"stop_reason"' not in page  # no raw JSON dump of the details


def test_write_report(tmp_path):
    path = write_finder_report(make_result(), tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.html"
    assert (tmp_path / "rep" / "finder.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        write_finder_report(make_result(), tmp_path / "file")


def test_nonfinite_band_renders():
    r = FinderResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1, 0.5, 2], smoothed_losses=[1, 0.7, 1.2], suggestion=1e-2,
                     method="m", band=(math.nan, math.nan))
    assert "nan" in finder_report_html(r)


@pytest.mark.slow
def test_renders_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed: cannot render the report in a browser")
    path = write_finder_report(make_result(), tmp_path / "rep")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,1400",
           path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image as mpimg

    pixels = mpimg.imread(io.BytesIO(data), format="png")[..., :3]
    assert pixels.shape[:2] == (1400, 1000)
    assert float(pixels.std()) > 0.05  # text, tables and the plot: not a blank page
    # the plot's red suggestion line is on the page: some strongly red pixels exist
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    assert red.sum() > 50


# -- the pages that explain (issue 11) ---------------------------------------------------------
def verified_result() -> FinderResult:
    r = make_result()
    details = {"family": "adam", "verify_steps": 10, "verify_steps_used": 50, "score": "evaluate()",
               "start_score": 2.33, "short_run_optimum": 0.0064, "stop_reason": "completed 60 steps",
               "range_test_steps": 60, "rule": {"loss_min_lr": 0.19, "steepest": 0.055, "cap_divisor": 10.0},
               "uncertainty": {"band_decades": 0.6, "rules_spread_decades": 1.44},
               "candidates": [{"lr": 0.19, "score": 1.85, "steps": 10, "rejected": None},
                              {"lr": 0.06, "score": 0.54, "steps": 10, "rejected": None},
                              {"lr": 0.019, "score": 0.35, "steps": 10, "rejected": None},
                              {"lr": 0.6, "score": None, "steps": 3, "rejected": "diverged"}]}
    return FinderResult(lrs=r.lrs, losses=r.losses, smoothed_losses=r.smoothed_losses, suggestion=3.2e-3,
                        method="verified", rules=r.rules, band=(1.5e-3, 6e-3), details=details, num_iter=60,
                        batch_size=64)


def test_finder_page_says_what_why_how_sure_how_to_apply_and_on_what_run():
    page = finder_report_html(verified_result(), framework="keras", command="lrkit find task.py:task --seed 3",
                              seed=3)
    doc = parse(page)
    text = " ".join(" ".join(doc.text).split())
    assert "Suggested learning rate: 0.0032" in text
    assert "4 candidate LRs were each trained for 10 steps from the same cold start" in text  # why
    assert "scored on the validation loss" in text and "0.0064" in text
    assert "The classic rules disagree by 1.44 decades" in text  # how sure
    assert "rejected: diverged" in text and "best" in text  # the candidates, readable
    assert "lrkit.keras.to_keras(schedule)" in text and "cosine(0.0032" in text  # how to apply, for Keras
    assert "lrkit find task.py:task --seed 3" in text and "version: numpy" in text and "UTC" in text
    assert sum(1 for t, _ in doc.tags if t == "img") == 2  # the curve and the candidates' plot


def test_demo_page_shows_the_training_comparison():
    from lrkit.report.html import demo_report_html

    summary = {"steps": 300, "optimizer": "adam",
               "at_suggestion": {"lr": 0.0135, "val_loss": 0.1177, "val_accuracy": 0.958, "diverged": 0, "runs": 3},
               "at_default": {"lr": 0.001, "val_loss": 0.3304, "val_accuracy": 0.942, "diverged": 0, "runs": 3}}
    text = " ".join(" ".join(parse(demo_report_html(verified_result(), summary, command="lrkit demo")).text).split())
    assert "Training at the suggestion vs the default" in text
    assert "suggested 0.0135 0.1177 0.958 0" in text and "default 0.001 0.3304 0.942 0" in text
    assert "changes the validation loss by -0.2127 and the accuracy by +0.016" in text


def diagnosed_run():
    from lrkit.doctor import Doctor

    rng = np.random.default_rng(0)
    loss = np.concatenate([2.0 * np.exp(-np.arange(60) / 20), 0.2 * np.exp(np.arange(30) / 6)]) + 0.01 * rng.random(90)
    doctor = Doctor()
    for step, value in enumerate(loss):
        doctor.observe(step, float(value), lr=0.1)
    import csv
    import io as _io

    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "loss", "lr"])
    for step, value in enumerate(loss):
        w.writerow([step, value, 0.1])
    return buf.getvalue(), doctor.diagnosis


def test_diagnosis_page_marks_the_onset(tmp_path):
    from lrkit.doctor import read_log
    from lrkit.report.html import diagnosis_report_html

    text_csv, diagnosis = diagnosed_run()
    (tmp_path / "run.csv").write_text(text_csv)
    page = diagnosis_report_html(read_log(tmp_path / "run.csv"), diagnosis, source="run.csv",
                                 command="lrkit diagnose run.csv --report out")
    text = " ".join(" ".join(parse(page).text).split())
    assert diagnosis.verdict == "diverging"
    assert f"Verdict: diverging from step {diagnosis.step}" in text and "What to do" in text
    assert "lrkit diagnose run.csv --report out" in text and "The dashed red line marks the onset" in text


def _screenshot(tmp_path, path):
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed: cannot render the report in a browser")
    shot = tmp_path / f"{path.stem}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1000,2400", path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from matplotlib import image as mpimg

    return mpimg.imread(io.BytesIO(shot.read_bytes()), format="png")[..., :3]


@pytest.mark.slow
def test_pages_render_in_headless_chromium(tmp_path):
    from lrkit.doctor import read_log
    from lrkit.report.html import diagnosis_report_html

    finder_page = tmp_path / "finder.html"
    finder_page.write_text(finder_report_html(verified_result(), command="lrkit find t.py:t", seed=0))
    pixels = _screenshot(tmp_path, finder_page)
    assert pixels.shape[:2] == (2400, 1000) and float(pixels.std()) > 0.05
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.3)  # the candidates' blue line is drawn
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)  # the suggestion's
    assert blue.sum() > 50 and red.sum() > 50
    text_csv, diagnosis = diagnosed_run()
    (tmp_path / "run.csv").write_text(text_csv)
    diag_page = tmp_path / "diag.html"
    diag_page.write_text(diagnosis_report_html(read_log(tmp_path / "run.csv"), diagnosis, source="run.csv"))
    pixels = _screenshot(tmp_path, diag_page)
    assert float(pixels.std()) > 0.05
