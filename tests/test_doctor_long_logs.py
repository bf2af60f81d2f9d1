"""Very long logs are read in blocks of rows (lrkit.doctor._coarse): the same verdicts as feeding
every row, onsets within a few blocks, a NaN at its exact step; and the CLI says so."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from lrkit.doctor import diagnose
from lrkit.doctor import diagnosis as diagnosis_mod
from lrkit.doctor._coarse import coarsen, first_non_finite, rows_per_point

N = 40_000  # rows; blocks of 20 with at most 2,000 points


def _run(kind: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    base = 2.0 * np.exp(-t / 6000) + 0.3
    noise = 0.02 * rng.standard_normal(N)
    lr = np.full(N, 0.01)
    if kind == "healthy":
        loss = base + noise
    elif kind == "diverging":
        at = int(rng.integers(N // 2, 3 * N // 4))
        loss = base + noise
        loss[at:] = loss[at] * np.exp((t[at:] - at) / 1500)
    elif kind == "nan":
        loss = base + noise
        loss[int(rng.integers(N // 3, N))] = np.nan
    elif kind == "flat":
        loss = 2.3 + 0.02 * rng.standard_normal(N)
    elif kind == "fluctuating":  # from mid-run, 5% of the batches spike 2-6 above the curve
        loss = base + noise
        spikes = (t >= N // 2) & (rng.random(N) < 0.05)
        loss[spikes] += rng.uniform(2.0, 6.0, int(spikes.sum()))
    else:  # pragma: no cover
        raise ValueError(kind)
    return {"step": t.tolist(), "loss": loss.tolist(), "lr": lr.tolist()}


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(diagnosis_mod, "rows_per_point", lambda n: rows_per_point(n, max_points=2_000))


@pytest.mark.parametrize("kind", ["healthy", "diverging", "nan", "flat", "fluctuating"])
@pytest.mark.parametrize("seed", [0, 1])
def test_blocks_of_rows_give_the_verdict_of_every_row(kind, seed, small_blocks):
    log = _run(kind, seed)
    exact = diagnose(log, exact=True)
    coarse = diagnose(log)
    assert coarse.evidence["rows_per_point"] == 20 and "rows_per_point" not in exact.evidence
    assert coarse.verdict == exact.verdict
    if kind == "nan":
        assert coarse.step == exact.step  # exact, not rounded to a block
    elif exact.step is not None:
        assert abs(coarse.step - exact.step) <= 20 * 50  # within a window of blocks


def test_coarsen_summaries_and_the_first_non_finite_row():
    steps = np.arange(7)
    loss = np.array([1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 9.0])
    gn = (np.array([1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 2.0]), np.array([1, 0, 1, 0, 0, 0, 1], bool))
    val = (np.array([0, 0.5, 0, 0, 0, 0.7, 0]), np.array([0, 1, 0, 0, 0, 1, 0], bool))
    s, l, cols = coarsen(steps, loss, {"grad_norm": gn, "val_loss": val}, 3)
    assert s.tolist() == [2, 5, 6] and l.tolist() == [2.0, 16 / 3, 9.0]
    assert cols["grad_norm"][0][:1].tolist() == [2.0] and cols["grad_norm"][1].tolist() == [True, False, True]
    assert cols["val_loss"][1].tolist() == [True, True, False] and cols["val_loss"][0][:2].tolist() == [0.5, 0.7]
    assert first_non_finite(loss, {"grad_norm": (np.array([1, np.inf, 1, 1, 1, 1, 1.0]), np.ones(7, bool))}) == 1
    assert first_non_finite(loss, {"grad_norm": (np.array([1, np.inf, 1, 1, 1, 1, 1.0]), np.zeros(7, bool))}) is None


def test_cli_says_a_long_log_was_read_in_blocks(tmp_path, small_blocks):
    from lrkit.cli import app

    log = _run("healthy", 0)
    path = tmp_path / "long.csv"
    path.write_text("step,loss,lr\n" + "".join(f"{s},{v:.5f},{r}\n" for s, v, r in zip(log["step"], log["loss"], log["lr"])))
    out = CliRunner().invoke(app, ["diagnose", str(path)])
    assert out.exit_code == 0, out.output
    assert "HEALTHY" in out.output and "read in blocks of 20 rows" in out.output
    out = CliRunner().invoke(app, ["diagnose", str(path), "--exact"])
    assert out.exit_code == 0 and "read in blocks" not in out.output
