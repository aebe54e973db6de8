"""Random layerwise token dropping (random-LTD) for Hugging Face transformer layers.

:func:`apply_random_ltd` replaces the ``forward`` of chosen layer *instances* (never the class), so
``state_dict`` keys, ``save_pretrained`` output and ``output_hidden_states`` shapes stay vanilla and
:meth:`RandomLTDHandle.remove` restores the model exactly. In training mode each patched layer:

1. draws, per sample, a fresh uniform order-preserving subset of ``kept_length`` positions
   (``keep_positions`` such as a CLS token at 0 are always in it);
2. gathers the hidden states and the per-position inputs (``position_ids``, rotary ``(cos, sin)``,
   arguments with a registered gather hook), restricts the attention mask (2-D by columns, 4-D by rows and columns; ``None`` stays ``None``,
   since causal attention over an ordered subset is still causal);
3. runs the original layer on the subset and scatters its output back; dropped tokens pass
   through unchanged.

A ``kept_length`` at or above the sequence length, and ``model.eval()``, call the original forward
directly (bit-identical). Sampling happens outside transformers' activation checkpointing (which
wraps the class ``forward``), so the recomputation sees the same subset; under an external
checkpoint wrapper torch restores the RNG state, which gives the same subset too.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .._validation import check_state_keys, state_int
from ..config import RandomLTDConfig
from .architectures import LayerSpec, find_layers, unsupported_model_message
from .scheduler import RandomLTDScheduler

logger = logging.get_logger(__name__)

#: flash-attention varlen arguments of a packed row, recomputed for the kept tokens
_VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_STATE_KEYS = ("kept_length", "scheduler", "kept_tokens_seen", "full_tokens_seen")


def _check_keep_count(kept_length: int, keep: list[int]) -> None:
    if kept_length < len(keep):
        raise ValueError(
            f"kept_length={kept_length} is smaller than the number of keep_positions {keep}; "
            "raise min_value or shorten keep_positions."
        )


def sample_kept_indices(
    batch_size: int,
    seq_len: int,
    kept_length: int,
    keep_positions: Sequence[int] = (),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sorted ``(batch_size, kept_length)`` positions: per sample a uniform subset that contains ``keep_positions``.

    Uses the torch RNG of ``device`` (or ``generator``), so ``torch.manual_seed`` makes it reproducible.
    """
    keep = sorted({p % seq_len for p in keep_positions if -seq_len <= p < seq_len})
    _check_keep_count(kept_length, keep)
    scores = torch.rand(batch_size, seq_len, device=device, generator=generator)
    if keep:
        scores[:, keep] = 2.0  # above every uniform draw, so always selected
    idx = scores.topk(kept_length, dim=1, sorted=False).indices
    return idx.sort(dim=1).values


