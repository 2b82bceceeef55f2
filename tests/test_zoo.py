"""The norm zoo: one registry entry per norm, each selectable, each equal to its written-out
definition, batch-independent where it claims to be, and trainable (or, where the network makes
it degenerate, shown to be so)."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import EvoNorm2dS0, FilterResponseNormTlu2d, LayerNorm2d, StdConv2d
from torch import nn

from normlab import norms
from normlab.cli import build_parser
from normlab.config import ExperimentConfig
from normlab.experiment import Experiment
from normlab.model import Net, count_parameters
from normlab.zoo import NORM_ACT, NORMS, create_norm_layer

ZOO = list(NORMS)


def test_the_zoo_has_the_literature_norms_from_timm():
    assert {"none", "bn", "gn", "ln", "in", "ws-gn", "frn", "evonorm-s0", "ln2d"} <= set(ZOO)
    assert isinstance(create_norm_layer("frn", 8), FilterResponseNormTlu2d)
    assert isinstance(create_norm_layer("evonorm-s0", 16, groups=4), EvoNorm2dS0)
    assert isinstance(create_norm_layer("ln2d", 8), LayerNorm2d)
    assert isinstance(Net("ws-gn").features[0].conv, StdConv2d)
    assert len({e.colour for e in NORMS.values()}) == len(NORMS), "every norm has its own plot colour"


@pytest.mark.parametrize("norm", ZOO)
def test_every_norm_is_selectable_by_name_small_and_named(norm):
    args = build_parser().parse_args(["run", "--norm", norm])
    assert args.norm == [norm]
    assert ExperimentConfig(norm=norm).norm == norm
    model = Net(norm=norm)
    assert count_parameters(model) < 8000
    keys = model.state_dict().keys()
    assert "features.0.conv.weight" in keys and not any(".0.0." in k for k in keys)
    entry = NORMS[norm]
    for _, block in model.blocks():
        assert isinstance(block.act, nn.ReLU) == (entry.slot != NORM_ACT)
    out = model(torch.rand(3, 1, 28, 28))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3))


def test_group_counts_are_checked_for_every_norm_that_uses_them():
    for norm in ("gn", "ws-gn", "evonorm-s0"):
        with pytest.raises(ValueError, match="groups=3 does not divide"):
            Net(norm=norm, groups=3)
    Net(norm="frn", groups=3)  # frn has no groups: the setting does not apply


BATCH_INDEPENDENT = [n for n, e in NORMS.items() if e.batch_independent]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm", BATCH_INDEPENDENT)
def test_batch_independent_norms_give_a_sample_the_same_output_alone_or_in_a_batch(norm, mode):
    """Alone, in a batch of 6, and beside another sample (torch's GroupNorm refuses a group of one
    value, which `in` has after global pooling for a batch of one, so `in` is checked in pairs)."""
    torch.manual_seed(0)
    model = Net(norm=norm, dropout=0.0).double().train(mode == "train")
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    together = model(x)
    paired = torch.cat([model(x[[i, (i + 1) % 6]])[:1] for i in range(6)])
    torch.testing.assert_close(paired, together, rtol=0, atol=1e-10)
    if norm != "in":
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
        torch.testing.assert_close(alone, together, rtol=0, atol=1e-10)


def test_batch_norm_is_not_batch_independent_in_train_mode():
    assert not NORMS["bn"].batch_independent
    torch.manual_seed(0)
    model = Net(norm="bn", dropout=0.0).double().train()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    assert not torch.allclose(model(x)[:3], model(x[:3]))


def _randomized(module: nn.Module) -> nn.Module:
    """Non-default parameters, so gamma, beta, tau and v all matter in the comparison."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return module.double()


