#!/usr/bin/env python3
"""Verify `distillery export`'s PyTorch loader (src/export/load.py) and record what was verified
in tests/fixtures/export/verified.json.

Needs: pip install torch torchvision safetensors (CPU wheels are enough). Run from the repository
root after tools/fixtures_engine.py:  python tools/fixtures_export.py

For every engine parity case (tests/fixtures/engine/<case>.weights.safetensors, torchvision
names) it writes what an export folder holds — model.json with the case's engine ModelConfig
(as src/engine/parity_tests.rs `config(case)` serialises) and the weights — loads it with
load.py's `load()` (strict: every tensor, no other) and compares the eval-mode logits with the
ones torchvision's own models gave in tools/fixtures_engine.py (<case>.io.safetensors). The
Rust test (src/export.rs) then checks that the load.py it exports is byte for byte the one
verified here (its sha256) and that each case's ModelConfig serialises to the dict used here,
so no Python runs at test time.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ENGINE = os.path.join(ROOT, "tests", "fixtures", "engine")
TEMPLATE = os.path.join(ROOT, "src", "export", "load.py")
OUT = os.path.join(ROOT, "tests", "fixtures", "export", "verified.json")

CASES = {
    "mlp": {"arch": {"Mlp": {"hidden": [16, 12]}}, "in_channels": 3, "image_size": 8, "num_classes": 5},
    "cnn": {"arch": {"Cnn": {"channels": [4, 8]}}, "in_channels": 3, "image_size": 8, "num_classes": 5},
    "resnet8_cifar": {"arch": {"ResNet": {"depth": 8, "width_mult": 0.25, "stem": "Cifar"}},
                      "in_channels": 3, "image_size": 8, "num_classes": 5},
    "resnet18_imagenet": {"arch": {"ResNet": {"depth": 18, "width_mult": 0.0625, "stem": "ImageNet"}},
                          "in_channels": 3, "image_size": 48, "num_classes": 5},
    "resnet50_imagenet": {"arch": {"ResNet": {"depth": 50, "width_mult": 0.0625, "stem": "ImageNet"}},
                          "in_channels": 3, "image_size": 48, "num_classes": 5},
    "mobilenetv2_cifar": {"arch": {"MobileNetV2": {"width_mult": 0.1, "stem": "Cifar", "dropout": 0.0}},
                          "in_channels": 3, "image_size": 16, "num_classes": 5},
    "mobilenetv2_imagenet": {"arch": {"MobileNetV2": {"width_mult": 0.1, "stem": "ImageNet", "dropout": 0.0}},
                             "in_channels": 3, "image_size": 48, "num_classes": 5},
    "vit": {"arch": {"Vit": {"preset": "Tiny", "patch_size": 8, "depth": 2, "heads": 2, "dim": 8}},
            "in_channels": 3, "image_size": 16, "num_classes": 5},
}


def main():
    spec = importlib.util.spec_from_file_location("distillery_load", TEMPLATE)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    out = {"template_sha256": hashlib.sha256(open(TEMPLATE, "rb").read()).hexdigest(), "cases": {}}
    for case, config in CASES.items():
        io = load_file(os.path.join(ENGINE, f"{case}.io.safetensors"))
        with tempfile.TemporaryDirectory() as d:
            json.dump({"model": config, "image_shape": list(io["x"].shape[1:]), "mean": [0.0] * 3,
                       "std": [1.0] * 3, "class_names": [str(i) for i in range(5)]},
                      open(os.path.join(d, "model.json"), "w"))
            shutil.copy(os.path.join(ENGINE, f"{case}.weights.safetensors"), os.path.join(d, "model.safetensors"))
            model = loader.load(d)
            with torch.no_grad():
                logits = model(io["x"])
        err = (logits - io["logits"]).abs().max().item()
        assert err <= 1e-5, f"{case}: the exported model's logits are off by {err}"
        out["cases"][case] = {"model": config, "max_abs_logit_error": err}
        print(f"{case}: {type(model).__name__}, logits within {err:.1e} of torchvision's")
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
