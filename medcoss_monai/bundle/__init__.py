"""Bundle-side helpers: stage data and chaining, the multi-stage pipeline, Model Zoo export."""

from .stage import init_from_previous_stage, load_stage_datalist, previous_stage_dir, resolve_datalist

__all__ = ["init_from_previous_stage", "load_stage_datalist", "previous_stage_dir", "resolve_datalist"]
