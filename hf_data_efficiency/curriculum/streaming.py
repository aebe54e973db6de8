"""Curriculum learning over a stream (``datasets.IterableDataset`` or a torch ``IterableDataset``).

A map-style curriculum draws each batch from an index of the whole corpus; a stream has no index, so
:class:`StreamingCurriculum` keeps a bounded buffer instead:

* **Metrics on the fly.** Samples are read in whole chunks of ``chunk_size`` (at most ``buffer_size -
  batch_size * GA + 1``; a ``datasets`` stream whose features need no decoding as Arrow tables, converted to rows at
  once) and each chunk's sampling metrics are computed in one vectorised call (a sample field named after the metric is used as is, else the registered metric runs,
  exactly as :func:`~hf_data_efficiency.compute_metrics` would). ``vocab_rarity`` reads token counts from
  ``metrics_dir/token_counts.npy`` or, without that file, counts the tokens of a warm-up prefix of
  ``warmup_samples`` samples.
* **Difficulty buckets.** Every buffered sample carries the first difficulty level it is eligible at
  (:class:`~hf_data_efficiency.curriculum.eligibility.DifficultyPacing`): ``value`` metrics admit
  ``metric <= difficulty``; a ``percentile`` difficulty ``p`` admits ``metric <= r[percentile_count(R, p) - 1]``,
  where ``r`` holds the ``R`` sorted values of a fixed reference distribution: ``metrics_dir/<metric>.npy`` (the
  whole corpus, as written by ``hf-data-efficiency analyze``) or else the warm-up prefix of this process's stream;
  ``p = 100`` admits every sample, also those beyond the reference.
  A sample eligible at no level of a finished schedule (above the final difficulty) is never served, like on
  map-style data; it is counted as ``excluded``.
* **One global batch per optimizer step.** Step ``k`` takes the ``batch_size * gradient_accumulation_steps`` oldest
  buffered samples eligible at step ``k`` on every process (``G = batch_size * world_size * GA`` in all), reading
  more while too few are eligible. With the schedule at its final difficulty the stream passes through in order.
  The step is formed by a selection hook (:class:`StepSelection`, offered the step's :class:`StepCandidates`): this
  fixed batch by default, token-budget micro-batches with
  :class:`~hf_data_efficiency.batching.stream.StreamTokenBudget`.
* **Buffer full** (no room for a chunk in ``buffer_size`` samples, at least ``G``): ``drop`` evicts the hardest samples (highest level,
  newest first) to read on, ``hold`` keeps them and completes the step with the buffered samples closest to
  eligibility (counted as ``admitted_early``), ``error`` refuses. When the stream ends, the buffer drains in whole
  steps the same way; the last partial step (fewer than ``batch_size * GA`` samples on a process) is dropped and
  counted. Served samples are exactly the input minus ``dropped`` and ``excluded``.
* **Distributed.** Each process reads its own shard (``datasets.distributed.split_dataset_by_node`` for a
  ``datasets.IterableDataset``; a torch ``IterableDataset`` must yield its process's shard itself). Before each step
  the processes agree (one all-reduce, which also carries the selection's step totals) that every one of them can
  form its part, so all run the same steps.
* **Group mixing.** With a :class:`~hf_data_efficiency.curriculum.mixing.GroupMixer` (``mixing.column`` names each
  sample's group) the step offers its eligible samples in the order of the mixer's draw for this process
  (:func:`~hf_data_efficiency.curriculum.mixing.mixed_order`): slot ``i`` of ``default_rng([seed, 13, k, rank])`` takes
  the oldest eligible buffered sample of its group. While a group has too few, more is read as usual; when no more is
  read, the step completes with the other eligible samples, oldest first (a group that ran out, or is rarer in the
  buffer than its weight, is under-served, and a warning says so once). Without a curriculum every sample is
  eligible and the buffer settings are the defaults.
* **Exact resume.** :meth:`state_dict` is JSON: the source's own ``state_dict()`` after the reads of the step, the
  buffered samples (their metrics are recomputed on load), the warm-up estimates and the counters. Nothing is random, so the
  batches after :meth:`load_state_dict` equal those of an uninterrupted run. A source without
  ``state_dict``/``load_state_dict`` cannot resume: loading raises.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from transformers.utils import logging

from .._validation import check_state_int, check_state_keys, expect_mapping
from ..config import CurriculumConfig, StreamingConfig
from . import metrics
from .eligibility import DifficultyPacing, admission_levels, filtering_metrics, metric_array, percentile_count
from .index import load_metric, metric_paths
from .mixing import mixed_order, unknown_group_error
from .sampler import (
    INT64_MAX,
    CurriculumQueries,
    batch_geometry,
    check_sampler_state,
    curriculum_schedules,
    state_position,
)
from .transforms import GROUP_KEY, MAX_TOKENS_KEY, POSITION_KEY

logger = logging.get_logger(__name__)

STATE_VERSION = 1
_STATE_KEYS = ("version", "kind", "position", "ranks")
#: Steps whose state is kept, so a checkpoint can be written while the DataLoader has run a few steps ahead.
SNAPSHOT_STEPS = 16
COUNTS_FILE = "token_counts.npy"


@dataclass
class StreamCounters:
    """Samples of this process: read from the source, served, dropped (buffer full or end-of-stream remainder),
    excluded (above the final difficulty) and served before their step's difficulty (``hold`` policy)."""

    read: int = 0
    served: int = 0
    dropped: int = 0
    excluded: int = 0
    admitted_early: int = 0


