"""A LoRA fine-tune (PEFT) through the Hugging Face Trainer, as its users run it: the guard's and the
finder's snapshots copy the adapters and leave the frozen base model out (a fingerprint of it
only); a NaN is rolled back and the base model is never touched."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lrkit.integrations.torch.state import TorchSnapshot  # noqa: E402
from lrkit.integrations.transformers.autopilot import AutopilotCallback  # noqa: E402
from lrkit.integrations.transformers.callback import LRDoctorCallback  # noqa: E402
from _hf_digits import Tokens, tiny_bert  # noqa: E402

pytestmark = [pytest.mark.torch]


def _lora_bert():
    torch.manual_seed(0)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"])
    return peft.get_peft_model(tiny_bert(), config)


class NanAt(transformers.TrainerCallback):
    """Writes a NaN into one LoRA weight at the end of a step (a blow-up the next loss shows)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n)[0, 0] = float("nan")


@pytest.fixture
def snapshots(monkeypatch):
    """Every snapshot taken: the names it left out, and the frozen parameters at that moment."""
    taken = []
    take = TorchSnapshot.take.__func__

    def spy(cls, model, optimizers, **kw):
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        taken.append((set(kw.get("left_out") or {}), frozen))
        return take(cls, model, optimizers, **kw)

    monkeypatch.setattr(TorchSnapshot, "take", classmethod(spy))
    return taken


def _train(tmp_path, callbacks, steps=40, learning_rate=5e-3):
    model = _lora_bert()
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=16,
                                          learning_rate=learning_rate, logging_steps=5, report_to=[],
                                          save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return model, base


def test_the_guard_copies_the_adapters_only_and_rolls_back_a_nan(tmp_path, snapshots):
    cb = LRDoctorCallback(guard=True, snapshot_every=5)
    model, base = _train(tmp_path, [cb, NanAt(22)])
    assert [i.verdict for i in cb.interventions] == ["nan"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert len(snapshots) >= 2  # the initial one, and one taken as the run went
    for left_out, frozen in snapshots:
        assert left_out == frozen and any("query.base_layer.weight" in n for n in left_out)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.2 * sum(p.numel() for p in model.parameters())  # what a snapshot copies now


def test_the_autopilot_finds_and_trains_a_lora_fine_tune_leaving_the_base_alone(tmp_path, snapshots):
    cb = AutopilotCallback()
    model, base = _train(tmp_path, [cb], steps=60)
    assert cb.plan is not None and cb.plan.peak_lr > 0
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert snapshots and all(left_out == frozen for left_out, frozen in snapshots)
