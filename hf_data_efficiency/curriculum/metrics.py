"""Per-sample difficulty metrics computed with ``datasets.Dataset.map``.

Every metric becomes one dataset column named after it. The built-in metrics read the token column
as an Arrow ``ListArray`` (flat ``values`` + row ``offsets``) and are computed with whole-array numpy
operations, never a Python loop per token, so one batch of 100k+ rows costs a few milliseconds.
Both passes go through ``Dataset.map``, so results are cached under the datasets fingerprint and
show datasets' own progress bar.

Built-in metrics:

- ``seqlen``: number of non-padding tokens (``attention_mask`` if the column exists, else tokens
  different from ``pad_token_id`` if it is given, else the row length).
- ``vocab_rarity``: ``sum(-log(count(t) / total))`` over the non-padding tokens ``t`` of a sample,
  with the counts taken over the whole dataset in a first pass. Kept as float64 (DeepSpeed truncates
  it to an integer).
- ``seqlen_vocab_rarity``: ``seqlen + mean_rarity / (log(total) + 1)``. The integer part is the
  sequence length and the fractional part (in ``[0, 1)``) the mean per-token rarity, so sorting by
  this one float orders samples by sequence length first and by vocabulary rarity second (for equal
  lengths, mean and total rarity order samples identically).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.distributed import split_dataset_by_node
from transformers.utils import logging

logger = logging.get_logger(__name__)

BUILTIN_METRICS = ("seqlen", "vocab_rarity", "seqlen_vocab_rarity")
_NEEDS_COUNTS = ("vocab_rarity", "seqlen_vocab_rarity")
#: Target number of tokens per ``map`` batch when ``batch_size`` is not given (~32 MB of float64).
_TOKENS_PER_BATCH = 1 << 22
#: Rows per in-batch piece (cache-sized work units inside one map batch).
_ROWS_PER_PIECE = 4096

MetricSpec = str | Callable[[dict[str, list]], Any]


# ---------------------------------------------------------------------------------------------
# Arrow helpers
# ---------------------------------------------------------------------------------------------
def _list_column(arr: pa.Array, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and row offsets (starting at 0) of one list-typed Arrow array."""
    if arr.null_count:
        raise ValueError(f"column {column!r} has {arr.null_count} null rows; metrics need a token list in every row.")
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values, np.arange(len(arr) + 1, dtype=np.int64) * width
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ValueError(f"column {column!r} has type {arr.type}; metrics need a list of token ids per row.")
    offsets = arr.offsets.to_numpy().astype(np.int64, copy=False)
    start, stop = int(offsets[0]), int(offsets[-1])
    values = arr.values.slice(start, stop - start).to_numpy(zero_copy_only=False)
    return values, offsets - start


def _pieces(table: pa.Table) -> Iterator[pa.RecordBatch]:
    """Zero-copy record-batch slices of at most ``_ROWS_PER_PIECE`` rows.

    Working on cache-sized pieces keeps the per-token temporaries in L2 and avoids concatenating
    the table's chunks into one big copy.
    """
    for batch in table.to_batches():
        for start in range(0, batch.num_rows, _ROWS_PER_PIECE):
            yield batch.slice(start, _ROWS_PER_PIECE)


def _row_sums(x: np.ndarray, offsets: np.ndarray, dtype: type) -> np.ndarray:
    """Sum of ``x`` over each row ``offsets[i]:offsets[i+1]`` (empty rows give 0)."""
    out = np.zeros(len(offsets) - 1, dtype=dtype)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    if nonempty.size:
        out[nonempty] = np.add.reduceat(x, offsets[nonempty], dtype=dtype)
    return out


