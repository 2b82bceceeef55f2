"""The one network: < 8k parameters for every norm, chosen by name from one registry."""

import pytest
import torch

from normlab.errors import NormlabError
from normlab.model import NORMS, Dropout, Net, count_parameters


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_each_mission_norm_is_small_and_outputs_ten_log_probabilities(norm):
    model = Net(norm=norm)
    assert count_parameters(model) < 8000
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5))


def test_norm_layer_types_follow_the_registry():
    kinds = {n: {type(m).__name__ for m in Net(n).modules()} for n in ("bn", "gn", "ln")}
    assert "BatchNorm2d" in kinds["bn"] and "GroupNorm" not in kinds["bn"]
    gn_groups = {m.num_groups for m in Net("gn", groups=2).modules() if isinstance(m, torch.nn.GroupNorm)}
    ln_groups = {m.num_groups for m in Net("ln").modules() if isinstance(m, torch.nn.GroupNorm)}
    assert gn_groups == {2} and ln_groups == {1}


def test_unknown_norm_names_the_valid_ones_worded_for_python():
    with pytest.raises(ValueError) as e:  # a library argument error is a ValueError ...
        Net(norm="nonsense")
    assert isinstance(e.value, NormlabError) and "norm='nonsense' is not a known norm" in str(e.value)
    assert "--norm" not in str(e.value)  # ... named as Python names it, not as a CLI flag
    for name in NORMS:
        assert name in str(e.value)


def test_norm_names_are_normalized():
    assert Net(norm=" BN ").config.norm == "bn"


def test_groups_that_do_not_divide_channels_are_a_clear_error():
    with pytest.raises(NormlabError, match="does not divide the 8 channels"):
        Net(norm="gn", groups=16)
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        Net(norm="gn", groups=3)


def test_uint8_images_are_scaled_like_the_float_images_they_stand_for():
    """`normlab.data.load` returns uint8 (N, 28, 28): a loaded model must score them correctly."""
    torch.manual_seed(0)
    model = Net(norm="bn").eval()
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    expected = model(images.float().div(255).unsqueeze(1))
    torch.testing.assert_close(model(images), expected)
    torch.testing.assert_close(model(images.unsqueeze(1)), expected)


@pytest.mark.parametrize("images, error", [
    (torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.int64), TypeError),  # integers, not uint8
    (torch.randint(0, 256, (2, 1, 28, 28)).float(), ValueError),  # floats in [0, 255], not [0, 1]
])
def test_images_that_would_give_a_silently_wrong_answer_are_refused(images, error):
    with pytest.raises(error, match="images"):
        Net(norm="bn").eval()(images)


def test_input_standardization_is_part_of_the_saved_state():
    model = Net(norm="ln", mean=0.5, std=0.25)
    state = model.state_dict()
    assert state["input_mean"].item() == 0.5 and state["input_std"].item() == 0.25
    # standardizing inside the model: shifting the stored mean changes the output
    x = torch.rand(2, 1, 28, 28)
    other = Net(norm="ln", mean=0.1, std=0.25)
    other.load_state_dict({k: v for k, v in state.items() if k != "input_mean"} | {"input_mean": torch.tensor(0.1)})
    model.eval(), other.eval()
    assert not torch.allclose(model(x), other(x))


def test_dropout_drops_about_p_and_keeps_the_expected_value():
    torch.manual_seed(0)
    d = Dropout(0.05).train()
    x = torch.ones(200_000)
    y = d(x)
    kept = (y > 0).float().mean().item()
    assert abs(kept - 0.95) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.005
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and values[1] == pytest.approx(32768 / (32768 - 1638)) and len(values) == 2
    d.eval()
    assert torch.equal(d(x), x)


def test_dropout_is_reproducible_under_a_seed():
    d = Dropout(0.05).train()
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    assert torch.equal(a, d(x))
