"""Per-sample difficulty metrics computed with ``datasets.Dataset.map``.

Every metric becomes one dataset column named after it. The built-in metrics read the token column
as an Arrow ``ListArray`` (flat ``values`` + row ``offsets``) and are computed with whole-array numpy
operations, never a Python loop per token, so one batch of 100k+ rows costs a few milliseconds.
Both passes go through ``Dataset.map``, so results are cached under the datasets fingerprint and
show datasets' own progress bar.

Metrics live in one registry (:func:`register_curriculum_metric`); the built-in ones are registered at the end
of this module exactly like a user metric:

- ``seqlen``: number of non-padding tokens (``attention_mask`` if the column exists, else tokens
  different from ``pad_token_id`` if it is given, else the row length).
- ``vocab_rarity``: ``sum(-log(count(t) / total))`` over the non-padding tokens ``t`` of a sample,
  with the counts taken over the whole dataset in a first pass (``needs_token_counts=True``). Kept as
  float64 (DeepSpeed truncates it to an integer).
- ``seqlen_vocab_rarity``: ``seqlen + mean_rarity / (log(total) + 1)``. The integer part is the
  sequence length and the fractional part (in ``[0, 1)``) the mean per-token rarity, so sorting by
  this one float orders samples by sequence length first and by vocabulary rarity second (for equal
  lengths, mean and total rarity order samples identically).

A new built-in metric is one function plus one ``register_curriculum_metric`` call below (and its entry in
``tests/test_metrics.py``'s table of oracles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.distributed import split_dataset_by_node
from datasets.fingerprint import Hasher, generate_random_fingerprint
from transformers.utils import logging

from .. import __version__
from ..config import REFERENCE_LOSS_METRIC, SEQLEN_TRANSFORMS
from .eligibility import check_finite, numeric_array
from .index import check_metric_name

logger = logging.get_logger(__name__)

#: What a registered metric function receives: ``"batch"``, the map batch as a dict of Python lists (as
#: ``Dataset.map(batched=True)`` gives it); ``"tokens"``, a :class:`TokenBatch` of flat numpy token arrays.
METRIC_INPUTS = ("batch", "tokens")
#: Part of every metric cache key, so a new library version never reuses metric columns of an older one.
_CACHE_NAMESPACE = f"hf_data_efficiency.compute_metrics/{__version__}"
#: Target number of tokens per ``map`` batch when ``batch_size`` is not given (~32 MB of float64).
_TOKENS_PER_BATCH = 1 << 22
#: Rows per in-batch piece (cache-sized work units inside one map batch).
_ROWS_PER_PIECE = 4096

MetricSpec = str | Callable[[dict[str, list]], Any]


# ---------------------------------------------------------------------------------------------
# Arrow helpers
# ---------------------------------------------------------------------------------------------
def _is_list_type(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)
    )


def _check_token_type(arrow_type: pa.DataType, column: str) -> None:
    """Refuse a token column whose Arrow type is not a list of integer token ids per row.

    This reads the type only, so it runs up front (before any pass over the data) and on every piece of a stream.
    Float token ids are refused even when integral (``3.0``): the message says how to cast them.
    """
    value_type = arrow_type.value_type if _is_list_type(arrow_type) else None
    if value_type is not None and (pa.types.is_integer(value_type) or pa.types.is_null(value_type)):
        return  # a list<null> column has only empty rows (null entries are refused with the values)
    feature = datasets.Features.from_arrow_schema(pa.schema([(column, arrow_type)]))[column]
    hint = "Tokenize the text first, or pass input_column=<the token id column>."
    if value_type is None:
        found = "one value per row, not a list"
    elif _is_list_type(value_type):
        found = "lists of lists"
    elif pa.types.is_floating(value_type):
        found = "float token ids"
        hint = (
            "Float ids are refused even when integral (3.0): cast them with dataset.cast_column("
            f"{column!r}, datasets.List(datasets.Value('int64'))), which refuses fractional ones, or tokenize again."
        )
    elif pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
        found = "strings, not token ids"
    else:
        found = f"{value_type} values, not token ids"
    raise ValueError(
        f"column {column!r} has type {feature!r} ({found}); allowed: a list of integer token ids per row, such as "
        f"List(Value('int64')). {hint}"
    )


def _list_column(arr: pa.Array, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and row offsets (starting at 0) of one list-typed Arrow array."""
    if arr.null_count:
        raise ValueError(f"column {column!r} has {arr.null_count} null rows; metrics need a token list in every row.")
    if not _is_list_type(arr.type):
        raise ValueError(f"column {column!r} has type {arr.type}; metrics need a list of token ids per row.")
    if pa.types.is_fixed_size_list(arr.type):
        flat, offsets = arr.flatten(), np.arange(len(arr) + 1, dtype=np.int64) * arr.type.list_size
    else:
        offsets = arr.offsets.to_numpy().astype(np.int64, copy=False)
        flat = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        offsets = offsets - offsets[0]
    if flat.null_count:
        raise ValueError(
            f"column {column!r} has {flat.null_count} null value(s) inside its rows; allowed: a number at every "
            "position (an integer token id, or a mask value)."
        )
    return flat.to_numpy(zero_copy_only=False), offsets


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
    _check_token_type(piece.column(input_column).type, input_column)
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


