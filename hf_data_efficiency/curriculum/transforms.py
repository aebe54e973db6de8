"""Per-draw tags from the sampler to the collator: the sequence-length transforms (DeepSpeed's ``seqlen_truncate`` /
``seqlen_reshape``) and seeded collation.

The difficulty of the transforms is the maximum number of tokens per row, applied to a collated batch. It must be
the difficulty of the optimizer step the batch is drawn for, even with DataLoader workers and prefetching (which run
the sampler ahead of training), so it travels with the indices, together with the draw's place in training:

1. ``CurriculumSampler(..., return_max_tokens=True)`` yields ``(index, max_tokens)`` pairs, and
   ``PositionTaggedSampler`` adds each draw's stream position;
2. ``CurriculumDataset(dataset)`` accepts those tuples and adds the tags to each example (``MAX_TOKENS_KEY``,
   ``POSITION_KEY``; without a curriculum, ``tag_index=True`` adds the sample index under ``INDEX_KEY``);
3. ``SeqlenTransform(mode, collator)`` pops the max tokens, checks the batch agrees on it, collates the rest and
   truncates or reshapes the batch; ``SeededCollation`` pops the position (or index) tags and runs the collator
   under a torch RNG seeded from them, so collator randomness is a function of the draw, the same after a resume.

Rows are ``[B, T, ...]`` tensors whose first two dimensions match the reference sequence tensor
(``input_ids``, else ``inputs_embeds``, ``attention_mask``, ``labels``). Padding side: with an
``attention_mask`` whose last column is all ones while some row starts with padding, the batch is
left-padded; then each row keeps its first ``max_tokens`` *real* tokens and stays left-padded (plain
column slicing would keep the padding and drop the text). ``padding_side`` forces a side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from transformers.utils import logging

from ..config import SEQLEN_TRANSFORMS as MODES

logger = logging.get_logger(__name__)

#: Private example keys that carry per-draw tags from the dataset to the collator: the max tokens per row, the stream
#: position, the sample index and its mixing group (online mixing; the collated batch carries it under the same key).
MAX_TOKENS_KEY = "_hfde_max_tokens"
POSITION_KEY = "_hfde_position"
INDEX_KEY = "_hfde_index"
GROUP_KEY = "_hfde_group"
PADDING_SIDES = ("auto", "right", "left")
_REFERENCE_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "labels")
_DEFAULT_PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0, "position_ids": 0}


def _check_max_tokens(max_tokens: Any) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, float)) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} must be a number >= 1 (tokens per row).")
    return int(max_tokens)


def _sequence_layout(
    batch: Mapping[str, Any], padding_side: str
) -> tuple[int, int, list[str], torch.Tensor | None, bool]:
    """(B, T, keys of [B, T, ...] tensors, attention mask or None, is left-padded)."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(
            f"padding_side={padding_side!r} is not supported; allowed values: {', '.join(PADDING_SIDES)}."
        )
    ref = next((batch[k] for k in _REFERENCE_KEYS if torch.is_tensor(batch.get(k)) and batch[k].dim() >= 2), None)
    if ref is None:
        raise ValueError(
            f"the batch has no [batch, seq] tensor among {list(_REFERENCE_KEYS)}; keys: {sorted(batch)}. "
            "Sequence-length transforms need tokenised, collated batches."
        )
    b, t = ref.shape[:2]
    keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 2 and tuple(v.shape[:2]) == (b, t)]
    mask = batch.get("attention_mask")
    mask = mask if torch.is_tensor(mask) and mask.dim() == 2 and tuple(mask.shape) == (b, t) else None
    if padding_side == "auto":
        left = mask is not None and bool((mask[:, -1] != 0).all()) and bool((mask[:, 0] == 0).any())
    else:
        left = padding_side == "left"
        if left and mask is None:
            raise ValueError("padding_side='left' needs an attention_mask in the batch to find the real tokens.")
    return b, t, keys, mask, left


