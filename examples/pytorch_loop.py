"""Plain PyTorch: find the LR, train with an lrkit warmup+cosine schedule, watch with the doctor.

Run: python examples/pytorch_loop.py   (LRKIT_EXAMPLE_SMALL=1 for a few seconds' version)
"""
import torch
from torch.utils.data import DataLoader, TensorDataset

import lrkit.torch as lt
from lrkit import schedules as S

from _common import BATCH, EPOCHS, FINDER_STEPS, digits

torch.manual_seed(0)
xt, yt, xv, yv = (torch.from_numpy(a) for a in digits())
train = DataLoader(TensorDataset(xt, yt), batch_size=BATCH, shuffle=True)
val = DataLoader(TensorDataset(xv, yv), batch_size=256)
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()
total = EPOCHS * len(train)

# 1. the LR finder (model, optimizer and RNGs come back exactly as they were)
result = lt.find_lr(model, optimizer, loss_fn, train, val_loader=val, num_iter=FINDER_STEPS,
                    train_steps=total, progress=False)
print(result.summary())

# 2. an lrkit schedule at the suggested peak, as a real torch LRScheduler
schedule = S.warmup(S.cosine(result.suggestion, total - total // 10), warmup_steps=total // 10)
scheduler = lt.to_torch(schedule, optimizer)

# 3. the doctor watches every step (and the guard would roll back a divergence)
doctor = lt.TorchDoctor(model, optimizer, guard=True, snapshot_every=20)
step = 0
for epoch in range(EPOCHS):
    for x, y in train:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        doctor.after_backward(loss)
        optimizer.step()
        doctor.after_step(step, loss)   # before scheduler.step(): it puts the scheduler's LR back
        scheduler.step()
        step += 1
with torch.no_grad():
    accuracy = sum((model(x).argmax(1) == y).sum().item() for x, y in val) / len(xv)
print(f"trained {step} steps at peak LR {result.suggestion:.3g}: val accuracy {accuracy:.3f}; "
      f"doctor: {doctor.diagnosis.verdict}")
