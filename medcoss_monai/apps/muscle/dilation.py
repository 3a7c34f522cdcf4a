"""Dilated ResNets for DeepLab-v3: the last stages keep their resolution and dilate their convolutions instead.

DeepLab-v3 (Chen et al. 2017, Sec. 3.3 and 4.1) runs its atrous spatial pyramid pooling on a backbone
of output stride 16 (rates 6, 12, 18) or 8 (rates doubled: 12, 24, 36): the strides of the last one or
two ResNet stages become 1 and their 3x3 convolutions are dilated by 2 (and 4). torchvision builds
this with ``resnet50(replace_stride_with_dilation=[False, True, True])`` for its ``deeplabv3_resnet50``
(output stride 8, rates 12, 24, 36), but only for bottleneck ResNets: its ``BasicBlock`` (ResNet-18/34,
MUSCLE's default backbone) refuses a dilation.

:func:`dilate_resnet` changes a built torchvision ResNet in place, for either block: in a dilated stage
the strided convolutions of the first block (its strided 3x3 and the 1x1 of its downsample) get stride
1, and every 3x3 convolution of a block gets the block's dilation (and the same padding, so maps keep
their size) -- the stage's previous dilation for its first block, the new one for the others, as
torchvision's ``_make_layer`` does. For a bottleneck ResNet this is exactly torchvision's own dilated
network; for a ``BasicBlock`` both of its 3x3 convolutions take the block's dilation. No weight
changes shape: checkpoints of the undilated backbone (MD-MoCo's) load into the dilated one unchanged.
"""

from __future__ import annotations

from torch import nn

from medcoss_monai.errors import BadInputError

__all__ = ["OUTPUT_STRIDES", "dilate_resnet"]

OUTPUT_STRIDES = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}
"""Output stride -> the ResNet stages whose stride is replaced by dilation (DeepLab-v3's 16 and 8)."""

_STRIDED_STAGES = ("layer2", "layer3", "layer4")  # each starts with a stride-2 block


def _convs_3x3(block: nn.Module) -> list[nn.Conv2d]:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def dilate_resnet(net: nn.Module, output_stride: int = 32) -> nn.Module:
    """Give a torchvision ResNet the output stride ``output_stride`` by dilation (in place).

    Args:
        net: a torchvision ResNet (``layer1`` .. ``layer4``) of the standard output stride 32.
        output_stride: 32 (unchanged), 16 (``layer4`` dilated by 2) or 8 (``layer3`` by 2, ``layer4`` by 4).

    Returns:
        ``net``; ``net.output_stride`` records the stride.

    Raises:
        BadInputError: ``output_stride`` is not 8, 16 or 32.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise BadInputError(
            f"backbone output_stride {output_stride} is not one of {sorted(OUTPUT_STRIDES)} "
            "(32: a plain ResNet; 16 or 8: DeepLab-v3's dilated backbone)."
        )
    dilated = OUTPUT_STRIDES[output_stride]
    dilation = 1
    for name in _STRIDED_STAGES:
        if name not in dilated:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(net, name)):
            d = previous if i == 0 else dilation
            for conv in _convs_3x3(block):
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            downsample = getattr(block, "downsample", None)
            if downsample is not None:
                downsample[0].stride = (1, 1)
    net.output_stride = int(output_stride)
    return net
