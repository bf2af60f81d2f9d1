"""Without a validation set the finder scores its verification runs on a fixed sample of training
batches (TorchTrainer.sample_loss), the same for every candidate, not on their last training losses."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lrkit.finder.search import SAMPLE_BATCHES, SAMPLE_ROWS, run_search  # noqa: E402
from lrkit.integrations.torch.trainer import TorchTrainer, find_lr  # noqa: E402


def _task(n=512, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1))
    return model, loader


def test_sample_loss_is_the_mean_loss_over_the_first_batches_drawn_and_stays_fixed():
    model, loader = _task(batch=48)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t = TorchTrainer(model, opt, torch.nn.functional.cross_entropy, loader)
    assert t.sample_loss() is None  # nothing drawn yet
    seen = []
    for _ in range(12):
        t.step(0.0)  # LR 0: the weights stay, the batches go by
        seen.append(t._last_batch)
    # 48-example batches: the first six hold 288 >= SAMPLE_ROWS examples
    k = -(-SAMPLE_ROWS // 48)
    assert k <= SAMPLE_BATCHES and len(t._sample.read()) == k
    with torch.no_grad():
        want = sum(float(torch.nn.functional.cross_entropy(model(x), y)) for x, y in seen[:k]) / k
    assert t.sample_loss() == pytest.approx(want, rel=1e-6)
    before = t.sample_loss()
    for _ in range(5):
        t.step(0.5)  # training moves the weights, not the sample
    assert len(t._sample.read()) == k and t.sample_loss() != before
    assert model.training  # eval mode only for the scoring


def test_the_sample_is_fixed_once_read_even_before_it_is_full():
    """A range test shorter than the sample: the starting score is taken on the batches drawn so
    far, and the candidates' runs, which draw more, must be scored on those same batches."""
    model, loader = _task(batch=16)
    t = TorchTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.functional.cross_entropy, loader)
    state = t.snapshot()
    for _ in range(2):
        t.step(0.0)
    first = t.sample_loss()  # read after two batches of 16: 32 examples, 2 batches
    t.restore(state)
    for _ in range(6):
        t.step(0.0)  # LR 0: nothing moves; six more batches drawn
    assert len(t._sample.read()) == 2 and t.sample_loss() == first


def test_the_finder_without_validation_scores_every_candidate_on_the_same_sample():
    model, loader = _task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    res = find_lr(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=400, progress=False)
    d = res.details
    assert d["score"] == "sample_loss()" and res.method == "verified"
    cands = d["candidates"]
    # one start for every candidate: the sample's loss at the common starting state
    assert len({c["start"] for c in cands}) == 1 and cands[0]["start"] == pytest.approx(d["start_score"])
    model2, loader2 = _task()
    with_val = find_lr(model2, torch.optim.Adam(model2.parameters(), lr=1e-3), torch.nn.functional.cross_entropy,
                       loader2, val_loader=loader2, train_steps=400, progress=False)
    assert with_val.details["score"] == "evaluate()"  # a validation set still comes first


def test_a_trainer_without_sample_loss_keeps_scoring_by_its_training_losses():
    model, loader = _task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t = TorchTrainer(model, opt, torch.nn.functional.cross_entropy, loader)

    class Plain:  # the Trainer protocol's required methods only
        def snapshot(self):
            return t.snapshot()

        def restore(self, s):
            t.restore(s)

        def step(self, lr):
            return t.step(lr)

        def evaluate(self):
            return None

    search, _ = run_search(Plain(), 1e-2, 1e-5, 1.0, steps=9, decade=10 ** 0.5, budget=40)
    assert search.scored_by == "mean training loss, last third" and search.ref_eval is None
    starts = {c["start"] for c in search.results if c["start"] is not None}
    assert len(starts) > 1  # each run's start is the median of its own first three training losses


def test_the_summary_says_what_the_verification_runs_were_scored_on():
    model, loader = _task()
    res = find_lr(model, torch.optim.Adam(model.parameters(), lr=1e-3), torch.nn.functional.cross_entropy, loader,
                  train_steps=400, progress=False)
    line = next(x for x in res.summary().splitlines() if x.startswith("verification:"))
    assert f"{len(res.details['candidates'])} short runs" in line and "fixed sample" in line and "pass one" in line
    model2, loader2 = _task()
    with_val = find_lr(model2, torch.optim.Adam(model2.parameters(), lr=1e-3), torch.nn.functional.cross_entropy,
                       loader2, val_loader=loader2, train_steps=400, progress=False)
    assert "scored on the validation set" in with_val.summary()
