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
    assert "lrkit<&>" in text and "<script>x</script>" in text  # user strings are escaped, not markup
    assert "&lt;script&gt;" in page


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
