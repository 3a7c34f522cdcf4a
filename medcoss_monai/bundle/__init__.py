"""Bundle-side helpers: stage data and chaining, rehearsal and teacher, the pipeline, Model Zoo export."""

from .previous_stages import buffer_loaders, find_buffers, load_teacher
from .stage import (
    checkpoint_objects,
    claim_stage_dir,
    flag,
    init_from_previous_stage,
    load_stage_datalist,
    previous_stage_dir,
    resolve_datalist,
    volumes_per_batch,
)

__all__ = [
    "buffer_loaders",
    "checkpoint_objects",
    "claim_stage_dir",
    "find_buffers",
    "flag",
    "init_from_previous_stage",
    "load_stage_datalist",
    "load_teacher",
    "previous_stage_dir",
    "resolve_datalist",
    "volumes_per_batch",
]
