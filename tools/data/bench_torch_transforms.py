"""PyTorch CPU counterpart of benches/data_loader.rs: the same per-batch work with
torchvision transforms and DatasetCondensation's DiffAugment (per-image parameters).

Called by the bench (DISTILLERY_TORCH_PYTHON, default /work/venvs/torch/bin/python) with
the number of threads; prints one line `name median_ms` per case.
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


print(f"cifar_train_32 {median_ms(lambda: per_image(cifar), 50):.4f}")
print(f"cifar_train_32+dsa_m {median_ms(lambda: dsa_m(per_image(cifar)), 50):.4f}")
print(f"paper_cifar_224 {median_ms(lambda: per_image(paper), 5):.4f}")
