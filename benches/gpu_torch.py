#!/usr/bin/env python3
"""PyTorch eager side of the GPU benchmark (run by benches/gpu.rs, `cargo bench --features cuda
--bench gpu`), on cuda:0: the same models, batch, image size and step. CIFAR stems at 32 px
(3x3 stride-1 first convolution, no max-pool; MobileNetV2's first stride 1), torchvision's
ImageNet models at 224 px; ViT-B/16 is torchvision's vit_b_16 at the given image size. Default
PyTorch settings (cuDNN benchmark off, TF32 as PyTorch defaults it). Prints one JSON object
{train: [s...], infer: [s...]} (seconds per batch, warm-up excluded, each timed to a
cuda.synchronize()).
Usage: gpu_torch.py MODEL BATCH PX WARMUP ITERS
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def resnet(depth, px):
    block, layers = {18: (BasicBlock, [2, 2, 2, 2]), 50: (Bottleneck, [3, 4, 6, 3])}[depth]
    m = ResNet(block, layers, num_classes=10)
    if px <= 64:
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    return m


def mobilenetv2(px):
    m = torchvision.models.MobileNetV2(num_classes=10, dropout=0.0)
    if px <= 64:
        m.features[0][0].stride = (1, 1)
    return m


def main():
    name, batch, px, warmup, iters = sys.argv[1], *(int(a) for a in sys.argv[2:6])
    torch.manual_seed(0)
    dev = torch.device("cuda:0")
    make = {
        "resnet18": lambda: resnet(18, px),
        "resnet50": lambda: resnet(50, px),
        "mobilenetv2": lambda: mobilenetv2(px),
        "vit-b16": lambda: torchvision.models.vit_b_16(image_size=px, num_classes=10),
    }[name]
    m = make().to(dev)
    x = torch.randn(batch, 3, px, px, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    m.train()
    train = []
    for i in range(warmup + iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= warmup:
            train.append(time.perf_counter() - t)
    m.eval()
    infer = []
    with torch.no_grad():
        for i in range(warmup + iters):
            torch.cuda.synchronize()
            t = time.perf_counter()
            m(x)
            torch.cuda.synchronize()
            if i >= warmup:
                infer.append(time.perf_counter() - t)
    print(json.dumps({"train": train, "infer": infer}))


if __name__ == "__main__":
    main()
