"""PyTorch CPU counterpart of benches/losses.rs: forward + backward of each preset's losses
(the paper's code: CE, DistillKL, AlignUniform with mocov2 projectors, CRD with linear embeds
and momentum banks, SRRL with an mlp2 connector) at batch 64, 1280 -> 2048, 100 classes,
n_data 5000, nce_k 4096. Prints one line `preset median_ms` each.
"""
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
B, S, T, C, N, K = 64, 1280, 2048, 100, 5000, 4096


def kd(zs, zt, temp=4.0):
    return F.kl_div(F.log_softmax(zs / temp, 1), F.softmax(zt / temp, 1), reduction="sum") * temp ** 2 / zs.shape[0]


def mocov2(d):
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))


class Crd(nn.Module):
    def __init__(self):
        super().__init__()
        self.es, self.et = nn.Linear(S, 128), nn.Linear(T, 128)
        stdv = 1.0 / (128 / 3.0) ** 0.5
        self.register_buffer("ms", torch.rand(N, 128) * 2 * stdv - stdv)
        self.register_buffer("mt", torch.rand(N, 128) * 2 * stdv - stdv)
        self.zs = self.zt = None

    def loss(self, x):
        pos, neg = x[:, 0], x[:, 1:]
        m = K / N
        return -(torch.log(pos / (pos + m + 1e-7)).sum() + torch.log(m / (neg + m + 1e-7)).sum()) / x.shape[0]

    def forward(self, fs, ft, idx):
        vs, vt = F.normalize(self.es(fs), dim=1), F.normalize(self.et(ft), dim=1)
        neg = torch.randint(0, N, (B, K))
        rows = torch.cat([idx[:, None], neg], 1).view(-1)
        ws = self.ms[rows].view(B, K + 1, 128)
        wt = self.mt[rows].view(B, K + 1, 128)
        out_t = torch.exp(torch.bmm(ws, vt[:, :, None]).squeeze(2) / 0.07)
        out_s = torch.exp(torch.bmm(wt, vs[:, :, None]).squeeze(2) / 0.07)
        if self.zs is None:
            self.zs, self.zt = (out_s.mean() * N).item(), (out_t.mean() * N).item()
        with torch.no_grad():
            self.mt[idx] = F.normalize(self.mt[idx] * 0.5 + vt * 0.5, dim=1)
            self.ms[idx] = F.normalize(self.ms[idx] * 0.5 + vs * 0.5, dim=1)
        return self.loss(out_s / self.zs) + self.loss(out_t / self.zt)


def make(name):
    if name == "align_uniform":
        ps, pt = mocov2(S), mocov2(T)

        def f(fs, zs, ft, zt, y, idx):
            gs, gt = F.normalize(ps(fs), dim=-1), F.normalize(pt(ft), dim=-1)
            align = (gs - gt).norm(p=2, dim=1).pow(2).mean()
            unif = lambda g: torch.pdist(g, p=2).pow(2).mul(-2).exp().mean().log()
            return F.cross_entropy(zs, y) + align + (unif(gs) + unif(gt)) / 2 + kd(zs, zt)
        return f
    if name == "crd":
        crd = Crd()
        return lambda fs, zs, ft, zt, y, idx: F.cross_entropy(zs, y) + crd(fs, ft, idx) + kd(zs, zt)
    if name == "srrl":
        mid = (S + T) // 2
        conn = nn.Sequential(nn.Linear(S, mid), nn.ReLU(), nn.Linear(mid, T), nn.ReLU())
        fc = nn.Linear(T, C).requires_grad_(False)

        def f(fs, zs, ft, zt, y, idx):
            m = conn(fs)
            return F.cross_entropy(zs, y) + F.mse_loss(m, ft) + F.mse_loss(fc(m), zt)
        return f
    return lambda fs, zs, ft, zt, y, idx: F.cross_entropy(zs, y) + kd(zs, zt)


for name in ["kd", "align_uniform", "crd", "srrl"]:
    f = make(name)
    times = []
    for step in range(17):
        fs = torch.randn(B, S, requires_grad=True)
        zs = torch.randn(B, C, requires_grad=True)
        ft, zt = torch.randn(B, T), torch.randn(B, C)
        y = torch.arange(B) % C
        idx = (torch.arange(B) + step * B) % N
        t = time.perf_counter()
        f(fs, zs, ft, zt, y, idx).backward()
        if step >= 2:
            times.append((time.perf_counter() - t) * 1e3)
    print(name, statistics.median(times))
