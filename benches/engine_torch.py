#!/usr/bin/env python3
"""PyTorch CPU side of the engine benchmark (run by `cargo bench --bench engine`).

Same models, batch and step as benches/engine.rs: batch 64 of 3x32x32, 10 classes; a training
step is forward + cross-entropy + backward + SGD (momentum 0.9, wd 5e-4); inference is a
forward pass in eval mode under no_grad. Prints one JSON object: model -> {train: [s...],
infer: [s...]} (seconds per batch, warm-up excluded).
Usage: engine_torch.py THREADS WARMUP ITERS [MODEL...]
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet


def resnet_cifar(depth):
    if depth == 8:
        m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
        widths, blocks = [16, 32, 64], [1, 1, 1]
    else:
        m = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
        widths, blocks = [64, 128, 256, 512], [2, 2, 2, 2]
    m.inplanes = widths[0]
    m.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    m.bn1 = nn.BatchNorm2d(widths[0])
    m.maxpool = nn.Identity()
    layers = [m._make_layer(BasicBlock, w, b, stride=1 if i == 0 else 2) for i, (w, b) in enumerate(zip(widths, blocks))]
    for i in range(4):
        setattr(m, f"layer{i + 1}", layers[i] if i < len(layers) else nn.Identity())
    m.fc = nn.Linear(widths[-1], 10)
    return m


def mobilenetv2_cifar():
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    m = torchvision.models.MobileNetV2(num_classes=10, inverted_residual_setting=setting, dropout=0.0)
    m.features[0][0].stride = (1, 1)
    return m


def main():
    threads, warmup, iters = (int(a) for a in sys.argv[1:4])
    only = set(sys.argv[4:])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {"resnet18-cifar": lambda: resnet_cifar(18), "mobilenetv2-cifar": mobilenetv2_cifar, "resnet8": lambda: resnet_cifar(8)}
    out = {}
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    for name, make in models.items():
        if only and name not in only:
            continue
        m = make()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        m.train()
        train = []
        for i in range(warmup + iters):
            t = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
            if i >= warmup:
                train.append(time.perf_counter() - t)
        m.eval()
        infer = []
        with torch.no_grad():
            for i in range(warmup + iters):
                t = time.perf_counter()
                m(x)
                if i >= warmup:
                    infer.append(time.perf_counter() - t)
        out[name] = {"train": train, "infer": infer}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
