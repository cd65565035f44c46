#!/usr/bin/env python3
"""Write tests/fixtures/engine/schedules_steps.json: PyTorch's learning-rate schedulers value by
value, for the schedules stepped per optimizer step and the ones added beside cosine/multistep
(linear, exponential, one-cycle with its momentum cycle). schedules.json (tools/fixtures_engine.py)
has the per-epoch cosine/multistep/none cases.

Needs only torch:  python3 -m venv .cache/torch-venv && .cache/torch-venv/bin/pip install torch
Run from the repository root:  .cache/torch-venv/bin/python tools/fixtures_schedules.py

Each case is {"epochs", "steps_per_epoch", "step_every", "warmup_epochs", "lr": [...],
"momentum": [...]}: the lr (and SGD momentum or AdamW beta1) each optimizer step uses, read from
the param group before `optimizer.step()`; the scheduler is stepped after every batch
(`step_every: step`) or after each epoch's last batch (`step_every: epoch`). A linear warm-up is
torch's SequentialLR(LinearLR(start_factor=1/(w+1), total_iters=w), main, milestones=[w]) in the
same units.
"""
import json
import os

import torch
import torch.nn as nn
from torch.optim import lr_scheduler as S

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "engine", "schedules_steps.json")


def run(make_opt, make_sched, epochs, spe, every, warmup):
    p = [nn.Parameter(torch.zeros(1))]
    opt = make_opt(p)
    units = epochs * (spe if every == "step" else 1)
    w = warmup * (spe if every == "step" else 1)
    main = make_sched(opt, units - w, units)
    sched = main if w == 0 else S.SequentialLR(
        opt, [S.LinearLR(opt, start_factor=1 / (w + 1), total_iters=w), main], milestones=[w])
    lrs, moms = [], []
    for e in range(epochs):
        for s in range(spe):
            g = opt.param_groups[0]
            lrs.append(g["lr"])
            moms.append(g["betas"][0] if "betas" in g else g["momentum"])
            opt.step()
            if every == "step":
                sched.step()
        if every == "epoch":
            sched.step()
    return {"epochs": epochs, "steps_per_epoch": spe, "step_every": every, "warmup_epochs": warmup,
            "lr": lrs, "momentum": moms}


def sgd(p):
    return torch.optim.SGD(p, lr=0.1, momentum=0.9)


def adamw(p):
    return torch.optim.AdamW(p, lr=0.1, betas=(0.9, 0.999))


def params_case(make_opt, steps):
    """A 2x3 linear layer (no bias) trained `steps` steps on a fixed batch, loss = mean(y^2) / 2,
    under OneCycleLR(max_lr=0.1, total_steps=steps) with its momentum cycle: the weights after
    each step, so the cycled momentum (beta1) is checked in the update, not only its value."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False)
    w0 = lin.weight.detach().clone()
    x = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.2], [-0.7, 0.1, 2.0], [1.5, 1.0, -0.4]])
    opt = make_opt(lin.parameters())
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    after = []
    for _ in range(steps):
        opt.zero_grad()
        (lin(x).pow(2).mean() / 2).backward()
        opt.step()
        sched.step()
        after.append(lin.weight.detach().flatten().tolist())
    return {"w0": w0.flatten().tolist(), "x": x.flatten().tolist(), "after": after}


def main():
    import warnings
    warnings.filterwarnings("ignore")
    out = {
        "cosine_step_e4_s5_w1": run(sgd, lambda o, n, t: S.CosineAnnealingLR(o, T_max=n), 4, 5, "step", 1),
        "cosine_step_e3_s4_w0": run(sgd, lambda o, n, t: S.CosineAnnealingLR(o, T_max=n), 3, 4, "step", 0),
        "none_step_e3_s4_w1": run(sgd, lambda o, n, t: S.ConstantLR(o, factor=1.0, total_iters=0), 3, 4, "step", 1),
        "multistep_step_e6_s3_w0": run(sgd, lambda o, n, t: S.MultiStepLR(o, [6, 12], 0.1), 6, 3, "step", 0),
        "linear_epoch_e10_w0": run(sgd, lambda o, n, t: S.LinearLR(o, 1.0, 0.1, total_iters=n), 10, 2, "epoch", 0),
        "linear_epoch_e10_w2": run(sgd, lambda o, n, t: S.LinearLR(o, 1.0, 0.0, total_iters=n), 10, 2, "epoch", 2),
        "linear_step_e3_s5_w1": run(sgd, lambda o, n, t: S.LinearLR(o, 1.0, 0.0, total_iters=n), 3, 5, "step", 1),
        "exponential_epoch_e8_w0": run(sgd, lambda o, n, t: S.ExponentialLR(o, 0.8), 8, 2, "epoch", 0),
        "exponential_step_e3_s4_w1": run(sgd, lambda o, n, t: S.ExponentialLR(o, 0.95), 3, 4, "step", 1),
        "onecycle_sgd_e4_s5": run(sgd, lambda o, n, t: S.OneCycleLR(o, max_lr=0.1, total_steps=t), 4, 5, "step", 0),
        "onecycle_sgd_linear_e4_s5": run(sgd, lambda o, n, t: S.OneCycleLR(
            o, max_lr=0.2, total_steps=t, pct_start=0.25, anneal_strategy="linear", div_factor=10,
            final_div_factor=100, base_momentum=0.8, max_momentum=0.9), 4, 5, "step", 0),
        "onecycle_adamw_e3_s7": run(adamw, lambda o, n, t: S.OneCycleLR(o, max_lr=0.05, total_steps=t), 3, 7, "step", 0),
        "onecycle_nomomentum_epoch_e10": run(sgd, lambda o, n, t: S.OneCycleLR(
            o, max_lr=0.1, total_steps=t, cycle_momentum=False), 10, 3, "epoch", 0),
    }
    out["params_onecycle_sgd_nesterov"] = params_case(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), 8)
    out["params_onecycle_adamw"] = params_case(lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.01), 8)
    with open(OUT, "w") as fh:
        json.dump(out, fh, indent=1)
    print("torch", torch.__version__, "->", os.path.normpath(OUT), len(out), "cases")


if __name__ == "__main__":
    main()
