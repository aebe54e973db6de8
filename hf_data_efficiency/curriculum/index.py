"""Metric arrays on disk: ``.npy`` arrays, a sorted index, a JSON summary, and DeepSpeed's index files.

For a metric ``name`` in ``output_dir`` we write (each file atomically: temporary file + rename):

- ``name.npy``: the per-sample metric values (sample i = dataset row i);
- ``name_index.npy``: the sample ids sorted by metric value (``np.argsort(kind="stable")``, so ties
  keep dataset order); the rank of a sample for percentile curricula is its position here;
- ``name_summary.json``: count, min, p1/p5/p25/p50/p75/p95/p99, max and mean.

Nothing is pickled (``np.load(allow_pickle=False)``).

``metric_array_from_deepspeed_index`` turns the ``index_to_sample`` / ``index_to_metric`` files that
DeepSpeed's ``DataAnalyzer`` writes (Megatron ``MMapIndexedDataset`` ``.bin``/``.idx`` pairs) into one
per-sample array, so configs that point at such files keep working.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

from .._validation import read_json
from ..fileio import atomic_save_npy, atomic_write_text
from .eligibility import check_finite, metric_array, numeric_array

logger = logging.get_logger(__name__)

SUMMARY_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")

# Megatron/DeepSpeed MMapIndexedDataset index header and dtype codes (deepspeed's indexed_dataset.dtypes).
_MMAP_MAGIC = b"MMIDIDX\x00\x00"
_MMAP_HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, number of rows, number of documents
_MMAP_DTYPES = dict(enumerate((np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64), 1))


# ---------------------------------------------------------------------------------------------
# our own files
# ---------------------------------------------------------------------------------------------
def check_metric_name(name: str) -> str:
    """``name`` if it can name a metric column and its files, else a ``ValueError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"metric name {name!r} cannot be used as a file name; allowed: letters, digits, '_', '-', '.' "
            "(not starting with '.' or '-')."
        )
    return name


def sorted_index(values: np.ndarray) -> np.ndarray:
    """Sample ids ordered by metric value, ties in dataset order (stable argsort), int64."""
    arr = metric_array(values, "metric values")
    if arr.dtype.kind in "iub" and arr.size and arr.min() >= 0 and arr.max() <= np.iinfo(np.uint16).max:
        arr = arr.astype(np.uint16)  # small non-negative ints (e.g. seqlen): numpy's stable sort is a radix sort
    return np.argsort(arr, kind="stable").astype(np.int64, copy=False)


def ranks_from_index(index: np.ndarray) -> np.ndarray:
    """Inverse permutation of a sorted index: ``rank[sample]`` = position of the sample in the order."""
    index = np.asarray(index, dtype=np.int64)
    rank = np.empty(index.size, dtype=np.int64)
    rank[index] = np.arange(index.size, dtype=np.int64)
    return rank


def summarize(values: np.ndarray) -> dict[str, Any]:
    """Count, min, p1/p5/p25/p50/p75/p95/p99, max and mean of a metric array (JSON-ready)."""
    arr = metric_array(values, "metric values")
    return _summary_from_sorted(np.sort(arr), arr)


def _summary_from_sorted(ordered: np.ndarray, arr: np.ndarray) -> dict[str, Any]:
    """The summary from the sorted values (percentiles interpolated linearly, as ``np.percentile``)."""
    out: dict[str, Any] = {"count": int(arr.size)}
    keys = ["min", *(f"p{p}" for p in SUMMARY_PERCENTILES), "max", "mean"]
    if arr.size == 0:
        return {**out, **dict.fromkeys(keys)}
    pos = np.array([0, *SUMMARY_PERCENTILES, 100], dtype=np.float64) / 100.0 * (arr.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, arr.size - 1)
    low, high = ordered[lo].astype(np.float64), ordered[hi].astype(np.float64)
    stats = low + (high - low) * (pos - lo)
    out.update({k: float(v) for k, v in zip(keys, stats)})
    out["mean"] = float(arr.mean())
    return out


