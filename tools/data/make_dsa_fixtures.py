"""Reference outputs of the DSA augmentation ops and bilinear resize, from PyTorch.

Each op is the body of the corresponding function of VICO-UoE/DatasetCondensation's
utils.py (DiffAugment / ParamDiffAug), with its random draw replaced by a fixed value so
the Rust implementation can be compared exactly (tests/data_dsa.rs).

Run (with a Python that has torch): python tools/data/make_dsa_fixtures.py
Writes tests/fixtures/data/dsa_ops.json (small).
"""
import json
import math
import os

import torch
import torch.nn.functional as F

torch.set_grad_enabled(False)


def make_input(c, h, w):
    i = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    j = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    ch = torch.arange(c, dtype=torch.float32).view(c, 1, 1)
    return torch.sin(ch * 1.3 + i * 0.7 + j * 0.37) + 0.1 * ch


def affine(x, theta):
    theta = torch.tensor([theta], dtype=torch.float)
    x = x.unsqueeze(0)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)[0]


def rand_scale(x, sx, sy):
    return affine(x, [[sx, 0, 0], [0, sy, 0]])


def rand_rotate(x, degrees):
    t = torch.tensor(degrees / 180 * float(math.pi))
    return affine(x, [[torch.cos(t), torch.sin(-t), 0], [torch.sin(t), torch.cos(t), 0]])


def rand_flip(x):
    return x.flip(2)


def rand_brightness(x, r, ratio=1.0):
    return x + (r - 0.5) * ratio


def rand_saturation(x, r, ratio=2.0):
    x = x.unsqueeze(0)
    x_mean = x.mean(dim=1, keepdim=True)
    return ((x - x_mean) * (r * ratio) + x_mean)[0]


def rand_contrast(x, r, ratio=0.5):
    x = x.unsqueeze(0)
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return ((x - x_mean) * (r + ratio) + x_mean)[0]


def rand_crop(x, tx, ty):
    x = x.unsqueeze(0)
    translation_x = torch.tensor([[[tx]]])
    translation_y = torch.tensor([[[ty]]])
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long),
        torch.arange(x.size(2), dtype=torch.long),
        torch.arange(x.size(3), dtype=torch.long),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)[0]


def rand_cutout(x, ox, oy, ratio=0.5):
    x = x.unsqueeze(0)
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    offset_x = torch.tensor([[[ox]]])
    offset_y = torch.tensor([[[oy]]])
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long),
        torch.arange(cutout_size[0], dtype=torch.long),
        torch.arange(cutout_size[1], dtype=torch.long),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return (x * mask.unsqueeze(1))[0]


def resize(x, oh, ow):
    return F.interpolate(x.unsqueeze(0), size=(oh, ow), mode="bilinear", align_corners=False, antialias=False)[0]


def main():
    cases = []
    for shape in [(3, 7, 9), (1, 8, 8)]:
        x = make_input(*shape)

        def add(op, params, y):
            cases.append({"shape": list(shape), "op": op, "params": params, "output": [round(v, 7) for v in y.flatten().tolist()]})

        for sx, sy in [(1.1, 0.9), (0.85, 1.2)]:
            add("scale", [sx, sy], rand_scale(x, sx, sy))
        for d in [10.0, -15.0]:
            add("rotate", [d], rand_rotate(x, d))
        add("flip", [], rand_flip(x))
        add("brightness", [0.8], rand_brightness(x, 0.8))
        add("saturation", [0.75], rand_saturation(x, 0.75))
        add("contrast", [0.3], rand_contrast(x, 0.3))
        for tx, ty in [(-1, 2), (1, -1), (0, 0)]:
            add("crop", [tx, ty], rand_crop(x, tx, ty))
        for ox, oy in [(3, 0), (0, 8), (6, 4)]:
            add("cutout", [ox, oy], rand_cutout(x, ox, oy))
        for oh, ow in [(16, 12), (5, 4)]:
            add("resize", [oh, ow], resize(x, oh, ow))
    out = {"generator": "tools/data/make_dsa_fixtures.py", "torch": torch.__version__,
           "input": "sin(c*1.3 + i*0.7 + j*0.37) + 0.1*c", "cases": cases}
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "data", "dsa_ops.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {len(cases)} cases to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
