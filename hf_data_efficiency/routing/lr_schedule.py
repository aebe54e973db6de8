r"""Learning-rate warmup and decay measured in consumed layer-tokens (DeepSpeed leaves this unimplemented).

With random-LTD a step at a short kept length does less work than a full step, so a step-based LR
schedule warms up and decays too fast early in training. Here progress is the number ``c`` of
layer-tokens consumed *before* the current optimizer step:

.. math::

    c_k = \sum_{j<k} \ell(j), \qquad
    \ell(j) = G \cdot \bigl(s_j \, n + M (L - n)\bigr)

with ``G`` the global batch size, ``s_j`` the kept length at step ``j``, ``n`` random-LTD layers out
of ``L`` and ``M`` the full length (``max_value``): DeepSpeed's consumed layer-token formula. The
LR of parameter group ``g`` at step ``k`` is ``lr_g = base_lr_g * f(c_k)`` with

* warmup (``c < W``): ``f = c / W`` for ``warmup_type="linear"``, ``f = 1`` for ``"constant"``;
* decay (``W <= c``), with ``p = min(1, (c - W) / (C - W))`` and ``r`` = ``min_lr_ratio``:
  ``linear``: ``f = r + (1 - r) (1 - p)``; ``cosine``: ``f = r + (1 - r) (1 + cos(pi p)) / 2``;
  ``constant``: ``f = 1``.

``C`` is ``total_layer_tokens`` (or the layer-tokens of ``num_training_steps`` steps). The counter
``c`` is part of the scheduler's ``state_dict``, so it comes back on resume.

On packed (padding-free) rows a sequence is a document of its own length, which keeps ``min(len, s_j)`` tokens in
the random-LTD layers. There :func:`packed_layer_tokens` gives ``\ell(j) = G \, d \cdot
\overline{\min(len, s_j) \, n + len \, (L - n)}``, with ``d`` documents per dataset row (1 unless the dataset is
pre-packed) and the mean over the training documents' lengths: each step's expected real layer-tokens, still a pure
function of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers.utils import logging

from .._validation import check_state_keys, check_str, state_int
from ..config import LR_WARMUP_TYPES
from .scheduler import RandomLTDScheduler

DECAY_TYPES = ("linear", "cosine", "constant")
_SETTING_KEYS = ("total_layer_tokens", "warmup_layer_tokens", "warmup_type", "decay_type", "min_lr_ratio")
_PROGRESS_KEYS = ("last_epoch", "_step_count", "_counted_steps", "consumed_layer_tokens")

logger = logging.get_logger(__name__)


def layer_token_lr_factor(
    consumed: float,
    *,
    total_layer_tokens: float,
    warmup_layer_tokens: float = 0,
    warmup_type: str = "linear",
    decay_type: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """LR multiplier ``f(c)`` after ``consumed`` layer-tokens (see the module docstring)."""
    if consumed < warmup_layer_tokens:
        return consumed / warmup_layer_tokens if warmup_type == "linear" else 1.0
    if decay_type == "constant":
        return 1.0
    span = total_layer_tokens - warmup_layer_tokens
    progress = min(1.0, (consumed - warmup_layer_tokens) / span) if span > 0 else 1.0
    if decay_type == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LayerTokenLRScheduler(LRScheduler):
    """LR scheduler stepping once per optimizer step, with warmup/decay progress in consumed layer-tokens.

    ``layer_tokens`` gives the layer-tokens of optimizer step ``j`` (0-based): a
    :class:`RandomLTDScheduler` (its pure ``layer_tokens_at``) or any callable ``j -> int``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        layer_tokens: RandomLTDScheduler | Callable[[int], int],
        total_layer_tokens: int,
        warmup_layer_tokens: int = 0,
        warmup_type: str = "linear",
        decay_type: str = "linear",
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        check_str(warmup_type, "layer_token_lr_schedule.warmup_type", LR_WARMUP_TYPES)
        check_str(decay_type, "layer_token_lr_schedule.decay_type", DECAY_TYPES)
        if not total_layer_tokens or total_layer_tokens <= 0:
            raise ValueError(f"layer_token_lr_schedule.total_layer_tokens={total_layer_tokens} must be > 0.")
        if not 0 <= warmup_layer_tokens <= total_layer_tokens:
            raise ValueError(
                f"layer_token_lr_schedule.warmup_layer_tokens={warmup_layer_tokens} must lie in "
                f"[0, total_layer_tokens={total_layer_tokens}]."
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"layer_token_lr_schedule.min_lr_ratio={min_lr_ratio} must lie in [0, 1].")
        self._tokens_at = (
            layer_tokens.layer_tokens_at if isinstance(layer_tokens, RandomLTDScheduler) else layer_tokens
        )
        self.total_layer_tokens = int(total_layer_tokens)
        self.warmup_layer_tokens = int(warmup_layer_tokens)
        self.warmup_type = warmup_type
        self.decay_type = decay_type
        self.min_lr_ratio = float(min_lr_ratio)
        self.consumed_layer_tokens = 0
        self._counted_steps = 0
        super().__init__(optimizer, last_epoch)

    def _advance(self) -> None:
        # last_epoch k means k optimizer steps are done: c = layer-tokens of steps 0 .. k-1
        while self._counted_steps < self.last_epoch:
            self.consumed_layer_tokens += int(self._tokens_at(self._counted_steps))
            self._counted_steps += 1

    def factor(self) -> float:
        """Current LR multiplier ``f(c)``."""
        return layer_token_lr_factor(self.consumed_layer_tokens, **{key: getattr(self, key) for key in _SETTING_KEYS})

    def get_lr(self) -> list[float]:
        self._advance()
        f = self.factor()
        return [base * f for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only (``torch.load(weights_only=True)`` and JSON safe): the progress and, for a
        cross-check on resume, the schedule settings. Base LRs and the step callable come from the constructor."""
        return {key: getattr(self, key) for key in (*_SETTING_KEYS, *_PROGRESS_KEYS)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the progress of :meth:`state_dict`. Only its keys are accepted; the LR settings of this
        run win over the saved ones (a difference is logged), as with a rebuilt ``LambdaLR``."""
        where = "layer_token_lr_schedule"
        check_state_keys(where, state_dict, (*_SETTING_KEYS, *_PROGRESS_KEYS))
        last_epoch = state_int(where, "last_epoch", state_dict["last_epoch"], 0)
        progress = {  # steps counted into consumed_layer_tokens: at most last_epoch
            key: state_int(where, key, state_dict[key], 0, last_epoch if key == "_counted_steps" else None)
            for key in _PROGRESS_KEYS
        }
        changed = {key: state_dict[key] for key in _SETTING_KEYS if state_dict[key] != getattr(self, key)}
        if changed:
            now = {key: getattr(self, key) for key in changed}
            logger.warning(f"{where}: the checkpoint was written with {changed}; this run uses {now}.")
        self.__dict__.update(progress)
        self._last_lr = self.get_lr()


def packed_layer_tokens(
    scheduler: RandomLTDScheduler, lengths: Sequence[int] | np.ndarray, documents_per_row: float = 1.0
) -> Callable[[int], int]:
    """The layer-tokens of optimizer step ``j`` when rows are packed documents: ``scheduler.global_batch_size x
    documents_per_row`` documents (the dataset's rows per step, times the documents each holds), each keeping
    ``min(len, kept)`` tokens in the random-LTD layers and ``len`` in the others, averaged over the document
    ``lengths`` (the training set's). A source for :class:`LayerTokenLRScheduler`."""
    sorted_lengths = np.sort(np.asarray(lengths, dtype=np.int64))
    if sorted_lengths.size == 0 or sorted_lengths[0] < 1:
        raise ValueError("packed_layer_tokens needs the length (>= 1) of at least one document.")
    prefix = np.concatenate([[0], np.cumsum(sorted_lengths)])
    count = sorted_lengths.size
    n, total = scheduler.random_ltd_layer_num, scheduler.total_layer_num
    scheduler.layer_tokens_per_sequence(0)  # refuses a schedule without its layer counts
    batch = (scheduler.global_batch_size or 1) * documents_per_row
    mean_length = prefix[-1] / count

    def layer_tokens_at(step: int) -> int:
        kept = scheduler.kept_length(step)
        shorter = int(np.searchsorted(sorted_lengths, kept))  # documents shorter than kept keep all their tokens
        mean_kept = (prefix[shorter] + kept * (count - shorter)) / count
        return round(batch * (mean_kept * n + mean_length * (total - n)))

    return layer_tokens_at


def get_layer_token_lr_scheduler(
    optimizer: Optimizer,
    layer_tokens: RandomLTDScheduler | Callable[[int], int],
    total_layer_tokens: int | None = None,
    warmup_layer_tokens: int = 0,
    warmup_type: str = "linear",
    decay_type: str = "linear",
    min_lr_ratio: float = 0.0,
    num_training_steps: int | None = None,
    last_epoch: int = -1,
) -> LayerTokenLRScheduler:
    """Build a :class:`LayerTokenLRScheduler`.

    Without ``total_layer_tokens``, it is the layer-tokens of ``num_training_steps`` steps of
    ``layer_tokens`` (a :class:`RandomLTDScheduler`, e.g. ``handle.scheduler``). With a
    ``RandomLTDConfig.layer_token_lr_schedule`` use ``total_layer_tokens=lr_cfg.total_layer_tokens,
    warmup_layer_tokens=lr_cfg.warmup_layer_tokens, warmup_type=lr_cfg.warmup_type``.
    """
    if total_layer_tokens is None:
        if num_training_steps is None:
            raise ValueError("get_layer_token_lr_scheduler needs total_layer_tokens or num_training_steps.")
        tokens_at = layer_tokens.layer_tokens_at if isinstance(layer_tokens, RandomLTDScheduler) else layer_tokens
        total_layer_tokens = sum(int(tokens_at(j)) for j in range(num_training_steps))
    return LayerTokenLRScheduler(
        optimizer,
        layer_tokens,
        total_layer_tokens,
        warmup_layer_tokens=warmup_layer_tokens,
        warmup_type=warmup_type,
        decay_type=decay_type,
        min_lr_ratio=min_lr_ratio,
        last_epoch=last_epoch,
    )
