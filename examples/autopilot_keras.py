"""Train a digits classifier with Keras 3 ``model.fit`` without choosing a learning rate.

The model is compiled with a bare optimizer (its LR is ignored); the ``AutopilotCallback`` gets
the training data for its finder (a Keras callback does not see fit()'s data), plans warmup-then-
decay for the run and guards it. Run::

    python examples/autopilot_keras.py            # 600 steps
    python examples/autopilot_keras.py --steps 150
"""
from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from lrkit.keras import AutopilotCallback  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the run")
    ap.add_argument("--report", metavar="DIR", help="write DIR/report.html (self-contained) at the end")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keras.utils.set_random_seed(0)
    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target.astype("int64")
    x_train, y_train, x_val, y_val = x[:1400], y[:1400], x[1400:], y[1400:]
    batch, per_epoch = 32, 1400 // 32 + 1
    epochs = max(1, args.steps // per_epoch)
    steps = min(args.steps, epochs * per_epoch)

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(),            # its LR is ignored
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pilot = AutopilotCallback(x_train, y_train, batch_size=batch, val_data=(x_val, y_val), train_steps=steps)
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, steps_per_epoch=min(per_epoch, steps),
              validation_data=(x_val, y_val), callbacks=[pilot], verbose=0)
    final = float(model.evaluate(x_val, y_val, verbose=0))
    print(pilot.pilot.report())
    if args.report:  # the plan, the run as flown, every intervention
        from lrkit.report.autopilot_report import write_autopilot_report

        print(f"report: {write_autopilot_report(pilot, args.report, seed=0)}")
    print(f"final validation loss {final:.4f} after {steps} steps (+{pilot.plan.finder_cost_steps} finder steps)")
    return final


if __name__ == "__main__":
    main()
