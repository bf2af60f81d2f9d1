"""Plain PyTorch under DDP, as ``torchrun`` launches it, with no learning rate chosen.

Every rank runs the same script: the autopilot's finder trains through the DDP model (gradients
averaged over the ranks) and decides on the ranks' mean losses, so every rank gets the same plan;
the guard then reads the loss, gradient norm and validation loss averaged over the ranks, so a
rollback happens on every rank at the same step and the replicas stay identical.

Run: torchrun --nproc_per_node=2 examples/pytorch_ddp.py    (CPUs: gloo; one GPU per rank: nccl)
     python examples/pytorch_ddp.py                          (the same script in one process)
     LRKIT_EXAMPLE_SMALL=1 ...                               (a few seconds, as the tests run it)
"""
import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lrkit.torch as lt

from _common import BATCH, EPOCHS, digits

launched = "RANK" in os.environ  # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
cuda = torch.cuda.is_available()
device = torch.device("cpu")
if launched:
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
elif cuda:
    device = torch.device("cuda")
rank = dist.get_rank() if launched else 0
torch.set_num_threads(1)
torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)

xt, yt, xv, yv = (torch.from_numpy(a) for a in digits())
train_set = TensorDataset(xt, yt)
sampler = DistributedSampler(train_set, shuffle=True, seed=0) if launched else None  # a shard per rank
train = DataLoader(train_set, batch_size=BATCH, sampler=sampler, shuffle=sampler is None)
val = DataLoader(TensorDataset(xv, yv), batch_size=256)  # every rank validates on all of it
net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
model = DDP(net, device_ids=[device.index] if cuda else None) if launched else net
optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)  # any LR: the autopilot sets it
loss_fn = torch.nn.CrossEntropyLoss()
total = EPOCHS * len(train)


def validate() -> float:
    model.eval()
    with torch.no_grad():
        losses = [loss_fn(model(x.to(device)), y.to(device)).item() for x, y in val]
    model.train()
    return sum(losses) / len(losses)


# the finder runs here, on every rank (at most 30% of the run); the plan is the same everywhere
pilot = lt.autopilot(model, optimizer, loss_fn, train, val_loader=val, train_steps=total, device=device)
step = 0
for epoch in range(EPOCHS):
    if sampler is not None:
        sampler.set_epoch(epoch)  # a new shuffle of every rank's shard each epoch
    for x, y in train:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()  # DDP averages the gradients over the ranks here
        pilot.after_backward(loss)  # a bad batch's update is skipped on every rank alike
        optimizer.step()
        val_loss = validate() if (step + 1) % len(train) == 0 else None
        pilot.after_step(loss, val_loss=val_loss)  # the doctor and the guard, on the ranks' means
        pilot.scheduler.step()
        step += 1
final = validate()
with torch.no_grad():
    accuracy = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in val) / len(xv)
world = dist.get_world_size() if launched else 1
if rank == 0:
    print(f"trained {step} steps on {world} process(es) at peak LR {pilot.plan.peak_lr:.3g}: val loss {final:.3f}, "
          f"val accuracy {accuracy:.3f}, {len(pilot.events)} intervention(s); doctor: {pilot.pilot.doctor.diagnosis.verdict}")
if launched:
    del model, pilot  # DDP's reducer goes before the process group does
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
