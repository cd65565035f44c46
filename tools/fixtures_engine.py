#!/usr/bin/env python3
"""Write the engine's PyTorch parity fixtures to tests/fixtures/engine/.

Needs: pip install torch torchvision pillow safetensors numpy (CPU wheels are enough).
Run from the repository root:  python tools/fixtures_engine.py

For each architecture at a tiny size it writes
  <case>.weights.safetensors  the model's state dict with torchvision's names (what the Rust
                              loader reads; doubles as the hub-compatibility test)
  <case>.io.safetensors       input batch `x`, `labels`, eval-mode `features`/`logits`,
                              train-mode `train_features`/`train_logits`, and for two
                              optimizers (batch norm frozen in eval mode for FROZEN_BN) (`sgd`, `adamw`) two training steps on the same batch:
                              `<opt>.loss0`, `<opt>.loss1` and the state dict after the steps
                              under `<opt>.<name>` (parameters and batch-norm statistics).
SGD: lr 0.01, momentum 0.9, Nesterov, weight decay 5e-4, head lr x10 (a second param group).
AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-3, weight decay 0.01, clip_grad_norm_ max 0.5.
Also schedules.json (per-epoch learning rates of torch's schedulers) and
torchvision_names.json (state-dict names and shapes of full-size resnet18/50, mobilenet_v2,
vit_b_16). With FIXTURE_GRADS=1 the io files also get the first SGD step's gradients under
`grad0.<name>` (for debugging a parity failure; not committed).
"""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "engine")
torch.manual_seed(9)
torch.use_deterministic_algorithms(True)


class Mlp(nn.Module):
    def __init__(self, in_dim, hidden, classes):
        super().__init__()
        dims = [in_dim] + hidden
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims, dims[1:])])
        self.head = nn.Linear(dims[-1], classes)

    def features(self, x):
        x = x.flatten(1)
        for l in self.layers:
            x = F.relu(l(x))
        return x


class Cnn(nn.Module):
    def __init__(self, cin, channels, classes):
        super().__init__()
        cs = [cin] + channels
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(cs, cs[1:])])
        self.bns = nn.ModuleList([nn.BatchNorm2d(b) for b in channels])
        self.head = nn.Linear(cs[-1], classes)

    def features(self, x):
        for c, b in zip(self.convs, self.bns):
            x = F.relu(b(c(x)))
            if x.shape[2] >= 2 and x.shape[3] >= 2:
                x = F.max_pool2d(x, 2, 2)
        return x.mean((2, 3))


