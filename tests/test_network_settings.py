"""The settings around the norm: a plain last block, He init, conv biases, FRN's learned eps,
and the validation split. Each defaults to the exercise's network, so committed results stay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab import norms
from normlab.cli import build_parser
from normlab.config import ExperimentConfig
from normlab.experiment import Experiment
from normlab.layers import FRN_EPS, FilterResponseNormTluLearnedEps2d
from normlab.model import Net, NetConfig, count_parameters
from normlab.studies import build_study
from normlab.training.data import validation_indices


def test_defaults_are_the_exercise_network_and_draw_the_same_init():
    torch.manual_seed(3)
    a = Net("bn")
    torch.manual_seed(3)
    b = Net("bn", last_norm=True, init="default", conv_bias=False)
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))
    assert count_parameters(a) == 7704
    assert NetConfig.from_dict({"norm": "bn", "groups": 4, "dropout": 0.05, "mean": 0.1, "std": 0.3}).last_norm


@pytest.mark.parametrize("norm", ["bn", "gn", "frn", "evonorm-s0", "ws-gn"])
def test_a_plain_last_block_has_no_norm_after_global_pooling_only(norm):
    model = Net(norm, last_norm=False)
    blocks = [b for _, b in model.blocks()]
    last = blocks[-1]
    assert isinstance(last.norm, nn.Identity) and isinstance(last.act, nn.ReLU)
    assert type(last.conv) is nn.Conv2d  # not weight-standardized either: no normalization there
    assert all(not isinstance(b.norm, nn.Identity) for b in blocks[:-1])
    assert count_parameters(model) < count_parameters(Net(norm))
    out = model(torch.rand(3, 1, 28, 28))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3))


def test_he_init_gives_every_conv_the_variance_that_keeps_the_signal():
    torch.manual_seed(0)
    model = Net("none", init="he", conv_bias=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is not None and torch.count_nonzero(m.bias) == 0 for m in convs)
    weights = torch.cat([(m.weight / (2 / m.weight[0].numel()) ** 0.5).flatten() for m in convs])
    assert abs(weights.std().item() - 1) < 0.05 and abs(weights.mean().item()) < 0.05


def test_he_init_keeps_the_activations_of_the_unnormalized_network_on_one_scale():
    """Against the default init, whose conv + ReLU shrink the signal block by block (test_dynamics)."""
    torch.manual_seed(0)
    stds = []
    model = Net("none", init="he", dropout=0.0)
    for _, block in model.blocks():
        block.norm.register_forward_hook(lambda m, i, o: stds.append(o.std().item()))
    model(torch.rand(64, 1, 28, 28))
    assert max(stds) / min(stds) < 5


def test_conv_bias_puts_a_bias_in_every_conv():
    assert all(m.bias is not None for m in Net("bn", conv_bias=True).modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in Net("bn").modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frn_with_a_learned_eps_equals_its_definition_and_learns_its_eps(mode):
    torch.manual_seed(1)
    layer = FilterResponseNormTluLearnedEps2d(8).double().train(mode == "train")
    with torch.no_grad():
        for p in (layer.weight, layer.bias, layer.tau):
            p.copy_(torch.randn_like(p) * 0.5)
        layer.eps_learned.fill_(-0.03)  # |eps_l| is used: a negative value counts as positive
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    expected = norms.filter_response_norm(x, layer.weight, layer.bias, layer.tau, eps=FRN_EPS + 0.03).output
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    layer(x[:, :, :1, :1]).sum().backward()  # on 1x1 maps eps is what keeps a gradient
    assert layer.eps_learned.grad is not None and layer.eps_learned.grad.abs() > 0


def test_the_settings_are_flags_config_fields_and_checked():
    args = build_parser().parse_args(["run", "--last-norm", "false", "--init", "he", "--conv-bias", "true",
                                      "--val-split", "5000"])
    assert (args.last_norm, args.init, args.conv_bias, args.val_split) == ([False], ["he"], [True], [5000])
    cfg = ExperimentConfig(last_norm=False, init="he", conv_bias=True)
    net = cfg.net_config(0.1, 0.3)
    assert (net.last_norm, net.init, net.conv_bias) == (False, "he", True)
    for kwargs, message in [({"init": "xavier"}, "init='xavier' is not a known init"),
                            ({"last_norm": "no"}, "last_norm='no' must be true or false"),
                            ({"val_split": -1}, "val_split=-1 must be zero or a positive"),
                            ({"val_split": 999, "train_limit": 1000}, "leaves fewer than 2 of the 1000")]:
        with pytest.raises(ValueError, match=message):
            ExperimentConfig(**kwargs)


def test_the_validation_split_is_fixed_disjoint_and_reported_every_epoch(tmp_path):
    train, val = validation_indices(1000, 100)
    assert len(val) == 100 and len(train) == 900 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(validation_indices(1000, 100)[1], val)  # the same for every experiment and seed
    cfg = ExperimentConfig(name="v", norm="bn", epochs=1, train_limit=512, test_limit=128, batch_size=64,
                           val_split=128, seed=2)
    exp = Experiment(cfg, tmp_path / "v")
    assert len(exp.state.data.train_y) == 384 and len(exp.state.data.val_y) == 128
    row = exp.run_epoch().row()
    assert 0 <= row["val_accuracy"] <= 100 and row["val_loss"] > 0
    plain = ExperimentConfig(name="p", norm="bn", epochs=1, train_limit=512, test_limit=128, batch_size=64)
    assert "val_accuracy" not in Experiment(plain, tmp_path / "p").run_epoch().row()


def test_a_grid_names_the_settings_its_template_does_not_show():
    names = [e.name for e in build_study("placement", seeds=[1]).experiments]
    assert "in-lastnorm" in names and "in-plainlast" in names and "bn-b2-plainlast" in names
    assert len(names) == len(set(names)) == 16
    init = [e.name for e in build_study("init", seeds=[1]).experiments]
    assert "none-init-he-bias-lr0.03" in init and "bn-lr0.1" in init and len(init) == 15


def test_a_template_that_hides_a_varied_setting_gets_it_appended(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('[[grid]]\nname = "same"\nnorm = ["bn", "gn"]\n')
    assert [e.name for e in build_study(study).experiments] == ["same-bn", "same-gn"]
