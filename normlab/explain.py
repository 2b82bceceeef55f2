"""`normlab explain`: BN, LN and GN computed step by step on a small tensor, checked against torch.nn.

The numbers are the project's own (a fixed 2 x 4 x 2 x 2 tensor), computed by the reference
maths in norms.py; each result is compared with torch.nn's layer. The output is plain text and
stable, so the README can embed it verbatim (a test keeps the two identical).
"""

from __future__ import annotations

import torch
from timm.layers import StdConv2d
from torch import nn

from . import norms
from .zoo import NORM_ACT, NORMS, create_norm_layer

X = torch.tensor([
    [[[1, 2], [3, 4]], [[0, 2], [4, 6]], [[5, 5], [5, 9]], [[2, 0], [1, 1]]],
    [[[2, 4], [6, 8]], [[1, 1], [3, 3]], [[7, 3], [2, 0]], [[4, 4], [0, 8]]],
], dtype=torch.float64)
GAMMA = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
BETA = torch.tensor([0.0, 0.5, -1.0, 0.0], dtype=torch.float64)
GN_GROUPS = 2
EPS = 1e-5
TOLERANCE = 1e-9


def _num(v: float) -> str:
    return f"{v:.4f}".replace("-0.0000", "0.0000")


def _values(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" for v in t.flatten().tolist()) + "]"


def _tensor_lines(t: torch.Tensor, indent: str = "  ") -> list[str]:
    lines = []
    for n in range(t.shape[0]):
        cells = ["[" + "; ".join(", ".join(_num(v) for v in row) for row in t[n, c].tolist()) + "]"
                 for c in range(t.shape[1])]
        lines.append(f"{indent}sample {n}: " + "  ".join(f"c{c} {cell}" for c, cell in enumerate(cells)))
    return lines


