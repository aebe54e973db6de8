"""Sample lengths for token budgets over map-style data: a ``seqlen`` column, DeepSpeed's seqlen index files, or the
length of each ``input_ids`` row."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def sample_lengths(dataset: Any, *, column: str = "seqlen", input_column: str = "input_ids") -> np.ndarray:
    """Token length of every sample: the ``column`` column when the dataset has one, else the length of each
    ``input_column`` row (a ``datasets.Dataset`` column, or the items of any sized, indexable dataset of mappings)."""
    from ..curriculum.sampler import dataset_column

    names = getattr(dataset, "column_names", None)
    if names is not None and hasattr(dataset, "data"):
        if column in names:
            return np.asarray(dataset_column(dataset, column), dtype=np.int64)
        if input_column in names:
            import pyarrow.compute as pc

            return np.asarray(dataset_column(dataset, input_column, pc.list_value_length), dtype=np.int64)
        raise ValueError(
            f"dynamic_batching needs the length of every sample: the dataset has neither a {column!r} nor an "
            f"{input_column!r} column (columns: {names}). Tokenize it, or add a {column!r} column."
        )
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(
            f"dynamic_batching needs a sized, indexable dataset to read sample lengths from, got "
            f"{type(dataset).__name__}; pass lengths= explicitly."
        )
    lengths = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, Mapping) or input_column not in item:
            raise ValueError(
                f"dynamic_batching needs the length of every sample: sample {i} is not a mapping with an "
                f"{input_column!r} entry; add a {column!r} column or pass lengths= explicitly."
            )
        lengths.append(len(item[input_column]))
    return np.asarray(lengths, dtype=np.int64)


def lengths_from_metrics_path(metrics_path: str | os.PathLike, num_samples: int) -> np.ndarray | None:
    """Sample lengths from DeepSpeed's ``metrics_path/seqlen/seqlen_sample_to_metric`` index files (what its
    ``DataAnalyzer`` writes for dynamic batching), or ``None`` when they are absent."""
    from ..curriculum.index import read_mmap_indexed

    prefix = os.path.join(os.fspath(metrics_path), "seqlen", "seqlen_sample_to_metric")
    if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
        return None
    flat, offsets = read_mmap_indexed(prefix)
    rows = np.diff(offsets)
    if len(rows) != num_samples or (rows != 1).any():
        raise ValueError(
            f"dynamic_batching.metrics_path: {prefix} holds {len(rows)} rows (sizes {sorted(set(rows.tolist()))}) but "
            f"the dataset has {num_samples} samples; it needs one length per sample. Delete the files if the dataset "
            "changed."
        )
    return flat.astype(np.int64)
