"""distillery generator plugin: Stable Diffusion through Hugging Face diffusers (protocol 1).

For each class of the request it renders `count` images of the class's prompt (the generate
node's template, "a picture of a {c}" by default) and writes them as PNG files
out_dir/images/<class index>/<n>.png; distillery resizes them to the task's images.

params (the generate node's `generator.params`):
  model             a diffusers model id in the local Hugging Face cache, or a local folder
                    (required; the paper: CompVis/stable-diffusion-v1-4)
  fp16              half precision (default true, as the paper)
  steps             denoising steps (default 50)
  guidance          classifier-free guidance scale (default 7.5)
  batch_size        images a pipeline call (default 8)
  local_files_only  never download (default true: fetch the weights beforehand)

`python3 plugin.py --dry-run < request.json` checks a request and writes the prompts it would
use (out_dir/prompts.json) without torch, diffusers or a GPU.
"""
import json
import os
import sys

PARAMS = {"model": str, "fp16": bool, "steps": int, "guidance": (int, float), "batch_size": int,
          "local_files_only": bool}
DEFAULTS = {"fp16": True, "steps": 50, "guidance": 7.5, "batch_size": 8, "local_files_only": True}


def say(**msg):
    print(json.dumps(msg), flush=True)


class BadRequest(Exception):
    pass


def check(req):
    """The request's settings with defaults, or BadRequest naming the first problem."""
    if req.get("type") != "request" or req.get("protocol") != 1:
        raise BadRequest("not a protocol 1 request")
    if req.get("kind") != "generate":
        raise BadRequest(f"this plugin serves generate nodes, not `{req.get('kind')}`")
    params = dict(req.get("params") or {})
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise BadRequest(f"unknown params {unknown}; known: {sorted(PARAMS)}")
    if "model" not in params:
        raise BadRequest("params.model is required: a diffusers model id or a local folder "
                         "(the paper: CompVis/stable-diffusion-v1-4)")
    for k, t in PARAMS.items():
        if k in params and (not isinstance(params[k], t) or (t is int and isinstance(params[k], bool))):
            raise BadRequest(f"params.{k}: expected {getattr(t, '__name__', 'a number')}, got {params[k]!r}")
    p = {**DEFAULTS, **params}
    if not 1 <= p["steps"] <= 1000:
        raise BadRequest(f"params.steps: expected 1..1000, got {p['steps']}")
    if not 1 <= p["batch_size"] <= 256:
        raise BadRequest(f"params.batch_size: expected 1..256, got {p['batch_size']}")
    if p["guidance"] < 0:
        raise BadRequest(f"params.guidance: expected >= 0, got {p['guidance']}")
    classes = req.get("classes")
    if not isinstance(classes, list) or not classes:
        raise BadRequest("`classes` must be a non-empty list")
    for c in classes:
        if not (isinstance(c.get("index"), int) and isinstance(c.get("prompt"), str)
                and isinstance(c.get("count"), int) and c["count"] >= 0):
            raise BadRequest(f"bad class entry {c!r}")
    if not os.path.isdir(req.get("out_dir", "")):
        raise BadRequest(f"out_dir {req.get('out_dir')!r} is not a folder")
    return p, classes


def seed_of(req, c, i):
    # One seed per image: the same request always gives the same images on one machine.
    return (int(req.get("seed") or 0) * 1_000_003 + c["index"] * 10_007 + i) % (2**63)


def main():
    dry = "--dry-run" in sys.argv[1:]
    say(type="hello", protocol=1, name="stable-diffusion", produces="images")
    req = json.loads(sys.stdin.readline())
    try:
        p, classes = check(req)
    except BadRequest as e:
        print(f"stable-diffusion: bad request: {e}", file=sys.stderr)
        return 2
    total = sum(c["count"] for c in classes)
    if dry:
        plan = [{"index": c["index"], "name": c.get("name"), "prompt": c["prompt"], "count": c["count"],
                 "first_seed": seed_of(req, c, 0)} for c in classes]
        with open(os.path.join(req["out_dir"], "prompts.json"), "w") as f:
            json.dump({"params": p, "classes": plan}, f, indent=2)
        say(type="log", level="info", message=f"dry run: {total} images of {len(classes)} classes")
        say(type="result", outputs={"prompts": "prompts.json"}, metrics={"images": total})
        return 0
    import torch
    from diffusers import StableDiffusionPipeline
    if not torch.cuda.is_available():
        print("stable-diffusion: no CUDA device (torch.cuda.is_available() is false)", file=sys.stderr)
        return 3
    dtype = torch.float16 if p["fp16"] else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(p["model"], torch_dtype=dtype,
                                                   local_files_only=p["local_files_only"])
    device = req.get("device") or "cuda"
    pipe = pipe.to(device if device.startswith("cuda") else "cuda")
    pipe.set_progress_bar_config(disable=True)
    done = 0
    for c in classes:
        folder = os.path.join(req["out_dir"], "images", str(c["index"]))
        os.makedirs(folder, exist_ok=True)
        for start in range(0, c["count"], p["batch_size"]):
            n = min(p["batch_size"], c["count"] - start)
            gens = [torch.Generator("cuda").manual_seed(seed_of(req, c, start + i)) for i in range(n)]
            out = pipe([c["prompt"]] * n, num_inference_steps=p["steps"], guidance_scale=p["guidance"],
                       generator=gens)
            for i, img in enumerate(out.images):
                img.save(os.path.join(folder, f"{start + i:06d}.png"))
            done += n
            say(type="progress", done=done, total=total, message=c["prompt"])
    say(type="result", outputs={"images": "images"}, metrics={"images": done})
    return 0


if __name__ == "__main__":
    sys.exit(main())
