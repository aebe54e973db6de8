"""Token-budget (dynamic) batching over a streaming curriculum.

:class:`StreamingTokenBudget` is a :class:`~hf_data_efficiency.curriculum.streaming.StreamingCurriculum` (same
buffer, eligibility, ``buffer_full`` policy, warm-up, end-of-stream agreement and JSON state) that yields whole
micro-batches (lists of samples) instead of single samples:

* **A step** is exactly ``gradient_accumulation_steps`` micro-batches on every process.
* **Counted lengths.** A sample's length is its ``seqlen`` field, else the length of its ``input_ids``; the budget
  counts it capped by the step's ``seqlen_truncate`` max tokens and, with ``truncate_long_samples``, by
  ``max_tokens // min_batch_size``. A sample whose counted length at the largest truncation exceeds that row cap
  is an error when it is read (as on map-style data), unless ``truncate_long_samples``.
* **Packing.** The buffered samples eligible at the step, oldest first, are packed greedily into consecutive
  micro-batches (:func:`~hf_data_efficiency.curriculum.dynamic_batching.pack_micro_batches`, DeepSpeed's
  ``batch_by_seqlens`` rule): a micro-batch takes the next sample while its cost (``size * longest``; the sum of
  lengths when ``packed``) stays within ``max_tokens`` and its size within ``max_batch_size``, and is **closed** by
  the first eligible sample that does not fit. Never empty, never over budget, at least ``min_batch_size``.
* **Reading more.** While the eligible samples do not close all the step's micro-batches (the last one would be cut
  short by running out of eligible samples), the buffer reads another chunk. A full buffer reads on only while fewer
  samples are eligible than a fixed step takes (``batch_size * GA``, as without dynamic batching), applying
  ``buffer_full`` to the samples not eligible (``drop`` evicts the hardest, ``error`` refuses, ``hold`` stops
  reading); it never evicts just to make bigger micro-batches. When no more is read -- the stream ended, a full
  buffer -- the step packs what is buffered: the eligible samples, and when they cannot give every micro-batch
  ``min_batch_size`` samples, then the others closest to eligibility (counted as ``admitted_early``); when even the
  whole buffer cannot, the stream ends (agreed by every process) and the rest is dropped and counted.
* **LR and logs.** One all-reduce (SUM, only with a process group of more than one process) per step carries the
  end-of-stream vote and the step's samples, real tokens and computed tokens, so :meth:`step_stats` gives the
  global values: the LR factor of the step is ``lr_factor(samples, reference_batch_size, lr_scaling_method)``.
* **Seeded collation.** Every sample of micro-batch ``j`` of step ``k`` on rank ``r`` carries the position
  ``((k - 1) * world_size + r) * gradient_accumulation_steps + j``: unique per micro-batch and deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from .._validation import check_int, check_keys, expect_mapping
from ..config import CurriculumConfig, DynamicBatchingConfig
from .dynamic_batching import lr_factor, pack_micro_batches, row_cap_text
from .streaming import StreamingCurriculum
from .transforms import MAX_TOKENS_KEY, POSITION_KEY

logger = logging.get_logger(__name__)

STATE_VERSION = 1
_STATS_KEPT = 64  # steps whose statistics are kept (the loader runs a few steps ahead of the LR and the logs)
_STATE_KEYS = ("version", "kind", "position", "fingerprint", "step_stats")


@dataclass(frozen=True)
class StreamStepStats:
    """Global (all processes) totals of one optimizer step."""

    samples: int
    real_tokens: int
    computed_tokens: int


def _sum_over_processes(values: list[int], device: Any = None) -> list[int]:
    """``values`` summed over the processes (one all-reduce); ``values`` itself without a process group of >1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


