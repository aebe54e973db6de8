"""Which transformer layer classes random-LTD can patch, and what each one's forward receives.

A :class:`LayerSpec` names the arguments of a layer's ``forward`` that random-LTD must change when the layer sees
only a subset of the tokens, and carries behaviour hooks where argument names are not enough. A layer with the
standard argument names is added with one :func:`register_random_ltd_layer` line. Classes are matched by their
qualified name through the MRO, so no model module is imported and subclasses match too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

GatherFn = Callable[[Any, torch.Tensor, int], Any]
"""``(value, idx, seq_len) -> value`` restricted to the kept positions ``idx`` (``(B, k)``, sorted)."""


def max_position_embeddings(config: Any) -> int | None:
    """Default ``LayerSpec.max_positions``: the config's ``max_position_embeddings`` (``None`` when absent)."""
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def vit_max_positions(config: Any) -> int | None:
    """ViT: ``(image_size // patch_size) ** 2`` patches plus the CLS token."""
    image_size, patch_size = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if isinstance(image_size, int) and isinstance(patch_size, int) and patch_size > 0:
        return (image_size // patch_size) ** 2 + 1
    return None


def padded_position_max_positions(config: Any) -> int | None:
    """RoBERTa / XLM-R: positions start after ``pad_token_id``, so a sequence holds
    ``max_position_embeddings - pad_token_id - 1`` tokens (512 for the usual 514)."""
    limit, pad = max_position_embeddings(config), getattr(config, "pad_token_id", None)
    if limit is None or not isinstance(pad, int):
        return limit
    return limit - pad - 1


def cache_past_length(cache: Any, layer_idx: int | None) -> int:
    """Default ``LayerSpec.past_length``: past tokens a transformers ``Cache`` holds for the layer ``layer_idx`` or
    for a later layer (0 when the layer has no ``layer_idx``), or the key length of a legacy ``(key, value)`` tuple.

    Later layers have not run yet in this forward, so what they hold is past: a cache returned by a training-mode
    forward under random-LTD holds tokens only in the unpatched layers, and the model builds every layer's masks
    and positions from it."""
    if hasattr(cache, "get_seq_length"):
        if layer_idx is None:
            return 0
        later = range(layer_idx + 1, len(cache)) if hasattr(cache, "__len__") else ()
        return int(max(cache.get_seq_length(i) for i in (layer_idx, *later)))
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], torch.Tensor):
        return int(cache[0].shape[-2])
    raise ValueError(
        f"random-LTD cannot tell how many past tokens a {type(cache).__name__} cache holds; register the layer "
        "with past_length=fn(cache, layer_idx) -> int."
    )


@dataclass(frozen=True)
class LayerSpec:
    """How to drop tokens around one layer class.

    Attributes:
        name: qualified class name, e.g. ``transformers.models.gpt2.modeling_gpt2.GPT2Block``.
        keep_positions: positions always kept (e.g. ``(0,)`` for a CLS token); negative ones count from the end.
        hidden_states_arg: name of the ``forward`` argument holding ``(batch, seq, hidden)`` states.
        mask_args: attention-mask arguments (``None``, 2-D padding masks, 4-D bool/additive masks).
        sequence_args: batch-first per-position tensors (or tuples of them, e.g. rotary ``(cos, sin)``)
            with the sequence on dim 1, gathered like the hidden states.
        unsupported_args: arguments that must be ``None`` while tokens are dropped (cross-attention inputs).
        cache_args: KV-cache arguments: refused when they already hold tokens, otherwise set to ``None``
            (a token subset must not be written into the cache).
        gather_fns: hooks ``name -> fn(value, idx, seq_len)`` for per-position arguments the default
            gathers cannot handle (another layout, a relative-position bias); they replace the default
            handling of that argument.
        max_positions: hook ``fn(model_config) -> int | None``: the longest sequence the model accepts,
            checked against the schedule's ``max_value``.
        past_length: hook ``fn(cache, layer_idx) -> int``: tokens a cache argument already holds.
    """

    name: str
    keep_positions: tuple[int, ...] = ()
    hidden_states_arg: str = "hidden_states"
    mask_args: tuple[str, ...] = ("attention_mask",)
    sequence_args: tuple[str, ...] = ("position_ids", "position_embeddings")
    unsupported_args: tuple[str, ...] = ("encoder_hidden_states",)
    cache_args: tuple[str, ...] = ("past_key_values", "past_key_value", "layer_past")
    gather_fns: Mapping[str, GatherFn] = field(default_factory=dict, hash=False)
    max_positions: Callable[[Any], int | None] = max_position_embeddings
    past_length: Callable[[Any, int | None], int] = cache_past_length


