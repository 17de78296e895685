"""Train a small spiking network in torch through `dualstep.multi_step_forward`.

Linear -> LIF (surrogate gradient) -> firing rate -> Linear on synthetic spike trains whose
rates tell two classes apart; plain SGD; the loss goes down.

    python examples/train_torch.py
"""

from __future__ import annotations

import snn_common as snn


def main() -> list[float]:
    x, labels = snn.data()
    losses = snn.train_torch(snn.torch_model(), x, labels)
    for i, loss in enumerate(losses):
        if i % 5 == 0 or i == len(losses) - 1:
            print(f"step {i:3d}  loss {loss:.4f}")
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if not losses[-1] < 0.8 * losses[0]:
        raise SystemExit("the loss did not go down")
    return losses


if __name__ == "__main__":
    main()
