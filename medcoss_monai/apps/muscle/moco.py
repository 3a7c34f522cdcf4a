"""MoCo v2 (He et al. 2020; Chen et al. 2020) on a ResNet: MUSCLE's step 1 (MD-MoCo).

A query encoder (backbone + 2-layer MLP projection) is trained by back-propagation; a key encoder of
the same shape follows it as an exponential moving average (``momentum``) and fills a fixed-size
queue of negative keys. The forward pass returns the InfoNCE logits and their targets (the positive
key is column 0), so the loss is plain cross-entropy. The queue, its pointer and the key encoder are
registered buffers / frozen parameters: they are in ``state_dict()`` and therefore in every
checkpoint, and a resumed run continues with exactly the queue it stopped with. The key encoder
runs with MoCo's shuffle-BN (:mod:`~medcoss_monai.apps.muscle.shuffle_bn`).

State-dict layout (what fine-tuning reads): ``backbone.<torchvision resnet key>`` is the query
encoder's ResNet without ``fc`` (see :func:`resnet_backbone`); ``projector.*``, ``key_backbone.*``, ``key_projector.*``, ``queue``
and ``queue_ptr`` are MoCo's own.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from monai.utils import optional_import
from torch import nn

from medcoss_monai.apps.muscle.dilation import dilate_resnet
from medcoss_monai.apps.muscle.shuffle_bn import (
    distributed_world,
    gather_from_all_ranks,
    grouped_forward,
    shuffle_for_keys,
    unshuffle_keys,
)
from medcoss_monai.errors import BadInputError

tv_models, _ = optional_import("torchvision.models")

__all__ = ["BACKBONES", "resnet_backbone", "projection_head", "MoCo", "gather_from_all_ranks"]

logger = logging.getLogger(__name__)

BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
"""ResNets the backbone may be, with the length of their pooled feature vector."""


def resnet_backbone(name: str = "resnet18", output_stride: int = 32) -> nn.Module:
    """A randomly initialised torchvision ResNet whose classifier is an identity.

    ``torchvision.models.<name>(weights=None)`` with ``fc`` replaced by ``nn.Identity``: its
    ``state_dict`` keys are torchvision's without ``fc.*`` (``conv1``, ``bn1``, ``layer1.0.conv1``...,
    ``layer2.0.downsample.0``). MUSCLE checkpoints written with the earlier MONAI-built backbone
    (MONAI's ``ResNet`` in torchvision's configuration) have the same keys and shapes and load as they are.

    Args:
        name: one of :data:`BACKBONES` (``resnet18`` or ``resnet50`` in MUSCLE).
        output_stride: 32 (a plain ResNet), or 16 / 8: the last stages dilated instead of strided, as
            DeepLab-v3's backbone (:func:`~medcoss_monai.apps.muscle.dilation.dilate_resnet`); the
            weights' names and shapes do not change.

    Returns:
        The ResNet; ``backbone(x)`` maps ``(B, 3, H, W)`` to pooled features ``(B, num_features)``;
        ``backbone.num_features`` is 512 or 2048; ``layer1`` ... ``layer4`` give the feature maps.

    Raises:
        BadInputError: for a name that is not a supported ResNet, or an output stride not 8, 16, 32.
        OptionalImportError: torchvision cannot be imported.
    """
    if name not in BACKBONES:
        raise BadInputError(f"Unknown backbone '{name}'; expected one of {sorted(BACKBONES)}.")
    net = getattr(tv_models, name)(weights=None)
    net.fc = nn.Identity()  # MoCo adds its projection, the task heads their own classifiers
    net.num_features = BACKBONES[name]
    return dilate_resnet(net, int(output_stride))


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


class MoCo(nn.Module):
    """MoCo v2: query encoder, momentum key encoder, queue of negative keys.

    Under ``torch.distributed`` the keys of all processes are gathered before they enter the queue (so
    every rank holds the same queue). In training, BatchNorm works in groups: each process's batch is
    cut into ``bn_splits`` groups, each normalised over itself; queries keep their order, and with
    ``shuffle_bn`` the key images of all processes are shuffled first (one permutation, drawn on rank
    0), so a key is normalised with other samples than its query, and put back in order after the key
    encoder (MoCo's shuffle-BN; on one process, ``bn_splits`` >= 2 plays the part of the processes).
    Do not convert the network to ``SyncBatchNorm`` with shuffle-BN: it normalises queries and keys
    over the same global batch, which is the leak shuffle-BN removes.

    Args:
        backbone: ``"resnet18"`` / ``"resnet50"``... (see :func:`resnet_backbone`).
        embed_dim: projection output length (128).
        queue_size: number of negative keys kept (65536 in MoCo v2; smaller for small data). Must be a
            multiple of the global batch size, so a batch never wraps around the queue's end.
        momentum: key-encoder EMA coefficient (0.999).
        temperature: softmax temperature of the logits (0.2 in MoCo v2).
        shuffle_bn: shuffle the key batch over all groups of all processes (MoCo's default); False
            encodes every key in its query's group (the old behaviour, leaking statistics).
        bn_splits: BatchNorm groups per process (1 under ``torchrun``, as MoCo's one group per GPU;
            >= 2 on one process, else shuffle-BN has nothing to shuffle between).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embed_dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        shuffle_bn: bool = True,
        bn_splits: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise BadInputError(f"momentum must lie in [0, 1], got {momentum}.")
        if temperature <= 0 or queue_size < 1:
            raise BadInputError(f"temperature must be > 0 and queue_size >= 1, got {temperature}, {queue_size}.")
        if int(bn_splits) < 1:
            raise BadInputError(f"bn_splits must be >= 1, got {bn_splits}.")
        self.config = {
            "backbone": backbone,
            "embed_dim": int(embed_dim),
            "queue_size": int(queue_size),
            "momentum": float(momentum),
            "temperature": float(temperature),
        }  # the network's choices; shuffle_bn / bn_splits change how a batch is normalised, not the weights
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.shuffle_bn, self.bn_splits = bool(shuffle_bn), int(bn_splits)
        self._warned_one_group = False
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

        Raises:
            BadInputError: more keys than the queue holds.
        """
        size, n = self.queue.shape[0], keys.shape[0]
        if n > size:
            raise BadInputError(f"a batch of {n} keys does not fit a queue of {size}; raise queue_size.")
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size  # wraps when size is no multiple of n
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised query embedding ``(B, embed_dim)`` of the whole batch (one BatchNorm group)."""
        return F.normalize(self.projector(self.backbone(images)), dim=1)

    def _query_encoder(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(images))

    def _key_encoder(self, images: torch.Tensor) -> torch.Tensor:
        return self.key_projector(self.key_backbone(images))

    def key_permutation(self, n: int, device: torch.device) -> torch.Tensor | None:
        """The permutation of the ``n`` gathered key images; None draws ``torch.randperm`` (rank 0's is used)."""
        return None

    @torch.no_grad()
    def keys(self, key_images: torch.Tensor) -> torch.Tensor:
        """Normalised keys ``(B, embed_dim)`` in the order of ``key_images``.

        In training mode with ``shuffle_bn`` (and more than one BatchNorm group over all processes)
        the key encoder sees a shuffled batch, in ``bn_splits`` groups per process; otherwise the
        key images in their order, in the same groups as the queries.
        """
        groups = self.bn_splits if self.training else 1
        _, world = distributed_world()
        if not (self.training and self.shuffle_bn):
            return F.normalize(grouped_forward(self._key_encoder, key_images, groups), dim=1)
        if world * groups == 1:
            if not self._warned_one_group:
                logger.warning("shuffle-BN has one BatchNorm group (one process, bn_splits 1): keys are normalised "
                               "with their queries' batch. Set bn_splits >= 2.")
                self._warned_one_group = True
            return F.normalize(self._key_encoder(key_images), dim=1)
        permutation = self.key_permutation(key_images.shape[0] * world, key_images.device)
        shard, unshuffle = shuffle_for_keys(key_images, permutation)
        return unshuffle_keys(F.normalize(grouped_forward(self._key_encoder, shard, groups), dim=1), unshuffle)

    def forward(self, query_images: torch.Tensor, key_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One MoCo step's logits; in training mode also the momentum update and the enqueue.

        Args:
            query_images: ``(B, 3, H, W)`` first views.
            key_images: ``(B, 3, H, W)`` second views of the same images.

        Returns:
            ``logits`` ``(B, 1 + queue_size)`` (positive first, divided by the temperature) and
            ``targets`` ``(B,)`` zeros, for ``nn.CrossEntropyLoss``.
        """
        groups = self.bn_splits if self.training else 1
        q = F.normalize(grouped_forward(self._query_encoder, query_images, groups), dim=1)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            k = self.keys(key_images)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ self.queue.clone().detach().t()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        if self.training:
            self.enqueue(gather_from_all_ranks(k))
        return logits, targets
