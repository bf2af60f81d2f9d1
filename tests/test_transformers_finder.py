"""``lrkit.transformers.find_lr(trainer)`` on a real Hugging Face ``Trainer`` (tiny BERT built from a
config, no download): it reads the Trainer's own pieces, leaves the model bitwise as it was, writes the
LR where ``train()`` reads it, and ``train()`` then uses it."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lrkit.transformers as lt  # noqa: E402

pytestmark = [pytest.mark.torch]


class Pairs(torch.utils.data.Dataset):
    """Token ids and a label that depends on them (learnable), as plain dicts of lists."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 40, (n, 10), generator=g)
        self.labels = (self.ids[:, 0] > 20).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        # ragged lengths: only a padding collator can batch them
        k = 6 + i % 5
        return {"input_ids": self.ids[i, :k].tolist(), "labels": int(self.labels[i])}


def make_trainer(tmp_path, trainer_cls=None, **args):
    from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, \
        PreTrainedTokenizerFast, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(vocab_size=48, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, "[UNK]")),
                                  pad_token="[PAD]", unk_token="[UNK]")
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2,
                    learning_rate=1e-5, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
                    gradient_accumulation_steps=2, max_grad_norm=1.0, seed=0)
    defaults.update(args)
    cls = trainer_cls or transformers.Trainer
    return cls(model=model, args=TrainingArguments(**defaults), train_dataset=Pairs(96, 0),
               eval_dataset=Pairs(32, 1), data_collator=DataCollatorWithPadding(tok))


def test_finds_on_the_trainer_itself_restores_and_writes_the_lr(tmp_path):
    trainer = make_trainer(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    rng = torch.get_rng_state().clone()
    result = lt.find_lr(trainer, num_iter=30, verify_steps=4, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.optimizer is None  # train() builds its own, from the LR written below
    assert trainer.args.learning_rate == result.suggestion and 1e-5 < result.suggestion < 1.0
    # what the Trainer decides went into the test: 96 samples / (8 x 2 accumulation) x 2 epochs = 12 steps
    assert result.batch_size == 16
    assert result.details["verify_steps"] >= 0
    seen = []

    class Spy(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
            seen.append(lr_scheduler.base_lrs[0])

    trainer.add_callback(Spy())
    trainer.args.max_steps = 2
    trainer.train()
    assert seen and seen[0] == pytest.approx(result.suggestion)  # train() used the suggestion


def test_a_compute_loss_override_is_what_the_finder_measures(tmp_path):
    calls = []

    class Custom(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            calls.append(sorted(inputs))
            loss = super().compute_loss(model, inputs, return_outputs=False)
            return 2.0 * loss  # a scaled loss the default path would not see

    trainer = make_trainer(tmp_path, trainer_cls=Custom, gradient_accumulation_steps=1)
    result = lt.find_lr(trainer, num_iter=10, verify=False, progress=False, write=False)
    assert calls and calls[0] == ["attention_mask", "input_ids", "labels"]  # padded by the collator
    assert result.losses[0] == pytest.approx(2 * 0.69, rel=0.2)  # 2 x ln 2 at the start
    assert trainer.args.learning_rate == 1e-5  # write=False


def test_own_optimizer_gets_the_lr_and_own_scheduler_is_refused(tmp_path):
    trainer = make_trainer(tmp_path)
    params = list(trainer.model.parameters())
    opt = torch.optim.AdamW([{"params": params[:2], "lr": 2e-5}, {"params": params[2:], "lr": 1e-5}])
    trainer.optimizer = opt
    result = lt.find_lr(trainer, num_iter=10, verify=False, progress=False)
    assert trainer.optimizer is opt
    assert opt.param_groups[0]["lr"] == pytest.approx(result.suggestion)  # the first group's LR, as the finder
    assert opt.param_groups[1]["lr"] == pytest.approx(result.suggestion / 2)  # ratios kept
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(ValueError, match=r"has its own LR scheduler .*pass write=False"):
        lt.find_lr(trainer, num_iter=10, verify=False, progress=False)
    with pytest.raises(ValueError, match="step_fn come from the Trainer"):
        lt.find_lr(trainer, step_fn=lambda m, b: 0, write=False)
    with pytest.raises(ValueError, match="trainer must be a transformers.Trainer"):
        lt.find_lr(trainer.model)


def test_the_trainers_epochs_reach_the_finder_as_the_runs_shape(tmp_path):
    # 96 examples in batches of 8 with 2 accumulation steps: 6 optimizer steps per epoch, 30 epochs;
    # a BERT of ~10k parameters can fit every example: the many-epoch regime (lrkit.finder.regime)
    trainer = make_trainer(tmp_path, num_train_epochs=30)
    result = lt.find_lr(trainer, progress=False)
    shape = result.details["run_shape"]
    assert shape["epochs"] == pytest.approx(30.0)
    params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert shape["params_per_example"] == pytest.approx(params / 96) and shape["many_epochs"] is True
    assert any("30 passes over its 96 training examples" in w for w in result.details["warnings"])
    assert "30 passes over its 96 training examples" in result.summary()


def test_several_eval_datasets_score_on_the_first(tmp_path):
    """An eval_dataset dict (the Trainer evaluates each under its name): the finder scores on the first,
    not on the dict as if it were one dataset."""
    from lrkit.integrations.transformers.finder import eval_loader

    trainer = make_trainer(tmp_path)
    first = trainer.eval_dataset
    trainer.eval_dataset = {"first": first, "other": Pairs(16, 7)}
    loader = eval_loader(trainer)
    assert loader.dataset is first
    result = lt.find_lr(trainer, train_steps=300, progress=False)
    assert result.details["score"] == "evaluate()" and result.details["start_score"] > 0
    trainer.eval_dataset = None
    assert eval_loader(trainer) is None and eval_loader(None) is None
