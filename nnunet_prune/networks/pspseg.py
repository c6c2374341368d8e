"""PSP-Seg's redundant U-Net: every stage a Parallel Redundant Module (PSP-Seg, AAAI 2026, §3.1 and Appendix A).

The U-shape is nnU-Net's (``dynamic_network_architectures``' ``PlainConvUNet``): an encoder of stages, each a
strided convolution (conv, InstanceNorm, LeakyReLU; the plans' kernel and stride) followed by one PRM; a decoder
that upsamples with a transposed convolution, concatenates the skip, fuses with a convolution and runs one PRM; a
1x1 segmentation head per decoder stage. ``network.decoder.deep_supervision`` switches between the list of all
heads (highest resolution first) and the last head alone, exactly as in nnU-Net, so nnU-Net's deep-supervision
loss, its sliding-window predictor and ``set_deep_supervision_enabled`` work unchanged.

A **Parallel Redundant Module** holds ``m`` **efficient blocks** (EB): a 1x1 convolution C -> r*C, InstanceNorm,
LeakyReLU, a k-kernel convolution r*C -> C, InstanceNorm (Eq. 1), each with a learnable scalar weight ``w_i``
initialised to 0; ``y = act(x + sum_i w_i * EB_i(x))`` (Eq. 2). Branch kernels are mixes of 1 and 3 per axis
(``branch_kernels`` per encoder stage, chosen by the planners, :func:`branch_kernel_set`); a decoder stage uses the
kernels of the encoder stage at its resolution.

Branches are kept in an ``nn.ModuleDict`` under their original index, and each has a persistent boolean buffer
``active``. So a checkpoint says by itself which branches of which module remain (the keys present) and which are
masked (``active`` false: the branch computes nothing and contributes 0, its weights are kept for a restore).
:meth:`PSPSegUNet.load_state_dict` gives the network the branches of the state dict (branches a state dict lacks are
kept aside, so nnU-Net's predictor, which builds one network and loads fold after fold into it, can load a fold with
more branches after one with fewer). Pure PyTorch (surgery layer): no nnU-Net import.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_prune.networks import use_onednn_conv3d
from nnunet_prune.networks.checkpoints import normalise_state_dict
from nnunet_prune.surgery import architectures, branches

#: attribute of a PRM holding every branch it was built with (unregistered: deleted ones live on only here)
ALL_BRANCHES = "_nnunet_prune_all_branches"


def branch_kernel_set(m: int, dim: int, stage_kernel: Sequence[int] | None = None) -> list[list[int]]:
    """The ``m`` branch kernels of one stage: every mix of 1 and 3 per axis ordered by how many axes are 3 (the
    full 3x3(x3) first, then the planar ones, then the 1D ones, then 1x1(x1)), cycled if ``m`` is larger than the
    number of mixes. An axis on which nnU-Net's plan uses kernel 1 for the stage (anisotropic data) gets 1 in every
    branch. 3D, m = 4: 333, 331, 313, 133; m = 7: those and 311, 131, 113 (every mix but 111). 2D, m = 4: 33, 31,
    13, 11; m = 7: 33, 31, 13, 11, 33, 31, 13 (2D has only four mixes: the extra branches repeat them with their own
    weights).

    Raises:
        ValueError: m < 1 or dim not 2 or 3.
    """
    if m < 1 or dim not in (2, 3):
        raise ValueError(f"need m >= 1 and dim 2 or 3, got m={m}, dim={dim}")
    mixes = sorted(itertools.product((3, 1), repeat=dim), key=lambda k: (-k.count(3), [-v for v in k]))
    cap = list(stage_kernel) if stage_kernel is not None else [3] * dim
    return [[min(a, c) for a, c in zip(mixes[i % len(mixes)], cap)] for i in range(m)]


def _padding(kernel: Sequence[int]) -> list[int]:
    return [(k - 1) // 2 for k in kernel]


class ConvNormAct(nn.Sequential):
    """conv (given kernel and stride), norm, nonlinearity."""

    def __init__(self, conv_op, c_in: int, c_out: int, kernel, stride, norm_op, norm_kwargs, nonlin, nonlin_kwargs,
                 bias: bool):
        super().__init__(OrderedDict([
            ("conv", conv_op(c_in, c_out, kernel, stride, padding=_padding(kernel), bias=bias)),
            ("norm", norm_op(c_out, **norm_kwargs)),
            ("act", nonlin(**nonlin_kwargs)),
        ]))


class EfficientBlock(nn.Module):
    """One branch (Eq. 1): ``w * norm(conv_k(act(norm(conv_1x1(x)))))``, (B, C, *S) -> (B, C, *S).

    ``branch_weight`` is the scalar ``w`` (initialised to 0); the persistent buffer ``active`` is False while the
    branch is masked (its weights are kept; it computes nothing)."""

    def __init__(self, channels: int, squeeze_ratio: float, kernel: Sequence[int], conv_op, norm_op, norm_kwargs,
                 nonlin, nonlin_kwargs, bias: bool):
        super().__init__()
        hidden = max(1, int(round(channels * squeeze_ratio)))
        self.kernel = [int(k) for k in kernel]
        self.squeeze = ConvNormAct(conv_op, channels, hidden, [1] * len(kernel), 1, norm_op, norm_kwargs, nonlin,
                                   nonlin_kwargs, bias)
        self.expand = conv_op(hidden, channels, self.kernel, 1, padding=_padding(self.kernel), bias=bias)
        self.norm = norm_op(channels, **norm_kwargs)
        self.branch_weight = nn.Parameter(torch.zeros(()))
        self.register_buffer("active", torch.ones((), dtype=torch.bool))
        self.is_active = True  # mirrors ``active`` (read in forward without a device sync)

    def set_active(self, active: bool) -> None:
        """Mask (False) or restore (True) this branch."""
        self.active.fill_(bool(active))
        self.is_active = bool(active)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_active = bool(self.active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S), weighted by ``branch_weight``."""
        return self.branch_weight * self.norm(self.expand(self.squeeze(x)))