def _tokens_and_mask(
    piece: pa.RecordBatch, input_column: str, mask_column: str | None, pad_token_id: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flat token ids, row offsets and a flat "real token" mask (None when every token is real)."""
    values, offsets = _list_column(piece.column(input_column), input_column)
    if mask_column is not None:
        mask_values, mask_offsets = _list_column(piece.column(mask_column), mask_column)
        if mask_offsets.shape != offsets.shape or not np.array_equal(mask_offsets, offsets):
            raise ValueError(
                f"column {mask_column!r} does not have the same length as {input_column!r} in every row; "
                "pass attention_mask_column=None to ignore it."
            )
        real = None if mask_values.all() else mask_values.astype(bool, copy=False)
    elif pad_token_id is not None:
        real = values != pad_token_id
        real = None if real.all() else real
    else:
        real = None
    return values, offsets, real


# ---------------------------------------------------------------------------------------------
# map functions (module level, so datasets can hash them for its cache)
# ---------------------------------------------------------------------------------------------
def _count_batch(table: pa.Table, input_column: str, mask_column: str | None, pad_token_id: int | None) -> pa.Table:
    """Pass 1: one row per batch with the sparse token counts of its real tokens."""
    real_tokens = []
    for piece in _pieces(table):
        values, _, real = _tokens_and_mask(piece, input_column, mask_column, pad_token_id)
        real_tokens.append(values if real is None else values[real])
    values = np.concatenate(real_tokens) if real_tokens else np.zeros(0, dtype=np.int64)
    try:  # one bincount per batch: its O(vocab) part is paid once, not once per piece
        counts = np.bincount(values) if values.size else np.zeros(0, dtype=np.int64)
    except ValueError as e:
        raise ValueError(
            f"column {input_column!r} holds negative token ids (min {values.min()}); ids must be >= 0."
        ) from e
    ids = np.flatnonzero(counts)
    return pa.table({"token_id": [ids.astype(np.int64)], "count": [counts[ids]]})


def _metrics_batch(
    table: pa.Table,
    metrics: tuple[str, ...],
    user_metrics: dict[str, Callable] | None,
    input_column: str,
    mask_column: str | None,
    pad_token_id: int | None,
    neg_log_prob: np.ndarray | None,
    rarity_scale: float,
) -> pa.Table:
    """Pass 2: every requested metric for one batch, as float64/int64 columns."""
    n = table.num_rows
    out: dict[str, np.ndarray] = {}
    builtin = [m for m in metrics if m in BUILTIN_METRICS]
    if builtin:
        seqlens, rarities = [], []
        for piece in _pieces(table):
            values, offsets, real = _tokens_and_mask(piece, input_column, mask_column, pad_token_id)
            seqlens.append(np.diff(offsets) if real is None else _row_sums(real, offsets, np.int64))
            if neg_log_prob is not None:
                per_token = neg_log_prob.take(values.astype(np.intp, copy=False), mode="clip")
                if real is not None:
                    per_token[~real] = 0.0
                rarities.append(_row_sums(per_token, offsets, np.float64))
        seqlen = np.concatenate(seqlens) if seqlens else np.zeros(0, dtype=np.int64)
        rarity = np.concatenate(rarities) if rarities else np.zeros(n)
        for name in builtin:
            if name == "seqlen":
                out[name] = seqlen.astype(np.int64, copy=False)
            elif name == "vocab_rarity":
                out[name] = rarity
            else:  # seqlen_vocab_rarity
                mean = np.divide(rarity, seqlen, out=np.zeros(n), where=seqlen > 0)
                out[name] = seqlen + mean / rarity_scale
    if user_metrics:
        batch = table.to_pydict()
        for name, fn in user_metrics.items():
            out[name] = _check_user_output(name, fn(batch), n)
    return pa.table({name: out[name] for name in metrics})


def _check_user_output(name: str, result: Any, n: int) -> np.ndarray:
    if hasattr(result, "detach"):  # torch tensor
        result = result.detach().cpu().numpy()
    arr = np.asarray(result)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"user metric {name!r} returned shape {arr.shape} for a batch of {n} samples; "
            f"it must return one number per sample (shape ({n},))."
        )
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"user metric {name!r} returned non-numeric values (dtype {arr.dtype}).") from e
    if np.isnan(arr).any():
        bad = int(np.flatnonzero(np.isnan(arr))[0])
        raise ValueError(f"user metric {name!r} returned NaN (first at batch row {bad}); metrics must be numbers.")
    return arr


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _check_dataset(dataset: Any, input_column: str, need_tokens: bool) -> None:
    if isinstance(dataset, datasets.IterableDataset):
        raise ValueError(
            "compute_metrics needs a map-style datasets.Dataset, got an IterableDataset: materialise it "
            "(e.g. Dataset.from_generator or load_dataset without streaming) or compute the metric column "
            "yourself with IterableDataset.map."
        )
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(
            f"compute_metrics needs one datasets.Dataset, got a DatasetDict with splits {list(dataset)}; "
            "pass one split, e.g. dataset['train']."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}.")
    if need_tokens and input_column not in dataset.column_names:
        raise ValueError(
            f"input_column={input_column!r} is not a column of the dataset; its columns are "
            f"{dataset.column_names}. Tokenize first or pass input_column=<the token id column>."
        )


def _normalize_metrics(metrics: MetricSpec | Iterable[MetricSpec] | Mapping[str, Callable]) -> dict[str, Any]:
    """``{name: None (built-in) | callable}`` in the given order."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    items: list[tuple[str, Any]] = []
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        for m in metrics:
            if isinstance(m, Mapping):
                items.extend(m.items())
            elif isinstance(m, str):
                items.append((m, None))
            elif callable(m):
                items.append((getattr(m, "__name__", None), m))
            else:
                raise ValueError(f"metrics entry {m!r} must be a metric name or a callable.")
    out: dict[str, Any] = {}
    for name, fn in items:
        if fn is None and name not in BUILTIN_METRICS:
            raise ValueError(
                f"metrics: unknown metric {name!r}; built-in metrics are {', '.join(BUILTIN_METRICS)}, "
                "or pass a batched callable (batch dict -> one number per sample), e.g. {'name': fn}."
            )
        if fn is not None and not callable(fn):
            raise ValueError(f"metrics[{name!r}] must be a callable (batch dict -> one number per sample).")
        if not isinstance(name, str) or not name or name == "<lambda>":
            raise ValueError(
                "metrics: a user metric needs a column name; pass it as a dict {'name': fn} "
                "(lambdas and callables without __name__ have none)."
            )
        if name in out:
            raise ValueError(f"metrics: {name!r} is given twice.")
        out[name] = fn
    if not out:
        raise ValueError(f"metrics is empty; give at least one of {', '.join(BUILTIN_METRICS)} or a callable.")
    return out


def _auto_batch_size(dataset: datasets.Dataset, input_column: str) -> int:
    """Rows per map batch so that a batch holds about ``_TOKENS_PER_BATCH`` tokens."""
    col = dataset.data.column(input_column)
    if pa.types.is_fixed_size_list(col.type):
        avg = col.type.list_size
    else:
        total = sum(len(chunk.flatten()) for chunk in col.chunks) if col.num_chunks else 0
        avg = total / max(len(col), 1)
    return int(max(1000, min(_TOKENS_PER_BATCH // max(avg, 1.0), 1_000_000)))


def _map_kwargs(dataset: datasets.Dataset, num_proc: int | None, batch_size: int) -> dict[str, Any]:
    return {
        "batched": True,
        "batch_size": batch_size,
        "writer_batch_size": batch_size,
        "num_proc": num_proc if num_proc and num_proc > 1 else None,
        "remove_columns": dataset.column_names,
    }


def count_tokens(
    dataset: datasets.Dataset,
    num_proc: int | None = None,
    *,
    input_column: str = "input_ids",
    attention_mask_column: str | None = "attention_mask",
    pad_token_id: int | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Count every real (non-padding) token id over the whole dataset: ``counts[t]`` (int64).

    This is the first pass of ``vocab_rarity``; it runs as a cached ``Dataset.map`` producing one
    sparse count row per batch, summed here.
    """
    _check_dataset(dataset, input_column, need_tokens=True)
    mask_column = attention_mask_column if attention_mask_column in dataset.column_names else None
    batch_size = batch_size or _auto_batch_size(dataset, input_column)
    parts = dataset.with_format("arrow", columns=[c for c in (input_column, mask_column) if c]).map(
        _count_batch,
        fn_kwargs={"input_column": input_column, "mask_column": mask_column, "pad_token_id": pad_token_id},
        desc="Counting tokens",
        **_map_kwargs(dataset, num_proc, batch_size),
    )
    table = parts.with_format("arrow")[:]
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    ids = pa.concat_arrays(table.column("token_id").chunks).flatten().to_numpy()
    counts = pa.concat_arrays(table.column("count").chunks).flatten().to_numpy()
    return _sum_sparse(ids, counts)


def _sum_sparse(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Dense int64 counts from (id, count) pairs that may repeat ids."""
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ids, counts = ids[order], counts[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    dense = np.zeros(int(ids[-1]) + 1, dtype=np.int64)
    dense[ids[starts]] = np.add.reduceat(counts, starts)
    return dense


def neg_log_probs(token_counts: np.ndarray) -> tuple[np.ndarray, float]:
    """``-log(count(t) / total)`` per token id and the log of the total count.

    Token ids that never occur get a count of 1 (as DeepSpeed does), which only matters when the
    counts come from another dataset.
    """
    counts = np.maximum(np.asarray(token_counts, dtype=np.float64), 1.0)
    total = float(np.asarray(token_counts, dtype=np.float64).sum())
    log_total = math.log(total) if total > 0 else 0.0
    return log_total - np.log(counts), log_total


def compute_metrics(
    dataset: datasets.Dataset,
    metrics: MetricSpec | Iterable[MetricSpec] | Mapping[str, Callable] = ("seqlen", "vocab_rarity"),
    num_proc: int | None = None,
    *,
    input_column: str = "input_ids",
    attention_mask_column: str | None = "attention_mask",
    pad_token_id: int | None = None,
    batch_size: int | None = None,
    token_counts: np.ndarray | None = None,
    overwrite: bool = False,
    distributed: bool = False,
) -> datasets.Dataset:
    """Add one column per metric (named after it) to ``dataset`` and return the new dataset.

    Args:
        dataset: a map-style ``datasets.Dataset`` with a token id list column.
        metrics: built-in names (``seqlen``, ``vocab_rarity``, ``seqlen_vocab_rarity``), batched
            callables ``fn(batch: dict[str, list]) -> one number per sample`` (the column is named
            after ``fn.__name__``) or a dict ``{name: fn}``.
        num_proc: worker processes for ``Dataset.map``. ``None`` (default) computes in-process, which is
            fastest unless the dataset is very large: starting processes can cost more than the pass.
        input_column: the token id column.
        attention_mask_column: padding mask column, used when the dataset has it.
        pad_token_id: without a mask column, tokens equal to this id are padding.
        batch_size: rows per map batch; ``None`` picks about 4M tokens per batch.
        token_counts: per-token-id counts to use for ``vocab_rarity`` instead of counting this
            dataset (e.g. the training set's counts when analysing a validation set).
        overwrite: replace columns that already exist instead of raising.
        distributed: when ``torch.distributed`` is initialised, each rank computes its contiguous shard
            (``datasets.distributed.split_dataset_by_node``), token counts are all-reduced before the
            second pass, and the metric columns are all-gathered, so every rank returns the full result.

    Built-in metrics are int64 (``seqlen``) or float64; user metrics are int64 when they return
    integers, else float64. Both passes are cached by the datasets fingerprint.
    """
    specs = _normalize_metrics(metrics)
    builtin = tuple(m for m, fn in specs.items() if fn is None)
    _check_dataset(dataset, input_column, need_tokens=bool(builtin))
    clashes = [m for m in specs if m in dataset.column_names]
    if clashes and not overwrite:
        raise ValueError(
            f"the dataset already has column(s) {clashes}; pass overwrite=True to recompute them "
            "(or drop the metric from `metrics`)."
        )
    base = dataset.remove_columns(clashes) if clashes else dataset
    world, rank = _dist_world_rank() if distributed else (1, 0)
    if len(base) < world or len(base) == 0:
        raise ValueError(
            f"the dataset has {len(base)} rows; compute_metrics needs at least one row"
            + (f" per rank (world size {world})." if world > 1 else ".")
        )
    part = base if world == 1 else split_dataset_by_node(base, rank=rank, world_size=world)

    mask_column = attention_mask_column if attention_mask_column in base.column_names else None
    if mask_column is None and pad_token_id is None and builtin:
        logger.info("compute_metrics: no attention mask column and no pad_token_id; every token counts as real.")
    tokens_kw = {"input_column": input_column, "attention_mask_column": mask_column, "pad_token_id": pad_token_id}
    if batch_size is None:
        batch_size = _auto_batch_size(base, input_column) if builtin else 1000
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None for automatic).")

    neg_log_prob, log_total = None, 0.0
    if any(m in _NEEDS_COUNTS for m in builtin):
        if token_counts is None:
            token_counts = count_tokens(part, num_proc, batch_size=batch_size, **tokens_kw)
            if world > 1:
                token_counts = _all_reduce_counts(token_counts)
        neg_log_prob, log_total = neg_log_probs(token_counts)
        # one sentinel entry for ids past the counts (unseen tokens, count 1); lookups use mode="clip"
        neg_log_prob = np.append(neg_log_prob, log_total)

    user = {m: fn for m, fn in specs.items() if fn is not None}
    columns = None if user else [c for c in (input_column, mask_column) if c]
    result = part.with_format("arrow", columns=columns).map(
        _metrics_batch,
        fn_kwargs={
            "metrics": tuple(specs),
            "user_metrics": user or None,
            "input_column": input_column,
            "mask_column": mask_column,
            "pad_token_id": pad_token_id,
            "neg_log_prob": neg_log_prob,
            "rarity_scale": log_total + 1.0,
        },
        desc=f"Computing metrics ({', '.join(specs)})",
        **_map_kwargs(part, num_proc, batch_size),
    )
    if world > 1:
        result = datasets.Dataset.from_dict(_all_gather_columns(result, list(specs)), features=result.features)
    out = datasets.concatenate_datasets([base.with_format(None), result.with_format(None)], axis=1)
    fmt = dict(dataset.format)
    if fmt.get("columns") is not None:
        fmt["columns"] = [c for c in fmt["columns"] if c not in specs] + list(specs)
    return out.with_format(
        fmt.pop("type"),
        columns=fmt.pop("columns"),
        output_all_columns=fmt.pop("output_all_columns"),
        **fmt.pop("format_kwargs"),
    )


def metric_arrays(dataset: datasets.Dataset, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The metric columns of ``dataset`` as 1-D numpy arrays (zero-copy where Arrow allows)."""
    arrow = dataset.with_format("arrow")
    out = {}
    for name in names:
        if name not in dataset.column_names:
            raise ValueError(f"metric column {name!r} is missing; the dataset's columns are {dataset.column_names}.")
        col = arrow[name]
        out[name] = (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).to_numpy(zero_copy_only=False)
    return out


# ---------------------------------------------------------------------------------------------
# torch.distributed helpers
# ---------------------------------------------------------------------------------------------
def _dist_world_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        logger.warning("compute_metrics(distributed=True): torch.distributed is not initialised; computing locally.")
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def _all_reduce_counts(counts: np.ndarray) -> np.ndarray:
    import torch
    import torch.distributed as dist

    size = torch.tensor([counts.size], dtype=torch.int64)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    buf = torch.zeros(int(size.item()), dtype=torch.int64)
    buf[: counts.size] = torch.from_numpy(counts.astype(np.int64))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.numpy()


def _all_gather_columns(result: datasets.Dataset, names: list[str]) -> dict[str, np.ndarray]:
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(result)], dtype=torch.int64))
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    local = metric_arrays(result, names)
    out = {}
    for name in names:
        arr = local[name]
        buf = torch.zeros(longest, dtype=torch.float64 if arr.dtype.kind == "f" else torch.int64)
        buf[: arr.size] = torch.from_numpy(np.ascontiguousarray(arr))
        parts = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(parts, buf)
        out[name] = np.concatenate([p[:s].numpy() for p, s in zip(parts, sizes)])
    return out