@dataclass
class _Snapshot:
    step: int
    source_state: Any
    exhausted: bool
    ids: np.ndarray
    counters: StreamCounters


def _plain(value: Any) -> Any:
    """A sample field as plain Python (lists, numbers, strings): what the JSON state and Arrow tables hold."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _arrow_reader(source: Any) -> Any:
    """What chunks are read from: ``source`` itself, or for a ``datasets.IterableDataset`` whose features need no
    decoding, its Arrow-formatted view (whole Arrow tables per chunk, converted to rows at once: several times faster
    than decoding example by example, and the same rows)."""
    from datasets.features.features import require_decoding

    features = getattr(source, "features", None)
    plain = isinstance(source, datasets.IterableDataset) and getattr(source, "_formatting", None) is None
    if not plain or features is None or any(require_decoding(f) for f in features.values()):
        return source
    return source.with_format("arrow")


def _source_description(source: Any) -> dict[str, Any]:
    """What identifies a source across a resume: its type, shard count and, when ``datasets`` exposes it, its files."""
    desc: dict[str, Any] = {"type": type(source).__name__, "n_shards": getattr(source, "n_shards", None)}
    ex = getattr(source, "_ex_iterable", None)
    while ex is not None:
        kwargs = getattr(ex, "kwargs", None)
        if isinstance(kwargs, Mapping) and "files" in kwargs:
            desc["files"] = json.loads(json.dumps(kwargs["files"], default=str))
            break
        ex = getattr(ex, "ex_iterable", None)
    return desc


def _not_resumable(source: Any, reader: Any) -> str | None:
    """Why the position of ``source`` cannot be restored exactly (``None`` when it can)."""
    if not (callable(getattr(reader, "state_dict", None)) and callable(getattr(reader, "load_state_dict", None))):
        return f"the stream ({type(source).__name__}) has no state_dict()/load_state_dict()"
    ex = getattr(source, "_ex_iterable", None)
    while ex is not None:
        if type(ex).__name__ == "BufferShuffledExamplesIterable":
            return (
                "the stream is shuffled through a buffer (IterableDataset.shuffle), which datasets' state_dict() omits"
            )
        ex = getattr(ex, "ex_iterable", None)
    return None


def sum_over_processes(values: list[int], device: Any = None) -> list[int]:
    """``values`` summed over the processes (one all-reduce); ``values`` itself without a process group of >1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


@dataclass(frozen=True)
class StreamGeometry:
    """Where one process's stream sits in training: its micro-batch size, the processes, gradient accumulation, its
    rank, and whether samples carry their position tags (for the seeded collation)."""

    batch_size: int
    world_size: int
    gradient_accumulation_steps: int
    rank: int
    tag_positions: bool = True

    @property
    def local_batch_size(self) -> int:
        """Samples of one fixed step on this process."""
        return self.batch_size * self.gradient_accumulation_steps

    @property
    def global_batch_size(self) -> int:
        return self.local_batch_size * self.world_size


@dataclass
class Picked:
    """What a selection hook chose for one step on this process: groups of buffer positions (each yielded as one
    item or one group) and its totals, summed over the processes before the step is served."""

    groups: list[np.ndarray]
    totals: list[int] = field(default_factory=list)


class StepCandidates:
    """What the stream offers its selection hook for one step: the buffered samples, eligible first, what each
    counts (:meth:`StepSelection.measure`), and more reading while the hook asks for it."""

    def __init__(self, stream: StreamingCurriculum, step: int, level: int) -> None:
        self._stream, self._level = stream, level
        self.step = step
        #: the sequence-length transform's max tokens per row at this step (``None`` without one)
        self.max_tokens = stream.max_tokens_at(step)

    def _oldest_eligible(self) -> np.ndarray:
        return np.flatnonzero(self._stream._levels <= self._level)

    def eligible(self) -> np.ndarray:
        """Buffer positions of the samples eligible at the step, oldest first; with group mixing, in the order of
        the step's draw (only as many of a group as its slots take)."""
        eligible = self._oldest_eligible()
        stream = self._stream
        if stream.mixer is None:
            return eligible
        slots = stream.mixer.stream_slot_groups(self.step, eligible.size, stream.rank)
        return mixed_order(slots, eligible, stream._groups[eligible])

    def fallback(self) -> np.ndarray:
        """The eligible samples (in the draw's order, then, with group mixing, the other eligible ones, oldest
        first), then the others closest to eligibility (lowest level, then oldest): what a step takes when no more is
        read (``buffer_full='hold'``, a full buffer, the end of the stream)."""
        levels, ids = self._stream._levels, self._stream._ids
        waiting = np.flatnonzero(levels > self._level)
        waiting = waiting[np.lexsort((ids[waiting], levels[waiting]))]
        first = self.eligible()
        rest = np.setdiff1d(self._oldest_eligible(), first, assume_unique=True)
        return np.concatenate([first, rest, waiting])

    def sizes(self, positions: np.ndarray) -> np.ndarray:
        """What the samples at buffer ``positions`` count for the hook (:meth:`StepSelection.measure`)."""
        return self._stream._sizes[positions]

    def read_more(self) -> bool:
        """Read another chunk into the buffer; ``False`` when nothing more is read for this step: the stream ended,
        or the buffer is full and ``buffer_full='hold'``, or it is full while a fixed step's worth of samples is
        eligible (a full buffer never evicts just to make bigger batches). ``'drop'`` evicts the hardest samples to
        make room; ``'error'`` refuses."""
        return self._stream._read_for(self.step, self._level)


