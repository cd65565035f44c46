#!/usr/bin/env python3
"""Reference values for src/losses: PyTorch (float64) computes each loss of the paper's code
(github sfarhat/dapt, built on RepDistiller) on tiny random inputs and writes the value and the
gradients w.r.t. the inputs and the head weights to tests/fixtures/losses/<case>.json.

Run: python tools/fixtures_losses.py   (needs torch; tests need no Python)

Parameter names are burn module paths relative to the loss head (e.g.
`proj_s.net.layers.0.Linear.weight`); linear weights are stored in burn's [d_in, d_out] layout,
i.e. PyTorch's weight transposed. Every tensor is {"shape": [...], "data": [...]} in row-major
order; floats are written with repr so they round-trip exactly.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "losses")

B, S, T_DIM, C, DIM = 6, 5, 7, 3, 4


def tensor(x):
    x = x.detach()
    return {"shape": list(x.shape), "data": [float(v) for v in x.reshape(-1).tolist()]}


# ---------------------------------------------------------------- heads (as the paper's code)

def projector(kind, d, out):
    """models/projector.py `Embed`, without its final _Normalize (applied in forward)."""
    if kind == "linear":
        layers = [nn.Linear(d, out)]
    elif kind == "mocov2":
        layers = [nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out)]
    elif kind == "simclr":
        layers = [nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(),
                  nn.Linear(d, out, bias=False), nn.BatchNorm1d(out, affine=False)]
    elif kind == "simclrv2":
        layers = [nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(),
                  nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(),
                  nn.Linear(d, out, bias=False), nn.BatchNorm1d(out, affine=False)]
    else:
        raise ValueError(kind)
    seq = nn.Sequential(*layers)
    # Non-trivial BN scale/shift so their gradients are tested too.
    for m in seq:
        if isinstance(m, nn.BatchNorm1d) and m.affine:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return seq


def connector(kind, s, t):
    """distill.py SRRL connector."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(s, t), nn.ReLU())
    mid = (s + t) // 2
    return nn.Sequential(nn.Linear(s, mid), nn.ReLU(), nn.Linear(mid, t), nn.ReLU())


def seq_params(prefix, seq):
    """(burn path, torch parameter, transpose?) for each parameter of an nn.Sequential."""
    out = []
    for i, m in enumerate(seq):
        if isinstance(m, nn.Linear):
            out.append((f"{prefix}.layers.{i}.Linear.weight", m.weight, True))
            if m.bias is not None:
                out.append((f"{prefix}.layers.{i}.Linear.bias", m.bias, False))
        elif isinstance(m, nn.BatchNorm1d) and m.affine:
            out.append((f"{prefix}.layers.{i}.BatchNorm.gamma", m.weight, False))
            out.append((f"{prefix}.layers.{i}.BatchNorm.beta", m.bias, False))
    return out


def burn_layout(p, transpose):
    return p.detach().t() if transpose else p.detach()


# ---------------------------------------------------------------- loss formulas

def kd_loss(z_s, z_t, temp):
    """RepDistiller DistillKL."""
    p_s = F.log_softmax(z_s / temp, dim=1)
    p_t = F.softmax(z_t / temp, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * temp ** 2 / z_s.shape[0]


def align_loss(x, y, alpha=2):
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x, t=2):
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def contrast_loss(x, n_data, eps=1e-7):
    """RepDistiller ContrastLoss (eq. 18)."""
    bs = x.size(0)
    n = x.size(1) - 1
    m = float(n_data)
    pos = x.select(1, 0)
    log_pos = torch.div(pos, pos.add(n / m + eps)).log()
    neg = x.narrow(1, 1, n)
    log_neg = torch.div(neg.clone().fill_(n / m), neg.add(n / m + eps)).log()
    return -(log_pos.sum() + log_neg.sum()) / bs


# ---------------------------------------------------------------- case plumbing

def new_inputs(gen_scale=1.0):
    x = {
        "student_features": torch.randn(B, S) * gen_scale,
        "student_logits": torch.randn(B, C) * 2,
        "teacher_features": torch.randn(B, T_DIM) * gen_scale,
        "teacher_logits": torch.randn(B, C) * 2,
    }
    for v in x.values():
        v.requires_grad_(True)
    return x, torch.randint(0, C, (B,))


