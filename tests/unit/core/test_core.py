"""nnunet_prune.core: the one home of the transposed-convolution weight layout and of the optimizer-drop loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_prune.core.conv import in_axis, in_channels, is_transposed, out_axis, out_channels
from nnunet_prune.core.optim import drop_parameters, optimizers_of

CONVS = [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]


@pytest.mark.parametrize("cls", CONVS)
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_layout_says_which_weight_axis_holds_which_channels(cls, groups):
    conv = cls(4, 6, 3, groups=groups)
    assert is_transposed(conv) == cls.__name__.startswith("ConvTranspose")
    assert (out_channels(conv), in_channels(conv)) == (6, 4)
    per_group = {out_axis(conv): 6 // (groups if is_transposed(conv) else 1),
                 in_axis(conv): 4 // (1 if is_transposed(conv) else groups)}
    assert {a: conv.weight.shape[a] for a in (0, 1)} == per_group


@pytest.mark.parametrize("cls", [nn.Conv2d, nn.ConvTranspose2d])
def test_slicing_along_the_axes_removes_exactly_those_channels(cls):
    """Keeping output channels along out_axis (and the bias) gives those channels of the full output; keeping input
    channels along in_axis gives the full output of an input whose other channels are zero."""
    torch.manual_seed(0)
    conv, x = cls(5, 7, 3, padding=1), torch.randn(2, 5, 6, 6)
    keep_out, keep_in = torch.tensor([0, 3, 6]), torch.tensor([1, 2, 4])
    with torch.no_grad():
        full = conv(x)
        w_out = conv.weight.index_select(out_axis(conv), keep_out)
        w_in = conv.weight.index_select(in_axis(conv), keep_in)
        f = nn.functional.conv_transpose2d if is_transposed(conv) else nn.functional.conv2d
        sliced_out = f(x, w_out, conv.bias[keep_out], padding=1)
        zeroed = torch.zeros_like(x)
        zeroed[:, keep_in] = x[:, keep_in]
        sliced_in = f(x[:, keep_in], w_in, conv.bias, padding=1)
        assert torch.allclose(sliced_out, full[:, keep_out], atol=1e-6)
        assert torch.allclose(sliced_in, conv(zeroed), atol=1e-6)


def test_drop_parameters_leaves_the_other_parameters_and_their_state_as_they_were():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    sgd = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[1].parameters(), "lr": 0.5}], lr=0.1,
                          momentum=0.9)
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 3)).sum().backward()
    sgd.step()
    adam.step()
    kept = list(net[1].parameters())
    before = {opt: {p: {k: v.clone() for k, v in opt.state[p].items()} for p in kept} for opt in (sgd, adam)}

    drop_parameters([sgd, adam], net[0].parameters())

    assert [g["params"] for g in sgd.param_groups] == [[], kept] and sgd.param_groups[1]["lr"] == 0.5
    assert adam.param_groups[0]["params"] == kept
    for opt in (sgd, adam):
        assert set(opt.state) == set(kept)
        for p in kept:
            assert all(torch.equal(opt.state[p][k], v) for k, v in before[opt][p].items())
    drop_parameters(None, kept)  # no optimizer: nothing to do
    drop_parameters(sgd, kept)  # one optimizer
    assert sgd.param_groups[1]["params"] == [] and not sgd.state


def test_optimizers_of_accepts_none_one_or_several():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    assert optimizers_of(None) == [] and optimizers_of(opt) == [opt] and optimizers_of((opt, opt)) == [opt, opt]