@dataclass(eq=False, repr=False)
class TokenBatch:
    """The token rows of one slice of a map batch as flat numpy arrays: what ``inputs="tokens"`` metrics receive.

    Attributes:
        ids: flat token ids of every row, padding included (as stored in the dataset).
        offsets: int64 row offsets; row ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
        real: flat bool mask of the real (non-padding) tokens, or ``None`` when every token is real.
        log_total_tokens: ``log`` of the number of real tokens counted over the dataset (0 without counts).
    """

    ids: np.ndarray
    offsets: np.ndarray
    real: np.ndarray | None
    _neg_log_prob: np.ndarray | None  # -log(count / total) per token id, with a sentinel for unseen ids
    log_total_tokens: float

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    def row_sums(self, per_token: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Per-row sums of a flat per-token array over the real tokens (padding entries are ignored)."""
        x = per_token if self.real is None else np.where(self.real, per_token, 0)
        return _row_sums(x, self.offsets, dtype)

    @cached_property
    def seqlen(self) -> np.ndarray:
        """Real tokens per row (int64)."""
        return np.diff(self.offsets) if self.real is None else _row_sums(self.real, self.offsets, np.int64)

    @cached_property
    def token_rarity(self) -> np.ndarray:
        """``-log(count(t) / total)`` per token (0 for padding); token ids never counted get a count of 1."""
        if self._neg_log_prob is None:
            raise ValueError("token rarities need token counts: register the metric with needs_token_counts=True.")
        per_token = self._neg_log_prob.take(self.ids.astype(np.intp, copy=False), mode="clip")
        if self.real is not None:
            per_token[~self.real] = 0.0
        return per_token

    @cached_property
    def rarity(self) -> np.ndarray:
        """Per row, the sum of the token rarities (float64): the ``vocab_rarity`` metric."""
        return _row_sums(self.token_rarity, self.offsets, np.float64)


def _metrics_batch(
    table: pa.Table,
    metrics: tuple[CurriculumMetric, ...],
    input_column: str,
    mask_column: str | None,
    pad_token_id: int | None,
    neg_log_prob: np.ndarray | None,
    log_total: float,
) -> pa.Table:
    """Pass 2: every requested metric for one batch, as int64/float64 columns.

    Token metrics run on cache-sized slices of the batch, sharing one :class:`TokenBatch` per slice (so
    ``vocab_rarity`` and ``seqlen_vocab_rarity`` look the rarities up once); batch metrics see the whole batch.
    """
    out: dict[str, np.ndarray] = {}
    by_tokens = [m for m in metrics if m.inputs == "tokens"]
    if by_tokens:
        parts: dict[str, list[np.ndarray]] = {m.name: [] for m in by_tokens}
        for piece in _pieces(table):
            tokens = TokenBatch(
                *_tokens_and_mask(piece, input_column, mask_column, pad_token_id), neg_log_prob, log_total
            )
            for m in by_tokens:
                parts[m.name].append(_check_output(m.name, m.fn(tokens), piece.num_rows))
        out.update({name: np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for name, p in parts.items()})
    by_batch = [m for m in metrics if m.inputs == "batch"]
    if by_batch:
        batch = table.to_pydict()
        for m in by_batch:
            out[m.name] = _check_output(m.name, m.fn(batch), table.num_rows)
    return pa.table({m.name: out[m.name] for m in metrics})


def _check_output(name: str, result: Any, n: int) -> np.ndarray:
    """One metric's output for ``n`` samples as int64 (bools, integers) or float64; finiteness is checked
    on the whole column afterwards, where the sample index is known."""
    arr = numeric_array(result, f"metric {name!r}")
    if arr.shape[0] != n:
        raise ValueError(
            f"metric {name!r} returned {arr.shape[0]} values for a batch of {n} samples; "
            "it must return one number per sample."
        )
    return arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# the metric registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurriculumMetric:
    """One registered per-sample difficulty metric (see :func:`register_curriculum_metric`)."""

    name: str
    fn: Callable[[Any], Any]
    inputs: str = "batch"
    needs_token_counts: bool = False
    fingerprint: str | None = None

    def cache_key(self) -> str:
        """What identifies this metric in the datasets cache: its ``fingerprint``, else datasets' hash of ``fn``."""
        if self.fingerprint is not None:
            return f"{self.name}:{self.fingerprint}"
        try:
            return f"{self.name}:{Hasher.hash(self.fn)}"
        except Exception:  # datasets' hasher raises whatever pickling the function raises
            logger.warning(
                f"curriculum metric {self.name!r}: its function cannot be hashed for the datasets cache, so its "
                "column is recomputed on every call; register it with fingerprint='<version>' to cache it."
            )
            return f"{self.name}:{generate_random_fingerprint()}"


_REGISTRY: dict[str, CurriculumMetric] = {}


def register_curriculum_metric(
    name: str,
    batched_fn: Callable[[Any], Any],
    *,
    inputs: str = "batch",
    needs_token_counts: bool = False,
    fingerprint: str | None = None,
    overwrite: bool = False,
) -> CurriculumMetric:
    """Register a per-sample difficulty metric, so that ``name`` works wherever a metric name does.

    A registered name given as a curriculum metric (``compute_metrics(ds, [name])``, a curriculum config, the
    ``analyze`` command) is computed with ``Dataset.map`` when the dataset has no column of that name.

    Args:
        name: the metric and column name (letters, digits, ``_``, ``-``, ``.``).
        batched_fn: returns one number per sample of a batch. With ``inputs="batch"`` it receives the map batch
            as ``{column: list}``; with ``inputs="tokens"`` a :class:`TokenBatch` (flat token ids, row offsets,
            padding mask and vectorised helpers such as ``seqlen``, ``row_sums`` and ``token_rarity``).
        inputs: ``"batch"`` or ``"tokens"``.
        needs_token_counts: the metric reads token counts over the whole dataset (``TokenBatch.token_rarity``),
            so a first pass counts them, as for ``vocab_rarity``. Needs ``inputs="tokens"``.
        fingerprint: a string that identifies the function's behaviour in the datasets cache (e.g. ``"v2"``).
            Without it, datasets hashes the function: lambdas and functions defined in ``__main__`` by their
            code and the values they use, functions of importable modules by their qualified name only. Give
            one (and change it whenever the function changes) for module-level functions and for functions
            that cannot be pickled.
        overwrite: replace an existing registration of ``name`` instead of raising.

    Returns:
        the :class:`CurriculumMetric` registered.
    """
    check_metric_name(name)
    if name in SEQLEN_TRANSFORMS:
        raise ValueError(f"metric name {name!r} is reserved for the sequence-length batch transforms.")
    if not callable(batched_fn):
        raise TypeError(f"register_curriculum_metric({name!r}): batched_fn must be callable, got {batched_fn!r}.")
    if inputs not in METRIC_INPUTS:
        raise ValueError(f"register_curriculum_metric({name!r}): inputs={inputs!r}; allowed values: {METRIC_INPUTS}.")
    if not isinstance(needs_token_counts, bool):
        raise TypeError(f"register_curriculum_metric({name!r}): needs_token_counts must be a bool.")
    if needs_token_counts and inputs != "tokens":
        raise ValueError(
            f"register_curriculum_metric({name!r}): needs_token_counts=True needs inputs='tokens' (the counts are "
            "read through TokenBatch.token_rarity)."
        )
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise ValueError(f"register_curriculum_metric({name!r}): fingerprint={fingerprint!r} must be a non-empty str.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"curriculum metric {name!r} is already registered; pass overwrite=True to replace it.")
    metric = CurriculumMetric(name, batched_fn, inputs, needs_token_counts, fingerprint)
    _REGISTRY[name] = metric
    return metric


def is_registered_metric(name: str) -> bool:
    """Whether ``name`` can be computed by :func:`compute_metrics` without a precomputed column."""
    return name in _REGISTRY


def registered_metrics() -> tuple[str, ...]:
    """The names of the registered metrics, built-in ones first, in registration order."""
    return tuple(_REGISTRY)


def get_curriculum_metric(name: str) -> CurriculumMetric:
    """The registered metric ``name``; a ``ValueError`` listing the registered names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(
            f"metrics: unknown metric {name!r}; registered metrics are {', '.join(_REGISTRY)}. Register it with "
            "hf_data_efficiency.register_curriculum_metric(name, batched_fn), or pass a batched callable "
            "(batch dict -> one number per sample), e.g. {'name': fn}."
        )
    return _REGISTRY[name]


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
    if need_tokens:
        if input_column not in dataset.column_names:
            raise ValueError(
                f"input_column={input_column!r} is not a column of the dataset; its columns are "
                f"{dataset.column_names}. Tokenize first or pass input_column=<the token id column>."
            )
        _check_token_type(dataset.data.schema.field(input_column).type, input_column)


def _resolve_metrics(metrics: MetricSpec | Iterable[MetricSpec] | Mapping[str, Callable]) -> list[CurriculumMetric]:
    """The requested metrics in the given order: registered names, callables (named after ``__name__``) and
    ``{name: callable}`` mappings; callables are ``inputs="batch"`` metrics."""
    if isinstance(metrics, (str, Mapping)) or callable(metrics):
        metrics = [metrics]
    items: list[tuple[str, Any]] = []
    for m in metrics:
        if isinstance(m, Mapping):
            items.extend(m.items())
        elif isinstance(m, str):
            items.append((m, None))
        elif callable(m):
            items.append((getattr(m, "__name__", None), m))
        else:
            raise ValueError(f"metrics entry {m!r} must be a metric name or a callable.")
    out: dict[str, CurriculumMetric] = {}
    for name, fn in items:
        if fn is not None and not callable(fn):
            raise ValueError(f"metrics[{name!r}] must be a callable (batch dict -> one number per sample).")
        if not isinstance(name, str) or not name or name == "<lambda>":
            raise ValueError(
                "metrics: a user metric needs a column name; pass it as a dict {'name': fn} "
                "(lambdas and callables without __name__ have none)."
            )
        if name in out:
            raise ValueError(f"metrics: {name!r} is given twice.")
        if fn is None and get_curriculum_metric(name).fn is _needs_reference_model:
            _needs_reference_model(None)
        out[name] = get_curriculum_metric(name) if fn is None else CurriculumMetric(name, fn)
    if not out:
        raise ValueError(f"metrics is empty; give at least one of {', '.join(_REGISTRY)} or a callable.")
    return list(out.values())


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
    dense = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.int64)
    np.add.at(dense, ids, counts)
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
        metrics: registered names (the built-in ``seqlen``, ``vocab_rarity``, ``seqlen_vocab_rarity`` or any
            :func:`register_curriculum_metric` one), batched callables ``fn(batch: dict[str, list]) -> one number
            per sample`` (the column is named after ``fn.__name__``) or a dict ``{name: fn}``.
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

    Metrics are int64 when they return integers (``seqlen``), else float64, and must be finite: an inf or
    NaN is a ``ValueError`` naming the metric and the first such sample. Both passes are cached by the
    datasets fingerprint, keyed by the metrics' :meth:`CurriculumMetric.cache_key`.
    """
    specs = _resolve_metrics(metrics)
    names = [m.name for m in specs]
    by_tokens = any(m.inputs == "tokens" for m in specs)
    _check_dataset(dataset, input_column, need_tokens=by_tokens)
    clashes = [m for m in names if m in dataset.column_names]
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
    if mask_column is None and pad_token_id is None and by_tokens:
        logger.info("compute_metrics: no attention mask column and no pad_token_id; every token counts as real.")
    tokens_kw = {"input_column": input_column, "attention_mask_column": mask_column, "pad_token_id": pad_token_id}
    if batch_size is None:
        batch_size = _auto_batch_size(base, input_column) if by_tokens else 1000
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None for automatic).")

    neg_log_prob, log_total = None, 0.0
    if any(m.needs_token_counts for m in specs):
        if token_counts is None:
            token_counts = count_tokens(part, num_proc, batch_size=batch_size, **tokens_kw)
            if world > 1:
                token_counts = _all_reduce_counts(token_counts)
        neg_log_prob, log_total = neg_log_probs(token_counts)
        # one sentinel entry for ids past the counts (unseen tokens, count 1); lookups use mode="clip"
        neg_log_prob = np.append(neg_log_prob, log_total)

    by_batch = any(m.inputs == "batch" for m in specs)
    source = part.with_format("arrow", columns=None if by_batch else [c for c in (input_column, mask_column) if c])
    fn_kwargs = {
        "metrics": tuple(specs),
        "input_column": input_column,
        "mask_column": mask_column,
        "pad_token_id": pad_token_id,
        "neg_log_prob": neg_log_prob,
        "log_total": log_total,
    }
    cache_key = [_CACHE_NAMESPACE, source._fingerprint, batch_size, [m.cache_key() for m in specs]]
    cache_key += [(k, v) for k, v in fn_kwargs.items() if k != "metrics"]
    result = source.map(
        _metrics_batch,
        fn_kwargs=fn_kwargs,
        new_fingerprint=Hasher.hash(cache_key),
        desc=f"Computing metrics ({', '.join(names)})",
        **_map_kwargs(part, num_proc, batch_size),
    )
    arrays = _all_gather_columns(result, names) if world > 1 else metric_arrays(result, names)
    for name, values in arrays.items():
        check_finite(values, f"metric {name!r}")
    if world > 1:
        result = datasets.Dataset.from_dict(arrays, features=result.features)
    out = datasets.concatenate_datasets([base.with_format(None), result.with_format(None)], axis=1)
    fmt = dataset.format
    columns = None if fmt["columns"] is None else [c for c in fmt["columns"] if c not in names] + names
    return out.with_format(
        fmt["type"], columns=columns, output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"]
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
    out = {}
    for name, arr in metric_arrays(result, names).items():
        buf = torch.zeros(longest, dtype=torch.float64 if arr.dtype.kind == "f" else torch.int64)
        buf[: arr.size] = torch.from_numpy(np.ascontiguousarray(arr))
        parts = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(parts, buf)
        out[name] = np.concatenate([p[:s].numpy() for p, s in zip(parts, sizes)])
    return out


# ---------------------------------------------------------------------------------------------
# built-in metrics: registered like any user metric
# ---------------------------------------------------------------------------------------------
def _seqlen(tokens: TokenBatch) -> np.ndarray:
    return tokens.seqlen


def _vocab_rarity(tokens: TokenBatch) -> np.ndarray:
    return tokens.rarity


def _seqlen_vocab_rarity(tokens: TokenBatch) -> np.ndarray:
    seqlen, rarity = tokens.seqlen, tokens.rarity
    mean = np.divide(rarity, seqlen, out=np.zeros(len(seqlen)), where=seqlen > 0)
    return seqlen + mean / (tokens.log_total_tokens + 1.0)


def _needs_reference_model(batch: Any) -> Any:
    """The registered ``reference_loss`` metric: it needs a reference model, which a name alone does not give."""
    raise ValueError(
        f"curriculum metric {REFERENCE_LOSS_METRIC!r} needs a reference model: set its reference_model (Trainer flag "
        "--curriculum_reference_model PATH), or compute the column first with "
        f"hf_data_efficiency.ReferenceLoss(model).map(dataset), or pass {{{REFERENCE_LOSS_METRIC!r}: ReferenceLoss(model)}} "
        "as the metric."
    )


register_curriculum_metric("seqlen", _seqlen, inputs="tokens")
register_curriculum_metric("vocab_rarity", _vocab_rarity, inputs="tokens", needs_token_counts=True)
register_curriculum_metric("seqlen_vocab_rarity", _seqlen_vocab_rarity, inputs="tokens", needs_token_counts=True)
# each sample's mean token loss under a reference model (curriculum/reference.py's ReferenceLoss); the engine computes
# it from the metric's reference_model
register_curriculum_metric(REFERENCE_LOSS_METRIC, _needs_reference_model, fingerprint="needs-a-reference-model")

#: The metrics this library registers itself (derived from the registry; use :func:`is_registered_metric` to
#: also accept user-registered ones).
BUILTIN_METRICS = registered_metrics()
