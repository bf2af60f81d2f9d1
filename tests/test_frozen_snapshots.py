"""Snapshots leave out the parameters that are frozen and in no optimizer (a LoRA fine-tune's base
model): only a fingerprint is kept, a frozen tensor changed in place (an EMA teacher) is caught and
copied from then on, and a frozen parameter in an optimizer (gradual unfreezing) is copied."""
from __future__ import annotations

import doctest
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")

import lrkit.integrations.torch.frozen as frozen_mod  # noqa: E402
import lrkit.torch as lt  # noqa: E402
from lrkit.doctor.snapshot_set import state_nbytes  # noqa: E402
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot  # noqa: E402

pytestmark = [pytest.mark.torch]
W = 512  # the width of the frozen layers


class Adapted(torch.nn.Module):
    """A frozen 'base' (four 256x256 layers) with a trainable low-rank adapter on each and a head."""

    def __init__(self, rank=2):
        super().__init__()
        torch.manual_seed(0)
        self.base = torch.nn.ModuleList(torch.nn.Linear(W, W) for _ in range(4)).requires_grad_(False)
        self.down = torch.nn.ModuleList(torch.nn.Linear(W, rank, bias=False) for _ in range(4))
        self.up = torch.nn.ModuleList(torch.nn.Linear(rank, W, bias=False) for _ in range(4))
        self.head = torch.nn.Linear(W, 3)

    def forward(self, x):
        for base, down, up in zip(self.base, self.down, self.up):
            x = torch.tanh(base(x) + up(down(x)))
        return self.head(x)


class View(RecyclingState):
    def __init__(self, model, optimizers):
        self.model, self.optimizers = model, optimizers

    def snapshot(self):
        return self._take(self.model, self.optimizers)

    def restore(self, snap):
        snap.restore(self.model, self.optimizers)


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _train(model, opt, steps=3, after=None):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, W, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if after is not None:
            after()


def test_the_modules_examples():
    assert doctest.testmod(frozen_mod, optionflags=doctest.ELLIPSIS).failed == 0


def test_a_frozen_base_outside_the_optimizer_is_fingerprinted_not_copied_and_the_rest_restored_bitwise():
    model = Adapted()
    opt = torch.optim.AdamW(_trainable(model), lr=1e-2)
    _train(model, opt, 1)  # Adam moments exist
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    view = View(model, [opt])
    snap = view.snapshot()
    # the adapters, the head, their Adam moments and the RNGs: under 5% of the model's parameters alone
    assert state_nbytes(snap) < 0.05 * full < 0.05 * state_nbytes(TorchSnapshot.take(model, [opt]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    _train(model, opt, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing frozen moved: no warning
        view.restore(snap)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(opt.state.values(), moments))


def test_a_snapshot_with_left_out_parameters_survives_pickling():
    model = Adapted()
    opt = torch.optim.SGD(_trainable(model), lr=0.1, momentum=0.9)
    snap = pickle.loads(pickle.dumps(View(model, [opt]).snapshot()))  # storage="disk" pickles it
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt, 2)
    snap.restore(model, [opt])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_frozen_teacher_updated_in_place_is_caught_and_copied_from_then_on():
    student = torch.nn.Linear(W, 3)
    teacher = torch.nn.Linear(W, 3).requires_grad_(False)
    model = torch.nn.ModuleDict({"student": student, "teacher": teacher})
    model.forward = lambda x: student(x)  # noqa: E731 - the student trains; the teacher follows it

    def ema():
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(0.9).add_(0.1 * s)

    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    view = View(model, [opt])
    first = view.snapshot()  # the teacher has not moved yet: fingerprinted
    assert isinstance(first.model_tensors["teacher.weight"], frozen_mod.Unchanged)
    _train(model, opt, 2, after=ema)
    second = view.snapshot()  # the teacher moved since: copied in full, from now on
    assert sorted(view._frozen.moving) == ["teacher.bias", "teacher.weight"]
    assert not isinstance(second.model_tensors["teacher.weight"], frozen_mod.Unchanged)
    kept = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt, 2, after=ema)
    view.restore(second)
    assert all(torch.equal(p, kept[n]) for n, p in model.named_parameters())
    with pytest.warns(RuntimeWarning, match=r"2 frozen parameter\(s\) outside the optimizer changed since this "
                                            r"snapshot.*teacher\.weight"):
        first.restore(model, [opt])  # taken before the change was seen: the teacher cannot go back


def test_a_frozen_parameter_in_the_optimizer_is_copied_gradual_unfreezing():
    model = Adapted()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # the base is in the optimizer, frozen for now
    view = View(model, [opt])
    snap = view.snapshot()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.base.requires_grad_(True)  # unfrozen
    _train(model, opt, 2)
    assert not torch.equal(model.base[0].weight, before["base.0.weight"])
    view.restore(snap)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_finder_on_a_frozen_base_leaves_every_parameter_bitwise():
    model = Adapted()
    opt = torch.optim.AdamW(_trainable(model), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, W, generator=g), torch.randint(0, 3, (512,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = lt.find_lr(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=200, progress=False)
    assert result.suggestion > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())


def test_the_torch_guard_rolls_back_a_nan_in_an_adapter_fine_tune():
    model = Adapted()
    opt = torch.optim.AdamW(_trainable(model), lr=1e-3)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    g = torch.Generator().manual_seed(0)
    watch = lt.TorchDoctor(model, opt, guard=True, snapshot_every=5)
    for step in range(40):
        x, y = torch.randn(16, W, generator=g), torch.randint(0, 3, (16,), generator=g)
        if step == 20:
            x[0, 0] = float("nan")
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
    assert [i.verdict for i in watch.interventions] == ["nan"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_a_frozen_tensor_that_cannot_be_sampled_is_copied(monkeypatch):
    # a quantized base weight (QLoRA's 4-bit, say) that reshape() cannot read: copied as before
    model = Adapted()
    opt = torch.optim.SGD(_trainable(model), lr=0.1)
    odd = model.base[0].weight
    pick = frozen_mod._pick
    monkeypatch.setattr(frozen_mod, "_pick", lambda t: None if t is odd else pick(t))
    snap = View(model, [opt]).snapshot()
    assert not isinstance(snap.model_tensors["base.0.weight"], frozen_mod.Unchanged)
    assert isinstance(snap.model_tensors["base.1.weight"], frozen_mod.Unchanged)
    with torch.no_grad():
        odd.mul_(2.0)
    before = odd.detach().clone() / 2.0
    snap.restore(model, [opt])
    assert torch.equal(odd, before)
