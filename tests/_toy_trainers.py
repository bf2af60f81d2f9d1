"""Small real Trainers (snapshot/restore/step) shared by the guard and autopilot tests."""
from __future__ import annotations

import copy
import math

import numpy as np


class Dying:
    """A network an LR above 1 kills in its second update: two huge losses, then its first loss
    (chance) for ever, whatever the LR; below 1 it learns at ``rate`` per step.
    State: (dead, trained steps, steps since death, rng)."""

    def __init__(self, rate: float = 0.05):
        self.dead, self.trained, self.since, self.rate = False, 0, 0, rate
        self.rng = np.random.default_rng(0)

    def snapshot(self):
        return (self.dead, self.trained, self.since, copy.deepcopy(self.rng.bit_generator.state))

    def restore(self, s):
        self.dead, self.trained, self.since = s[0], s[1], s[2]
        self.rng.bit_generator.state = copy.deepcopy(s[3])

    def evaluate(self):
        return None

    def step(self, lr):
        noise = float(np.exp(0.01 * self.rng.standard_normal()))
        if self.dead:
            self.since += 1
            return (500.0 if self.since <= 2 else 2.3) * noise
        if lr > 1.0 and self.trained > 0:
            self.dead = True
        self.trained += 1
        return 2.3 * math.exp(-self.rate * self.trained) * noise + 0.05


class Damaged:
    """A network an LR above ``edge`` damages in its second update: one loss 4x its start, then a
    noisy level of 1.0 for ever that neither blows up nor stays flat at its start; at or below
    ``edge`` it learns towards 0.3. ``evaluate()`` returns the noiseless level.
    State: (damaged, trained steps, rng)."""

    def __init__(self, edge: float = 0.01, rate: float = 0.05):
        self.damaged, self.trained, self.edge, self.rate = False, 0, edge, rate
        self.rng = np.random.default_rng(0)
        self._spike = False

    def snapshot(self):
        return (self.damaged, self.trained, copy.deepcopy(self.rng.bit_generator.state))

    def restore(self, s):
        self.damaged, self.trained = s[0], s[1]
        self.rng.bit_generator.state = copy.deepcopy(s[2])

    def level(self) -> float:
        return 1.0 if self.damaged else 2.3 * math.exp(-self.rate * self.trained) + 0.3

    def evaluate(self):
        return self.level()

    def step(self, lr):
        noise = float(np.exp(0.1 * self.rng.standard_normal()))
        if not self.damaged and lr > self.edge and self.trained > 0:
            self.damaged = True
            return 4 * 2.6 * noise
        if not self.damaged:
            self.trained += 1
        return self.level() * noise