def _gather_columns(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``x[i, src[i, j], ...]`` for a [B, T, ...] tensor and a [B, W] column index."""
    index = src.reshape(*src.shape, *([1] * (x.dim() - 2))).expand(*src.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def seqlen_truncate(batch: Mapping[str, Any], max_tokens: int, *, padding_side: str = "auto") -> dict[str, Any]:
    """Keep the first ``max_tokens`` tokens of every row of a collated batch.

    Right-padded (or unpadded) batches keep their first ``max_tokens`` columns. Left-padded batches keep
    each row's first ``max_tokens`` real tokens, still left-padded, in ``min(T, max_tokens)`` columns.
    Non-sequence entries are returned unchanged; a batch already short enough is returned as is.
    """
    m = _check_max_tokens(max_tokens)
    b, t, keys, mask, left = _sequence_layout(batch, padding_side)
    if t <= m:
        return dict(batch)
    out = dict(batch)
    if not left:
        for k in keys:
            out[k] = batch[k][:, :m].contiguous()
        return out
    lengths = mask.ne(0).sum(1)
    kept = lengths.clamp(max=m)
    # new row = (m - kept) padding columns, then the first `kept` real tokens, which start at column t - length
    j = torch.arange(m, device=mask.device)
    new_pad = (m - kept)[:, None]
    src = torch.where(j < new_pad, torch.zeros_like(j), (t - lengths)[:, None] + j - new_pad)
    for k in keys:
        out[k] = _gather_columns(batch[k], src)
    return out


def seqlen_reshape(
    batch: Mapping[str, Any],
    max_tokens: int,
    *,
    pad_token_id: int = 0,
    pad_values: Mapping[str, Any] | None = None,
    padding_side: str = "auto",
) -> dict[str, Any]:
    """Cut every row into rows of ``max_tokens`` tokens, keeping the cut-off tokens as extra rows.

    Row ``i`` of ``T`` tokens becomes rows ``i*n ... i*n + n - 1`` (``n = ceil(T / max_tokens)``) holding
    its tokens ``[c * max_tokens, (c + 1) * max_tokens)``; the last piece is padded (``input_ids`` with
    ``pad_token_id``, ``labels`` with -100, ``attention_mask``/``token_type_ids`` with 0; ``pad_values``
    overrides or adds keys, other keys pad with 0). Left-padded rows are cut from their first real token
    and the pieces stay left-padded. Rows whose ``attention_mask`` is all zero are dropped (without a mask
    nothing is dropped). Per-row tensors of shape [B, ...] (e.g. class labels) are repeated for each piece.
    ``position_ids`` restart in every new row. Meant for causal LM: each new row is a separate sequence.
    """
    m = _check_max_tokens(max_tokens)
    b, t, keys, mask, left = _sequence_layout(batch, padding_side)
    if t <= m:
        return dict(batch)
    pads = {**_DEFAULT_PAD_VALUES, "input_ids": pad_token_id, **(pad_values or {})}
    pieces = math.ceil(t / m)
    width = pieces * m
    seqs = {k: batch[k] for k in keys}
    if left:  # right-pad the rows first (padding read from column 0), cut them, then left-pad the pieces again
        lengths, j = mask.ne(0).sum(1)[:, None], torch.arange(t, device=mask.device)
        src = torch.where(j < lengths, j + t - lengths, torch.zeros_like(j))
        seqs = {k: _gather_columns(v, src) for k, v in seqs.items()}
    out = dict(batch)
    for k, v in seqs.items():
        tail = v.new_full((b, width - t, *v.shape[2:]), pads.get(k, 0))
        out[k] = torch.cat([v, tail], dim=1).reshape(b * pieces, m, *v.shape[2:])
    for k, v in batch.items():
        if k not in seqs and torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b:
            out[k] = v.repeat_interleave(pieces, dim=0)
    new_mask = out.get("attention_mask") if mask is not None else None
    if new_mask is not None:
        keep = new_mask.ne(0).any(1)
        if not bool(keep.all()):
            for k, v in out.items():
                if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b * pieces:
                    out[k] = v[keep]
        new_mask = out["attention_mask"]
    if left:  # padding read from the last column
        pad, j = m - new_mask.ne(0).sum(1)[:, None], torch.arange(m, device=new_mask.device)
        src = torch.where(j < pad, torch.full_like(j, m - 1), j - pad)
        for k in seqs:
            out[k] = _gather_columns(out[k], src)
        new_mask = out["attention_mask"]
    if "position_ids" in seqs:
        if new_mask is not None:
            positions = (new_mask.ne(0).long().cumsum(1) - 1).clamp(min=0)
        else:
            positions = torch.arange(m, device=out["position_ids"].device).expand(out["position_ids"].shape[0], m)
        out["position_ids"] = positions.to(out["position_ids"].dtype).contiguous()
    return out


def packs_rows(collator: Any) -> bool:
    """Whether ``collator`` concatenates a batch's samples into one row of documents (``DataCollatorWithFlattening``,
    trl's padding-free collator), looking through wrappers that keep the wrapped collator as ``.collator``."""
    from transformers import DataCollatorWithFlattening

    while collator is not None:
        if isinstance(collator, DataCollatorWithFlattening) or getattr(collator, "padding_free", False) is True:
            return True
        collator = getattr(collator, "collator", None) or getattr(collator, "data_collator", None)
    return False


def split_documents(features: list[Mapping[str, Any]], max_tokens: int, reshape: bool) -> list[dict[str, Any]]:
    """Per-document sequence-length transform of not-yet-collated samples, for collators that pack them into one row:
    every per-token field (a list or 1-D tensor as long as ``input_ids``) of a sample is cut to its first
    ``max_tokens`` tokens (truncate), or cut into consecutive pieces of at most ``max_tokens`` tokens that become
    samples of their own (reshape: each piece is a document, its positions restart)."""
    m = _check_max_tokens(max_tokens)
    out = []
    for feature in features:
        n = len(feature["input_ids"])
        per_token = [k for k, v in feature.items() if hasattr(v, "__len__") and not isinstance(v, str) and len(v) == n]
        starts = range(0, n, m) if reshape else [0]
        for a in starts:
            out.append({k: (v[a : a + m] if k in per_token else v) for k, v in feature.items()})
    return out


class CurriculumDataset(Dataset):
    """Thin dataset wrapper that attaches per-draw tags to examples, so they reach the collator with the batch.

    Keys may be plain indices, ``(index, max_tokens)`` pairs from ``CurriculumSampler(return_max_tokens=True)``
    (``max_tokens`` goes under ``MAX_TOKENS_KEY``), or ``(index, {tag key: value})`` pairs. With ``tag_index=True``
    every example also carries its index under ``INDEX_KEY``. Untagged keys return the example unchanged, so the
    wrapper is harmless under any other sampler. Examples must be mappings to be tagged. Other attributes are
    forwarded to the wrapped dataset.
    """

    def __init__(self, dataset: Any, *, tag_index: bool = False) -> None:
        self.dataset = dataset
        self.tag_index = tag_index

    def __len__(self) -> int:
        return len(self.dataset)

    def _split(self, key: Any) -> tuple[Any, dict[str, Any]]:
        index, tags = key if isinstance(key, tuple) else (key, {})
        if not isinstance(tags, Mapping):
            tags = {MAX_TOKENS_KEY: tags}
        if self.tag_index:
            tags = {**tags, INDEX_KEY: int(index)}
        return index, tags

    @staticmethod
    def _tag(example: Any, tags: Mapping[str, Any]) -> Any:
        if not tags:
            return example
        if not isinstance(example, Mapping):
            raise ValueError(
                f"CurriculumDataset needs examples that are mappings (dicts) to attach {sorted(tags)}, "
                f"got {type(example).__name__}."
            )
        return {**example, **tags}

    def __getitem__(self, key: Any) -> Any:
        index, tags = self._split(key)
        return self._tag(self.dataset[index], tags)

    def __getitems__(self, keys: Sequence[Any]) -> list[Any]:
        split = [self._split(k) for k in keys]
        indices = [index for index, _ in split]
        getitems = getattr(self.dataset, "__getitems__", None)
        examples = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [self._tag(e, tags) for e, (_, tags) in zip(examples, split)]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "tag_index": self.tag_index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dataset = state["dataset"]
        self.tag_index = state.get("tag_index", False)


class _CollatorWrapper:
    """Base of the collator wrappers: the wrapped collator's attributes (e.g. ``tokenizer``, which the Trainer
    saves with the model) stay reachable."""

    collator: Callable[[list[Any]], Any]

    def __getattr__(self, name: str) -> Any:
        if name == "collator":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.collator, name)


