"""A real Hugging Face model (tiny, randomly initialised: no download) through find_lr with loss_fn=None."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lrkit.integrations.torch.trainer import find_lr  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _bits(model, opt):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt_state = {k: {kk: (vv.clone() if isinstance(vv, torch.Tensor) else vv) for kk, vv in v.items()}
                 for k, v in opt.state_dict()["state"].items()}
    return params, opt_state, torch.get_rng_state().clone()


def test_tiny_bert_with_dropout_is_restored_bitwise():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, 60, (8, 12), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "labels": torch.randint(0, 3, (8,), generator=g)})
    # one real step first, so AdamW has moments and a step count to restore
    out = model(**batches[0])
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    params, opt_state, rng = _bits(model, opt)

    res = find_lr(model, opt, None, batches, start_lr=1e-6, end_lr=10.0, num_iter=40, progress=False, verify=False)
    assert len(res.lrs) >= 5
    assert 0.5 < res.losses[0] < 3.0  # cross-entropy of 3 classes near ln 3 at the start

    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    after = opt.state_dict()["state"]
    for k, v in opt_state.items():
        for kk, vv in v.items():
            assert torch.equal(after[k][kk], vv) if isinstance(vv, torch.Tensor) else after[k][kk] == vv
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from the global RNG; restored
    assert model.training
