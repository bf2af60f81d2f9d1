"""Hugging Face Trainer: find the LR on the Trainer itself, train with an lrkit schedule, watch with the doctor.

A tiny BERT built from a config (nothing is downloaded) classifies the digits written as 64 "tokens"
(the pixel intensities 0..16). Run: python examples/hf_trainer.py   (LRKIT_EXAMPLE_SMALL=1: short)
"""
import tempfile

import numpy as np
import torch
import transformers

import lrkit.torch as lt
import lrkit.transformers as lhf
from lrkit import schedules as S

from _common import BATCH, EPOCHS, FINDER_STEPS, SMALL

from sklearn.datasets import load_digits


class Digits(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": torch.as_tensor(self.x[i], dtype=torch.long), "labels": int(self.y[i])}


x, y = load_digits(return_X_y=True)
order = np.random.default_rng(0).permutation(len(x))[: 640 if SMALL else len(x)]
x, y = x[order].astype(int), y[order]
cut = int(0.8 * len(x))
torch.manual_seed(0)
config = transformers.BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64, num_labels=10)
model = transformers.BertForSequenceClassification(config)
args = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH,
                                      num_train_epochs=EPOCHS, report_to="none", use_cpu=True, save_strategy="no",
                                      logging_steps=1, eval_strategy="epoch", seed=0, disable_tqdm=True)
doctor = lhf.LRDoctorCallback(guard=False)
trainer = transformers.Trainer(model=model, args=args, train_dataset=Digits(x[:cut], y[:cut]),
                               eval_dataset=Digits(x[cut:], y[cut:]), callbacks=[doctor])

# 1. the LR finder on the Trainer's own model, optimizer, dataloader and loss; writes args.learning_rate
result = lhf.find_lr(trainer, num_iter=FINDER_STEPS, progress=False)
print(result.summary())

# 2. an lrkit schedule at the suggested peak instead of lr_scheduler_type
total = EPOCHS * len(trainer.get_train_dataloader())
trainer.create_optimizer()
schedule = S.warmup(S.cosine(args.learning_rate, total - total // 10), warmup_steps=total // 10)
trainer.lr_scheduler = lt.to_torch(schedule, trainer.optimizer)

# 3. train; the doctor callback read every logged loss
trainer.train()
metrics = trainer.evaluate()
print(f"trained {trainer.state.global_step} steps at peak LR {args.learning_rate:.3g}: val loss "
      f"{metrics['eval_loss']:.3f}; doctor: {doctor.diagnosis.verdict}")
