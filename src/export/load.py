"""Load a model exported by `distillery export` into PyTorch.

    python load.py            # builds the model, loads the weights, runs one forward pass
    from load import load     # model = load("path/to/export"); model(x) -> logits

The folder holds model.safetensors (torchvision parameter names), model.json (what distillery
trained: the architecture, the input shape, the class names and the normalisation) and this file.
ResNets, MobileNetV2 and ViT are torchvision's classes (with the CIFAR stem, width and input
channels distillery trained); the small MLP and CNN are defined here. Inputs are prepared as in
training with `prepare(images, info)` (floats in [0, 1], N x C x H x W): normalised with the
training statistics (resize and crop as `info["preprocess"]` says are left to you).
Needs: torch, torchvision, safetensors. Verified against PyTorch by tools/fixtures_export.py.
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    def __init__(self, in_dim, hidden, classes):
        super().__init__()
        dims = [in_dim] + hidden
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims, dims[1:])])
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class Cnn(nn.Module):
    def __init__(self, cin, channels, classes):
        super().__init__()
        cs = [cin] + channels
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(cs, cs[1:])])
        self.bns = nn.ModuleList([nn.BatchNorm2d(b) for b in channels])
        self.head = nn.Linear(cs[-1], classes)

    def forward(self, x):
        for c, b in zip(self.convs, self.bns):
            x = F.relu(b(c(x)))
            if x.shape[2] >= 2 and x.shape[3] >= 2:
                x = F.max_pool2d(x, 2, 2)
        return self.head(x.mean((2, 3)))


def _scaled(width, mult):
    # As distillery rounds (half away from zero), at least 1.
    return max(1, int(math.floor(width * mult + 0.5)))


def resnet(depth, width_mult, stem, cin, classes):
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    imagenet = stem == "ImageNet"
    if depth == 8:
        blocks, widths = [1, 1, 1], [16, 32, 64]
    else:
        blocks = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
        widths = [64, 128, 256, 512]
    block = Bottleneck if depth == 50 else BasicBlock
    m = ResNet(block, [1, 1, 1, 1], num_classes=classes)
    w = [_scaled(c, width_mult) for c in widths]
    m.inplanes = w[0]
    if imagenet:
        m.conv1 = nn.Conv2d(cin, w[0], 7, 2, 3, bias=False)
    else:
        m.conv1 = nn.Conv2d(cin, w[0], 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    m.bn1 = nn.BatchNorm2d(w[0])
    layers = [m._make_layer(block, w[i], blocks[i], stride=1 if i == 0 else 2) for i in range(len(w))]
    for i in range(4):
        setattr(m, f"layer{i + 1}", layers[i] if i < len(layers) else nn.Identity())
    m.fc = nn.Linear(w[-1] * block.expansion, classes)
    return m


def mobilenetv2(width_mult, stem, dropout, cin, classes):
    import torchvision

    cifar = stem == "Cifar"
    setting = [[1, 16, 1, 1], [6, 24, 2, 1 if cifar else 2], [6, 32, 3, 2], [6, 64, 4, 2],
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    m = torchvision.models.MobileNetV2(num_classes=classes, width_mult=width_mult,
                                       inverted_residual_setting=setting, dropout=dropout)
    first = m.features[0][0]
    m.features[0][0] = nn.Conv2d(cin, first.out_channels, 3, 1 if cifar else 2, 1, bias=False)
    return m


VIT_PRESETS = {"Tiny": (192, 12, 3), "Small": (384, 12, 6), "B16": (768, 12, 12)}


def vit(preset, patch_size, depth, heads, dim, cin, image_size, classes):
    import torchvision

    d0, l0, h0 = VIT_PRESETS[preset]
    dim = dim or d0
    m = torchvision.models.VisionTransformer(image_size=image_size, patch_size=patch_size,
                                             num_layers=depth or l0, num_heads=heads or h0,
                                             hidden_dim=dim, mlp_dim=4 * dim, num_classes=classes)
    if cin != 3:
        m.conv_proj = nn.Conv2d(cin, dim, patch_size, patch_size)
    return m


def build(config):
    """The PyTorch module for model.json's "model" (an engine ModelConfig)."""
    (kind, a), = config["arch"].items()
    cin, size, classes = config["in_channels"], config["image_size"], config["num_classes"]
    if kind == "Mlp":
        return Mlp(cin * size * size, a["hidden"], classes)
    if kind == "Cnn":
        return Cnn(cin, a["channels"], classes)
    if kind == "ResNet":
        return resnet(a["depth"], a["width_mult"], a["stem"], cin, classes)
    if kind == "MobileNetV2":
        return mobilenetv2(a["width_mult"], a["stem"], a["dropout"], cin, classes)
    if kind == "Vit":
        return vit(a["preset"], a["patch_size"], a.get("depth"), a.get("heads"), a.get("dim"), cin, size, classes)
    raise ValueError(f"unknown architecture {kind}")


def load(folder=os.path.dirname(os.path.abspath(__file__)), weights="model.safetensors"):
    """The exported model in eval mode, its weights loaded strictly (every tensor, no other)."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, "model.json")) as f:
        info = json.load(f)
    model = build(info["model"])
    model.load_state_dict(load_file(os.path.join(folder, weights)), strict=True)
    model.info = info
    return model.eval()


def prepare(images, info):
    """Normalises N x C x H x W images in [0, 1] with the training statistics."""
    mean = torch.tensor(info["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(info["std"]).view(1, -1, 1, 1)
    return (images - mean) / std


if __name__ == "__main__":
    m = load(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
    c, h, w = m.info["image_shape"]
    with torch.no_grad():
        logits = m(prepare(torch.rand(2, c, h, w), m.info))
    print(f"{type(m).__name__}: {sum(p.numel() for p in m.parameters())} parameters, "
          f"{len(m.info['class_names'])} classes ({', '.join(m.info['class_names'][:5])}...), "
          f"logits {tuple(logits.shape)}")
