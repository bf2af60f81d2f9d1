"""Train with the Hugging Face Trainer without choosing a learning rate.

``TrainingArguments`` has no ``learning_rate`` (its default is ignored); the ``AutopilotCallback``
runs the finder on the Trainer's model and data, plans warmup-then-decay for the run and guards
it. The model is a small classifier built in code (nothing is downloaded). Run::

    python examples/autopilot_transformers.py            # 600 steps
    python examples/autopilot_transformers.py --steps 150
"""
from __future__ import annotations

import argparse
import logging
import tempfile

import torch
from sklearn.datasets import load_digits
from transformers import Trainer, TrainingArguments

from lrkit.transformers import AutopilotCallback


class DigitsClassifier(torch.nn.Module):
    """Any module returning ``{"loss": ...}`` works with the Trainer (a PreTrainedModel too)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(self, pixels, labels=None):
        logits = self.net(pixels)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "labels": self.y[i]}


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the run")
    ap.add_argument("--report", metavar="DIR", help="write DIR/report.html (self-contained) at the end")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    train, val = Rows(x[:1400], y[:1400]), Rows(x[1400:], y[1400:])
    pilot = AutopilotCallback()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=32,
                                  logging_steps=1, eval_strategy="steps", eval_steps=max(1, args.steps // 10),
                                  save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0)
        trainer = Trainer(model=DigitsClassifier(), args=targs, train_dataset=train, eval_dataset=val,
                          callbacks=[pilot])                     # no learning_rate anywhere
        trainer.train()
        final = float(trainer.evaluate()["eval_loss"])
    print(pilot.pilot.report())
    if args.report:  # the plan, the run as flown, every intervention
        from lrkit.report.autopilot_report import write_autopilot_report

        print(f"report: {write_autopilot_report(pilot, args.report, seed=0)}")
    print(f"final validation loss {final:.4f} after {args.steps} steps "
          f"(+{pilot.plan.finder_cost_steps} finder steps)")
    return final


if __name__ == "__main__":
    main()
