#!/usr/bin/env python3
"""Write the pre-trained-weights fixture tests/fixtures/pretrained/resnet8_w4_grey.safetensors.

A stand-in for a hub checkpoint that `models.X.pretrained: FILE` points at: a CIFAR-stem
ResNet-8 with width multiplier 0.25 (stages of 4/8/16 channels), built from torchvision's
ResNet/BasicBlock so the state dict has torchvision's names, with 1 input channel (it fits the
built-in 8x8 greyscale digits dataset) and a 1000-class head like an ImageNet checkpoint, so a
10-class model loads it with the head skipped. Weights are torch's initialisation with
non-trivial batch-norm affine parameters; running statistics come from a few random batches
in train mode (so they are not 0/1, and `num_batches_tracked` is kept as torchvision saves
it). Seeded: the same torch version writes the same bytes. About 93 KB, most of it the
1000 x 16 head.

The engine's counterpart is `Arch::ResNet { depth: 8, width_mult: 0.25, stem: Stem::Cifar }`
with `in_channels: 1, image_size: 8` (tests in src/engine/checkpoint.rs).

Needs torch, torchvision and safetensors (CPU wheels are enough; PyPI's default Linux wheels
also pull in about 5 GB of CUDA libraries). From the repository root (.cache is git-ignored):
  python3 -m venv .cache/torch-venv
  .cache/torch-venv/bin/pip install torch torchvision safetensors numpy
  .cache/torch-venv/bin/python tools/fixtures_pretrained.py
"""
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# One ResNet definition for every fixture: the engine parity fixtures' scaled torchvision
# ResNet and its batch-norm randomisation (importing it only seeds torch).
from fixtures_engine import randomise, resnet, state  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pretrained")
NAME = "resnet8_w4_grey.safetensors"
SEED = 11
IN_CHANNELS = 1
IMAGE = 8
CLASSES = 1000


def build():
    torch.manual_seed(SEED)
    m = resnet(8, 0.25, False, CLASSES)
    # fixtures_engine's resnet() has a 3-channel stem; swap in a greyscale one (CIFAR stem:
    # 3x3, stride 1, padding 1, no bias, as there).
    m.conv1 = nn.Conv2d(IN_CHANNELS, m.bn1.num_features, 3, 1, 1, bias=False)
    randomise(m)
    # Running statistics of a few batches (momentum 0.1 from randomise's values), as a
    # trained checkpoint has; shifted, scaled inputs keep mean and variance away from 0/1.
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m.features(torch.randn(16, IN_CHANNELS, IMAGE, IMAGE) * 1.5 + 0.3)
    return m


def main():
    torch.use_deterministic_algorithms(True)
    m = build()
    weights = state(m)
    assert weights["conv1.weight"].shape == (4, IN_CHANNELS, 3, 3)
    assert weights["fc.weight"].shape == (CLASSES, 16)
    assert int(weights["bn1.num_batches_tracked"]) == 4
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, NAME)
    save_file(weights, path, metadata={"format": "pt", "source": "tools/fixtures_pretrained.py"})
    n = sum(v.numel() for k, v in weights.items() if not k.endswith("num_batches_tracked"))
    print(f"{path}: {len(weights)} tensors, {n} values, {os.path.getsize(path)} bytes")
    print("torch", torch.__version__)


if __name__ == "__main__":
    main()
