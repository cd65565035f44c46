"""PyTorch CPU counterpart of benches/data_loader.rs: the same per-batch work with
torchvision transforms and DatasetCondensation's DiffAugment (per-image parameters).

Called by the bench (DISTILLERY_TORCH_PYTHON, default python3) with
the number of threads; prints one line `name median_ms` per case, and the median of a
CIFAR ResNet-8 training step (batch 64, forward + cross-entropy + backward + SGD momentum)
as the yardstick for the loader's cost.
"""
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)

B = 64
images = torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8)
mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
cifar = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
paper = T.Compose([T.Resize(256, antialias=False), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                   T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def per_image(tf):
    return torch.stack([tf(images[i]) for i in range(B)])


# DiffAugment, mode M, per-image parameters (VICO-UoE DatasetCondensation utils.py).
def dsa_m(x):
    n = x.shape[0]
    sx = torch.rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2
    sy = torch.rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    t = (torch.rand(n) - 0.5) * 2 * 15 / 180 * math.pi
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = t.cos(), -t.sin(), t.sin(), t.cos()
    x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    x = torch.where(torch.rand(n, 1, 1, 1) < 0.5, x.flip(3), x)
    x = x + (torch.rand(n, 1, 1, 1) - 0.5)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (torch.rand(n, 1, 1, 1) * 2.0) + m
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - m) * (torch.rand(n, 1, 1, 1) + 0.5) + m
    s = int(32 * 0.125 + 0.5)
    tx = torch.randint(-s, s + 1, size=[n, 1, 1])
    ty = torch.randint(-s, s + 1, size=[n, 1, 1])
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(32), torch.arange(32), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, 33)
    gy = torch.clamp(gy + ty + 1, 0, 33)
    x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
    c = 16
    ox = torch.randint(0, 32 + 1, size=[n, 1, 1])
    oy = torch.randint(0, 32 + 1, size=[n, 1, 1])
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(c), torch.arange(c), indexing="ij")
    gx = torch.clamp(gx + ox - c // 2, 0, 31)
    gy = torch.clamp(gy + oy - c // 2, 0, 31)
    mask = torch.ones(n, 32, 32)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


def resnet8():
    """CIFAR ResNet-8 (He et al. 2016, 6n+2 with n = 1): widths 16, 32, 64."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))


def resnet8_step_ms():
    model = resnet8()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, 10, (B,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return median_ms(step, 20)


print(f"cifar_train_32 {median_ms(lambda: per_image(cifar), 50):.4f}")
print(f"cifar_train_32+dsa_m {median_ms(lambda: dsa_m(per_image(cifar)), 50):.4f}")
print(f"paper_cifar_224 {median_ms(lambda: per_image(paper), 5):.4f}")
print(f"resnet8_step {resnet8_step_ms():.4f}")