def metric_paths(output_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """Where :func:`save_metric` puts the values, the sorted index and the summary of ``name``."""
    d = Path(output_dir)
    check_metric_name(name)
    return {"values": d / f"{name}.npy", "index": d / f"{name}_index.npy", "summary": d / f"{name}_summary.json"}


def save_metric(output_dir: str | os.PathLike, name: str, values: np.ndarray) -> dict[str, Any]:
    """Write ``name.npy``, ``name_index.npy`` and ``name_summary.json``; returns the summary."""
    arr = metric_array(values, f"metric {name!r}")
    paths = metric_paths(output_dir, name)
    index = sorted_index(arr)
    summary = _summary_from_sorted(arr[index], arr)
    atomic_save_npy(paths["values"], arr)
    atomic_save_npy(paths["index"], index)
    atomic_write_text(paths["summary"], json.dumps({"metric": name, **summary}, indent=2) + "\n")
    return summary


def save_metrics(output_dir: str | os.PathLike, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """:func:`save_metric` for every ``{name: values}``; returns ``{name: summary}``."""
    return {name: save_metric(output_dir, name, values) for name, values in arrays.items()}


def _load_npy(path: Path, what: str, mmap: bool) -> np.ndarray:
    """A 1-D numeric ``.npy`` array. The file is always mapped first, so a header claiming more data than the
    file holds is refused before anything is allocated; never unpickled."""
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}.")
    try:
        mapped = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise ValueError(f"{what} ({path}) is not a readable .npy array: {e}") from e
    arr = numeric_array(mapped, f"{what} ({path})")
    return arr if mmap else np.array(arr)


def load_metric(output_dir: str | os.PathLike, name: str, *, mmap: bool = False) -> np.ndarray:
    """The values saved by :func:`save_metric` (``mmap=True`` maps the file instead of reading it); they
    must be finite."""
    path = metric_paths(output_dir, name)["values"]
    values = _load_npy(path, f"metric array {name!r}", mmap)
    return check_finite(values, f"metric array {name!r} ({path})")


def load_metric_index(output_dir: str | os.PathLike, name: str, *, mmap: bool = False) -> np.ndarray:
    """The sorted index saved by :func:`save_metric`."""
    return _load_npy(metric_paths(output_dir, name)["index"], f"sorted index of metric {name!r}", mmap)


def load_metric_summary(output_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The summary saved by :func:`save_metric` (read with bounded size and nesting; a damaged file is a
    ``ValueError`` naming it)."""
    path = metric_paths(output_dir, name)["summary"]
    if not path.is_file():
        raise ValueError(f"summary of metric {name!r} not found: {path}.")
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"summary of metric {name!r} ({path}) must be a JSON object, got {type(summary).__name__}.")
    return summary


# ---------------------------------------------------------------------------------------------
# DeepSpeed DataAnalyzer index files
# ---------------------------------------------------------------------------------------------
def read_mmap_indexed(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Megatron/DeepSpeed ``MMapIndexedDataset`` (``path.bin`` + ``path.idx``).

    Returns the concatenated rows as one flat array and the row offsets (``len(rows) + 1`` int64),
    so row ``i`` is ``flat[offsets[i]:offsets[i + 1]]``.
    """
    prefix = str(path)[:-4] if str(path).endswith((".bin", ".idx")) else str(path)
    idx_path, bin_path = Path(prefix + ".idx"), Path(prefix + ".bin")
    for p in (idx_path, bin_path):
        if not p.is_file():
            raise ValueError(f"DeepSpeed index file not found: {p} (give the path prefix without .bin/.idx).")
    with open(idx_path, "rb") as f:
        header = f.read(_MMAP_HEADER_BYTES)
    if len(header) < _MMAP_HEADER_BYTES or header[:9] != _MMAP_MAGIC:
        raise ValueError(f"{idx_path} is not a DeepSpeed/Megatron MMapIndexedDataset index (bad magic).")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        raise ValueError(f"{idx_path}: unsupported MMapIndexedDataset version {version}; allowed: 1.")
    code = header[17]
    if code not in _MMAP_DTYPES:
        raise ValueError(f"{idx_path}: unknown dtype code {code}; allowed: {sorted(_MMAP_DTYPES)}.")
    dtype = np.dtype(_MMAP_DTYPES[code])
    n_rows, n_docs = struct.unpack("<QQ", header[18:34])
    # sizes (int32), pointers (int64) and document ids (int64) follow the header: check before allocating
    needed = _MMAP_HEADER_BYTES + 12 * n_rows + 8 * n_docs
    idx_bytes = idx_path.stat().st_size
    if idx_bytes < needed:
        raise ValueError(
            f"{idx_path}: the header claims {n_rows} rows and {n_docs} documents ({needed} bytes) but the file "
            f"has {idx_bytes} bytes; the index is corrupt or truncated."
        )
    sizes = np.fromfile(idx_path, dtype=np.int32, count=n_rows, offset=_MMAP_HEADER_BYTES).astype(np.int64)
    pointers = np.fromfile(idx_path, dtype=np.int64, count=n_rows, offset=_MMAP_HEADER_BYTES + 4 * n_rows)
    bin_bytes = bin_path.stat().st_size
    if n_rows and (sizes.min() < 0 or pointers.min() < 0 or (pointers % dtype.itemsize).any()):
        raise ValueError(f"{idx_path}: negative row sizes or misaligned row pointers; the index is corrupt.")
    if n_rows and (
        int(sizes.sum()) * dtype.itemsize > bin_bytes or int((pointers + sizes * dtype.itemsize).max()) > bin_bytes
    ):
        raise ValueError(
            f"{bin_path} is shorter than its index {idx_path} says: the rows need {int(sizes.sum())} items of "
            f"{dtype.itemsize} bytes, the file has {bin_bytes} bytes."
        )
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=dtype), offsets
    data = np.memmap(bin_path, dtype=dtype, mode="r")
    if np.array_equal(pointers, offsets[:-1] * dtype.itemsize):
        flat = np.array(data[:total])
    else:  # rows are not stored back to back: gather them one by one
        starts = pointers // dtype.itemsize
        flat = np.concatenate([data[s : s + n] for s, n in zip(starts, sizes)])
    return flat, offsets


def metric_array_from_deepspeed_index(
    index_to_sample_path: str | os.PathLike,
    index_to_metric_path: str | os.PathLike | None = None,
    num_samples: int | None = None,
) -> np.ndarray:
    """One per-sample int64 metric array from DeepSpeed ``DataAnalyzer`` index files.

    - With ``index_to_metric_path`` (value-based metrics): row ``r`` of ``index_to_sample`` lists the
      samples whose metric is ``index_to_metric[r]``; the result is ``values[sample]``.
    - Without it (percentile metrics, where DeepSpeed only keeps ``index_to_sample``, e.g. its
      ``*_index_to_sample_percentile_merged`` file): the rows list the samples from easiest to hardest
      and the result is each sample's rank in that order (0 = easiest), for
      ``rank < floor(N * percentile / 100)`` eligibility.

    ``num_samples`` (the dataset length) is checked against the index: every sample id in
    ``[0, num_samples)`` must appear exactly once.
    """
    samples, sample_offsets = read_mmap_indexed(index_to_sample_path)
    samples = samples.astype(np.int64, copy=False)
    n = int(samples.size) if num_samples is None else int(num_samples)
    if samples.size != n or (n and (samples.min() < 0 or samples.max() >= n)):
        raise ValueError(
            f"{index_to_sample_path} lists {samples.size} sample ids in [{samples.min() if n else 0}, "
            f"{samples.max() if n else 0}] but num_samples={n}; every sample id in [0, num_samples) must "
            "appear exactly once. DeepSpeed's DataAnalyzer writes corrupt indices when its batches are dicts (it "
            "counts the keys as samples); re-run it with a collate_fn that returns a tensor."
        )
    seen = np.bincount(samples, minlength=n)
    if n and seen.max() > 1:
        raise ValueError(
            f"{index_to_sample_path} lists sample {int(np.argmax(seen))} {int(seen.max())} times; "
            "every sample must appear exactly once."
        )
    if index_to_metric_path is None:
        return ranks_from_index(samples)
    metric, metric_offsets = read_mmap_indexed(index_to_metric_path)
    n_rows = sample_offsets.size - 1
    if metric_offsets.size - 1 != n_rows or not np.array_equal(np.diff(metric_offsets), np.ones(n_rows)):
        raise ValueError(
            f"{index_to_metric_path} must hold one metric value per row of {index_to_sample_path} "
            f"({n_rows} rows); it has {metric_offsets.size - 1} rows of sizes {np.unique(np.diff(metric_offsets))}."
        )
    values = np.empty(n, dtype=np.int64)
    values[samples] = np.repeat(metric.astype(np.int64), np.diff(sample_offsets))
    return values
