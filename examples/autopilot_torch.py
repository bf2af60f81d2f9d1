"""Train a digits classifier in plain PyTorch without choosing a learning rate.

The autopilot runs the LR finder (at most 30% of the run), picks the peak LR and a warmup-then-
decay schedule for Adam and this run length, and guards the run (rollback and a lower LR on
divergence, a plateau reduction when validation stalls). Run::

    python examples/autopilot_torch.py            # 600 steps, about 10 s on one CPU core
    python examples/autopilot_torch.py --steps 150
    python examples/autopilot_torch.py --report out   # also out/report.html: the plan, the run, every intervention
    python examples/autopilot_torch.py --optimizer muon   # torch.optim.Muon + AdamW, joined by lt.combine
"""
from __future__ import annotations

import argparse
import logging

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lrkit.torch as lt


def data(batch_size: int = 32):
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=512)
    return train, val


def validate(model, val) -> float:
    model.eval()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y).item() for x, y in val]
    model.train()
    return sum(losses) / len(losses)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the run")
    ap.add_argument("--report", metavar="DIR", help="write DIR/report.html (self-contained) at the end")
    ap.add_argument("--optimizer", choices=("adam", "muon"), default="adam",
                    help="muon: torch.optim.Muon for the weight matrices, AdamW for the rest (torch's recipe)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, val = data()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters())          # its LR is ignored
    if args.optimizer == "muon":  # two optimizers of one update, as one; only the ratio of their LRs is kept
        muon = torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02)
        adamw = torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=3e-4)
        optimizer = lt.combine(muon, adamw)
    loss_fn = torch.nn.functional.cross_entropy

    # the finder runs here; the plan (peak LR, schedule, reasons) is logged to "lrkit.autopilot"
    pilot = lt.autopilot(model, optimizer, loss_fn, train, val_loader=val, train_steps=args.steps)

    step, every = 0, max(1, args.steps // 10)
    while step < args.steps:
        for x, y in train:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            pilot.after_backward(loss)                   # a bad batch's update is skipped (optional)
            optimizer.step()
            val_loss = validate(model, val) if (step + 1) % every == 0 else None
            pilot.after_step(loss, val_loss=val_loss)    # doctor + guard (+ plateau with val_loss)
            pilot.scheduler.step()                       # a real torch LRScheduler
            step += 1
            if step == args.steps:
                break
    final = validate(model, val)
    print(pilot.report())
    print(f"final validation loss {final:.4f} after {args.steps} steps "
          f"(+{pilot.plan.finder_cost_steps} finder steps)")
    if args.report:
        from lrkit.report.autopilot_report import write_autopilot_report

        print(f"report: {write_autopilot_report(pilot, args.report, seed=0)}")
    # a checkpoint resumes the autopilot: torch.save({"autopilot": pilot.state_dict(), ...}) and
    # lt.autopilot(model, optimizer, loss_fn, train, resume=checkpoint["autopilot"])
    return final


if __name__ == "__main__":
    main()
