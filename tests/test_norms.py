"""The reference maths in norms.py equals torch.nn to float precision, in train and eval mode."""

import pytest
import torch
from torch import nn

from normlab import norms


def _x(seed=0, shape=(4, 8, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1


def _affine(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        module.bias.copy_(torch.randn(module.bias.shape, generator=g))
    return module


def test_batch_norm_train_mode_matches_torch_including_running_stats():
    bn = _affine(nn.BatchNorm2d(8, momentum=0.1).double()).train()
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    for step in range(3):  # several updates, so the running averages really accumulate
        x = _x(step)
        expected = bn(x)
        got = norms.batch_norm(x, rm, rv, bn.weight, bn.bias, training=True, momentum=0.1, eps=bn.eps)
        torch.testing.assert_close(got.output, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rm, bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv, bn.running_var, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(rv, torch.ones(8, dtype=torch.float64))


def test_batch_norm_eval_mode_uses_running_stats():
    bn = _affine(nn.BatchNorm2d(8).double()).train()
    for step in range(3):
        bn(_x(step))
    bn.eval()
    x = _x(9)
    got = norms.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                           training=False, eps=bn.eps)
    torch.testing.assert_close(got.output, bn(x), rtol=1e-12, atol=1e-12)
    # eval output must differ from normalizing with the batch's own statistics
    batch = norms.batch_norm(x, None, None, bn.weight, bn.bias, training=True)
    assert not torch.allclose(batch.output, got.output)


def test_batch_norm_float32_precision():
    bn = _affine(nn.BatchNorm2d(16)).train()
    x = _x(3, (8, 16, 6, 6)).float()
    got = norms.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias)
    torch.testing.assert_close(got.output, bn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_group_norm_matches_torch(groups, mode):
    gn = _affine(nn.GroupNorm(groups, 8).double())
    getattr(gn, mode)()
    x = _x(groups)
    got = norms.group_norm(x, groups, gn.weight, gn.bias, eps=gn.eps)
    torch.testing.assert_close(got.output, gn(x), rtol=1e-12, atol=1e-12)
    assert got.mean.shape == (4, groups)


def test_layer_norm_is_group_norm_with_one_group_and_matches_nn_layernorm():
    x = _x(5)
    gn = _affine(nn.GroupNorm(1, 8).double())
    got = norms.layer_norm(x, gn.weight, gn.bias)
    torch.testing.assert_close(got.output, gn(x), rtol=1e-12, atol=1e-12)
    # nn.LayerNorm over (C, H, W) normalizes the same elements; with its elementwise affine set to
    # the per-channel gamma/beta broadcast over H, W it gives the same output.
    ln = nn.LayerNorm([8, 5, 5]).double()
    with torch.no_grad():
        ln.weight.copy_(gn.weight[:, None, None].expand(8, 5, 5))
        ln.bias.copy_(gn.bias[:, None, None].expand(8, 5, 5))
    torch.testing.assert_close(got.output, ln(x), rtol=1e-12, atol=1e-12)


def test_group_norm_rejects_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="do not divide"):
        norms.group_norm(_x(), 3)