def resnet(depth, width_mult, imagenet, classes):
    """torchvision ResNet; depth 8 (CIFAR, 16/32/64) built from torchvision's BasicBlock."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    if depth == 8:
        m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
        widths = [16, 32, 64]
        blocks = [1, 1, 1]
    else:
        block = Bottleneck if depth == 50 else BasicBlock
        blocks = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
        m = ResNet(block, blocks, num_classes=classes)
        widths = [64, 128, 256, 512]
    block = Bottleneck if depth == 50 else BasicBlock
    # Rebuild with scaled widths (torchvision has no width multiplier for these).
    w = [max(1, round(c * width_mult)) for c in widths]
    m.inplanes = w[0]
    m.conv1 = nn.Conv2d(3, w[0], 7 if imagenet else 3, 2 if imagenet else 1, 3 if imagenet else 1, bias=False)
    m.bn1 = nn.BatchNorm2d(w[0])
    if not imagenet:
        m.maxpool = nn.Identity()
    layers = [m._make_layer(block, w[i], blocks[i], stride=1 if i == 0 else 2) for i in range(len(w))]
    for i in range(4):
        setattr(m, f"layer{i + 1}", layers[i] if i < len(layers) else nn.Identity())
    m.fc = nn.Linear(w[-1] * block.expansion, classes)
    m.features = lambda x: torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))), 1)
    object.__setattr__(m, "head_ref", m.fc)  # not registered: keeps the state dict torchvision's
    return m


def mobilenetv2(width_mult, cifar, classes):
    setting = [[1, 16, 1, 1], [6, 24, 2, 1 if cifar else 2], [6, 32, 3, 2], [6, 64, 4, 2],
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    m = torchvision.models.MobileNetV2(num_classes=classes, width_mult=width_mult,
                                       inverted_residual_setting=setting, dropout=0.0)
    if cifar:
        m.features[0][0].stride = (1, 1)
    m.features_fn = lambda x: torch.flatten(F.adaptive_avg_pool2d(m.features(x), 1), 1)
    object.__setattr__(m, "head_ref", m.classifier)
    return m


def vit(image, patch, layers, heads, dim, classes):
    m = torchvision.models.VisionTransformer(image_size=image, patch_size=patch, num_layers=layers,
                                             num_heads=heads, hidden_dim=dim, mlp_dim=4 * dim,
                                             num_classes=classes)

    def feats(x):
        x = m._process_input(x)
        n = x.shape[0]
        x = torch.cat([m.class_token.expand(n, -1, -1), x], dim=1)
        return m.encoder(x)[:, 0]

    m.features_fn = feats
    object.__setattr__(m, "head_ref", m.heads)
    return m


def head_of(m):
    return m.__dict__.get("head_ref") or m.head


def features_of(m, x):
    if hasattr(m, "features_fn"):
        return m.features_fn(x)
    return m.features(x)


def randomise(m):
    """Keep PyTorch's initialisation for weights (well-conditioned training steps), but give
    batch norms non-trivial affine parameters and running statistics, and zero-initialised
    tensors (torchvision's ViT head) small random values."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p))
            elif bool((p == 0).all()):
                p.copy_(0.05 * torch.randn_like(p))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


def state(m):
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


# Deep nets trained on 8 images: batch statistics over so few values amplify float32 rounding
# until a ReLU mask flips, which changes gradients by percents (in PyTorch as in any other
# implementation). Their training steps therefore run with batch norm in eval mode (frozen
# statistics, a real fine-tuning mode); the shallower nets test train-mode batch norm.
FROZEN_BN = {"resnet50_imagenet", "mobilenetv2_cifar", "mobilenetv2_imagenet"}


def train_two_steps(m, x, y, kind, frozen_bn):
    head = set(id(p) for p in head_of(m).parameters())
    backbone = [p for p in m.parameters() if id(p) not in head]
    if kind == "sgd":
        opt = torch.optim.SGD([{"params": backbone, "lr": 0.01}, {"params": list(head_of(m).parameters()), "lr": 0.1}],
                              lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        # eps 1e-3: Adam turns noise-level gradients (e.g. the attention key bias, whose true
        # gradient is 0) into full-size steps; a larger eps keeps the comparison well-posed.
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.01)
    m.eval() if frozen_bn else m.train()
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(head_of(m)(features_of(m, x)), y)
        loss.backward()
        if os.environ.get("FIXTURE_GRADS") and kind == "sgd" and not losses:
            GRADS.update({f"grad0.{k}": p.grad.detach().clone() for k, p in m.named_parameters()})
        if kind == "adamw":
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()
        losses.append(loss.detach().reshape(1))
    return losses, state(m)


GRADS = {}

CASES = {
    "mlp": (lambda: Mlp(3 * 8 * 8, [16, 12], 5), 8),
    "cnn": (lambda: Cnn(3, [4, 8], 5), 8),
    "resnet8_cifar": (lambda: resnet(8, 0.25, False, 5), 8),
    "resnet18_imagenet": (lambda: resnet(18, 1 / 16, True, 5), 48),
    "resnet50_imagenet": (lambda: resnet(50, 1 / 16, True, 5), 48),
    "mobilenetv2_cifar": (lambda: mobilenetv2(0.1, True, 5), 16),
    "mobilenetv2_imagenet": (lambda: mobilenetv2(0.1, False, 5), 48),
    "vit": (lambda: vit(16, 8, 2, 2, 8, 5), 16),
}


def schedules():
    out = {}
    p = [nn.Parameter(torch.zeros(1))]

    def run(make, epochs):
        opt = torch.optim.SGD(p, lr=0.1)
        s = make(opt)
        lrs = []
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        return lrs

    def warm(main, w):
        return lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / (w + 1), total_iters=w), main(o)], milestones=[w])

    out["cosine_e10_w0"] = run(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10), 10)
    out["cosine_e10_w2"] = run(warm(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8), 2), 10)
    out["multistep_e10_w0"] = run(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 6], 0.1), 10)
    out["multistep_e10_w1"] = run(warm(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 6], 0.1), 1), 10)
    out["none_e5_w2"] = run(warm(lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0), 2), 5)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    import warnings
    warnings.filterwarnings("ignore")
    for name, (make, size) in CASES.items():
        torch.manual_seed(9)
        m = make()
        randomise(m)
        x = torch.randn(8, 3, size, size)
        y = torch.tensor([0, 3, 1, 4, 2, 2, 0, 1])
        weights = state(m)
        m.eval()
        with torch.no_grad():
            f = features_of(m, x)
            z = head_of(m)(f)
        io = {"x": x, "labels": y, "features": f, "logits": z}
        for kind in ["sgd", "adamw"]:
            m.load_state_dict(weights)
            m.train()
            if kind == "sgd":
                with torch.no_grad():
                    tf = features_of(m, x)
                    io["train_features"] = tf
                    io["train_logits"] = head_of(m)(tf)
                m.load_state_dict(weights)  # undo the running-statistics update
            losses, after = train_two_steps(m, x, y, kind, name in FROZEN_BN)
            io[f"{kind}.loss0"], io[f"{kind}.loss1"] = losses
            for k, v in after.items():
                if not k.endswith("num_batches_tracked"):
                    io[f"{kind}.{k}"] = v
        io.update(GRADS)
        GRADS.clear()
        save_file(weights, os.path.join(OUT, f"{name}.weights.safetensors"))
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, f"{name}.io.safetensors"))
        print(name, sum(v.numel() for v in weights.values()), "weights")
    # Full-size torchvision state-dict layouts (names and shapes, no weights): the Rust models
    # must produce exactly these, so hub checkpoints load.
    full = {
        "resnet18": torchvision.models.resnet18(),
        "resnet50": torchvision.models.resnet50(),
        "mobilenet_v2": torchvision.models.mobilenet_v2(),
        "vit_b_16": torchvision.models.vit_b_16(),
    }
    names = {k: [[n, list(v.shape)] for n, v in m.state_dict().items() if not n.endswith("num_batches_tracked")]
             for k, m in full.items()}
    with open(os.path.join(OUT, "torchvision_names.json"), "w") as fh:
        json.dump(names, fh)
    with open(os.path.join(OUT, "schedules.json"), "w") as fh:
        json.dump(schedules(), fh, indent=1)
    print("torch", torch.__version__, "torchvision", torchvision.__version__)


if __name__ == "__main__":
    main()
