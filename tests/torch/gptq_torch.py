# SPDX-License-Identifier: Apache-2.0
"""An independent PyTorch implementation of GPTQ (Frantar et al., ICLR 2023, Algorithm 1 with lazy batch
updates), written from the paper for parity tests of qprob's solver. Conventions that the paper leaves open
follow AutoGPTQ (what the first paper used) and are spelled out in docs/policies.md and reference/gptq.hpp:

* per group: xmin = min(0, min w), xmax = max(0, max w); symmetric: xmax = max(|xmin|, xmax), xmin = -xmax if
  xmin < 0; both 0 -> (-1, 1); scale = fp16((xmax - xmin) / maxq) (at least 2^-24); zero = 2^(bits-1) if
  symmetric else clamp(round(-xmin / scale), 0, maxq); q = clamp(round(w / scale) + zero, 0, maxq)
* dead inputs (H_jj = 0): H_jj = 1, W[:, j] = 0; act-order: stable sort by decreasing diag(H)
* dampening: damp_percent * mean(diag H), +0.01 per failed Cholesky factorization
* group parameters at the start of each group from W as updated by the previous blocks (not by the columns of
  the current block); static groups from the unquantized W in natural order
"""
import torch


def find_params(x, bits, sym):
    """Scale and zero per row of x (rows, cols), float32 in, float32 out (scale holds an fp16 value)."""
    maxq = 2**bits - 1
    zeros = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xmin = torch.minimum(x.min(dim=1).values, zeros)
    xmax = torch.maximum(x.max(dim=1).values, zeros)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(both_zero, torch.full_like(xmax, 1.0), xmax)
    # Divide in float64 so that the one rounding is the one to fp16 (as qprob specifies).
    scale = ((xmax.double() - xmin.double()) / maxq).half()
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale).float()
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.clamp(torch.round(-xmin.double() / scale.double()), 0, maxq).float()
    return scale, zero


def quantize(w, scale, zero, bits):
    maxq = 2**bits - 1
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def gptq(w16, h, bits, group_size, sym, act_order, static_groups=False, damp_percent=0.01, block_size=128):
    """Returns (codes (n, k) uint8 in natural order, scales (groups, n), zeros (groups, n), g_idx (k))."""
    w = w16.float().clone()
    h = h.float().clone()
    n, k = w.shape
    gw = k if group_size == 0 else group_size
    groups = (k + gw - 1) // gw
    scales = torch.zeros(groups, n, device=w.device)
    zeros = torch.zeros(groups, n, device=w.device)
    if group_size == 0:
        scales[0], zeros[0] = find_params(w, bits, sym)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    if static_groups and group_size != 0:
        for g in range(groups):
            scales[g], zeros[g] = find_params(w[:, g * gw:(g + 1) * gw], bits, sym)
    perm = torch.arange(k, device=w.device)
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    group_of = torch.arange(k, device=w.device) // gw
    if static_groups and act_order:
        group_of = perm // gw
    mean_diag = torch.mean(torch.diag(h)).item()
    damp = damp_percent
    for _ in range(21):
        hd = h + damp * mean_diag * torch.eye(k, device=w.device)
        l, info = torch.linalg.cholesky_ex(hd)
        if info.item() == 0 and torch.isfinite(torch.diag(l)).all():
            break
        damp += 0.01
    else:
        raise RuntimeError("not positive definite")
    u = torch.linalg.cholesky(torch.cholesky_inverse(l), upper=True)
    codes = torch.zeros(n, k, device=w.device)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        if not static_groups and group_size != 0:
            for c in range(i1, i2):
                if c % gw == 0:
                    scales[c // gw], zeros[c // gw] = find_params(w[:, c:c + gw], bits, sym)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = int(group_of[i1 + i])
            q, deq = quantize(w1[:, i], scales[g], zeros[g], bits)
            codes[:, i1 + i] = q
            e = (w1[:, i] - deq) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    natural = torch.empty_like(codes)
    natural[:, perm] = codes
    g_idx = torch.empty(k, dtype=torch.int32, device=w.device)
    g_idx[perm] = group_of.to(torch.int32)
    return natural.to(torch.uint8), scales.half(), zeros.to(torch.uint8), g_idx
