"""Layer 2: the model classes that nnU-Net plans name, and the checkpoints they load.

Plans and checkpoints store dotted class names; those of this package resolve here:
``nnunet_prune.networks.AdaptivePlainConvUNet`` / ``AdaptiveResidualEncoderUNet`` (width-adaptive U-Nets,
:mod:`~nnunet_prune.networks.adaptive`), ``nnunet_prune.networks.pspseg.PSPSegUNet`` (PSP-Seg,
:mod:`~nnunet_prune.networks.pspseg`) and ``nnunet_prune.networks.runtime.RuntimeNetwork`` (a fold run through a fast
runtime, :mod:`~nnunet_prune.networks.runtime`). Names written by earlier versions
(``nnunet_prune.pspseg_network.PSPSegUNet``, ``nnunet_prune.runtimes.RuntimeNetwork``) keep resolving through the
one-line modules of those names.
"""

from nnunet_prune.networks.adaptive import (  # noqa: F401 (the names plans store)
    AdaptivePlainConvUNet,
    AdaptiveResidualEncoderUNet,
    AdaptiveWidthMixin,
    OneDnnConv3d,
    adaptive_class_name,
    set_channel_widths,
    use_onednn_conv3d,
)
