"""Excess-loss token selection (RHO-1, Lin et al. 2024): train on the tokens the model has yet to learn and a
reference model finds learnable.

For every micro-batch, each real shifted label token ``t`` gets an *excess loss* ``L_train(t) - L_ref(t)`` (the
training loss detached). The ``k = max(1, floor(ratio * n + 1/2))`` tokens of highest excess loss among the
micro-batch's ``n`` label tokens are selected, and the loss of the optimizer step is the **mean of the training loss
over the selected tokens of the whole step**: every micro-batch of the gradient-accumulation window and every
process. The top-k runs **per micro-batch** (on each process), so no extra forward and no communication are needed
before a backward; the normalisation spans the step, like the Trainer's ``num_items_in_batch``: the number of
selected tokens of the step is known before its first forward (``k`` depends only on each micro-batch's label
count), summed over the accumulation window and, with ``average_tokens_across_devices``, over the processes. So GA 4
x batch 4 and GA 1 x batch 16 weigh each selected token equally; they differ only in the pool each top-k chooses
from.

The reference losses come from a no-grad forward of the reference model on the same micro-batch (online), or from a
dataset column written by :meth:`~hf_data_efficiency.curriculum.reference.ReferenceLoss.map` with
``token_losses=True`` (offline). Reference tokens are counted for the compute readouts (see
:mod:`hf_data_efficiency.curriculum.reference` for the cost rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from transformers.utils import logging

from .._validation import check_keys, check_state_int, expect_mapping
from ..config import TokenSelectionConfig
from ..curriculum.reference import (
    check_reference_compatible,
    forward_token_losses,
    load_reference_model,
    model_fingerprint,
    reference_cost,
    reference_tokenizer_of,
    shifted_token_losses,
)

logger = logging.get_logger(__name__)

#: Batch keys that are targets, not model inputs.
_LABEL_KEYS = ("labels", "shift_labels")
_STATE_KEYS = ("reference", "reference_tokens")
_INT64_MAX = 2**63 - 1
#: The per-micro-batch statistics summed between logs: label tokens, selected tokens, excess-loss sums (all, selected),
#: reference and training loss sums (all), and the per-micro-batch thresholds with their count.
_STATS = ("tokens", "selected", "excess", "excess_selected", "reference", "train", "threshold", "micro_batches")


def selected_count(num_tokens: int, ratio: float) -> int:
    """Tokens kept of ``num_tokens`` label tokens: ``max(1, floor(ratio * n + 1/2))`` (round half up), 0 for none."""
    if num_tokens <= 0:
        return 0
    return max(1, min(num_tokens, math.floor(ratio * num_tokens + 0.5)))


def label_count(inputs: Mapping[str, Any]) -> int:
    """Real shifted label tokens of a collated causal-LM micro-batch: ``labels[:, 1:]``, or ``shift_labels[:, :-1]``
    when a padding-free collator gives them (the last position predicts nothing inside the row)."""
    if torch.is_tensor(inputs.get("shift_labels")):
        return int((inputs["shift_labels"][:, :-1] != -100).sum())
    labels = inputs.get("labels")
    if not torch.is_tensor(labels) or labels.dim() < 2:
        raise ValueError(
            "token selection needs causal-LM batches with a 'labels' tensor [batch, seq] (-100 = no target); the "
            f"batch has {sorted(inputs)}."
        )
    return int((labels[:, 1:] != -100).sum())


def top_k_mask(excess: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """The mask of the ``k`` valid entries of highest ``excess`` (over the whole micro-batch)."""
    mask = torch.zeros_like(valid)
    if k <= 0:
        return mask
    scores = excess.masked_fill(~valid, -math.inf).reshape(-1)
    mask.view(-1)[torch.topk(scores, k, sorted=False).indices] = True
    return mask


class ExcessLossSelection:
    """The token selection of one training run: the reference (model or column), the loss, the counters and logs.

    Args:
        config: the ``token_selection`` section.
        reference: the reference model (a module or a path; default ``config.reference_model``) for online selection;
            ``None`` with ``config.reference_column`` (offline).
        model: the model being trained (checks the vocabularies, sizes the reference cost).
        tokenizer: the training tokenizer, compared with one saved next to a reference path.
        device, dtype: where and in what dtype the reference runs (the training device and dtype).
    """

    def __init__(
        self,
        config: TokenSelectionConfig,
        reference: Any = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.config = config
        self.ratio = float(config.ratio)
        self.column = config.reference_column
        source = reference if reference is not None else config.reference_model
        if config.offline:
            if reference is not None:
                raise ValueError(
                    f"token_selection.reference_column={self.column!r} (offline selection) and a reference model are "
                    "both given; allowed: one of them."
                )
            self.reference = None
        elif source is None:
            raise ValueError(
                "token_selection='excess_loss' needs a reference: token_selection.reference_model (flag "
                "--token_selection_reference_model PATH), reference_model= passed to the Trainer, or "
                "token_selection.reference_column for losses stored with the data (offline)."
            )
        else:
            where = "token_selection.reference_model"
            self.reference = load_reference_model(source, device=device, dtype=dtype, where=where)
            if model is not None:
                check_reference_compatible(
                    self.reference,
                    model,
                    tokenizer=tokenizer,
                    reference_tokenizer=reference_tokenizer_of(source),
                    where=where,
                )
        self.cost = reference_cost(self.reference, model) if self.reference is not None and model else 1.0 / 3.0
        self.reset()

    # ----- identity ------------------------------------------------------------------------------------------
    @cached_property
    def identity(self) -> str:
        """What the checkpoint state records of the reference: the model's fingerprint, or the column's name."""
        return f"column:{self.column}" if self.reference is None else f"model:{model_fingerprint(self.reference)}"

    # ----- counting ------------------------------------------------------------------------------------------
    def step_selected(self, micro_batches: Sequence[Mapping[str, Any]]) -> int:
        """Tokens this process selects over an optimizer step's micro-batches (the loss divides by the sum of this
        over the processes; see the module docstring)."""
        return sum(selected_count(label_count(b), self.ratio) for b in micro_batches)

    # ----- the loss -----------------------------------------------------------------------------------------
    def reference_losses(self, inputs: Mapping[str, Any], labels: torch.Tensor) -> torch.Tensor:
        """The reference's shifted token losses ``[B, T-1]`` for a micro-batch: a no-grad forward, or the column."""
        if self.reference is None:
            column = inputs.get(self.column)
            if not torch.is_tensor(column):
                raise ValueError(
                    f"token_selection.reference_column={self.column!r}: the batch has no such tensor (keys: "
                    f"{sorted(inputs)}); add the column with ReferenceLoss(model).map(dataset, token_losses=True, "
                    f"token_column={self.column!r})."
                )
            if column.shape != labels.shape:
                raise ValueError(
                    f"token_selection.reference_column={self.column!r} has shape {tuple(column.shape)} but the labels "
                    f"{tuple(labels.shape)}."
                )
            self._local_reference_tokens += int(labels.numel())
            return column[:, 1:].to(torch.float32)
        model_inputs = {k: v for k, v in inputs.items() if k not in _LABEL_KEYS and k != self.column}
        with torch.no_grad():
            losses, _ = forward_token_losses(self.reference, model_inputs, labels)
        tokens = model_inputs.get("input_ids", model_inputs.get("attention_mask"))
        self._local_reference_tokens += int(tokens.numel()) if torch.is_tensor(tokens) else int(labels.numel())
        return losses

    def loss(
        self,
        model: Callable[..., Any],
        inputs: Mapping[str, Any],
        num_selected: Any,
        *,
        scale: float = 1.0,
    ) -> tuple[torch.Tensor, Any]:
        """The micro-batch's share of the step's selected-token mean: ``scale x sum(selected losses) / num_selected``
        (``num_selected``: the step's selected tokens over every micro-batch and process, :meth:`step_selected`
        summed; ``scale``: the process count when DDP averages gradients over the processes). Returns the loss and
        the model outputs."""
        labels = inputs.get("labels")
        if torch.is_tensor(inputs.get("shift_labels")):  # padding-free collators: targets already aligned
            shift = inputs["shift_labels"]
            labels = torch.cat([torch.full_like(shift[:, :1], -100), shift[:, :-1]], dim=1)
        label_count(inputs)  # refuses batches without labels
        if num_selected is None:
            raise ValueError("token selection needs the step's selected-token count (num_selected); got None.")
        model_inputs = {k: v for k, v in inputs.items() if k not in _LABEL_KEYS and k != self.column}
        outputs = model(**model_inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        train, valid = shifted_token_losses(logits, labels)
        self.last_token_losses = (train.detach(), valid)
        reference = self.reference_losses(inputs, labels).to(train.device)
        if self.reference is None and bool((valid & ~torch.isfinite(reference)).any()):
            raise ValueError(
                f"token_selection.reference_column={self.column!r} holds NaN or inf at a position with a label: the "
                "column was computed with other labels or tokens than this batch has (recompute it for this data)."
            )
        excess = train.detach() - reference
        k = selected_count(int(valid.sum()), self.ratio)
        chosen = top_k_mask(excess, valid, k)
        loss = (train * chosen).sum() * scale / num_selected
        # this micro-batch's statistics, added to those of the logging interval (on its device, no sync)
        with torch.no_grad():
            threshold = excess.masked_fill(~chosen, math.inf).min() if k else excess.new_zeros(())
            values = torch.stack(
                [
                    valid.sum().to(torch.float64),
                    chosen.sum().to(torch.float64),
                    (excess * valid).sum(dtype=torch.float64),
                    (excess * chosen).sum(dtype=torch.float64),
                    (reference.masked_fill(~valid, 0.0)).sum(dtype=torch.float64),
                    (train * valid).sum(dtype=torch.float64),
                    threshold.to(torch.float64),
                    torch.tensor(1.0 if k else 0.0, dtype=torch.float64, device=excess.device),
                ]
            )
            self._stats = values if self._stats is None else self._stats + values.to(self._stats.device)
        return loss, outputs

    # ----- counters, logs, state -------------------------------------------------------------------------------
    def sync(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: Any = None) -> None:
        """Add every process's reference tokens since the last sync to :attr:`reference_tokens` (collective with
        ``reduce``, ``accelerator.reduce`` summing over the processes)."""
        delta = torch.tensor([self._local_reference_tokens], dtype=torch.int64)
        if reduce is not None:
            delta = reduce(delta.to(device) if device is not None else delta)
        self.reference_tokens += int(delta.reshape(-1)[0])
        self._local_reference_tokens = 0

    @property
    def reference_effective_tokens(self) -> float:
        """The reference forwards in effective training tokens (``reference_tokens x cost``)."""
        return self.reference_tokens * self.cost

    def step_logs(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: Any = None) -> dict:
        """The statistics since the last call, summed over the processes (collective with ``reduce``; call
        :meth:`sync` first), then reset."""
        stats = self._stats if self._stats is not None else torch.zeros(len(_STATS), dtype=torch.float64)
        self._stats = None
        if reduce is not None:
            stats = reduce(stats.to(device) if device is not None else stats)
        s = dict(zip(_STATS, stats.cpu().tolist()))
        out = {
            "token_selection/reference_tokens": self.reference_tokens,
            "token_selection/reference_effective_tokens": self.reference_effective_tokens,
        }
        if s["tokens"]:
            out.update(
                {
                    "token_selection/selected_fraction": s["selected"] / s["tokens"],
                    "token_selection/excess_loss_mean": s["excess"] / s["tokens"],
                    "token_selection/reference_loss_mean": s["reference"] / s["tokens"],
                    "token_selection/train_loss_all_tokens": s["train"] / s["tokens"],
                }
            )
        if s["selected"]:
            out["token_selection/excess_loss_selected_mean"] = s["excess_selected"] / s["selected"]
        if s["micro_batches"]:
            out["token_selection/excess_loss_threshold"] = s["threshold"] / s["micro_batches"]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.identity, "reference_tokens": int(self.reference_tokens)}

    def check_state(self, state: Any, where: str = "token_selection") -> None:
        """Refuse a state this run cannot continue exactly: another reference, or a malformed counter."""
        state = expect_mapping(state, where)
        check_keys(state, _STATE_KEYS, where, required=_STATE_KEYS)
        check_state_int(state["reference_tokens"], f"{where}.reference_tokens", 0, _INT64_MAX)
        if state["reference"] != self.identity:
            raise ValueError(
                f"{where}.reference={state['reference']!r} is not this run's reference ({self.identity!r}): the "
                "checkpoint was trained against another reference model (or column), so resuming would change the "
                "selection; resume with the same reference."
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.check_state(state)
        self.reset()
        self.reference_tokens = int(state["reference_tokens"])

    def reset(self) -> None:
        """Start the counters and statistics of a fresh run."""
        self.reference_tokens = 0  # all processes, after sync
        self._local_reference_tokens = 0
        self._stats: torch.Tensor | None = None
        #: the last micro-batch's training token losses and label mask (online mixing reuses them)
        self.last_token_losses: tuple[torch.Tensor, torch.Tensor] | None = None


class ReferenceColumnCollator:
    """Collates the offline reference-loss column next to the tokens: pops it from every feature, collates the rest
    with ``collator``, and adds a float32 ``[B, T]`` tensor aligned with the collated ``input_ids`` (NaN at padding).

    A row's values go to its real positions in order (``attention_mask`` ones: right or left padding), or to its
    first positions without a mask; a packed row (one row, no mask) holds the samples' values one after another. A
    row whose real tokens do not number its values is refused: the collator changed the tokens the column scores.
    """

    def __init__(self, collator: Callable[[list[Any]], Any], column: str) -> None:
        self.collator = collator
        self.column = column

    def __call__(self, features: list[Any]) -> Any:
        if not features or not isinstance(features[0], Mapping) or self.column not in features[0]:
            return self.collator(features)
        values = [torch.as_tensor(f[self.column], dtype=torch.float32) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != self.column} for f in features])
        ids = batch.get("input_ids")
        if not torch.is_tensor(ids) or ids.dim() != 2:
            raise ValueError(f"offline token selection needs collated 'input_ids' [batch, seq]; got {sorted(batch)}.")
        mask = batch.get("attention_mask")
        out = torch.full(ids.shape, math.nan, dtype=torch.float32)
        if ids.shape[0] == len(values):
            for i, v in enumerate(values):
                positions = (
                    torch.nonzero(mask[i], as_tuple=True)[0]
                    if torch.is_tensor(mask) and mask.dim() == 2
                    else torch.arange(min(len(v), ids.shape[1]))
                )
                if len(positions) != len(v):
                    raise ValueError(
                        f"token_selection.reference_column={self.column!r}: row {i} of the batch has {len(positions)} "
                        f"real tokens but its column holds {len(v)} values; the collator must keep every token the "
                        "column scores (no truncation or added tokens), or recompute the column on collated rows."
                    )
                out[i, positions] = v
        elif ids.shape[0] == 1 and sum(len(v) for v in values) == ids.shape[1]:  # packed (padding-free) row
            out[0] = torch.cat(values)
        else:
            raise ValueError(
                f"token_selection.reference_column={self.column!r}: {len(values)} samples were collated into "
                f"{ids.shape[0]} rows of {ids.shape[1]} tokens, which cannot be matched with their reference losses."
            )
        batch[self.column] = out
        return batch