def write(name, losses, inputs, labels, params, terms, total, extra=None):
    """losses: [[weight, {config}]] as the Rust test builds them; terms: {name: (weight, value)}."""
    for v in inputs.values():
        v.grad = None
    for _, p, _ in params:
        p.grad = None
    total.backward()
    case = {
        "losses": losses,
        "dims": {"student_dim": S, "teacher_dim": T_DIM, "num_classes": C, "n_data": (extra or {}).get("n_data", 10)},
        "labels": labels.tolist(),
        "inputs": {k: tensor(v) for k, v in inputs.items()},
        "params": {k: tensor(burn_layout(p, tr)) for k, p, tr in params},
        "terms": {k: [w, float(v.detach())] for k, (w, v) in terms.items()},
        "total": float(total.detach()),
        "grad_inputs": {k: tensor(v.grad) for k, v in inputs.items() if v.grad is not None},
        "grad_params": {k: tensor(burn_layout(p.grad, tr)) for k, p, tr in params if p.requires_grad},
    }
    if extra:
        case.update(extra)
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(case, f, separators=(",", ":"))
    print(f"{name}: total {float(total.detach()):.6f}")


def weighted(terms):
    return sum(w * v for w, v in terms.values())


# ---------------------------------------------------------------- cases

def case_ce(ls):
    x, y = new_inputs()
    v = F.cross_entropy(x["student_logits"], y, label_smoothing=ls)
    terms = {"ce": (1.0, v)}
    write(f"ce_ls{int(ls * 10)}", [[1.0, {"kind": "ce", "label_smoothing": ls}]], x, y, [], terms, weighted(terms))


def case_kd():
    x, y = new_inputs()
    terms = {"kd": (1.0, kd_loss(x["student_logits"], x["teacher_logits"], 4.0))}
    write("kd", [[1.0, {"kind": "kd", "temperature": 4.0}]], x, y, [], terms, weighted(terms))


def case_align_uniform(kind):
    x, y = new_inputs()
    ps, pt = projector(kind, S, DIM), projector(kind, T_DIM, DIM)
    ps.train(), pt.train()
    g_s = F.normalize(ps(x["student_features"]), dim=-1)
    g_t = F.normalize(pt(x["teacher_features"]), dim=-1)
    terms = {
        "align": (1.0, align_loss(g_s, g_t, 2)),
        "uniform": (1.0, (uniform_loss(g_s, 2) + uniform_loss(g_t, 2)) / 2),
    }
    params = seq_params("proj_s.net", ps) + seq_params("proj_t.net", pt)
    cfg = {"kind": "align_uniform", "projector": kind, "dim": DIM, "alpha": 2.0, "t": 2.0,
           "align_weight": 1.0, "uniform_weight": 1.0}
    write(f"align_uniform_{kind}", [[1.0, cfg]], x, y, params, terms, weighted(terms))


def case_srrl(kind):
    x, y = new_inputs()
    conn = connector(kind, S, T_DIM)
    fc = nn.Linear(T_DIM, C)
    for p in fc.parameters():
        p.requires_grad_(False)
    mapped = conn(x["student_features"])
    terms = {
        "srrl.embed": (1.0, F.mse_loss(mapped, x["teacher_features"])),
        "srrl.logits": (0.5, F.mse_loss(fc(mapped), x["teacher_logits"])),
    }
    params = seq_params("connector", conn)
    cls = [("teacher_classifier.weight", fc.weight, True), ("teacher_classifier.bias", fc.bias, False)]
    cfg = {"kind": "srrl", "connector": kind, "embed_weight": 1.0, "logits_weight": 0.5}
    write(f"srrl_{kind}", [[1.0, cfg]], x, y, params + cls, terms, weighted(terms))


def case_feature(kind):
    x, y = new_inputs()
    reg = nn.Linear(S, T_DIM)
    mapped = reg(x["student_features"])
    if kind == "fitnet":
        v = F.mse_loss(mapped, x["teacher_features"])
    else:
        v = (1 - F.cosine_similarity(mapped, x["teacher_features"], dim=1, eps=1e-8)).mean()
    terms = {kind: (1.0, v)}
    params = [("regressor.weight", reg.weight, True), ("regressor.bias", reg.bias, False)]
    write(kind, [[1.0, {"kind": kind, "regressor": True}]], x, y, params, terms, weighted(terms))


def case_combo():
    """CE (smoothed) + KD + align_uniform + fitnet with unequal weights: checks the total."""
    x, y = new_inputs()
    ps, pt = projector("mocov2", S, DIM), projector("mocov2", T_DIM, DIM)
    reg = nn.Linear(S, T_DIM)
    g_s = F.normalize(ps(x["student_features"]), dim=-1)
    g_t = F.normalize(pt(x["teacher_features"]), dim=-1)
    terms = {
        "ce": (1.0, F.cross_entropy(x["student_logits"], y, label_smoothing=0.1)),
        "kd": (0.5, kd_loss(x["student_logits"], x["teacher_logits"], 2.0)),
        "align": (2.0 * 1.0, align_loss(g_s, g_t, 2)),
        "uniform": (2.0 * 0.5, (uniform_loss(g_s, 2) + uniform_loss(g_t, 2)) / 2),
        "fitnet": (0.3, F.mse_loss(reg(x["student_features"]), x["teacher_features"])),
    }
    losses = [
        [1.0, {"kind": "ce", "label_smoothing": 0.1}],
        [0.5, {"kind": "kd", "temperature": 2.0}],
        [2.0, {"kind": "align_uniform", "projector": "mocov2", "dim": DIM, "alpha": 2.0, "t": 2.0,
               "align_weight": 1.0, "uniform_weight": 0.5}],
        [0.3, {"kind": "fitnet", "regressor": True}],
    ]
    # Entry i's params live under entries.i in the module; the test strips that prefix per entry.
    params = ([(f"2/{k}", p, tr) for k, p, tr in seq_params("proj_s.net", ps) + seq_params("proj_t.net", pt)]
              + [("3/regressor.weight", reg.weight, True), ("3/regressor.bias", reg.bias, False)])
    write("combo", losses, x, y, params, terms, weighted(terms))


