#!/usr/bin/env python3
"""Write the training-recipe fixtures (gradient accumulation, weight EMA) to
tests/fixtures/engine/recipes.io.safetensors.

Needs: pip install torch safetensors numpy (CPU wheels are enough). Run from the repository root
after tools/fixtures_engine.py (it starts from that script's `cnn` weights):
    python tools/fixtures_recipes.py

The model is the fixtures' tiny CNN (conv-BN-ReLU-pool x2, a linear head, 5 classes) on 10
random 3x8x8 images, in training mode (batch norm on batch statistics).

accumulate: SGD (lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4), gradients of K = 2
  batches summed before each step, global-norm clipping at 2.5 of the sum (binding on steps 2 and 4 only). Two epochs of batches
  of 4, 4 and 2 images (orders `accumulate.order0`, `accumulate.order1`), so each epoch has a full
  group (4 + 4 images) and a last short one (2 images). Each batch's mean loss is weighted by its
  share of its group's images (0.5, 0.5; then 1.0): every step is one of the group's mean loss,
  as distillery defines `accumulate`. The state dict after every optimizer step:
  `accumulate.step<i>.<name>` (i = 1..4).
ema: AdamW (lr 1e-2, weight decay 0.01), one step per batch of 5 images, 3 epochs of a fixed
  order, torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8),
  use_buffers=True) updated after every step. The average's state dict after each update:
  `ema.step<i>.<name>` (i = 1..6), batch-norm running statistics included.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "export"))
from load import Cnn  # noqa: E402  (the exported loader's Cnn: one definition)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "engine")
torch.manual_seed(11)
# Binds on steps 2 and 4 only (norms 2.18, 3.70, 1.18, 2.95), so a wrong weighting shows either way.
CLIP = 2.5
torch.use_deterministic_algorithms(True)


def model():
    m = Cnn(3, [4, 8], 5)
    m.load_state_dict(load_file(os.path.join(OUT, "cnn.weights.safetensors")))
    return m.train()


def state(m, prefix):
    return {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in m.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def main():
    x = torch.randn(10, 3, 8, 8)
    y = torch.randint(0, 5, (10,))
    out = {"x": x, "labels": y}

    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    k, step = 2, 0
    for epoch in range(2):
        order = torch.randperm(10)
        out[f"accumulate.order{epoch}"] = order
        batches = [order[0:4], order[4:8], order[8:10]]
        for g in range(0, len(batches), k):
            group = batches[g:g + k]
            n = sum(len(b) for b in group)
            opt.zero_grad()
            for b in group:
                loss = F.cross_entropy(m(x[b]), y[b])
                (loss * (len(b) / n)).backward()
            norm = torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP)
            print(f"accumulate step {step + 1}: gradient norm {norm:.3f} (clipped at {CLIP})")
            opt.step()
            step += 1
            out.update(state(m, f"accumulate.step{step}"))

    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01)
    ema = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    step = 0
    for epoch in range(3):
        for b in [torch.arange(0, 5), torch.arange(5, 10)]:
            opt.zero_grad()
            F.cross_entropy(m(x[b]), y[b]).backward()
            opt.step()
            ema.update_parameters(m)
            step += 1
            out.update(state(ema.module, f"ema.step{step}"))
    save_file(out, os.path.join(OUT, "recipes.io.safetensors"))
    print(f"wrote {len(out)} tensors")


if __name__ == "__main__":
    main()
