#!/usr/bin/env python3
"""PyTorch CPU side of the checkpoint benchmark (run by `cargo bench --bench checkpoint`).

For each model: the same architecture as the engine's (torchvision's ResNet with the CIFAR stem:
conv1 3x3 stride 1, no max-pool; ResNet-8 from torchvision's BasicBlock at widths 16/32/64, as
tools/fixtures_engine.py builds it), one SGD step (momentum 0.9, weight decay 5e-4) on a random
batch so that the optimizer holds its momentum buffers, then 1 + ITERS times
`torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, path)` (state_dict()
calls included, as the Rust side includes gathering its tensors; an untimed os.sync() before
each), each followed by the same save made atomic as write_state's is (to a temporary file,
then os.replace over the last), and 1 + ITERS times `torch.load`, the first of each apart.
Prints one JSON object: name -> {first_save: s, save: [s...], atomic_save: [s...],
load: [s...], bytes: n, floats: n}.
Usage: checkpoint_torch.py THREADS ITERS DIR MODELS_JSON
(MODELS_JSON: [{"name", "depth", "width_mult", "in_channels", "image_size", "classes"}...])
"""
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet


def resnet_cifar(depth, width_mult, in_channels, classes):
    if depth == 8:
        m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
        widths, blocks = [16, 32, 64], [1, 1, 1]
    elif depth in (10, 18, 34):
        blocks = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth]
        m = ResNet(BasicBlock, blocks, num_classes=classes)
        widths = [64, 128, 256, 512]
    else:
        raise SystemExit(f"checkpoint_torch.py: no basic-block ResNet of depth {depth}")
    w = [max(1, round(c * width_mult)) for c in widths]
    m.inplanes = w[0]
    m.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
    m.bn1 = nn.BatchNorm2d(w[0])
    m.maxpool = nn.Identity()
    layers = [m._make_layer(BasicBlock, w[i], blocks[i], stride=1 if i == 0 else 2) for i in range(len(w))]
    for i in range(4):
        setattr(m, f"layer{i + 1}", layers[i] if i < len(layers) else nn.Identity())
    m.fc = nn.Linear(w[-1], classes)
    return m


def main():
    threads, iters = int(sys.argv[1]), int(sys.argv[2])
    folder = sys.argv[3]
    specs = json.loads(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    for s in specs:
        m = resnet_cifar(s["depth"], s["width_mult"], s["in_channels"], s["classes"])
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        m.train()
        x = torch.randn(64, s["in_channels"], s["image_size"], s["image_size"])
        y = torch.randint(0, s["classes"], (64,))
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        path = os.path.join(folder, f"{s['name']}.pt")
        atomic_path = os.path.join(folder, f"{s['name']}.atomic.pt")
        save, atomic, load = [], [], []
        for _ in range(iters + 1):
            os.sync()  # untimed, as on the Rust side: each write starts with no writeback pending
            t = time.perf_counter()
            torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, path)
            save.append(time.perf_counter() - t)
            # As write_state does: a temporary file renamed over the last one.
            os.sync()
            t = time.perf_counter()
            torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, atomic_path + ".tmp")
            os.replace(atomic_path + ".tmp", atomic_path)
            atomic.append(time.perf_counter() - t)
        size = os.path.getsize(path)
        for _ in range(iters + 1):
            t = time.perf_counter()
            torch.load(path, weights_only=True)
            load.append(time.perf_counter() - t)
        # Float values of the model: parameters and running statistics (what the engine counts).
        floats = sum(t.numel() for t in m.state_dict().values() if t.is_floating_point())
        out[s["name"]] = {
            "first_save": save[0], "save": save[1:], "atomic_save": atomic[1:], "load": load[1:],
            "bytes": size, "floats": floats,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