_REGISTRY: dict[str, LayerSpec] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _names(value: Any, field_name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise TypeError(
            f"register_random_ltd_layer: {field_name}={value!r} must be a list or tuple of argument names (str)."
        )
    return tuple(value)


def _hook(value: Any, field_name: str, signature: str) -> Any:
    if not callable(value):
        raise TypeError(f"register_random_ltd_layer: {field_name}={value!r} must be a callable {signature}.")
    return value


def register_random_ltd_layer(
    layer_cls: type[nn.Module] | str,
    *,
    keep_positions: Iterable[int] = (),
    hidden_states_arg: str = "hidden_states",
    mask_args: Iterable[str] = ("attention_mask",),
    sequence_args: Iterable[str] = ("position_ids", "position_embeddings"),
    unsupported_args: Iterable[str] = ("encoder_hidden_states",),
    cache_args: Iterable[str] = ("past_key_values", "past_key_value", "layer_past"),
    gather_fns: Mapping[str, GatherFn] | None = None,
    max_positions: Callable[[Any], int | None] = max_position_embeddings,
    past_length: Callable[[Any, int | None], int] = cache_past_length,
) -> LayerSpec:
    """Register a transformer layer class (or its qualified name) for :func:`apply_random_ltd`.

    The layer must be batch-first and return its hidden states (a tensor, or a tuple whose first
    element is the hidden states). A layer with transformers' argument names needs only its class;
    see :class:`LayerSpec` for the other fields and hooks. Example for a custom block
    ``forward(self, x, mask=None, pos=None, bias=None)`` whose ``bias`` is ``(B, T, T)``::

        hfde.register_random_ltd_layer(
            MyBlock, hidden_states_arg="x", mask_args=("mask",), sequence_args=("pos",),
            gather_fns={"bias": lambda bias, idx, seq_len: my_gather_rows_and_columns(bias, idx)},
        )

    Registering a class again replaces its spec.
    """
    if not isinstance(layer_cls, (str, type)):
        raise TypeError(f"register_random_ltd_layer: layer_cls={layer_cls!r} must be a class or a qualified name.")
    name = layer_cls if isinstance(layer_cls, str) else _qualname(layer_cls)
    keep = tuple(keep_positions) if isinstance(keep_positions, Iterable) else None
    if keep is None or not all(isinstance(p, Integral) and not isinstance(p, bool) for p in keep):
        raise TypeError(f"register_random_ltd_layer: keep_positions={keep_positions!r} must be a list of ints.")
    if not isinstance(hidden_states_arg, str):
        raise TypeError(f"register_random_ltd_layer: hidden_states_arg={hidden_states_arg!r} must be a str.")
    if not isinstance(gather_fns, Mapping | None) or not all(
        isinstance(k, str) and callable(fn) for k, fn in (gather_fns or {}).items()
    ):
        raise TypeError(
            f"register_random_ltd_layer: gather_fns={gather_fns!r} must map argument names to callables "
            "fn(value, idx, seq_len)."
        )
    spec = LayerSpec(
        name=name,
        keep_positions=tuple(int(p) for p in keep),
        hidden_states_arg=hidden_states_arg,
        mask_args=_names(mask_args, "mask_args"),
        sequence_args=_names(sequence_args, "sequence_args"),
        unsupported_args=_names(unsupported_args, "unsupported_args"),
        cache_args=_names(cache_args, "cache_args"),
        gather_fns=dict(gather_fns or {}),
        max_positions=_hook(max_positions, "max_positions", "fn(model_config) -> int | None"),
        past_length=_hook(past_length, "past_length", "fn(cache, layer_idx) -> int"),
    )
    _REGISTRY[name] = spec
    return spec


def supported_layer_classes() -> list[str]:
    """Qualified names of the registered layer classes."""
    return sorted(_REGISTRY)


def spec_for(module: nn.Module) -> LayerSpec | None:
    """The spec of the most derived registered class in ``module``'s MRO, if any."""
    for cls in type(module).__mro__:
        spec = _REGISTRY.get(_qualname(cls))
        if spec is not None:
            return spec
    return None


def find_layers(model: nn.Module) -> list[tuple[str, nn.Module, LayerSpec]]:
    """Registered layers of ``model`` in module order as ``(qualified module name, module, spec)``.

    These are the layers ``random_ltd_layer_id`` indexes. A registered layer's children are not
    searched (no nested matches); a model that is itself a registered layer gives ``[("", model, spec)]``.
    """
    found: list[tuple[str, nn.Module, LayerSpec]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            spec = spec_for(child)
            if spec is not None:
                found.append((full, child, spec))
            else:
                visit(full, child)

    spec = spec_for(model)
    if spec is not None:
        return [("", model, spec)]
    visit("", model)
    return found


def unsupported_model_message(model: nn.Module) -> str:
    """Error text for a model without registered layers: what is supported and how to register more."""
    supported = "\n  ".join(supported_layer_classes())
    return (
        f"apply_random_ltd: {type(model).__name__} has no layer that random-LTD supports. Supported layer classes:\n"
        f"  {supported}\n"
        "Register another batch-first layer class with, e.g.:\n"
        "  hfde.register_random_ltd_layer(MyLayer, hidden_states_arg='hidden_states', "
        "mask_args=('attention_mask',), sequence_args=('position_ids', 'position_embeddings'), keep_positions=())"
    )


# One line per architecture. Decoders keep nothing by default (as DeepSpeed's GPT path); encoders with
# a CLS token keep position 0.
_TF, _CLS = "transformers.models", (0,)
register_random_ltd_layer(f"{_TF}.gpt2.modeling_gpt2.GPT2Block")
register_random_ltd_layer(f"{_TF}.llama.modeling_llama.LlamaDecoderLayer")
register_random_ltd_layer(f"{_TF}.qwen2.modeling_qwen2.Qwen2DecoderLayer")
register_random_ltd_layer(f"{_TF}.qwen3.modeling_qwen3.Qwen3DecoderLayer")
register_random_ltd_layer(f"{_TF}.mistral.modeling_mistral.MistralDecoderLayer")
register_random_ltd_layer(f"{_TF}.bert.modeling_bert.BertLayer", keep_positions=_CLS)
register_random_ltd_layer(
    f"{_TF}.roberta.modeling_roberta.RobertaLayer", keep_positions=_CLS, max_positions=padded_position_max_positions
)
register_random_ltd_layer(
    f"{_TF}.xlm_roberta.modeling_xlm_roberta.XLMRobertaLayer",
    keep_positions=_CLS,
    max_positions=padded_position_max_positions,
)
register_random_ltd_layer(f"{_TF}.vit.modeling_vit.ViTLayer", keep_positions=_CLS, max_positions=vit_max_positions)
