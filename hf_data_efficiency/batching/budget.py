"""The token budget: the rules every token-budget batcher shares, for map-style and streamed data alike (DeepSpeed's
``data_sampling.dynamic_batching``): what a sample counts, how micro-batches are packed, a step's LR factor and logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers.utils import logging

from .._validation import check_int
from ..config import DynamicBatchingConfig

logger = logging.get_logger(__name__)


def pack_micro_batches(
    lengths: Sequence[int] | np.ndarray,
    max_tokens: int,
    *,
    min_batch_size: int = 1,
    max_batch_size: int | None = None,
    packed: bool = False,
    count: int | None = None,
    stop_after: int | None = None,
) -> list[tuple[int, int]]:
    """Greedy packing of consecutive samples into micro-batches; returns their ``(start, end)`` slices.

    A micro-batch grows while its cost (``size * longest``, or the sum of lengths when ``packed``) fits ``max_tokens``
    and its size ``max_batch_size``. A final micro-batch below ``min_batch_size`` is left out. With ``count``, at most
    ``count`` micro-batches are made, each leaving ``min_batch_size`` samples for every one still to come; with
    ``stop_after``, the first ``stop_after`` micro-batches of the greedy packing of all ``lengths``."""
    lengths = [int(v) for v in lengths]
    n, out, start = len(lengths), [], 0
    most = count if stop_after is None else stop_after
    while start < n and (most is None or len(out) < most):
        limit = n - (min_batch_size * (count - len(out) - 1) if count is not None else 0)
        end, longest, total = start, 0, 0
        while end < limit and (max_batch_size is None or end - start < max_batch_size):
            new_longest, new_total = max(longest, lengths[end]), total + lengths[end]
            if (new_total if packed else (end - start + 1) * new_longest) > max_tokens:
                break
            longest, total, end = new_longest, new_total, end + 1
        if end - start < min_batch_size:
            break
        out.append((start, end))
        start = end
    return out


def lr_scale(method: str, samples: int, reference: int) -> float:
    """The LR factor of a step of ``samples`` samples relative to the reference batch ``reference``: ``samples /
    reference`` (``linear``), ``sqrt(samples / reference)`` (``sqrt``) or 1 (``none``); shared by token budgets and
    batch-size warmup."""
    ratio = samples / reference  # the configs allow only these three methods
    return {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[method]


@dataclass(frozen=True)
class StepTotals:
    """Totals of one optimizer step (all processes): samples, real tokens, and the tokens the model computes."""

    samples: int
    real_tokens: int
    computed_tokens: int


class TokenBudget:
    """The token-budget rules of one run (see the module docstring).

    Args:
        config: the :class:`~hf_data_efficiency.DynamicBatchingConfig`.
        reference_batch_size: the samples per step the user's LR is tuned for; LR factors are relative to it.
        packed: budget the sum of lengths instead of the padded count (a collator that packs rows).
        transform: the curriculum's sequence-length transform (``seqlen_truncate`` only), or ``None``.
    """

    def __init__(
        self,
        config: DynamicBatchingConfig,
        *,
        reference_batch_size: int,
        packed: bool = False,
        transform: Any = None,
    ) -> None:
        if not isinstance(config, DynamicBatchingConfig):
            raise ValueError(f"dynamic_batching must be a DynamicBatchingConfig, got {type(config).__name__}.")
        if transform is not None and transform.name != "seqlen_truncate":
            raise ValueError(
                f"dynamic_batching cannot be combined with the {transform.name} curriculum (it turns one row into "
                "several, so the rows of a micro-batch are not known when it is packed); use seqlen_truncate."
            )
        self.config = config
        self.reference_batch_size = check_int(reference_batch_size, "reference_batch_size", minimum=1)
        self.packed = bool(packed)
        self.transform_max = int(transform.max_difficulty) if transform is not None else None
        #: samples cut to the row cap so far (``truncate_long_samples``)
        self.truncated_samples = 0

    @property
    def row_cap(self) -> int:
        """Most tokens one sample may count: ``max_tokens // min_batch_size``, so ``min_batch_size`` always fits."""
        return self.config.max_tokens // self.config.min_batch_size

    def row_cap_text(self) -> str:
        """How the row cap follows from the config, for messages."""
        cfg = self.config
        if cfg.min_batch_size == 1:
            return f"max_tokens={cfg.max_tokens}"
        return f"max_tokens // min_batch_size = {cfg.max_tokens} // {cfg.min_batch_size} = {self.row_cap}"

    def admit(self, lengths: np.ndarray, what: str) -> None:
        """Check that the budget can take samples of ``lengths`` (their counted length at the largest truncation):
        an error for samples longer than the row cap, or, with ``truncate_long_samples``, a warning (the first time)
        and a count. ``what`` names the samples in messages (e.g. ``"samples"``)."""
        if lengths.size and int(lengths.min()) < 1:
            raise ValueError(f"dynamic_batching: {what} include a sample of length 0; every sample needs >= 1 token.")
        counted = np.minimum(lengths, self.transform_max) if self.transform_max is not None else lengths
        long = counted > self.row_cap
        if not long.any():
            return
        found = f"{int(long.sum())} of {len(lengths)} {what} are longer than {self.row_cap_text()} tokens"
        if not self.config.truncate_long_samples:
            raise ValueError(
                f"dynamic_batching: {found} (longest: {int(counted.max())}); raise dynamic_batching.max_tokens, or set "
                "dynamic_batching.truncate_long_samples=true to cut them to that length."
            )
        if self.truncated_samples == 0:
            logger.warning(
                f"dynamic_batching: {found} (longest: {int(counted.max())}); such samples are truncated to "
                f"{self.row_cap} tokens (truncate_long_samples=true) and counted."
            )
        self.truncated_samples += int(long.sum())

    def truncate_to(self, max_tokens: int | None) -> int | None:
        """Tokens per row kept at a step whose ``seqlen_truncate`` max tokens is ``max_tokens`` (``None``: no
        transform): that, capped by the row cap with ``truncate_long_samples``; ``None`` when nothing is cut."""
        if self.config.truncate_long_samples:
            return self.row_cap if max_tokens is None else min(int(max_tokens), self.row_cap)
        return None if max_tokens is None else int(max_tokens)

    def pack(
        self,
        lengths: Sequence[int] | np.ndarray,
        count: int | None = None,
        *,
        stop_after: int | None = None,
        max_tokens: int | None = None,
    ) -> list[tuple[int, int]]:
        """:func:`pack_micro_batches` of counted ``lengths`` under this budget (``max_tokens``: a step's ramped
        budget, see :mod:`~hf_data_efficiency.batching.warmup`)."""
        cfg = self.config
        return pack_micro_batches(
            lengths,
            cfg.max_tokens if max_tokens is None else max_tokens,
            min_batch_size=cfg.min_batch_size,
            max_batch_size=cfg.max_batch_size,
            packed=self.packed,
            count=count,
            stop_after=stop_after,
        )

    def totals(self, lengths: Sequence[np.ndarray | Sequence[int]]) -> StepTotals:
        """Samples, real tokens and computed tokens (padded to each micro-batch's longest; real when packed) of
        micro-batches of counted ``lengths``."""
        real = sum(int(np.sum(ls)) for ls in lengths)
        computed = real if self.packed else sum(len(ls) * int(np.max(ls)) for ls in lengths)
        return StepTotals(sum(len(ls) for ls in lengths), real, computed)

    def lr_factor(self, samples: int) -> float:
        """The LR factor of a step of ``samples`` samples (:func:`lr_scale` by ``lr_scaling_method``)."""
        return lr_scale(self.config.lr_scaling_method, samples, self.reference_batch_size)

    def step_stats(self, totals: StepTotals) -> dict[str, float]:
        """A step's logs: samples, real tokens, padding fraction and LR factor."""
        return {
            "samples": totals.samples,
            "real_tokens": totals.real_tokens,
            "padding_fraction": 1.0 - totals.real_tokens / totals.computed_tokens,
            "lr_factor": self.lr_factor(totals.samples),
        }