class PositionTaggedSampler(Sampler):
    """Wraps a ``CurriculumSampler``: yields ``(index, {POSITION_KEY: stream position[, MAX_TOKENS_KEY: m]})``, so
    each micro-batch knows where in the stream it was drawn (its collation seed), even in DataLoader workers."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, dict[str, int]]]:
        position = self.sampler.position
        for item in self.sampler:
            if isinstance(item, tuple):
                index, tags = item[0], item[1] if isinstance(item[1], Mapping) else {MAX_TOKENS_KEY: item[1]}
            else:
                index, tags = item, {}
            yield index, {**tags, POSITION_KEY: position}
            position += 1


class GroupTags(_CollatorWrapper):
    """Collator wrapper for online mixing: pops each feature's group tag (``GROUP_KEY``) and puts the group ids into
    the collated batch as a ``[rows]`` tensor under the same key, which the training step removes before the forward
    (``DataEfficiencyEngine.pop_groups``). Features without tags (evaluation) are collated unchanged. Inside
    :class:`SeqlenTransform`, so ``seqlen_reshape`` repeats a row's group for each of its pieces."""

    def __init__(self, collator: Callable[[list[Any]], Any]) -> None:
        self.collator = collator

    def __call__(self, features: list[Any]) -> Any:
        tags = [f.get(GROUP_KEY) if isinstance(f, Mapping) else None for f in features]
        if all(t is None for t in tags):
            return self.collator(features)
        if any(t is None for t in tags):
            raise ValueError(f"a batch mixes samples with and without {GROUP_KEY} tags; every sample needs its group.")
        batch = self.collator([{k: v for k, v in f.items() if k != GROUP_KEY} for f in features])
        batch[GROUP_KEY] = torch.as_tensor(tags, dtype=torch.long)
        return batch