def _check(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> str:
    ok = torch.allclose(ours, theirs, rtol=0, atol=TOLERANCE)
    return f"  equals {name}: {'yes' if ok else 'NO'} (max |difference| < {TOLERANCE:g})"


def _affine(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(GAMMA)
        module.bias.copy_(BETA)
    return module


def explain_text() -> str:
    n, c, h, w = X.shape
    lines = [
        f"Input x: {n} samples x {c} channels x {h} x {w} (N, C, H, W), written as [row; row]:",
        *_tensor_lines(X),
        f"gamma (scale, per channel) = {_values(GAMMA)}",
        f"beta  (shift, per channel) = {_values(BETA)}",
        f"eps = {EPS:g};  y = (x - mean) / sqrt(var + eps) * gamma + beta  (var: biased, divide by count)",
        "",
        f"== Batch normalization: one mean/var per channel, over (N, H, W) = {n * h * w} values ==",
    ]
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    bn = norms.batch_norm(X, rm, rv, GAMMA, BETA, training=True, momentum=0.1, eps=EPS)
    for ch in range(c):
        lines.append(f"  channel {ch}: values {_values(X[:, ch])}  mean {_num(bn.mean[ch])}  var {_num(bn.var[ch])}")
    lines += ["  normalized (x - mean) / sqrt(var + eps):", *_tensor_lines(bn.normalized, "    "),
              "  output (times gamma, plus beta):", *_tensor_lines(bn.output, "    ")]
    torch_bn = _affine(nn.BatchNorm2d(c, eps=EPS, momentum=0.1).double()).train()
    lines.append(_check("torch.nn.BatchNorm2d (train mode)", bn.output, torch_bn(X)))
    lines.append(f"  running mean after this step (momentum 0.1, from 0): {_values(rm.round(decimals=4))}")
    lines.append(f"  running var  after this step (unbiased, from 1):     {_values(rv.round(decimals=4))}")
    ev = norms.batch_norm(X, rm, rv, GAMMA, BETA, training=False, eps=EPS)
    lines.append("  eval mode normalizes with the running statistics instead; sample 0 then becomes:")
    lines += _tensor_lines(ev.output[:1], "    ")
    lines.append(_check("torch.nn.BatchNorm2d (eval mode)", ev.output, torch_bn.eval()(X)))
    lines += ["", f"== Layer normalization: one mean/var per sample, over (C, H, W) = {c * h * w} values =="]
    ln = norms.layer_norm(X, GAMMA, BETA, eps=EPS)
    for s in range(n):
        lines.append(f"  sample {s}: values {_values(X[s])}  mean {_num(ln.mean[s, 0])}  var {_num(ln.var[s, 0])}")
    lines += ["  output:", *_tensor_lines(ln.output, "    ")]
    lines.append(_check("torch.nn.GroupNorm(1, 4)", ln.output, _affine(nn.GroupNorm(1, c, eps=EPS).double())(X)))
    per = c // GN_GROUPS
    lines += ["", f"== Group normalization ({GN_GROUPS} groups): one mean/var per sample and group, "
                  f"over ({per} channels, H, W) = {per * h * w} values =="]
    gn = norms.group_norm(X, GN_GROUPS, GAMMA, BETA, eps=EPS)
    for s in range(n):
        for g in range(GN_GROUPS):
            vals = X[s, g * per:(g + 1) * per]
            lines.append(f"  sample {s}, group {g} (channels {g * per}-{(g + 1) * per - 1}): values {_values(vals)}  "
                         f"mean {_num(gn.mean[s, g])}  var {_num(gn.var[s, g])}")
    lines += ["  output:", *_tensor_lines(gn.output, "    ")]
    lines.append(_check(f"torch.nn.GroupNorm({GN_GROUPS}, 4)", gn.output,
                        _affine(nn.GroupNorm(GN_GROUPS, c, eps=EPS).double())(X)))
    lines += ["", "Parameters per layer: gamma and beta, one each per channel (2 x C = 8 here) for all three;",
              "BN also keeps running mean/var buffers (not learned). GN and LN behave the same in train and eval."]
    return "\n".join(lines + zoo_lines()) + "\n"


def zoo_lines() -> list[str]:
    """Every norm of the registry: its block, parameters in Net, batch coupling; the literature
    norms checked against their written-out definitions (normlab.norms) on x."""
    from .model import Net, count_parameters

    lines = ["", "== The norm zoo (normlab/zoo.py): every --norm ==",
             "(params: of Net with this norm; 'plain last': with --last-norm false, the 1x1 block after global",
             "pooling left as Conv -> ReLU -> Dropout)",
             f"  {'name':<11} {'block':<34} {'params':>6} {'plain last':>10}  {'batch-independent':<17}  implementation"]
    for name, e in NORMS.items():
        conv = "WSConv" if e.slot == "conv" else "Conv"
        block = f"{conv} -> {'NormAct' if e.slot == NORM_ACT else 'ReLU -> Norm'} -> Dropout"
        lines.append(f"  {name:<11} {block:<34} {count_parameters(Net(name)):>6,} "
                     f"{count_parameters(Net(name, last_norm=False)):>10,}  "
                     f"{'yes' if e.batch_independent else 'no':<17}  {e.source}")
    c = X.shape[1]
    ones, zeros = torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    with torch.no_grad():
        ln2d = _affine(create_norm_layer("ln2d", c).double())
        frn = _affine(create_norm_layer("frn", c).double())
        evo = _affine(create_norm_layer("evonorm-s0", c, groups=GN_GROUPS).double())
        frn_eps = _affine(create_norm_layer("frn-eps", c).double())

        std_conv = StdConv2d(c, 2, 2, padding=0, bias=False).double()
        std_conv.weight.copy_(torch.arange(32, dtype=torch.float64).reshape(2, c, 2, 2).sin())
        checks = [
            ("ln2d", ln2d(X), norms.layer_norm_2d(X, GAMMA, BETA, eps=ln2d.eps).output, TOLERANCE),
            ("frn", frn(X), norms.filter_response_norm(X, GAMMA, BETA, zeros, eps=frn.eps).output, 1e-6),
            ("frn-eps", frn_eps(X), norms.filter_response_norm(X, GAMMA, BETA, zeros, eps=frn_eps.eps).output,
             TOLERANCE),
            ("evonorm-s0", evo(X), norms.evonorm_s0(X, GN_GROUPS, GAMMA, BETA, ones, eps=evo.eps).output, 1e-6),
            ("ws-gn's conv", std_conv(X),
             torch.nn.functional.conv2d(X, norms.standardize_weight(std_conv.weight, std_conv.eps)), TOLERANCE),
        ]
    lines += ["On x above, with the same gamma and beta (tau = 0, v = 1), each layer from the literature against",
              "its definition written out in normlab/norms.py (timm computes FRN's and EvoNorm's statistics in",
              "float32, hence their tolerance):"]
    for name, theirs, ours, tol in checks:
        ok = torch.allclose(ours, theirs, rtol=0, atol=tol)
        lines.append(f"  {name:<13} equals its definition: {'yes' if ok else 'NO'} (max |difference| < {tol:g})")
    return lines