class StepSelection:
    """How a stream forms each step from its buffer: the hook a batcher plugs into. This default takes the
    ``batch_size * gradient_accumulation_steps`` oldest eligible samples of each step and yields them one by one;
    :class:`~hf_data_efficiency.batching.stream.StreamTokenBudget` forms token-budget micro-batches instead."""

    def bind(self, geometry: StreamGeometry) -> None:
        """Called once by the stream with its geometry."""
        self.geometry = geometry

    def measure(self, rows: list[Mapping[str, Any]], first: int | None) -> np.ndarray:
        """What each sample counts for the selection, checked as it is read (``first``: the stream position of
        ``rows[0]`` on this process, for messages; ``None`` for a restored buffer). Fixed batches count nothing."""
        return np.zeros(len(rows), dtype=np.int64)

    def select(self, candidates: StepCandidates) -> Picked | None:
        """This process's part of ``candidates.step`` (``None``: the buffer cannot fill a step any more)."""
        need = self.geometry.local_batch_size
        while candidates.eligible().size < need and candidates.read_more():
            pass
        for order in (candidates.eligible(), candidates.fallback()):
            if order.size >= need:
                return Picked([np.sort(order[:need])])
        return None

    #: what :attr:`Picked.totals` hold (summed over the processes, then handed to :meth:`record`)
    total_names: tuple[str, ...] = ()

    def record(self, step: int, totals: list[int]) -> None:
        """The step's totals over every process, once every process has its part."""

    def items(self, step: int, groups: list[list[dict[str, Any]]], max_tokens: int | None) -> Iterator[Any]:
        """What the stream yields for ``step``: each sample, tagged with its step's max tokens and its global
        stream position."""
        g = self.geometry
        tags: dict[str, Any] = {MAX_TOKENS_KEY: max_tokens} if max_tokens is not None else {}
        base = (step - 1) * g.global_batch_size + g.rank * g.local_batch_size
        for j, sample in enumerate(groups[0]):
            yield {**sample, **tags, **({POSITION_KEY: base + j} if g.tag_positions else {})}

    def identity(self) -> dict[str, Any]:
        """What of the selection a resumed stream must share (checked against the checkpoint)."""
        return {}


class _ChunkMetrics:
    """Sampling metric values of a chunk of samples, vectorised (the functions ``compute_metrics`` maps)."""

    def __init__(self, names: list[str], input_column: str, pad_token_id: int | None) -> None:
        self.names = names
        self.input_column = input_column
        self.pad_token_id = pad_token_id
        self.neg_log_prob: np.ndarray | None = None
        self.log_total = 0.0

    @property
    def needs_counts(self) -> bool:
        return any(
            metrics.is_registered_metric(n) and metrics.get_curriculum_metric(n).needs_token_counts for n in self.names
        )

    def set_counts(self, counts: np.ndarray) -> None:
        neg_log_prob, self.log_total = metrics.neg_log_probs(counts)
        self.neg_log_prob = np.append(neg_log_prob, self.log_total)  # ids past the counts: count 1 (mode="clip")

    def token_table(self, rows: list[Mapping[str, Any]], table: pa.Table | None) -> tuple[pa.Table, str | None]:
        """The token (and attention mask) columns of the chunk as an Arrow table (``table``'s own columns when the
        chunk was read as one), and the mask column's name."""
        if table is not None:
            fields = table.column_names
            missing = self.input_column not in fields
        else:
            lacking = next((r for r in rows if self.input_column not in r), None)
            missing, fields = lacking is not None, sorted(lacking or ())
        if missing:
            raise ValueError(
                f"curriculum metrics {self.names} need the {self.input_column!r} field in every streamed sample; "
                f"a sample has only {fields}. Tokenize the stream first (IterableDataset.map), or add a field per "
                "metric holding its value."
            )
        if table is not None:
            mask = "attention_mask" if "attention_mask" in fields else None
            return table.select([self.input_column, *([mask] if mask else [])]), mask
        columns = {self.input_column: pa.array([_plain(r[self.input_column]) for r in rows])}
        mask = "attention_mask" if all("attention_mask" in r for r in rows) else None
        if mask is not None:
            columns[mask] = pa.array([_plain(r[mask]) for r in rows])
        return pa.table(columns), mask

    def counts(self, rows: list[Mapping[str, Any]], table: pa.Table | None = None) -> np.ndarray:
        """Token counts over a chunk (the warm-up estimate of ``vocab_rarity``'s counts)."""
        table, mask = self.token_table(rows, table)
        sparse = metrics._count_batch(table, self.input_column, mask, self.pad_token_id)
        return metrics._sum_sparse(
            np.asarray(sparse.column("token_id")[0].as_py(), dtype=np.int64),
            np.asarray(sparse.column("count")[0].as_py(), dtype=np.int64),
        )

    def __call__(self, rows: list[Mapping[str, Any]], table: pa.Table | None = None) -> dict[str, np.ndarray]:
        """Each metric's values over a chunk of ``rows`` (``table``: the same chunk as Arrow, when read as one)."""
        out: dict[str, np.ndarray] = {}
        to_compute = []
        for name in self.names:
            if table is not None and name in table.column_names:
                out[name] = metric_array(table.column(name).to_numpy(), f"streamed sample field {name!r}")
            elif table is None and all(name in r for r in rows):
                out[name] = metric_array([_plain(r[name]) for r in rows], f"streamed sample field {name!r}")
            elif metrics.is_registered_metric(name):
                to_compute.append(metrics.get_curriculum_metric(name))
            else:
                fields = table.column_names if table is not None else sorted(rows[0])
                raise ValueError(
                    f"curriculum metric {name!r} is neither a field of the streamed samples (fields: {fields}) nor a "
                    f"registered metric ({', '.join(metrics.registered_metrics())})."
                )
        if to_compute:
            if any(m.inputs == "batch" for m in to_compute):
                if table is None:
                    table = pa.Table.from_pylist([{k: _plain(v) for k, v in r.items()} for r in rows])
                mask = "attention_mask" if "attention_mask" in table.column_names else None
            else:
                table, mask = self.token_table(rows, table)
            if any(m.needs_token_counts for m in to_compute) and self.neg_log_prob is None:
                raise RuntimeError("token counts are not known yet")  # the warm-up runs first
            computed = metrics._metrics_batch(
                table, tuple(to_compute), self.input_column, mask, self.pad_token_id, self.neg_log_prob, self.log_total
            )
            for m in to_compute:
                out[m.name] = metric_array(computed.column(m.name).to_numpy(), f"metric {m.name!r}")
        return out