class ParallelRedundantModule(nn.Module):
    """PRM (Eq. 2): ``y = act(x + sum over active branches of w_i * EB_i(x))``, (B, C, *S) -> (B, C, *S).

    ``branches`` is an ``nn.ModuleDict`` keyed by the branch's original index (``"0"`` .. ``"m-1"``); deleted
    branches are gone from it and False in the persistent buffer ``present`` (m,)
    (:mod:`nnunet_prune.surgery.branches`).
    With every branch deleted the module is ``act(x)``."""

    def __init__(self, channels: int, kernels: Sequence[Sequence[int]], squeeze_ratio: float, conv_op, norm_op,
                 norm_kwargs, nonlin, nonlin_kwargs, bias: bool):
        super().__init__()
        self.branches = nn.ModuleDict({
            str(i): EfficientBlock(channels, squeeze_ratio, k, conv_op, norm_op, norm_kwargs, nonlin, nonlin_kwargs,
                                   bias) for i, k in enumerate(kernels)})
        self.__dict__[ALL_BRANCHES] = dict(self.branches.items())
        #: which branches exist (deleted: False); persistent, so a state dict says so even when every branch of the
        #: module is deleted and no key under ``branches`` is left
        self.register_buffer("present", torch.ones(len(kernels), dtype=torch.bool))
        # not in place: with every branch masked or deleted, y is x itself
        self.act = nonlin(**{**nonlin_kwargs, **({"inplace": False} if "inplace" in nonlin_kwargs else {})})

    @property
    def num_built(self) -> int:
        """How many branches the module was built with (``m``)."""
        return len(self.__dict__[ALL_BRANCHES])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S)."""
        y = x
        for branch in self.branches.values():
            if branch.is_active:
                y = y + branch(x)
        return self.act(y)


class PSPSegEncoder(nn.Module):
    """Stages of (strided conv block, PRM); ``forward`` returns every stage's output (the skips), highest resolution
    first, the bottleneck last."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 branch_kernels, squeeze_ratio, conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs):
        super().__init__()
        stages = []
        c_in = input_channels
        for s in range(n_stages):
            stages.append(nn.Sequential(OrderedDict([
                ("conv", ConvNormAct(conv_op, c_in, features_per_stage[s], kernel_sizes[s], strides[s], norm_op,
                                     norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias)),
                ("prm", ParallelRedundantModule(features_per_stage[s], branch_kernels[s], squeeze_ratio, conv_op,
                                                norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias)),
            ])))
            c_in = features_per_stage[s]
        self.stages = nn.ModuleList(stages)
        self.output_channels = list(features_per_stage)
        self.strides = [list(s) if isinstance(s, (list, tuple)) else [s] * conv_op_dim(conv_op) for s in strides]
        self.kernel_sizes = kernel_sizes
        self.conv_op = conv_op

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, *S) -> [stage outputs], stage s shaped (B, features[s], *S / prod(strides[:s+1]))."""
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


def conv_op_dim(conv_op) -> int:
    """2 or 3 for Conv2d / Conv3d."""
    return 3 if conv_op is nn.Conv3d or issubclass(conv_op, nn.Conv3d) else 2


class PSPSegDecoder(nn.Module):
    """nnU-Net's decoder with a PRM after each fusion convolution; ``deep_supervision`` as in nnU-Net.

    With ``record_features`` set, ``features`` holds each decoder stage's output after a forward (highest resolution
    first, like the deep-supervision outputs): what PSP-Seg's region-localisation loss supervises."""

    def __init__(self, encoder: PSPSegEncoder, num_classes: int, deep_supervision: bool, branch_kernels,
                 squeeze_ratio, conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.record_features = False
        self.features: list[torch.Tensor] = []
        conv_op = encoder.conv_op
        transpconv_op = nn.ConvTranspose3d if conv_op_dim(conv_op) == 3 else nn.ConvTranspose2d
        n = len(encoder.output_channels)
        transpconvs, stages, seg_layers = [], [], []
        for s in range(1, n):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            level = n - s - 1  # the encoder stage at this resolution
            transpconvs.append(transpconv_op(below, skip, stride, stride, bias=conv_bias))
            stages.append(nn.Sequential(OrderedDict([
                ("conv", ConvNormAct(conv_op, 2 * skip, skip, encoder.kernel_sizes[level], 1, norm_op,
                                     norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias)),
                ("prm", ParallelRedundantModule(skip, branch_kernels[level], squeeze_ratio, conv_op, norm_op,
                                                norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias)),
            ])))
            seg_layers.append(conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.transpconvs = nn.ModuleList(transpconvs)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: list[torch.Tensor]):
        """[encoder stage outputs] -> logits (B, num_classes, *S), or the list of every head's logits, highest
        resolution first, with deep supervision."""
        lres = skips[-1]
        seg_outputs, features = [], []
        for s in range(len(self.stages)):
            x = self.transpconvs[s](lres)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = self.stages[s](x)
            if self.record_features:
                features.append(x)
            if self.deep_supervision:
                seg_outputs.append(self.seg_layers[s](x))
            elif s == len(self.stages) - 1:
                seg_outputs.append(self.seg_layers[-1](x))
            lres = x
        if self.record_features:
            self.features = features[::-1]
        seg_outputs = seg_outputs[::-1]
        return seg_outputs if self.deep_supervision else seg_outputs[0]


class PSPSegUNet(nn.Module):
    """PSP-Seg's redundant U-Net (see the module docstring), built from nnU-Net plans' ``arch_kwargs``.

    Input (B, input_channels, *patch) with ``patch`` divisible by the product of ``strides``; output (B,
    num_classes, *patch) logits, or with ``deep_supervision`` a list of logits per decoder stage, highest resolution
    first. ``branch_kernels[s]`` lists the m kernels of stage s's PRM; ``squeeze_ratio`` is r (0.5).

    With ``record_features`` set, a forward keeps the bottleneck (``bottleneck``, (B, C_last, *S_last)) and the
    decoder stages' outputs (``decoder.features``) for PSP-Seg's functional-decoupling loss.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: Sequence[int], conv_op,
                 kernel_sizes, strides, num_classes: int, branch_kernels, squeeze_ratio: float = 0.5,
                 conv_bias: bool = True, norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False):
        super().__init__()
        if len(features_per_stage) != n_stages or len(kernel_sizes) != n_stages or len(strides) != n_stages \
                or len(branch_kernels) != n_stages:
            raise ValueError("features_per_stage, kernel_sizes, strides and branch_kernels need one entry per stage")
        dim = conv_op_dim(conv_op)
        norm_op = norm_op or (nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d)
        norm_op_kwargs = norm_op_kwargs if norm_op_kwargs is not None else {"eps": 1e-5, "affine": True}
        nonlin = nonlin or nn.LeakyReLU
        nonlin_kwargs = nonlin_kwargs if nonlin_kwargs is not None else {"inplace": True}
        kernel_sizes = [list(k) if isinstance(k, (list, tuple)) else [k] * dim for k in kernel_sizes]
        strides = [list(s) if isinstance(s, (list, tuple)) else [s] * dim for s in strides]
        self.encoder = PSPSegEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                     branch_kernels, squeeze_ratio, conv_bias, norm_op, norm_op_kwargs, nonlin,
                                     nonlin_kwargs)
        self.decoder = PSPSegDecoder(self.encoder, num_classes, deep_supervision, branch_kernels, squeeze_ratio,
                                     conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        self.record_features = False
        self.bottleneck: torch.Tensor | None = None
        use_onednn_conv3d(self)

    def forward(self, x: torch.Tensor):
        """See the class docstring."""
        skips = self.encoder(x)
        if self.record_features:
            self.bottleneck = skips[-1]
        self.decoder.record_features = self.record_features
        return self.decoder(skips)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's initialisation (``network.apply(network.initialize)``): He-normal convolutions (a = 0.01), zero
        biases; branch weights stay 0 (the paper's initialisation)."""
        if isinstance(module, _ConvNd) or isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, EfficientBlock):
            with torch.no_grad():
                module.branch_weight.zero_()

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Take the state dict's branches (present and masked) first
        (:func:`~nnunet_prune.surgery.branches.match_branches`), then load it as ``nn.Module`` does."""
        state_dict = normalise_state_dict(state_dict)
        branches.match_branches(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


architectures.register(architectures.Architecture(
    stock_class=f"{__name__}.PSPSegUNet", adaptive_class=f"{__name__}.PSPSegUNet", build_graph=branches.empty_graph,
    resize=branches.match_branches, match_structure=branches.match_branches, removes=("branches",),
    mask_blocks=branches.set_branches_active, remove_blocks=branches.remove_branches,
    removable_blocks=branches.removable_branches, block_states=branches.block_states))
