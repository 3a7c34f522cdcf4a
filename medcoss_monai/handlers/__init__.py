"""Ignite handlers of medcoss-monai: stage outputs, loss history, reconstructions, continual learning, features."""

from .buffer_selection import BufferSelectionHandler, embed_dataset
from .determinism import EpochSeedHandler, epoch_seed
from .feature_distillation import FeatureDistillationHandler, freeze_teacher
from .failures import StopOnNonFiniteLoss, describe_batch
from .feature_writer import FeatureWriter
from .loss_history import LossHistoryHandler
from .metrics_writer import MetricsWriter, classification_metrics
from .intra_modal_mixup import IntraModalMixupHandler
from .probability_writer import ClassProbabilityWriter
from .reconstruction_pictures import ReconstructionSnapshotHandler, reconstruction_panels
from .rehearsal import RehearsalHandler, is_buffer_batch
from .stage_outputs import AtomicCheckpointSaver, StageModelSaver, StageResumeHandler, latest_checkpoint

__all__ = [
    "AtomicCheckpointSaver",
    "BufferSelectionHandler",
    "ClassProbabilityWriter",
    "EpochSeedHandler",
    "FeatureDistillationHandler",
    "FeatureWriter",
    "IntraModalMixupHandler",
    "LossHistoryHandler",
    "MetricsWriter",
    "ReconstructionSnapshotHandler",
    "RehearsalHandler",
    "StageModelSaver",
    "StageResumeHandler",
    "StopOnNonFiniteLoss",
    "classification_metrics",
    "describe_batch",
    "embed_dataset",
    "epoch_seed",
    "freeze_teacher",
    "is_buffer_batch",
    "latest_checkpoint",
    "reconstruction_panels",
]
