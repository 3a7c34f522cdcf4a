"""Rehearsal buffer: k-means (and random) selection of a stage's items and the buffer.json manifest."""

from .manifest import BUFFER_FIELDS, FILE_KEYS, load_buffer_manifest, missing_files, write_buffer_manifest
from .sampling import SAMPLERS, buffer_size, kmeans_sample, n_clusters_for, random_sample, select_nearest

__all__ = [
    "BUFFER_FIELDS",
    "FILE_KEYS",
    "SAMPLERS",
    "buffer_size",
    "kmeans_sample",
    "load_buffer_manifest",
    "missing_files",
    "n_clusters_for",
    "random_sample",
    "select_nearest",
    "write_buffer_manifest",
]