class StreamingCurriculum(CurriculumQueries, torch.utils.data.IterableDataset):
    """A curriculum over a stream: yields, for each optimizer step, this process's share of one global batch, each
    sample eligible at that step and tagged like map-style samples (see the module docstring).

    Args:
        source: a ``datasets.IterableDataset`` (split per process here) or a torch ``IterableDataset`` yielding this
            process's samples as mappings.
        curriculum: the ``CurriculumConfig``; its ``streaming`` part (or the defaults) sizes the buffer. ``None``:
            every sample is eligible (group mixing over a stream without a curriculum).
        batch_size, world_size, gradient_accumulation_steps: the batch geometry; a step takes
            ``batch_size * gradient_accumulation_steps`` samples on each of the ``world_size`` processes.
        rank: this process's index.
        pad_token_id: padding id when metrics are computed (without an ``attention_mask`` field).
        input_column: the token id field.
        token_counts: per-token-id counts for ``vocab_rarity`` (overrides ``metrics_dir``'s and the warm-up).
        schedule_fns: ``{metric: callable}`` for ``custom`` schedules.
        device: device of the agreement all-reduce (the process group's: CUDA under NCCL).
        tag_positions: tag every sample with its global stream position (``POSITION_KEY``), the key of the seeded
            collation; off, the collator sees no position key.
        selection: how each step is formed from the buffer (:class:`StepSelection`; default: fixed batches of
            ``batch_size * gradient_accumulation_steps`` samples).
        mixer: group mixing's :class:`~hf_data_efficiency.curriculum.mixing.GroupMixer` (``None``: no mixing);
            ``mixing_column`` is the sample field naming the group.
        tag_groups: tag every sample with its group id (``GROUP_KEY``), for online mixing's per-group losses.
    """

    state_kind = "stream"

    def __init__(
        self,
        source: Any,
        curriculum: CurriculumConfig,
        *,
        batch_size: int,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        rank: int = 0,
        pad_token_id: int | None = None,
        input_column: str = "input_ids",
        token_counts: np.ndarray | None = None,
        schedule_fns: Mapping[str, Callable[[int], float]] | None = None,
        device: Any = None,
        tag_positions: bool = True,
        selection: StepSelection | None = None,
        mixer: Any = None,
        mixing_column: str | None = None,
        tag_groups: bool = False,
    ) -> None:
        self.config = curriculum
        self.streaming = (curriculum.streaming if curriculum is not None else None) or StreamingConfig()
        self.mixer, self.mixing_column, self.tag_groups = mixer, mixing_column, bool(tag_groups)
        if mixer is not None and mixing_column is None:
            raise ValueError("a mixed stream needs mixing_column, the sample field naming each sample's group.")
        self._group_ids = {name: i for i, name in enumerate(mixer.groups)} if mixer is not None else {}
        self._warned_mixture = False
        self.batch_size, self.world_size, self.gradient_accumulation_steps, self.global_batch_size = batch_geometry(
            batch_size, world_size, gradient_accumulation_steps
        )
        self.rank, self.local_batch_size = int(rank), self.batch_size * self.gradient_accumulation_steps
        self.device = device
        self.tag_positions = tag_positions
        self.geometry = StreamGeometry(
            self.batch_size, self.world_size, self.gradient_accumulation_steps, self.rank, bool(tag_positions)
        )
        self.selection = selection if selection is not None else StepSelection()
        self.selection.bind(self.geometry)
        if self.streaming.buffer_size < self.global_batch_size:
            raise ValueError(
                f"curriculum.streaming.buffer_size={self.streaming.buffer_size} is smaller than the global batch "
                f"{self.global_batch_size} (batch_size={self.batch_size} x world_size={self.world_size} x "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}); allowed: >= {self.global_batch_size}."
            )
        if isinstance(source, datasets.IterableDataset) and self.world_size > 1:
            from datasets.distributed import split_dataset_by_node

            source = split_dataset_by_node(source, rank=self.rank, world_size=self.world_size)
        self.source = source
        self._reader = _arrow_reader(source)
        self._not_resumable = _not_resumable(source, self._reader)
        self.checkpointable = self._not_resumable is None
        if isinstance(source, datasets.IterableDataset) and not self.checkpointable:
            logger.warning(f"streaming curriculum: {self._not_resumable}, so a resume from a checkpoint is refused.")
        # whole chunks are read, and one always fits once the samples not eligible are evicted
        self._chunk = min(self.streaming.chunk_size, self.streaming.buffer_size - self.local_batch_size + 1)

        schedules, self._transform_schedule = curriculum_schedules(curriculum, schedule_fns)
        self._metrics = filtering_metrics(curriculum.sampling_metrics) if curriculum is not None else []
        self._value_metrics = [m for m in self._metrics if m.difficulty_type == "value"]
        self._pct_metrics = [m for m in self._metrics if m.difficulty_type == "percentile"]
        self._pacing = DifficultyPacing(schedules)
        self._pacing.extend(1)
        self._measure = _ChunkMetrics([m.name for m in self._metrics], input_column, pad_token_id)
        self._references = self._read_references()
        self._counts: np.ndarray | None = (
            np.asarray(token_counts, dtype=np.int64) if token_counts is not None else self._read_counts()
        )
        if self._counts is not None and self._measure.needs_counts:
            self._measure.set_counts(self._counts)
        # the metrics that need the warm-up prefix: for a percentile reference, or for token counts
        needs = [m.name for m in self._pct_metrics if m.name not in self._references]
        if self._measure.needs_counts and self._counts is None:
            needs += [n for n in self._measure.names if n not in needs]
        self._warmup = self.streaming.warmup_samples if needs else 0
        if needs:
            self._check_warmup(needs)
        self._thresholds: dict[str, np.ndarray] = {}
        self._update_thresholds()

        self._samples: dict[int, Any] = {}  # buffered (and recently served) samples by arrival id
        self._ids = np.zeros(0, dtype=np.int64)  # buffer, in arrival order
        self._levels = np.zeros(0, dtype=np.int64)
        self._values: dict[str, np.ndarray] = {m.name: np.zeros(0) for m in self._metrics}
        self._sizes = np.zeros(0, dtype=np.int64)  # what each buffered sample counts for the selection
        self._groups = np.zeros(0, dtype=np.int64)  # each buffered sample's mixing group
        self.counters = StreamCounters()
        self._step = 0  # steps emitted
        self._iterator: Iterator[Any] | None = None
        self._exhausted = False
        self._warmed_up = not needs
        self._pending_source_state: Any = None
        self._snapshots: deque[_Snapshot] = deque(maxlen=SNAPSHOT_STEPS)
        self._released: deque[tuple[int, list[int]]] = deque()  # (step, ids) that left the buffer at that step
        self._snapshots.append(self._snapshot())

    # ------------------------------------------------------------------ setup
    def _read_references(self) -> dict[str, np.ndarray]:
        """Sorted reference values of the percentile metrics found in ``metrics_dir`` (``<metric>.npy``)."""
        refs = {}
        folder = self.streaming.metrics_dir
        for m in self._pct_metrics:
            if folder is not None and metric_paths(folder, m.name)["values"].is_file():
                refs[m.name] = np.sort(load_metric(folder, m.name))  # checked there: 1-D, numeric, finite
        return refs

    def _read_counts(self) -> np.ndarray | None:
        folder = self.streaming.metrics_dir
        if folder is None or not os.path.isfile(path := os.path.join(folder, COUNTS_FILE)):
            return None
        counts = np.load(path, allow_pickle=False)
        if counts.ndim != 1 or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(
                f"curriculum.streaming.metrics_dir: {path} must hold a 1-D array of non-negative integer token counts."
            )
        return counts.astype(np.int64)

    def _check_warmup(self, needs: list[str]) -> None:
        field = "curriculum.streaming.warmup_samples"
        if self.streaming.warmup_samples == 0:
            raise ValueError(
                f"{field}=0, but the curriculum metric(s) {needs} need a reference distribution or token counts, "
                f"and curriculum.streaming.metrics_dir={self.streaming.metrics_dir!r} has none (<metric>.npy, "
                f"{COUNTS_FILE}); allowed: {field} >= 1, or a metrics_dir written by hf-data-efficiency analyze."
            )
        read = -(-self.streaming.warmup_samples // self._chunk) * self._chunk  # whole chunks
        if read > self.streaming.buffer_size:
            raise ValueError(
                f"{field}={self.streaming.warmup_samples} (read as {read} samples, in whole chunks of {self._chunk}) "
                f"is larger than curriculum.streaming.buffer_size={self.streaming.buffer_size} (the warm-up samples "
                "wait in the buffer); allowed: at most buffer_size, less the rest of the last chunk."
            )

    def _update_thresholds(self) -> None:
        """Per percentile metric and level, the largest admitted value (``-inf``: none; ``inf``: all, at 100)."""
        for m in self._pct_metrics:
            ref = self._references.get(m.name)
            if ref is None:
                continue
            counts = [percentile_count(ref.size, p) for p in self._pacing.diffs[m.name]]
            limits = [np.inf if c == ref.size else ref[c - 1] if c > 0 else -np.inf for c in counts]
            self._thresholds[m.name] = np.array(limits, dtype=np.float64)

    def _level_of(self, values: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """First level each sample is eligible at (``len(pacing.steps)``: at none known so far)."""
        level = admission_levels(values, self._value_metrics, self._pacing, n).astype(np.int64)
        for m in self._pct_metrics:
            np.maximum(level, np.searchsorted(self._thresholds[m.name], values[m.name], side="left"), out=level)
        return level

    # ------------------------------------------------------------------ queries
    @property
    def position(self) -> int:
        """Global stream positions served so far: ``steps * global batch``."""
        return self._step * self.global_batch_size

    @property
    def buffered(self) -> int:
        return int(self._ids.size)

    def _new_levels(self) -> None:
        """Re-bucket the buffer for levels that became known (see :meth:`_level`)."""
        self._update_thresholds()
        self._levels = self._level_of(self._values, self._ids.size) if self._ids.size else self._levels

    def stream_logs(self, step: int) -> dict[str, int]:
        """Buffer size and counts (summed over processes by the caller) after ``step``."""
        snap = self._find_snapshot(step) or self._snapshots[-1]
        c = snap.counters
        return {
            "curriculum/stream_buffered": int(snap.ids.size),
            "curriculum/stream_dropped": c.dropped,
            "curriculum/stream_excluded": c.excluded,
            "curriculum/stream_admitted_early": c.admitted_early,
        }

    # ------------------------------------------------------------------ reading
    def _chunks(self) -> Iterator[tuple[list[Any], pa.Table | None]]:
        """The source in chunks of ``self._chunk`` samples (the last may be shorter): rows, and the Arrow table they
        came from when the source is read as Arrow."""
        if self._reader is not self.source:
            for table in self._reader.iter(batch_size=self._chunk):
                yield table.to_pylist(), table
            return
        iterator = iter(self.source)
        while True:
            rows = list(itertools.islice(iterator, self._chunk))
            bad = next((r for r in rows if not isinstance(r, Mapping)), None)
            if bad is not None:
                raise ValueError(
                    f"train_dataset: streamed samples must be mappings (dicts of fields), got {type(bad).__name__}."
                )
            if not rows:
                return
            yield rows, None

    def _next_chunk(self) -> tuple[list[Any], pa.Table | None]:
        """The next chunk; a short one marks the end of the stream."""
        if self._iterator is None:
            if self._pending_source_state is not None:
                self._reader.load_state_dict(self._pending_source_state)
                self._pending_source_state = None
            self._iterator = self._chunks()
        rows, table = next(self._iterator, ([], None))
        self._exhausted = len(rows) < self._chunk
        if self.counters.read == 0 and not rows:
            raise ValueError(
                "train_dataset: the stream yielded no sample; a streaming curriculum needs at least one "
                f"global batch ({self.global_batch_size} samples) of data."
            )
        return rows, table

    def _group_of(self, rows: list[Any]) -> np.ndarray:
        """The mixing group id of each of ``rows`` (zeros without mixing)."""
        if self.mixer is None:
            return np.zeros(len(rows), dtype=np.int64)
        out = np.empty(len(rows), dtype=np.int64)
        for i, row in enumerate(rows):
            if self.mixing_column not in row:
                raise ValueError(
                    f"mixing.column={self.mixing_column!r} is not a field of the streamed samples (fields: "
                    f"{sorted(row)}); allowed: a field naming each sample's group."
                )
            found = self._group_ids.get(str(row[self.mixing_column]))
            if found is None:
                raise unknown_group_error(row[self.mixing_column], self.mixer.groups, self.mixing_column)
            out[i] = found
        return out

    def _admit(self, rows: list[Any], values: Mapping[str, np.ndarray]) -> None:
        n = len(rows)
        sizes = self.selection.measure(rows, self.counters.read)
        ids = np.arange(self.counters.read, self.counters.read + n, dtype=np.int64)
        self.counters.read += n
        level = self._level_of(values, n)
        never = level >= len(self._pacing.steps) if self._pacing.complete else np.zeros(n, dtype=bool)
        if never.any():
            if self.counters.excluded == 0:
                logger.warning(
                    "streaming curriculum: samples above the final difficulty of "
                    f"{[m.name for m in self._metrics]} are never eligible and are skipped (counted as "
                    "curriculum/stream_excluded), as on map-style data."
                )
            self.counters.excluded += int(never.sum())
        keep = ~never
        for i in np.flatnonzero(keep):
            self._samples[int(ids[i])] = rows[i]
        self._ids = np.concatenate([self._ids, ids[keep]])
        self._levels = np.concatenate([self._levels, level[keep]])
        self._sizes = np.concatenate([self._sizes, sizes[keep]])
        self._groups = np.concatenate([self._groups, self._group_of(rows)[keep]])
        for name in self._values:
            self._values[name] = np.concatenate([self._values[name], np.asarray(values[name])[keep]])

    def _warm_up(self) -> None:
        """Read the warm-up prefix (whole chunks), estimate token counts and percentile references from its first
        ``warmup_samples`` samples, buffer it."""
        chunks = []
        while sum(len(rows) for rows, _ in chunks) < self._warmup and not self._exhausted:
            chunks.append(self._next_chunk())
        prefix = [row for rows, _ in chunks for row in rows][: self._warmup]
        if self._measure.needs_counts and self._counts is None:
            self._counts = self._measure.counts(prefix)
            self._measure.set_counts(self._counts)
        values = [self._measure(rows, table) for rows, table in chunks]
        for m in self._pct_metrics:
            if m.name not in self._references:
                self._references[m.name] = np.sort(np.concatenate([v[m.name] for v in values])[: self._warmup])
        self._update_thresholds()
        self._warmed_up = True
        for (rows, _), v in zip(chunks, values):
            if rows:
                self._admit(rows, v)

    def _drop(self, positions: np.ndarray) -> None:
        self._release(self._ids[positions].tolist())
        self._remove(positions)

    def _remove(self, positions: np.ndarray) -> None:
        keep = np.ones(self._ids.size, dtype=bool)
        keep[positions] = False
        self._ids, self._levels, self._sizes = self._ids[keep], self._levels[keep], self._sizes[keep]
        self._groups = self._groups[keep]
        self._values = {name: values[keep] for name, values in self._values.items()}

    def _evict_hardest(self, level: int, count: int) -> None:
        """Drop up to ``count`` buffered samples not eligible at ``level``: highest level first, newest first."""
        candidates = np.flatnonzero(self._levels > level)
        if count < candidates.size:  # the `count` largest (level, id) keys, in linear time
            keys = (self._levels[candidates] << 40) + self._ids[candidates]
            candidates = candidates[np.argpartition(keys, keys.size - count)[keys.size - count :]]
        if self.counters.dropped == 0:
            logger.warning(
                f"streaming curriculum: the buffer (curriculum.streaming.buffer_size={self.streaming.buffer_size}) "
                "is full of samples not yet eligible; dropping the hardest (counted as curriculum/stream_dropped). "
                "Use a larger buffer, or buffer_full='hold' to keep them."
            )
        self.counters.dropped += int(candidates.size)
        self._drop(candidates)

    # ------------------------------------------------------------------ steps
    def _read_for(self, step: int, level: int) -> bool:
        """Read a chunk while forming ``step`` (see :meth:`StepCandidates.read_more`); whether one was read."""
        if self._exhausted:
            return False
        size, policy = self.streaming.buffer_size, self.streaming.buffer_full
        room = size - self._ids.size
        if room < self._chunk:
            eligible = int((self._levels <= level).sum())
            if policy == "hold" or eligible >= self.local_batch_size:
                return False
            if policy == "error":
                raise ValueError(
                    f"streaming curriculum, step {step}: the buffer (curriculum.streaming.buffer_size={size}) has "
                    f"no room for a chunk of {self._chunk} and holds {eligible} samples eligible at this step, fewer "
                    f"than the {self.local_batch_size} of a step, and curriculum.streaming.buffer_full='error' refuses "
                    "to drop; allowed: a larger buffer_size, or buffer_full 'drop' or 'hold'."
                )
            self._evict_hardest(level, self._chunk - room)
        rows, table = self._next_chunk()
        if rows:
            self._admit(rows, self._measure(rows, table))
        return True

    def _snapshot(self) -> _Snapshot:
        state = self._reader.state_dict() if self.checkpointable and self._iterator is not None else None
        if state is not None and not isinstance(self._reader, datasets.IterableDataset):  # datasets returns a copy
            state = copy.deepcopy(state)
        if state is None and self._pending_source_state is not None:
            state = copy.deepcopy(self._pending_source_state)
        return _Snapshot(self._step, state, self._exhausted, self._ids.copy(), replace(self.counters))

    def _find_snapshot(self, step: int) -> _Snapshot | None:
        return next((s for s in reversed(self._snapshots) if s.step == step), None)

    def _release(self, ids: list[int]) -> None:
        """``ids`` left the buffer while step ``self._step + 1`` was formed; kept while a snapshot needs them."""
        self._released.append((self._step + 1, ids))
        oldest = self._snapshots[0].step
        while self._released and self._released[0][0] <= oldest:
            for i in self._released.popleft()[1]:
                del self._samples[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            raise ValueError(
                f"dataloader_num_workers={info.num_workers}: a streaming curriculum reads its stream in the training "
                "process, which checkpoints its state and agrees with the other processes on the end; allowed: 0."
            )
        if not self._warmed_up:
            self._warm_up()
        while True:
            step = self._step + 1
            # this process's part of the step, chosen by the selection hook (None: no full step is left)
            picked = self.selection.select(StepCandidates(self, step, self._level(step)))
            local = picked.totals if picked is not None else [0] * len(self.selection.total_names)
            ended, *totals = sum_over_processes([int(picked is None), *local], self.device)
            if ended:  # some process cannot fill the step: every process ends here
                self._end()
                return
            self.selection.record(step, totals)
            served = np.concatenate(picked.groups)
            tags = self._groups[served].tolist() if self.tag_groups else None
            self._check_mixture(step, served)
            samples = [self._samples[i] for i in self._take(step, served)]
            if tags is not None:
                samples = [{**sample, GROUP_KEY: g} for sample, g in zip(samples, tags)]
            rest = iter(samples)
            groups = [list(itertools.islice(rest, len(group))) for group in picked.groups]
            yield from self.selection.items(step, groups, self.max_tokens_at(step))

    def _check_mixture(self, step: int, served: np.ndarray) -> None:
        """Warn once when a step's samples could not follow the mixer's draw (a group short in the buffer)."""
        if self.mixer is None or self._warned_mixture:
            return
        wanted = np.bincount(
            self.mixer.stream_slot_groups(step, served.size, self.rank), minlength=len(self._group_ids)
        )
        got = np.bincount(self._groups[served], minlength=len(self._group_ids))
        short = [g for g, w, n in zip(self.mixer.groups, wanted, got) if n < w]
        if short:
            self._warned_mixture = True
            logger.warning(
                f"group mixing over a stream, step {step} (rank {self.rank}): the buffer held too few samples of "
                f"group(s) {short} for the draw ({dict(zip(self.mixer.groups, wanted.tolist()))} wanted, "
                f"{dict(zip(self.mixer.groups, got.tolist()))} served); other eligible samples took their slots. A "
                "group that ran out of the stream, or is rarer in the buffer than its weight, is under-served; a "
                "larger curriculum.streaming.buffer_size helps the second. Warned once."
            )

    def _take(self, step: int, picked: np.ndarray) -> list[int]:
        """Serve the buffer positions ``picked`` as ``step``: remove them, count them, record the step's state;
        returns their ids."""
        early = int((self._levels[picked] > self._level(step)).sum())
        ids = self._ids[picked].tolist()
        self._remove(picked)
        self.counters.served += len(ids)
        self.counters.admitted_early += early
        self._release(ids)
        self._step = step
        self._snapshots.append(self._snapshot())
        return ids

    def _end(self) -> None:
        """The processes agreed that the stream is over: drop (and count) the last partial step."""
        if self._ids.size:
            self.counters.dropped += int(self._ids.size)
            self._drop(np.arange(self._ids.size))
        self._snapshots.append(self._snapshot())

    # ------------------------------------------------------------------ checkpointing
    def _identity(self) -> dict[str, Any]:
        return {
            "buffer_size": self.streaming.buffer_size,
            "chunk_size": self.streaming.chunk_size,
            "global_batch_size": self.global_batch_size,
            "world_size": self.world_size,
            "rank": self.rank,
            "source": _source_description(self.source),
            **self.selection.identity(),
            **({"mixing": self.mixer.identity()} if self.mixer is not None else {}),
        }

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """JSON-able state after the step that ends at global ``position`` (default: the last step emitted), with
        every process's part. With an initialised process group of several processes this is a collective call."""
        import torch.distributed as dist

        step = self._step if position is None else position // self.global_batch_size
        local = self._local_state(step)
        parts = [local]
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        return {"version": STATE_VERSION, "kind": "stream", "position": step * self.global_batch_size, "ranks": parts}

    def _local_state(self, step: int) -> dict[str, Any]:
        snap = self._find_snapshot(step)
        if snap is None:
            raise ValueError(
                f"streaming curriculum: no state is kept for step {step} (kept: {[s.step for s in self._snapshots]})."
            )
        return {
            "identity": self._identity(),
            "checkpointable": self.checkpointable,
            "source_state": snap.source_state,
            "exhausted": snap.exhausted,
            "counters": asdict(snap.counters),
            "token_counts": self._sparse_counts(),
            "references": {name: ref.tolist() for name, ref in self._references.items()},
            "warmed_up": self._warmed_up or step > 0,
            "buffer": [
                {"id": i, "sample": {k: _plain(v) for k, v in self._samples[i].items()}} for i in snap.ids.tolist()
            ],
        }

    def _sparse_counts(self) -> dict[str, list[int]] | None:
        if self._counts is None:
            return None
        ids = np.flatnonzero(self._counts)
        return {"ids": ids.tolist(), "counts": self._counts[ids].tolist(), "size": int(self._counts.size)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the step of ``state`` (before iterating); a changed setup or source raises."""
        check_sampler_state(self, expect_mapping(state, "sampler"), "sampler", _STATE_KEYS, STATE_VERSION)
        if len(state["ranks"]) != self.world_size:
            raise ValueError(
                f"streaming curriculum state has {len(state['ranks'])} process shard(s) but this run has world_size="
                f"{self.world_size}; resume with the same number of processes."
            )
        position, state = state["position"], state["ranks"][self.rank]
        saved, current = state["identity"], self._identity()
        for key in current:
            if saved.get(key) != current[key]:
                where = "curriculum.streaming." + key if key in ("buffer_size", "chunk_size") else key
                raise ValueError(
                    f"streaming curriculum state has {where}={json.dumps(saved.get(key))} but this run has "
                    f"{json.dumps(current[key])}; resume with the same shards, buffer and batch geometry."
                )
        if not state["checkpointable"] or not self.checkpointable:
            reason = self._not_resumable or "the saved stream could not record its position"
            raise ValueError(
                f"train_dataset: {reason}, so its position cannot be restored and the run cannot resume exactly; use "
                "an unshuffled datasets.IterableDataset (shuffle the shard files instead), give a torch "
                "IterableDataset state_dict()/load_state_dict(), or start a new run."
            )
        if self._step != 0 or self._iterator is not None:
            raise ValueError("streaming curriculum: load_state_dict must be called before iterating.")
        names = tuple(StreamCounters.__dataclass_fields__)
        counts = check_state_keys("streaming curriculum counters", state["counters"], names)
        counters = StreamCounters(
            **{k: check_state_int(counts[k], f"sampler.counters.{k}", 0, INT64_MAX) for k in names}
        )
        state_position(position, "sampler.position", self.global_batch_size)
        self._pending_source_state = copy.deepcopy(state["source_state"])
        self._exhausted = bool(state["exhausted"])
        self.counters = counters
        counts = state["token_counts"]
        if counts is not None:
            self._counts = np.zeros(counts["size"], dtype=np.int64)
            self._counts[np.asarray(counts["ids"], dtype=np.int64)] = counts["counts"]
            if self._measure.needs_counts:
                self._measure.set_counts(self._counts)
        self._references = {name: np.asarray(ref, dtype=np.float64) for name, ref in state["references"].items()}
        self._update_thresholds()
        self._warmed_up = bool(state["warmed_up"])
        entries = state["buffer"]
        self._samples = {int(e["id"]): e["sample"] for e in entries}
        self._ids = np.asarray([int(e["id"]) for e in entries], dtype=np.int64)
        rows = [e["sample"] for e in entries]
        values = self._measure(rows) if rows else {m.name: np.zeros(0) for m in self._metrics}
        self._values = {m.name: np.asarray(values[m.name]) for m in self._metrics}
        self._sizes = self.selection.measure(rows, None) if rows else np.zeros(0, dtype=np.int64)
        self._groups = self._group_of(rows)
        self._level(max(1, position // self.global_batch_size))
        self._levels = self._level_of(self._values, len(rows)) if rows else np.zeros(0, dtype=np.int64)
        self._step = position // self.global_batch_size
        self._snapshots.clear()
        self._released.clear()
        self._snapshots.append(self._snapshot())