def case_crd():
    """Two steps of CRD: Z is fixed by step 1, the banks move by momentum between steps."""
    n_data, k, feat, nce_t, mom = 10, 3, DIM, 0.07, 0.5
    es, et = nn.Sequential(nn.Linear(S, feat)), nn.Sequential(nn.Linear(T_DIM, feat))
    stdv = 1.0 / (feat / 3.0) ** 0.5
    memory_t = torch.rand(n_data, feat).mul_(2 * stdv).add_(-stdv)
    memory_s = torch.rand(n_data, feat).mul_(2 * stdv).add_(-stdv)
    params = seq_params("embed_s.net", es) + seq_params("embed_t.net", et)
    init = {"memory_s": tensor(memory_s), "memory_t": tensor(memory_t)}
    z_t = z_s = None
    steps = []
    for step in range(2):
        x, y = new_inputs()
        idx = torch.randperm(n_data)[:B]
        rows = []
        for i in idx.tolist():
            others = [j for j in range(n_data) if j != i]
            rows.append([i] + [others[r] for r in torch.randint(0, n_data - 1, (k,)).tolist()])
        contrast = torch.tensor(rows)
        v_s = F.normalize(es(x["student_features"]), dim=-1)
        v_t = F.normalize(et(x["teacher_features"]), dim=-1)
        w_s = torch.index_select(memory_s, 0, contrast.view(-1)).detach().view(B, k + 1, feat)
        out_t = torch.exp(torch.div(torch.bmm(w_s, v_t.view(B, feat, 1)), nce_t)).squeeze(2)
        w_t = torch.index_select(memory_t, 0, contrast.view(-1)).detach().view(B, k + 1, feat)
        out_s = torch.exp(torch.div(torch.bmm(w_t, v_s.view(B, feat, 1)), nce_t)).squeeze(2)
        if z_t is None:
            z_t = (out_t.mean() * n_data).item()
            z_s = (out_s.mean() * n_data).item()
        out_t, out_s = out_t / z_t, out_s / z_s
        with torch.no_grad():
            pos = memory_t[idx] * mom + v_t * (1 - mom)
            memory_t[idx] = F.normalize(pos, p=2, dim=1)
            pos = memory_s[idx] * mom + v_s * (1 - mom)
            memory_s[idx] = F.normalize(pos, p=2, dim=1)
        loss = contrast_loss(out_s, n_data) + contrast_loss(out_t, n_data)
        for v in x.values():
            v.grad = None
        for _, p, _ in params:
            p.grad = None
        loss.backward()
        steps.append({
            "labels": y.tolist(),
            "indices": idx.tolist(),
            "contrast": rows,
            "inputs": {kk: tensor(v) for kk, v in x.items()},
            "crd": float(loss),
            "grad_inputs": {kk: tensor(v.grad) for kk, v in x.items() if v.grad is not None},
            "grad_params": {kk: tensor(burn_layout(p.grad, tr)) for kk, p, tr in params},
            "memory_s": tensor(memory_s),
            "memory_t": tensor(memory_t),
            "z": [z_s, z_t],
        })
    case = {
        "losses": [[1.0, {"kind": "crd", "projector": "linear", "feat_dim": feat, "nce_k": k,
                          "nce_t": nce_t, "momentum": mom}]],
        "dims": {"student_dim": S, "teacher_dim": T_DIM, "num_classes": C, "n_data": n_data},
        "params": {kk: tensor(burn_layout(p, tr)) for kk, p, tr in params},
        "init": init,
        "steps": steps,
    }
    with open(os.path.join(OUT, "crd.json"), "w") as f:
        json.dump(case, f, separators=(",", ":"))
    print(f"crd: steps {[s['crd'] for s in steps]}")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(9)
    case_ce(0.0)
    case_ce(0.1)
    case_kd()
    for kind in ["linear", "mocov2", "simclr", "simclrv2"]:
        case_align_uniform(kind)
    for kind in ["mlp", "mlp2"]:
        case_srrl(kind)
    case_feature("fitnet")
    case_feature("cosine")
    case_combo()
    case_crd()