class SeededCollation(_CollatorWrapper):
    """Runs ``collator`` under a torch RNG seeded for its micro-batch, so collator randomness (MLM masking, ...)
    is a pure function of the batch's place in training: a resumed run masks exactly as an uninterrupted one.

    The batch key is the stream position of its first sample (``POSITION_KEY``, from ``PositionTaggedSampler``), else
    ``(epoch, its sample indices)`` (``INDEX_KEY``, from ``CurriculumDataset(tag_index=True)``); batches without tags
    (evaluation) are collated with the global RNG as usual. The global RNG is left exactly as it was. A collator
    with its own generator (e.g. ``DataCollatorForLanguageModeling(seed=...)``) keeps using it.
    """

    def __init__(self, collator: Callable[[list[Any]], Any], seed: int) -> None:
        self.collator = collator
        self.seed = int(seed)
        self.epoch = 0

    def batch_seed(self, features: Sequence[Mapping[str, Any]]) -> int | None:
        """The seed of a tagged batch (``None`` without tags)."""
        positions = [f.get(POSITION_KEY) for f in features if isinstance(f, Mapping)]
        if positions and None not in positions:
            entropy = [self.seed, 0, min(positions)]
        else:
            indices = [f.get(INDEX_KEY) for f in features if isinstance(f, Mapping)]
            if not indices or None in indices:
                return None
            entropy = [self.seed, 1, self.epoch, *indices]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)

    def __call__(self, features: list[Any]) -> Any:
        seed = self.batch_seed(features)
        features = [
            {k: v for k, v in f.items() if k not in (POSITION_KEY, INDEX_KEY)} if isinstance(f, Mapping) else f
            for f in features
        ]
        if seed is None:
            return self.collator(features)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.collator(features)


class SeqlenTransform(_CollatorWrapper):
    """Collator wrapper applying ``seqlen_truncate``/``seqlen_reshape`` with each batch's own max tokens.

    Pops ``MAX_TOKENS_KEY`` from every feature (put there by ``CurriculumDataset``), checks the batch
    agrees on it, collates the rest with ``collator`` and transforms the result; a collator that packs the batch into
    one row of documents (:func:`packs_rows`) gets the documents transformed first (:func:`split_documents`), since
    cutting the packed row would cut whole documents off it. Features without the key
    (e.g. evaluation batches) are collated and returned unchanged. Use it as the outermost collator, so
    no column-removing wrapper drops the key first.

    Args:
        mode: ``"seqlen_truncate"`` or ``"seqlen_reshape"``.
        collator: the data collator to wrap (default: ``transformers.default_data_collator``).
        pad_token_id: padding id for ``seqlen_reshape`` (default: the collator's tokenizer's pad id, else 0).
        padding_side: ``"auto"``, ``"right"`` or ``"left"`` (see the module docstring).
    """

    def __init__(
        self,
        mode: str,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        *,
        pad_token_id: int | None = None,
        padding_side: str = "auto",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; allowed values: {', '.join(MODES)}.")
        if padding_side not in PADDING_SIDES:
            raise ValueError(
                f"padding_side={padding_side!r} is not supported; allowed values: {', '.join(PADDING_SIDES)}."
            )
        if collator is None:
            from transformers import default_data_collator

            collator = default_data_collator
        if pad_token_id is None:
            tokenizer = getattr(collator, "tokenizer", None) or getattr(collator, "processing_class", None)
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.mode = mode
        self.collator = collator
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.padding_side = padding_side
        #: the collator packs a batch into one row of documents: the transform applies to each document first
        self.per_document = packs_rows(collator)

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        tags = [f.get(MAX_TOKENS_KEY) if isinstance(f, Mapping) else None for f in features]
        if all(t is None for t in tags):
            return self.collator(features)
        if any(t is None for t in tags) or len(set(tags)) != 1:
            raise ValueError(
                f"a batch mixes {MAX_TOKENS_KEY} values {sorted(set(tags), key=str)}: every micro-batch must come from "
                "one optimizer step (use batch sizes that divide CurriculumSampler's global batch)."
            )
        features = [{k: v for k, v in f.items() if k != MAX_TOKENS_KEY} for f in features]
        if self.per_document:
            return self.collator(split_documents(features, tags[0], reshape=self.mode == "seqlen_reshape"))
        batch = self.collator(features)
        if self.mode == "seqlen_truncate":
            return seqlen_truncate(batch, tags[0], padding_side=self.padding_side)
        return seqlen_reshape(batch, tags[0], pad_token_id=self.pad_token_id, padding_side=self.padding_side)