X = torch.randn(3, 8, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 + 0.5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reference_definitions_match_timm_and_torch(mode):
    """normlab.norms writes each zoo norm out from its definition; the layers used in training equal it."""
    train = mode == "train"
    ln2d = _randomized(LayerNorm2d(8)).train(train)
    torch.testing.assert_close(ln2d(X), norms.layer_norm_2d(X, ln2d.weight, ln2d.bias, eps=ln2d.eps).output,
                               rtol=0, atol=1e-10)
    # timm computes FRN's mean square and EvoNorm's group variance in float32 even for float64
    # input, so those two match to float32 precision
    frn = _randomized(FilterResponseNormTlu2d(8)).train(train)
    torch.testing.assert_close(frn(X), norms.filter_response_norm(X, frn.weight, frn.bias, frn.tau,
                                                                  eps=frn.eps).output, rtol=1e-6, atol=1e-6)
    evo = _randomized(EvoNorm2dS0(8, groups=4)).train(train)
    torch.testing.assert_close(evo(X), norms.evonorm_s0(X, 4, evo.weight, evo.bias, evo.v, eps=evo.eps).output,
                               rtol=1e-6, atol=1e-6)
    inorm = _randomized(nn.InstanceNorm2d(8, affine=True)).train(train)
    torch.testing.assert_close(inorm(X), norms.instance_norm(X, inorm.weight, inorm.bias).output,
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(_randomized(create_norm_layer("in", 8)).train(train)(X),
                               norms.instance_norm(X, inorm.weight, inorm.bias).output, rtol=0, atol=1e-10)
    conv = _randomized(StdConv2d(8, 4, 3, padding=0, bias=False)).train(train)
    expected = F.conv2d(X, norms.standardize_weight(conv.weight, eps=conv.eps))
    torch.testing.assert_close(conv(X), expected, rtol=0, atol=1e-10)


def test_standardized_weights_have_zero_mean_and_unit_variance_per_filter():
    w = norms.standardize_weight(torch.randn(16, 8, 3, 3, dtype=torch.float64) * 3 + 1)
    flat = w.reshape(16, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(16, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-5)


TRAINS = [n for n in ZOO if n not in ("in", "none")]  # those two: see the tests below
SEEDS_TRIED = (1, 2, 3)


@pytest.mark.parametrize("norm", TRAINS)
def test_every_norm_trains_on_real_digits(norm, tmp_path):
    """256 steps on 4,096 MNIST images take at least one of three seeds to 3x chance on held-out digits.

    The network's last block is left plain (last_norm=False): with a norm on its 1x1 maps several of
    these layers sit at chance for a seed-dependent while (the placement study's question), which
    made a one-seed threshold a test of one CPU's rounding. Measured here (2-core AMD EPYC), seeds
    1-6: the lowest final accuracy per norm was 45% (frn), 25% once in six (frn-eps), >= 64% for the
    rest; so all three seeds below 30% would take a failure rate far beyond what was seen.
    """
    torch.set_num_threads(1)
    reached = []
    for seed in SEEDS_TRIED:  # stop at the first seed that learns
        cfg = ExperimentConfig(name=norm, norm=norm, epochs=2, train_limit=4096, test_limit=512, batch_size=32,
                               lr=0.05, augment=False, dynamics=False, last_norm=False, seed=seed)
        exp = Experiment(cfg, tmp_path / cfg.dirname)
        reached.append([exp.run_epoch().test_accuracy for _ in range(cfg.epochs)][-1])
        if reached[-1] > 30:
            return
    pytest.fail(f"{norm} stayed below 30% in every seed: {reached}")


def test_instance_norm_before_global_pooling_leaves_the_pooled_features_constant():
    """IN gives every channel mean beta over (H, W); global average pooling keeps exactly that mean,
    so whatever the image the pooled features are beta (plus dropout noise): `in` cannot learn
    in this network even with a plain last block."""
    torch.manual_seed(0)
    model = Net(norm="in", last_norm=False, dropout=0.0).eval()
    with torch.no_grad():
        for _, block in model.blocks():
            if isinstance(block.norm, nn.GroupNorm):
                block.norm.bias.normal_()
    out = model(torch.rand(4, 1, 28, 28))
    torch.testing.assert_close(out, out[:1].expand(4, -1))


def test_instance_norm_after_global_pooling_makes_the_output_independent_of_the_input():
    """The last block sees 1x1 maps: IN normalizes each channel of each sample over one value, so
    x - mean = 0 and the block outputs beta whatever the image. This is why `in` cannot learn in
    this network (results/zoo)."""
    torch.manual_seed(0)
    model = Net(norm="in").eval()
    with torch.no_grad():
        for _, block in model.blocks():
            block.norm.bias.normal_()
    out = model(torch.rand(4, 1, 28, 28))
    torch.testing.assert_close(out, out[:1].expand(4, -1))


def test_frn_after_global_pooling_normalizes_single_values_to_their_sign():
    """FRN divides each channel by its root mean square over (H, W); on the 1x1 maps after global
    pooling that is |x|, so x / sqrt(x^2 + eps) is +-1 for all but tiny x and its gradient
    eps / (x^2 + eps)^1.5 nearly vanishes: why `frn` stays near chance in this network (results/zoo).
    The FRN paper's remedy for 1x1 maps, a learned eps, is not in timm's layer."""
    torch.manual_seed(0)
    model = Net(norm="frn").eval()
    last = model.blocks()[-1][1].norm
    seen = {}
    last.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    model(torch.rand(256, 1, 28, 28))
    x = seen["x"]
    assert x.shape[2:] == (1, 1)
    x_hat = norms.filter_response_norm(x, torch.ones(16), torch.zeros(16), torch.full((16,), -10.0),
                                       eps=last.eps).normalized
    assert (x_hat.abs() - 1).abs().lt(0.01).float().mean() > 0.9
