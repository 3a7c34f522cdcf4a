"""MoCo v2 (He et al. 2020; Chen et al. 2020) on a ResNet: MUSCLE's step 1 (MD-MoCo).

A query encoder (backbone + 2-layer MLP projection) is trained by back-propagation; a key encoder of
the same shape follows it as an exponential moving average (``momentum``) and fills a fixed-size
queue of negative keys. The forward pass returns the InfoNCE logits and their targets (the positive
key is column 0), so the loss is plain cross-entropy. The queue, its pointer and the key encoder are
registered buffers / frozen parameters: they are in ``state_dict()`` and therefore in every
checkpoint, and a resumed run continues with exactly the queue it stopped with.

State-dict layout (what fine-tuning reads): ``backbone.<torchvision resnet key>`` is the query
encoder's ResNet without ``fc`` (see :func:`resnet_backbone`); ``projector.*``, ``key_backbone.*``, ``key_projector.*``, ``queue``
and ``queue_ptr`` are MoCo's own.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.utils import optional_import
from torch import nn

tv_models, _ = optional_import("torchvision.models")

__all__ = ["BACKBONES", "resnet_backbone", "projection_head", "MoCo", "gather_from_all_ranks"]

BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
"""ResNets the backbone may be, with the length of their pooled feature vector."""


def resnet_backbone(name: str = "resnet18") -> nn.Module:
    """A randomly initialised torchvision ResNet whose classifier is an identity.

    ``torchvision.models.<name>(weights=None)`` with ``fc`` replaced by ``nn.Identity``: its
    ``state_dict`` keys are torchvision's without ``fc.*`` (``conv1``, ``bn1``, ``layer1.0.conv1``...,
    ``layer2.0.downsample.0``). MUSCLE checkpoints written with the earlier MONAI-built backbone
    (MONAI's ``ResNet`` in torchvision's configuration) have the same keys and shapes and load as they are.

    Args:
        name: one of :data:`BACKBONES` (``resnet18`` or ``resnet50`` in MUSCLE).

    Returns:
        The ResNet; ``backbone(x)`` maps ``(B, 3, H, W)`` to pooled features ``(B, num_features)``;
        ``backbone.num_features`` is 512 or 2048; ``layer1`` ... ``layer4`` give the feature maps.

    Raises:
        ValueError: for a name that is not a supported ResNet.
        OptionalImportError: torchvision cannot be imported.
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone '{name}'; expected one of {sorted(BACKBONES)}.")
    net = getattr(tv_models, name)(weights=None)
    net.fc = nn.Identity()  # MoCo adds its projection, the task heads their own classifiers
    net.num_features = BACKBONES[name]
    return net


def projection_head(in_features: int, out_features: int = 128, hidden_features: int | None = None) -> nn.Sequential:
    """MoCo v2's MLP projection: Linear, ReLU, Linear (hidden width = input width by default).

    Args:
        in_features: backbone feature length.
        out_features: embedding length (128 in MoCo v2).
        hidden_features: hidden width, default ``in_features``.

    Returns:
        The head.
    """
    hidden = hidden_features or in_features
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


@torch.no_grad()
def gather_from_all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes (rank order); the tensor itself when not distributed.

    Args:
        tensor: same shape on every rank.

    Returns:
        ``(world_size * B, ...)`` under an initialised process group, else ``tensor``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class MoCo(nn.Module):
    """MoCo v2: query encoder, momentum key encoder, queue of negative keys.

    Under ``torch.distributed`` the keys of all processes are gathered before they enter the queue (so
    every rank holds the same queue); batch statistics are kept from leaking between query and key
    by converting the network to ``SyncBatchNorm`` (the multi-GPU overlay does) rather than by
    MoCo's shuffle-BN.

    Args:
        backbone: ``"resnet18"`` / ``"resnet50"``... (see :func:`resnet_backbone`).
        embed_dim: projection output length (128).
        queue_size: number of negative keys kept (65536 in MoCo v2; smaller for small data). Must be a
            multiple of the global batch size, so a batch never wraps around the queue's end.
        momentum: key-encoder EMA coefficient (0.999).
        temperature: softmax temperature of the logits (0.2 in MoCo v2).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embed_dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}.")
        if temperature <= 0 or queue_size < 1:
            raise ValueError(f"temperature must be > 0 and queue_size >= 1, got {temperature}, {queue_size}.")
        self.config = {
            "backbone": backbone,
            "embed_dim": int(embed_dim),
            "queue_size": int(queue_size),
            "momentum": float(momentum),
            "temperature": float(temperature),
        }
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.backbone = resnet_backbone(backbone)
        self.projector = projection_head(self.backbone.num_features, embed_dim)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_projector = copy.deepcopy(self.projector)
        for p in self.key_parameters():
            p.requires_grad_(False)  # the key encoder only follows the query encoder
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, embed_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def key_parameters(self) -> list[nn.Parameter]:
        """The key encoder's parameters (backbone then projector)."""
        return [*self.key_backbone.parameters(), *self.key_projector.parameters()]

    def query_parameters(self) -> list[nn.Parameter]:
        """The query encoder's parameters, in the same order as :meth:`key_parameters`."""
        return [*self.backbone.parameters(), *self.projector.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``key = momentum * key + (1 - momentum) * query`` for every parameter (buffers such as BN
        running statistics are the key encoder's own, as in MoCo)."""
        for k, q in zip(self.key_parameters(), self.query_parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` over the oldest entries of the queue and advance the pointer.

        Args:
            keys: ``(N, embed_dim)`` normalised keys, already gathered over processes.
        """
        size, n = self.queue.shape[0], keys.shape[0]
        if n > size:
            raise ValueError(f"a batch of {n} keys does not fit a queue of {size}; raise queue_size.")
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size  # wraps when size is no multiple of n
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised query embedding ``(B, embed_dim)``."""
        return F.normalize(self.projector(self.backbone(images)), dim=1)

    def forward(self, query_images: torch.Tensor, key_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One MoCo step's logits; in training mode also the momentum update and the enqueue.

        Args:
            query_images: ``(B, 3, H, W)`` first views.
            key_images: ``(B, 3, H, W)`` second views of the same images.

        Returns:
            ``logits`` ``(B, 1 + queue_size)`` (positive first, divided by the temperature) and
            ``targets`` ``(B,)`` zeros, for ``nn.CrossEntropyLoss``.
        """
        q = self.embed(query_images)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            k = F.normalize(self.key_projector(self.key_backbone(key_images)), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ self.queue.clone().detach().t()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        if self.training:
            self.enqueue(gather_from_all_ranks(k))
        return logits, targets