def sample_document_indices(
    lengths: Sequence[int],
    kept_length: int,
    keep_positions: Sequence[int] = (),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sorted ``(1, K)`` positions of a packed row of documents of ``lengths``: per document a uniform subset of
    ``min(length, kept_length)`` of its positions (those of ``keep_positions`` that fall in it, counted from its
    start or, when negative, from its end, always among them). ``K`` is the sum over the documents."""
    n = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    T = int(n.sum())
    doc = torch.repeat_interleave(torch.arange(n.numel(), device=device), n)
    start = torch.cumsum(n, 0) - n
    offset = torch.arange(T, device=device) - start[doc]
    scores = torch.rand(T, device=device, generator=generator)
    for p in keep_positions:
        within = offset == (p if p >= 0 else n[doc] + p)
        scores[within] = -1.0  # below every uniform draw: first within its document
    if keep_positions:
        _check_keep_count(kept_length, sorted(set(keep_positions)))
    order = scores.argsort()
    order = order[doc[order].argsort(stable=True)]  # by document, then by score
    rank = torch.arange(T, device=device) - start[doc[order]]
    return order[rank < kept_length].sort().values.unsqueeze(0)


def document_lengths(cu_seq_lens: Any, position_ids: Any, batch_size: int, seq_len: int) -> list[int] | None:
    """The documents of a packed row (one row holding several sequences, as ``DataCollatorWithFlattening`` and trl's
    padding-free batches make): from ``cu_seq_lens`` when given, else where ``position_ids`` do not go up by 1.
    ``None`` for an ordinary row or a batch of several rows."""
    if batch_size != 1:
        return None
    if isinstance(cu_seq_lens, torch.Tensor) and cu_seq_lens.numel() > 2:
        bounds = cu_seq_lens.tolist()
        if (
            cu_seq_lens.dim() != 1
            or bounds[0] != 0
            or bounds[-1] != seq_len
            or any(b <= a for a, b in zip(bounds, bounds[1:]))
        ):
            raise ValueError(
                f"cu_seq_lens_q={bounds} does not describe a packed row of {seq_len} tokens: it must start at 0, "
                f"increase strictly and end at {seq_len} (the cumulative document lengths, as DataCollatorWithFlattening "
                "writes them)."
            )
        return [b - a for a, b in zip(bounds, bounds[1:])]
    if (
        not isinstance(position_ids, torch.Tensor)
        or position_ids.shape[-1] != seq_len
        or position_ids.numel() != seq_len
    ):
        return None
    starts = (position_ids.reshape(-1).diff() != 1).nonzero().flatten().add(1).tolist()
    if not starts:
        return None
    bounds = [0, *starts, seq_len]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _flat_index(idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    batch = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
    return (idx + batch * seq_len).reshape(-1)


def gather_tokens(hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``hidden[b, idx[b]]`` for a batch-first ``(B, T, ...)`` tensor."""
    B, T = hidden.shape[:2]
    flat = hidden.reshape(B * T, *hidden.shape[2:]).index_select(0, _flat_index(idx, T))
    return flat.view(B, idx.shape[1], *hidden.shape[2:])


def scatter_tokens(hidden: torch.Tensor, idx: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    """Copy of ``hidden`` with ``sub`` written at ``idx`` (out of place, differentiable in both)."""
    B, T = hidden.shape[:2]
    if sub.dtype != hidden.dtype:
        hidden = hidden.to(sub.dtype)
    flat = hidden.reshape(B * T, *hidden.shape[2:])
    out = flat.index_copy(0, _flat_index(idx, T), sub.reshape(-1, *sub.shape[2:]))
    return out.view_as(hidden)


def _gather_seq(t: torch.Tensor, idx: torch.Tensor, seq_len: int, what: str) -> torch.Tensor:
    """Gather a batch-first per-position tensor ``(1 or B, T, ...)`` along dim 1."""
    B = idx.shape[0]
    if t.dim() < 2 or t.shape[0] not in (1, B) or t.shape[1] != seq_len:
        raise ValueError(
            f"random-LTD cannot gather {what} of shape {tuple(t.shape)}: expected (1 or {B}, {seq_len}, ...)."
        )
    return gather_tokens(t.expand(B, *t.shape[1:]), idx)


def restrict_mask(mask: torch.Tensor | None, idx: torch.Tensor, seq_len: int, what: str = "attention_mask"):
    """Restrict an attention mask to the kept positions ``idx`` (``(B, k)``, sorted).

    ``None`` stays ``None``; a 2-D ``(1 or B, T)`` padding mask is restricted by columns; a 4-D
    ``(1 or B, heads, T or 1, T)`` bool or additive mask by rows (when it has ``T`` rows) and columns.
    """
    if mask is None:
        return None
    B, k = idx.shape
    if mask.shape[0] not in (1, B) or mask.shape[-1] != seq_len or mask.dim() not in (2, 4):
        raise ValueError(
            f"random-LTD cannot restrict {what} of shape {tuple(mask.shape)} to a token subset: expected "
            f"(1 or {B}, {seq_len}) or (1 or {B}, heads, {seq_len} or 1, {seq_len}) for a sequence of {seq_len} tokens "
            "without past key values."
        )
    if mask.dim() == 2:
        return mask.expand(B, seq_len).gather(1, idx)
    _, heads, rows, cols = mask.shape
    if rows not in (1, seq_len):
        raise ValueError(f"random-LTD cannot restrict {what} with {rows} query rows for a sequence of {seq_len}.")
    mask = mask.expand(B, heads, rows, cols)
    if rows == seq_len:
        mask = mask.gather(2, idx[:, None, :, None].expand(B, heads, k, cols))
    return mask.gather(3, idx[:, None, None, :].expand(B, heads, mask.shape[2], k))


def _model_config(model: nn.Module) -> Any:
    """The transformers config of ``model`` or of the model a DDP/FSDP-style wrapper holds in ``.module``."""
    return getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)


def _uses_flash_attention(config: Any) -> bool:
    return "flash" in str(getattr(config, "_attn_implementation", "") or "")


@dataclass
class _Patch:
    """Per-layer patch record: restores the instance's previous ``forward`` exactly."""

    layer_id: int
    name: str
    module: nn.Module
    spec: LayerSpec
    keep_positions: tuple[int, ...]
    signature: inspect.Signature
    varkw: str | None
    had_instance_forward: bool
    previous_forward: Any
    cache_layer_idx: int | None

    def original_forward(self) -> Any:
        """The forward random-LTD wraps: an earlier instance ``forward`` (e.g. an accelerate hook) or the class's."""
        if self.had_instance_forward:
            return self.previous_forward
        return types.MethodType(type(self.module).forward, self.module)


class _LayerCall:
    """One call of a patched layer, bound to its signature; named and ``**kwargs`` arguments read alike."""

    def __init__(self, patch: _Patch, args: tuple, kwargs: dict) -> None:
        self.bound = patch.signature.bind(patch.module, *args, **kwargs)
        self.arguments = self.bound.arguments
        self.varkw = patch.varkw
        self.extra: dict[str, Any] = dict(self.arguments.get(patch.varkw, {})) if patch.varkw else {}
        if patch.varkw:
            self.arguments[patch.varkw] = self.extra

    def get(self, name: str) -> Any:
        return self.arguments[name] if name in self.arguments else self.extra.get(name)

    def put(self, name: str, value: Any, *, add: bool = False) -> None:
        """Replace an argument the caller passed; one it did not pass stays absent unless ``add`` (through the
        layer's ``**kwargs``)."""
        if name in self.arguments:
            self.arguments[name] = value
        elif name in self.extra or (add and self.varkw):
            self.extra[name] = value

    def run(self, forward: Any) -> Any:
        return forward(*self.bound.args[1:], **self.bound.kwargs)


def _patched_forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return module._random_ltd_handle._forward(module._random_ltd_patch, args, kwargs)


class RandomLTDHandle:
    """Controls random-LTD on a patched model (see :func:`apply_random_ltd`).

    Attributes:
        kept_length: tokens each patched layer keeps per sample (``None``: no dropping).
        scheduler: the :class:`RandomLTDScheduler` that :meth:`update` follows (``None`` when not built from a config).
        layers / layer_ids / layer_names: the patched layer modules, their 0-based indices among the model's
            registered layers, and their module names.
        total_layers: number of registered layers in the model.
        force_gather: benchmark switch; run the gather/scatter path even when nothing is dropped.
        record_indices: when true, :attr:`last_indices` maps ``layer_id`` to the last ``(B, k)`` kept positions.
    """

    def __init__(
        self,
        model: nn.Module,
        patches: list[_Patch],
        total_layers: int,
        scheduler: RandomLTDScheduler | None,
        kept_length: int | None,
    ) -> None:
        self.model = model
        self._patches = patches
        self.total_layers = total_layers
        self.scheduler = scheduler
        self._kept_length: int | None = None
        self.kept_length = kept_length
        self.force_gather = False
        self.record_indices = False
        self.last_indices: dict[int, torch.Tensor] = {}
        self.kept_tokens_seen = 0
        self.full_tokens_seen = 0
        self._warned: set[str] = set()

    # ----- properties ----------------------------------------------------------------------
    @property
    def kept_length(self) -> int | None:
        return self._kept_length

    @kept_length.setter
    def kept_length(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(
                    f"random_ltd kept_length={value!r} must be a positive integer (or None: no dropping)."
                )
            value = int(value)
        self._kept_length = value

    @property
    def layers(self) -> list[nn.Module]:
        return [p.module for p in self._patches]

    @property
    def layer_ids(self) -> list[int]:
        return [p.layer_id for p in self._patches]

    @property
    def layer_names(self) -> list[str]:
        return [p.name for p in self._patches]

    @property
    def num_layers(self) -> int:
        """Number of patched (token-dropping) layers."""
        return len(self._patches)

    @property
    def consumed_layer_tokens(self) -> int:
        """DeepSpeed's counter: ``sum over steps of global_batch_size * (kept * n_ltd + max_value * (total - n_ltd))``."""
        return self.scheduler.consumed_layer_tokens if self.scheduler is not None else 0

    @property
    def actual_layer_tokens(self) -> int:
        """Layer-tokens this process really ran in training-mode forwards (padding included): kept tokens in
        the patched layers plus full sequences in the others."""
        n = max(self.num_layers, 1)
        return self.kept_tokens_seen + self.full_tokens_seen * (self.total_layers - self.num_layers) // n

    # ----- control ---------------------------------------------------------------------------
    def update(self, global_step: int) -> int | None:
        """Set :attr:`kept_length` from the scheduler at optimizer step ``global_step`` (0-based; call it
        before the step's forward passes) and advance the layer-token counter."""
        if self.scheduler is not None:
            self.kept_length = self.scheduler.update(global_step)
        return self.kept_length

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints (keys: ``kept_length``, ``scheduler``, ``kept_tokens_seen``,
        ``full_tokens_seen``)."""
        return {
            "kept_length": self.kept_length,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "kept_tokens_seen": self.kept_tokens_seen,
            "full_tokens_seen": self.full_tokens_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Only its keys are accepted; the kept length must lie within the
        schedule's bounds, counters must be non-negative integers, and a handle with a schedule needs its state."""
        where = "random_ltd"
        check_state_keys(where, state, _STATE_KEYS)
        counters = {key: state_int(where, key, state[key], 0) for key in ("kept_tokens_seen", "full_tokens_seen")}
        kept, low, high = state["kept_length"], 1, None
        scheduled = self.scheduler is not None
        if (state["scheduler"] is not None) != scheduled:
            raise ValueError(
                f"{where} state: scheduler={'None' if scheduled else 'a scheduler state'}, but this handle "
                f"{'follows a kept-length schedule' if scheduled else 'has no scheduler'}; the state must come from a "
                "handle built from the same random_ltd config."
            )
        if scheduled:
            low, high = self.scheduler.kept_length_bounds()
        if kept is not None:
            kept = state_int(where, "kept_length", kept, low, high)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.kept_length = kept
        self.kept_tokens_seen, self.full_tokens_seen = counters["kept_tokens_seen"], counters["full_tokens_seen"]

    def remove(self) -> nn.Module:
        """Restore every patched layer's original ``forward``; returns the (now vanilla) model."""
        for p in self._patches:
            if p.had_instance_forward:
                p.module.forward = p.previous_forward
            else:
                del p.module.forward
            del p.module._random_ltd_patch
            del p.module._random_ltd_handle
        self._patches = []
        return self.model

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kept_length={self.kept_length}, layer_ids={self.layer_ids}, "
            f"total_layers={self.total_layers}, scheduler={self.scheduler!r})"
        )

    # ----- the patched forward, step by step ------------------------------------------------
    def _forward(self, patch: _Patch, args: tuple, kwargs: dict) -> Any:
        """A patched layer's forward: bind, plan (maybe full length), gather, restrict, run, scatter."""
        original = patch.original_forward()
        if not patch.module.training or self._kept_length is None:
            return original(*args, **kwargs)
        call = _LayerCall(patch, args, kwargs)
        hidden = call.get(patch.spec.hidden_states_arg)
        if not isinstance(hidden, torch.Tensor) or hidden.dim() < 3:
            raise ValueError(
                f"random-LTD: {type(patch.module).__name__}.{patch.spec.hidden_states_arg} must be a batch-first "
                f"(batch, seq, hidden) tensor, got {type(hidden).__name__}."
            )
        config = _model_config(self.model)
        plan = self._plan(patch, call, hidden, config)
        if plan is None:
            return original(*args, **kwargs)
        idx, kept_docs = plan
        T = hidden.shape[1]
        self._detach_cache(patch, call, T)
        flash = _uses_flash_attention(config)
        self._gather_inputs(patch, call, hidden, idx, T, flash)
        if kept_docs is not None:
            self._set_varlen(call, kept_docs, flash, hidden.device)
        for name in patch.spec.mask_args:
            call.put(name, restrict_mask(call.get(name), idx, T, what=name))
        # write the hidden-state output back at the kept positions; dropped tokens pass through
        output = call.run(original)
        if isinstance(output, torch.Tensor):
            return scatter_tokens(hidden, idx, output)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return type(output)((scatter_tokens(hidden, idx, output[0]), *output[1:]))
        raise TypeError(
            f"random-LTD: {type(patch.module).__name__}.forward returned {type(output).__name__}; expected the hidden "
            "states as a tensor or as the first element of a tuple."
        )

    @torch.compiler.disable
    def _plan(
        self, patch: _Patch, call: _LayerCall, hidden: torch.Tensor, config: Any
    ) -> tuple[torch.Tensor, list[int] | None] | None:
        """Count the layer-tokens and draw the kept positions: ``(idx, kept tokens per document of a packed row)``,
        or ``None`` to run at full length. Data-dependent (subset sizes, a packed row's documents), so it runs eagerly
        under ``torch.compile``; the kept positions are marked dynamic, so kept lengths do not recompile."""
        k = self._kept_length
        B, T = hidden.shape[:2]
        docs = document_lengths(call.get("cu_seq_lens_q"), call.get("position_ids"), B, T)
        if (
            docs is not None
            and all(call.get(m) is None for m in patch.spec.mask_args)
            and not _uses_flash_attention(config)
        ):
            self._warn(
                "a packed row (restarting position_ids) reached a layer without a packed-sequence mask, so its "
                "documents attend to each other: transformers builds none when a training forward makes a KV cache; "
                "pass use_cache=False"
            )
        kept_docs = [min(n, k) for n in docs] if docs is not None else None
        kept = sum(kept_docs) if docs is not None else B * min(k, T)
        self.full_tokens_seen += B * T
        if kept == B * T and not self.force_gather:
            self.kept_tokens_seen += kept
            return None
        reason = self._full_length_reason(patch, call, B, T, config)
        if reason is not None:
            self._warn(f"{reason}; running these layers on the full sequence (no tokens dropped)")
            self.kept_tokens_seen += B * T
            return None
        self.kept_tokens_seen += kept
        if docs is None:
            idx = sample_kept_indices(B, T, min(k, T), patch.keep_positions, device=hidden.device)
        else:
            idx = sample_document_indices(docs, k, patch.keep_positions, device=hidden.device)
        if self.record_indices:
            self.last_indices[patch.layer_id] = idx
        torch._dynamo.maybe_mark_dynamic(idx, 1)
        return idx, kept_docs

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(f"random-LTD: {message}.")

    @staticmethod
    def _full_length_reason(patch: _Patch, call: _LayerCall, B: int, T: int, config: Any) -> str | None:
        """Why this call cannot be restricted to a token subset exactly (it then runs at full length), or
        ``None``. Inputs that make dropping wrong rather than merely inexact (cross-attention) raise."""
        spec = patch.spec
        for name in spec.unsupported_args:
            if call.get(name) is not None:
                raise ValueError(
                    f"random-LTD cannot drop tokens in {type(patch.module).__name__} with {name} (cross-attention) "
                    "set; patch only self-attention layers (random_ltd_layer_id) or call model.eval()."
                )
        if any(type(call.get(name)).__name__ == "BlockMask" for name in spec.mask_args):
            return "a flex-attention BlockMask cannot be restricted to a token subset"
        if _uses_flash_attention(config):
            window = getattr(config, "sliding_window", None)
            if isinstance(window, int) and window < T:
                return "flash attention with a sliding window shorter than the sequence cannot be restricted to a token subset"
            if not patch.varkw and document_lengths(call.get("cu_seq_lens_q"), call.get("position_ids"), B, T):
                return "flash attention over packed sequences needs the layer to take **kwargs (cu_seq_lens_*)"
        return None

    @staticmethod
    def _detach_cache(patch: _Patch, call: _LayerCall, T: int) -> None:
        """Refuse a cache that already holds tokens (as ``past_length`` reports them, or as the key columns past
        ``T`` of the masks the model built from it); otherwise keep the token subset out of it."""
        masks = [call.get(name) for name in patch.spec.mask_args]
        mask_past = max([0, *(m.shape[-1] - T for m in masks if isinstance(m, torch.Tensor) and m.dim() in (2, 4))])
        for name in patch.spec.cache_args:
            cache = call.get(name)
            if cache is None:
                continue
            past = max(patch.spec.past_length(cache, patch.cache_layer_idx), mask_past)
            if past:
                raise ValueError(
                    f"random-LTD drops tokens only without past key values, but {name} holds {past} past tokens "
                    "in training mode; call model.eval() for generation, or train without a cache "
                    f"({name}=None, use_cache=False)."
                )
            call.put(name, None)
        call.put("use_cache", False)  # only where the caller passed it

    @staticmethod
    def _gather_inputs(
        patch: _Patch, call: _LayerCall, hidden: torch.Tensor, idx: torch.Tensor, T: int, flash: bool
    ) -> None:
        """Gather the hidden states and every per-position input at the kept positions."""
        spec = patch.spec
        call.put(spec.hidden_states_arg, gather_tokens(hidden, idx))
        for name, gather in spec.gather_fns.items():
            value = call.get(name)
            if value is not None:
                call.put(name, gather(value, idx, T))
        for name in spec.sequence_args:
            value = call.get(name)
            if value is None or name in spec.gather_fns:
                continue
            if flash and name == "position_ids":
                # flash attention reads position_ids only to detect packed sequences; gathered (non-contiguous)
                # positions would look packed, and the sequences are known not to be packed here
                call.put(name, None)
            elif isinstance(value, torch.Tensor):
                call.put(name, _gather_seq(value, idx, T, name))
            elif isinstance(value, (tuple, list)):
                call.put(name, type(value)(_gather_seq(v, idx, T, name) for v in value))

    @staticmethod
    def _set_varlen(call: _LayerCall, kept_docs: list[int], flash: bool, device: torch.device) -> None:
        """A packed row's flash-attention varlen arguments for the kept tokens: ``cu_seq_lens_q/k`` (their cumulative
        counts) and ``max_length_q/k``. Replaced where the caller gave them; added under flash attention, which then
        uses them instead of the (gathered, so no longer restarting) position ids."""
        given = call.get("cu_seq_lens_q")
        dtype = given.dtype if isinstance(given, torch.Tensor) else torch.int32
        cu = torch.tensor([0, *kept_docs], dtype=dtype, device=device).cumsum(0).to(dtype)
        for name, value in zip(_VARLEN_KWARGS, (cu, cu, max(kept_docs), max(kept_docs))):
            call.put(name, value, add=flash)


def apply_random_ltd(
    model: nn.Module,
    config: RandomLTDConfig | Mapping[str, Any],
    *,
    global_batch_size: int | None = None,
) -> RandomLTDHandle:
    """Patch ``model`` in place for random-LTD and return the :class:`RandomLTDHandle` that controls it.

    ``config`` is a :class:`~hf_data_efficiency.RandomLTDConfig` or DeepSpeed's ``random_ltd`` section.
    Layers are the model's registered layer modules in order (see ``register_random_ltd_layer``);
    ``random_ltd_layer_id=None`` patches all but the first and the last. ``keep_positions=None`` uses
    the architecture default (CLS at 0 for BERT/RoBERTa/ViT, nothing for GPT-2 and Llama-family
    decoders). The handle owns a :class:`RandomLTDScheduler` (kept length starts at ``min_value``;
    call ``handle.update(step)`` before each optimizer step). ``global_batch_size`` overrides the
    config's value for the consumed layer-token counter.
    """
    cfg = RandomLTDConfig.load(config)
    found = find_layers(model)
    if not found:
        raise ValueError(unsupported_model_message(model))
    total = len(found)
    if cfg.total_layer_num is not None and cfg.total_layer_num != total:
        raise ValueError(
            f"random_ltd.total_layer_num={cfg.total_layer_num} disagrees with the model, which has {total} "
            f"{type(found[0][1]).__name__} layers; set total_layer_num={total} or leave it unset."
        )
    if cfg.random_ltd_layer_id is None:
        if total < 3:
            raise ValueError(
                f"random_ltd.random_ltd_layer_id defaults to every layer but the first and the last, but the model "
                f"has only {total} layers; give random_ltd_layer_id explicitly (ids in 0..{total - 1})."
            )
        layer_ids = list(range(1, total - 1))
    else:
        layer_ids = sorted(cfg.random_ltd_layer_id)
        bad = [i for i in layer_ids if not 0 <= i < total]
        if bad:
            raise ValueError(
                f"random_ltd.random_ltd_layer_id={cfg.random_ltd_layer_id} has ids {bad} outside the model's "
                f"{total} layers; allowed ids: 0..{total - 1}."
            )
    if cfg.random_ltd_layer_num is not None and cfg.random_ltd_layer_num != len(layer_ids):
        raise ValueError(
            f"random_ltd.random_ltd_layer_num={cfg.random_ltd_layer_num} disagrees with the {len(layer_ids)} "
            f"layers chosen by random_ltd_layer_id={layer_ids}."
        )
    config = _model_config(model)
    limits = [found[i][2].max_positions(config) for i in layer_ids] if config is not None else []
    max_positions = min((limit for limit in limits if limit is not None), default=None)
    if max_positions is not None and cfg.max_value > max_positions:
        raise ValueError(
            f"random_ltd.random_ltd_schedule.max_value={cfg.max_value} is larger than the model's maximum "
            f"sequence length {max_positions}; use max_value <= {max_positions}."
        )
    scheduler = RandomLTDScheduler.from_config(
        cfg, total_layer_num=total, random_ltd_layer_num=len(layer_ids), global_batch_size=global_batch_size
    )
    handle = RandomLTDHandle(model, [], total, scheduler, scheduler.current_kept_length)
    for layer_id in layer_ids:
        name, module, spec = found[layer_id]
        if hasattr(module, "_random_ltd_handle"):
            raise ValueError(
                f"apply_random_ltd: layer {name or type(module).__name__} is already patched; call handle.remove() first."
            )
        signature = inspect.signature(type(module).forward)
        varkw = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        if spec.hidden_states_arg not in signature.parameters:
            raise ValueError(
                f"register_random_ltd_layer: {type(module).__name__}.forward has no argument "
                f"{spec.hidden_states_arg!r} (hidden_states_arg); its arguments are {list(signature.parameters)[1:]}."
            )
        keep = tuple(cfg.keep_positions) if cfg.keep_positions is not None else spec.keep_positions
        patch = _Patch(
            layer_id=layer_id,
            name=name,
            module=module,
            spec=spec,
            keep_positions=keep,
            signature=signature,
            varkw=varkw,
            had_instance_forward="forward" in module.__dict__,
            previous_forward=module.__dict__.get("forward"),
            cache_layer_idx=next(
                (m.layer_idx for m in module.modules() if isinstance(getattr(m, "layer_idx", None), int)), None
            ),
        )
        module._random_ltd_patch = patch
        module._random_ltd_handle = handle
        module.forward = types.MethodType(_patched_forward, module)
        handle._patches.append(patch)
    for key in ("model_mask_name", "model_type", "hidden_state_order", "micro_batch_size"):
        if getattr(cfg, key) is not None:
            logger.info(f"random_ltd.{key} is DeepSpeed-specific and not needed here; it is ignored.")
    return handle


__all__ = [
    "RandomLTDHandle",
    "apply_random_ltd",
    "gather_tokens",
    "restrict_mask",
    "sample_kept_indices",
    "scatter_tokens",
]
