"""Token-budget (dynamic) batching over a streaming curriculum.

:class:`StreamTokenBudget` is the selection hook a :class:`~hf_data_efficiency.curriculum.streaming.StreamingCurriculum`
forms each step with: exactly ``gradient_accumulation_steps`` micro-batches per process, packed greedily from the
buffered samples eligible at the step, oldest first, each closed by the first eligible sample that does not fit. The
stream keeps its buffer, eligibility, ``buffer_full`` policy, warm-up, end-of-stream agreement and JSON state, and
yields whole micro-batches. Semantics: ``docs/dynamic_batching.md``, "With a stream".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, astuple
from typing import Any

import numpy as np
from transformers.utils import logging

from .._validation import check_int, check_keys, expect_mapping
from ..config import CurriculumConfig, DynamicBatchingConfig
from ..curriculum.sampler import check_sampler_state, state_fingerprint
from ..curriculum.streaming import Picked, StepCandidates, StepSelection, StreamGeometry, StreamingCurriculum
from ..curriculum.transforms import MAX_TOKENS_KEY, POSITION_KEY
from .budget import StepTotals, TokenBudget

logger = logging.get_logger(__name__)

STATE_VERSION = 1
_STATS_KEPT = 64  # steps whose statistics are kept (the loader runs a few steps ahead of the LR and the logs)
_STATE_KEYS = ("version", "kind", "position", "fingerprint", "step_stats")


class StreamTokenBudget(StepSelection):
    """Token-budget micro-batches for a streaming curriculum (see the module docstring): the stream's selection
    hook, and the source of each step's LR factor, logs and ``dynamic_batching`` state section.

    Args:
        config: the :class:`~hf_data_efficiency.DynamicBatchingConfig`.
        transform: the curriculum's sequence-length transform (``seqlen_truncate`` only), or ``None``.
        packed: budget the sum of lengths instead of the padded count (a collator that packs rows).
        reference_batch_size: the samples per step the LR is tuned for (default: the stream's fixed global batch,
            ``batch_size * world_size * gradient_accumulation_steps``).
        length_column: the sample field holding its length, when present (else ``input_column``'s length).
    """

    total_names = tuple(StepTotals.__dataclass_fields__)
    state_kind = "stream"
    _fingerprint_changes = "the dynamic_batching config, the batch geometry or the stream"

    def __init__(
        self,
        config: DynamicBatchingConfig,
        *,
        transform: Any = None,
        packed: bool = False,
        reference_batch_size: int | None = None,
        length_column: str = "seqlen",
        input_column: str = "input_ids",
    ) -> None:
        if not isinstance(config, DynamicBatchingConfig):
            raise ValueError(f"dynamic_batching must be a DynamicBatchingConfig, got {type(config).__name__}.")
        if config.sequence_picking_order != "dataloader":
            raise ValueError(
                f"dynamic_batching.sequence_picking_order={config.sequence_picking_order!r} cannot be used with a "
                "stream, whose micro-batches take the oldest eligible samples in stream order; allowed with a "
                "stream: 'dataloader'."
            )
        if config.metrics_path is not None:
            logger.warning(
                f"dynamic_batching.metrics_path={config.metrics_path!r} is not read with a stream: the lengths come "
                "from the samples as they are read."
            )
        self.config, self._transform, self._packed = config, transform, bool(packed)
        self._reference = reference_batch_size
        self.length_column, self.input_column = length_column, input_column
        self._stats: OrderedDict[int, StepTotals] = OrderedDict()
        self.budget: TokenBudget | None = None

    def bind(self, geometry: StreamGeometry) -> None:
        super().bind(geometry)
        reference = geometry.global_batch_size if self._reference is None else self._reference
        self.budget = TokenBudget(
            self.config, reference_batch_size=reference, packed=self._packed, transform=self._transform
        )
        # the same on every process: the main process writes the state every process reads
        meta = {**self.identity(), "global_batch_size": geometry.global_batch_size, "world_size": geometry.world_size}
        self._fingerprint = state_fingerprint({**meta, "version": STATE_VERSION})

    @property
    def truncated_samples(self) -> int:
        """Streamed samples longer than the row cap, cut to it (``truncate_long_samples``)."""
        return self.budget.truncated_samples

    # ----- the selection hook ---------------------------------------------------------------------------------
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

    def measure(self, rows: list[Mapping[str, Any]], first: int | None) -> np.ndarray:
        """Each sample's length, checked against the budget as it is read."""
        lengths = np.asarray([self._length(r) for r in rows], dtype=np.int64)
        where = f"read from stream position {first}" if first is not None else "buffered"
        self.budget.admit(lengths, f"streamed samples ({where} on this process)")
        return lengths

    def _pack(self, candidates: StepCandidates, order: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """Pack the buffer positions ``order`` (in that order) into at most GA micro-batches: their positions, their
        counted lengths, and whether all GA are closed by a sample that does not fit."""
        cfg, count = self.config, self.geometry.gradient_accumulation_steps
        # a micro-batch holds at most `most` samples, so GA of them never look past this prefix
        most = cfg.max_batch_size if cfg.max_batch_size is not None else cfg.max_tokens
        order = order[: count * most + 1]
        lengths = candidates.sizes(order)
        cap = self.budget.truncate_to(candidates.max_tokens)
        if cap is not None:
            lengths = np.minimum(lengths, cap)
        slices = self.budget.pack(lengths, count)
        closed = len(slices) == count and slices[-1][1] < order.size
        return [order[a:b] for a, b in slices], [lengths[a:b] for a, b in slices], closed

    def select(self, candidates: StepCandidates) -> Picked | None:
        while not self._pack(candidates, candidates.eligible())[2] and candidates.read_more():
            pass
        for order in (candidates.eligible(), candidates.fallback()):
            batches, lengths, _ = self._pack(candidates, order)
            if len(batches) == self.geometry.gradient_accumulation_steps:
                if self.config.verbose:
                    logger.info(
                        f"dynamic_batching step {candidates.step} (rank {self.geometry.rank}): micro-batch sizes "
                        f"{[len(b) for b in batches]}, tokens {[int(ls.sum()) for ls in lengths]}"
                    )
                return Picked(batches, list(astuple(self.budget.totals(lengths))))
        return None

    def record(self, step: int, totals: list[int]) -> None:
        self._stats[step] = StepTotals(*totals)
        if len(self._stats) > _STATS_KEPT:
            self._stats.popitem(last=False)

    def items(self, step: int, groups: list[list[dict[str, Any]]], max_tokens: int | None) -> Iterator[Any]:
        """Each micro-batch of ``step`` as a list of samples, tagged with the step's truncation and its position."""
        g = self.geometry
        cap = self.budget.truncate_to(max_tokens)
        tags: dict[str, Any] = {MAX_TOKENS_KEY: cap} if cap is not None else {}
        for j, samples in enumerate(groups):
            position = ((step - 1) * g.world_size + g.rank) * g.gradient_accumulation_steps + j
            where = {POSITION_KEY: position} if g.tag_positions else {}
            yield [{**sample, **tags, **where} for sample in samples]

    def identity(self) -> dict[str, Any]:
        return {
            "dynamic_batching": self.config.to_dict(),
            "packed": self.budget.packed,
            "reference_batch_size": self.budget.reference_batch_size,
        }

    # ----- LR and logs ----------------------------------------------------------------------------------------
    def stats(self, step: int) -> StepTotals:
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
        return self.budget.lr_factor(self.stats(step).samples)

    def step_stats(self, step: int) -> dict[str, float]:
        """Samples, real tokens, padding fraction and LR factor of 1-based ``step`` (all processes)."""
        return self.budget.step_stats(self.stats(step))

    def step_logs(self, step: int) -> dict[str, float]:
        """``dynamic_batching/*`` of :meth:`step_stats`, as the engine logs them."""
        return {f"dynamic_batching/{key}": value for key, value in self.step_stats(step).items()}

    def set_epoch(self, epoch: int) -> None:
        """A stream is read once: the epoch does not move it."""

    # ----- state (the stream's own state, with its buffer, is the engine's ``sampler`` section) ----------------
    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """``position``: optimizer steps done (default: the last step formed); with the totals of that step, so its
        logs are known after a resume too."""
        steps = (next(reversed(self._stats)) if self._stats else 0) if position is None else int(position)
        stats = self._stats.get(steps)
        return {
            "version": STATE_VERSION,
            "kind": self.state_kind,
            "position": steps,
            "fingerprint": self._fingerprint,
            "step_stats": asdict(stats) if stats is not None else None,
        }

    def check_state(self, state: Any, path: str = "dynamic_batching") -> int:
        """Validate ``state`` against this stream's budget and geometry; returns its position (steps)."""
        state = expect_mapping(state, path)
        check_sampler_state(self, state, path, _STATE_KEYS, STATE_VERSION)
        return check_int(state["position"], f"{path}.position", minimum=0)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check ``state`` and restore its step's totals (the stream itself is restored from the ``sampler``
        section)."""
        position = self.check_state(state)
        if state["step_stats"] is not None:
            stats = expect_mapping(state["step_stats"], "dynamic_batching.step_stats")
            check_keys(stats, self.total_names, "dynamic_batching.step_stats", required=self.total_names)
            values = {k: check_int(stats[k], f"dynamic_batching.step_stats.{k}", minimum=0) for k in self.total_names}
            self._stats[position] = StepTotals(**values)


class StreamingTokenBudget(StreamingCurriculum):
    """A :class:`~hf_data_efficiency.curriculum.streaming.StreamingCurriculum` that yields token-budget
    micro-batches: its :attr:`selection` is a :class:`StreamTokenBudget` (the step's LR factor, logs and stats).

    Args:
        source, curriculum: as :class:`StreamingCurriculum`.
        dynamic_batching: the :class:`~hf_data_efficiency.DynamicBatchingConfig`.
        batch_size: the per-device batch the LR is tuned for; the buffer must hold one such global batch.
        reference_batch_size, packed, length_column: as :class:`StreamTokenBudget`.
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
        selection = StreamTokenBudget(
            dynamic_batching,
            transform=curriculum.transform,
            packed=packed,
            reference_batch_size=reference_batch_size,
            length_column=length_column,
            input_column=input_column,
        )
        super().__init__(
            source, curriculum, batch_size=batch_size, input_column=input_column, selection=selection, **kwargs
        )


class MicroBatchCollator:
    """The ``collate_fn`` of a DataLoader with ``batch_size=1`` over a stream of micro-batches: each DataLoader
    batch is one micro-batch (a list of samples), collated whole by ``collator``. ``batch_size=1`` (not ``None``)
    keeps accelerate's iterable-dataset wrapper able to pass the stream through unchanged."""

    def __init__(self, collator: Callable[[list[Any]], Any]) -> None:
        self.collator = collator

    def __call__(self, batch: list[list[dict[str, Any]]]) -> Any:
        (micro_batch,) = batch
        return self.collator(micro_batch)
