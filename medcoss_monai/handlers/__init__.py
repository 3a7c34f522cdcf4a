"""Ignite handlers of medcoss-monai: stage outputs, loss history, reconstructions, continual learning."""

from .loss_history import LossHistoryHandler
from .reconstruction import ReconstructionSnapshotHandler, reconstruction_panels
from .stage_outputs import AtomicCheckpointSaver, StageModelSaver, StageResumeHandler, latest_checkpoint, unwrap_network

__all__ = [
    "AtomicCheckpointSaver",
    "LossHistoryHandler",
    "ReconstructionSnapshotHandler",
    "StageModelSaver",
    "StageResumeHandler",
    "latest_checkpoint",
    "reconstruction_panels",
    "unwrap_network",
]