class StreamingTokenBudget(StreamingCurriculum):
    """A streaming curriculum yielding token-budget micro-batches (see the module docstring).

    Args:
        source, curriculum: as :class:`StreamingCurriculum`.
        dynamic_batching: the :class:`~hf_data_efficiency.DynamicBatchingConfig`.
        batch_size: the per-device batch the LR is tuned for; ``reference_batch_size`` defaults to ``batch_size *
            world_size * gradient_accumulation_steps``, and the buffer must hold one such global batch.
        packed: budget the sum of lengths instead of the padded count (a collator that packs rows).
        length_column: the sample field holding its length, when present (else ``input_column``'s length).
        **kwargs: the other :class:`StreamingCurriculum` arguments.
    """

    def __init__(
        self,
        source: Any,
        curriculum: CurriculumConfig,
        dynamic_batching: DynamicBatchingConfig,
        *,
        batch_size: int,
        reference_batch_size: int | None = None,
        packed: bool = False,
        length_column: str = "seqlen",
        input_column: str = "input_ids",
        **kwargs: Any,
    ) -> None:
        if not isinstance(dynamic_batching, DynamicBatchingConfig):
            raise ValueError(
                f"dynamic_batching must be a DynamicBatchingConfig, got {type(dynamic_batching).__name__}."
            )
        transform = curriculum.transform
        if transform is not None and transform.name != "seqlen_truncate":
            raise ValueError(
                f"dynamic_batching cannot be combined with the {transform.name} curriculum (it turns one row into "
                "several, so the rows of a micro-batch are not known when it is packed); use seqlen_truncate."
            )
        if dynamic_batching.sequence_picking_order != "dataloader":
            raise ValueError(
                f"dynamic_batching.sequence_picking_order={dynamic_batching.sequence_picking_order!r} cannot be used "
                "with a stream, whose micro-batches take the oldest eligible samples in stream order; allowed with "
                "a stream: 'dataloader'."
            )
        self.budget = dynamic_batching
        self.packed = bool(packed)
        self.length_column = length_column
        self._transform_max = int(transform.max_difficulty) if transform is not None else None
        super().__init__(source, curriculum, batch_size=batch_size, input_column=input_column, **kwargs)
        self.input_column = input_column
        self.reference_batch_size = check_int(
            self.global_batch_size if reference_batch_size is None else reference_batch_size,
            "reference_batch_size",
            minimum=1,
        )
        if self.budget.metrics_path is not None:
            logger.warning(
                f"dynamic_batching.metrics_path={self.budget.metrics_path!r} is not read with a stream: the lengths "
                "come from the samples as they are read."
            )
        self.truncated_samples = 0
        self._stats: OrderedDict[int, StreamStepStats] = OrderedDict()

    # ------------------------------------------------------------------ lengths
    @property
    def row_cap(self) -> int:
        """Most tokens one sample may count: ``max_tokens // min_batch_size``, so ``min_batch_size`` always fits."""
        return self.budget.max_tokens // self.budget.min_batch_size

    def _length(self, sample: Mapping[str, Any]) -> int:
        if self.length_column in sample:
            return int(sample[self.length_column])
        if self.input_column not in sample:
            raise ValueError(
                f"dynamic_batching needs the length of every streamed sample: a sample has neither a "
                f"{self.length_column!r} nor an {self.input_column!r} field (fields: {sorted(sample)}). Tokenize the "
                f"stream first (IterableDataset.map), or add a {self.length_column!r} field."
            )
        return len(sample[self.input_column])

    def _admit(self, rows: list[Any], values: Mapping[str, np.ndarray]) -> None:
        """Check the budget can take every new sample (its counted length at the largest truncation), then buffer."""
        lengths = np.asarray([self._length(r) for r in rows], dtype=np.int64)
        if lengths.size and int(lengths.min()) < 1:
            raise ValueError("dynamic_batching: a streamed sample has length 0; every sample needs >= 1 token.")
        counted = np.minimum(lengths, self._transform_max) if self._transform_max is not None else lengths
        long = counted > self.row_cap
        if long.any():
            cfg = self.budget
            bound = row_cap_text(cfg)
            if not cfg.truncate_long_samples:
                raise ValueError(
                    f"dynamic_batching: a streamed sample (stream position {self.counters.read + int(np.argmax(long))}"
                    f" of this process) is longer than {bound} tokens ({int(counted[long][0])}); raise "
                    "dynamic_batching.max_tokens, or set dynamic_batching.truncate_long_samples=true to cut such "
                    "samples to that length."
                )
            if self.truncated_samples == 0:
                logger.warning(
                    f"dynamic_batching: streamed samples longer than {bound} tokens are truncated to {self.row_cap} "
                    "tokens (truncate_long_samples=true)."
                )
            self.truncated_samples += int(long.sum())
        super()._admit(rows, values)

    def truncate_to(self, step: int) -> int | None:
        """Tokens per row the collator keeps at ``step`` (``None``: no truncation applies)."""
        cap = int(self._transform_schedule(step)) if self._transform_schedule is not None else None
        if self.budget.truncate_long_samples:
            cap = self.row_cap if cap is None else min(cap, self.row_cap)
        return cap

    def _counted(self, positions: np.ndarray, cap: int | None) -> np.ndarray:
        """Counted lengths of the buffered samples at buffer ``positions``."""
        lengths = np.fromiter(
            (self._length(self._samples[int(i)]) for i in self._ids[positions]), dtype=np.int64, count=positions.size
        )
        return np.minimum(lengths, cap) if cap is not None else lengths

    # ------------------------------------------------------------------ packing
    def _pack(self, order: np.ndarray, cap: int | None) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """Pack the buffer positions ``order`` (in that order) into at most GA micro-batches: their positions, their
        counted lengths, and whether all GA are closed by a sample that does not fit."""
        cfg, count = self.budget, self.gradient_accumulation_steps
        # a micro-batch holds at most `most` samples, so GA of them never look past this prefix
        most = cfg.max_batch_size if cfg.max_batch_size is not None else cfg.max_tokens
        order = order[: count * most + 1]
        lengths = self._counted(order, cap)
        slices = pack_micro_batches(
            lengths,
            cfg.max_tokens,
            min_batch_size=cfg.min_batch_size,
            max_batch_size=cfg.max_batch_size,
            packed=self.packed,
            count=count,
        )
        closed = len(slices) == count and slices[-1][1] < order.size
        return [order[a:b] for a, b in slices], [lengths[a:b] for a, b in slices], closed

    def _select_micro_batches(self, step: int) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Buffer positions and counted lengths of this process's micro-batches of ``step`` (``None``: the buffer
        cannot give every micro-batch ``min_batch_size`` samples any more)."""
        if not self._warmed_up:
            self._warm_up()
        level, cap = self._level_at(step), self.truncate_to(step)
        size, policy = self.streaming.buffer_size, self.streaming.buffer_full
        while not self._exhausted:
            eligible = np.flatnonzero(self._levels <= level)
            if self._pack(eligible, cap)[2]:
                break
            room = size - self._ids.size
            if room < self._chunk:
                # a full buffer makes room only while fewer samples are eligible than a fixed step takes, as
                # without dynamic batching: it never evicts to make bigger micro-batches
                if policy == "hold" or eligible.size >= self.local_batch_size:
                    break
                if policy == "error":
                    raise ValueError(
                        f"streaming curriculum, step {step}: the buffer (curriculum.streaming.buffer_size={size}) has "
                        f"no room for a chunk of {self._chunk} and holds {eligible.size} samples eligible at this "
                        f"step, fewer than the {self.local_batch_size} of a step, and curriculum.streaming."
                        "buffer_full='error' refuses to drop; allowed: a larger buffer_size, or buffer_full 'drop' or "
                        "'hold'."
                    )
                self._evict_hardest(level, self._chunk - room)
            self._read_chunk()
        eligible = np.flatnonzero(self._levels <= level)
        batches, lengths, _ = self._pack(eligible, cap)
        if len(batches) == self.gradient_accumulation_steps:
            return batches, lengths
        # hold policy, a full buffer or the end of the stream: complete with the samples closest to eligibility
        waiting = np.flatnonzero(self._levels > level)
        waiting = waiting[np.lexsort((self._ids[waiting], self._levels[waiting]))]
        batches, lengths, _ = self._pack(np.concatenate([eligible, waiting]), cap)
        if len(batches) < self.gradient_accumulation_steps:
            return None
        return batches, lengths

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            raise ValueError(
                f"dataloader_num_workers={info.num_workers}: a streaming curriculum reads its stream in the training "
                "process, which checkpoints its state and agrees with the other processes on the end; allowed: 0."
            )
        ga = self.gradient_accumulation_steps
        while True:
            step = self._step + 1
            picked = self._select_micro_batches(step)
            local = self._local_totals(picked[1]) if picked is not None else [0, 0, 0]
            ended, *totals = _sum_over_processes([int(picked is None), *local], self.device)
            if ended:
                self._end()
                return
            batches, lengths = picked
            self._stats[step] = StreamStepStats(*totals)
            if len(self._stats) > _STATS_KEPT:
                self._stats.popitem(last=False)
            if self.budget.verbose:
                logger.info(
                    f"dynamic_batching step {step} (rank {self.rank}): micro-batch sizes "
                    f"{[len(b) for b in batches]}, tokens {[int(ls.sum()) for ls in lengths]}"
                )
            sizes = [len(b) for b in batches]
            ids = self._take(step, np.concatenate(batches))
            cap = self.truncate_to(step)
            tags: dict[str, Any] = {MAX_TOKENS_KEY: cap} if cap is not None else {}
            start = 0
            for j, n in enumerate(sizes):
                position = ((step - 1) * self.world_size + self.rank) * ga + j
                where = {POSITION_KEY: position} if self.tag_positions else {}
                yield [{**self._samples[i], **tags, **where} for i in ids[start : start + n]]
                start += n

    def _local_totals(self, lengths: list[np.ndarray]) -> list[int]:
        """Samples, real tokens and computed tokens (padded to each micro-batch's longest; real when packed)."""
        real = sum(int(ls.sum()) for ls in lengths)
        computed = real if self.packed else sum(len(ls) * int(ls.max()) for ls in lengths)
        return [sum(len(ls) for ls in lengths), real, computed]

    # ------------------------------------------------------------------ LR and logs
    def stats(self, step: int) -> StreamStepStats:
        """The global totals of 1-based ``step`` (formed already: the loader yields a step before it is trained)."""
        found = self._stats.get(int(step))
        if found is None:
            raise ValueError(
                f"dynamic_batching over a stream: step {step} has not been formed (kept: {list(self._stats)}); the LR "
                "factor and logs of a step are known once the loader has yielded its micro-batches."
            )
        return found

    def lr_factor(self, step: int) -> float:
        """The LR factor of 1-based ``step``, from its global number of samples."""
        return lr_factor(self.stats(step).samples, self.reference_batch_size, self.budget.lr_scaling_method)

    def step_stats(self, step: int) -> dict[str, float]:
        """Samples, real tokens, padding fraction and LR factor of 1-based ``step`` (all processes)."""
        s = self.stats(step)
        return {
            "samples": s.samples,
            "real_tokens": s.real_tokens,
            "padding_fraction": 1.0 - s.real_tokens / s.computed_tokens,
            "lr_factor": lr_factor(s.samples, self.reference_batch_size, self.budget.lr_scaling_method),
        }

    # ------------------------------------------------------------------ state
    def _identity(self) -> dict[str, Any]:
        return {
            **super()._identity(),
            "dynamic_batching": self.budget.to_dict(),
            "packed": self.packed,
            "reference_batch_size": self.reference_batch_size,
        }


class StreamBudgetSchedule:
    """What the engine's ``batch_sampler`` slot holds for a :class:`StreamingTokenBudget`: the per-step LR factor and
    logs, and a small ``dynamic_batching`` state section (the stream's own state, with its buffer, is the ``sampler``
    section)."""

    def __init__(self, stream: StreamingTokenBudget) -> None:
        self.stream = stream
        meta = {  # the same on every process: the main process writes the state every process reads
            "dynamic_batching": stream.budget.to_dict(),
            "packed": stream.packed,
            "reference_batch_size": stream.reference_batch_size,
            "global_batch_size": stream.global_batch_size,
            "world_size": stream.world_size,
            "version": STATE_VERSION,
        }
        self._fingerprint = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()

    def lr_factor(self, step: int) -> float:
        return self.stream.lr_factor(step)

    def step_stats(self, step: int) -> dict[str, float]:
        return self.stream.step_stats(step)

    def set_epoch(self, epoch: int) -> None:
        """A stream is read once: the epoch does not move it."""

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """``position``: optimizer steps done (default: the steps the stream has formed); with the totals of that
        step, so its logs are known after a resume too."""
        steps = self.stream.position // self.stream.global_batch_size if position is None else int(position)
        stats = self.stream._stats.get(steps)
        return {
            "version": STATE_VERSION,
            "kind": "stream",
            "position": steps,
            "fingerprint": self._fingerprint,
            "step_stats": asdict(stats) if stats is not None else None,
        }

    def check_state(self, state: Any, path: str = "dynamic_batching") -> int:
        """Validate ``state`` against this stream's budget and geometry; returns its position (steps)."""
        state = expect_mapping(state, path)
        check_keys(state, _STATE_KEYS, path, required=_STATE_KEYS)
        if state["version"] != STATE_VERSION or state["kind"] != "stream":
            raise ValueError(
                f"{path} (version={state['version']!r}, kind={state['kind']!r}) is not a streaming dynamic-batching "
                f"state; allowed: version {STATE_VERSION}, kind 'stream'."
            )
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                f"{path}.fingerprint does not match: the dynamic_batching config, the batch geometry or the stream "
                "changed since the checkpoint; resume with the same data and config."
            )
        return check_int(state["position"], f"{path}.position", minimum=0)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check ``state`` and restore its step's totals (the stream itself is restored from the ``sampler``
        section)."""
        position = self.check_state(state)
        if state["step_stats"] is not None:
            stats = expect_mapping(state["step_stats"], "dynamic_batching.step_stats")
            keys = tuple(StreamStepStats.__dataclass_fields__)
            check_keys(stats, keys, "dynamic_batching.step_stats", required=keys)
            values = {k: check_int(stats[k], f"dynamic_batching.step_stats.{k}", minimum=0) for k in keys}
            self.stream._stats[position] = StreamStepStats(**values)


class MicroBatchCollator:
    """The ``collate_fn`` of a DataLoader with ``batch_size=1`` over a :class:`StreamingTokenBudget`: each DataLoader
    batch is one micro-batch (a list of samples), collated whole by ``collator``. ``batch_size=1`` (not ``None``)
    keeps accelerate's iterable-dataset wrapper able to pass the stream through unchanged."""

    def __init__(self, collator: Callable[[list[Any]], Any]) -> None:
        self.collator = collator

    def __call__(self, batch: list[list[dict[str, Any]]]) -> Any:
        (micro_batch,) = batch
        return self.collator(micro_batch)
