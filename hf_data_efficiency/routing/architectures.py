"""Which transformer layer classes random-LTD can patch, and what each one's forward receives.

A :class:`LayerSpec` names the arguments of a layer's ``forward`` that random-LTD must change when
the layer sees only a subset of the tokens: the hidden states (gathered), the attention masks
(restricted by rows and columns), per-position inputs such as ``position_ids`` and rotary
``position_embeddings`` (gathered along the sequence dimension) and arguments it cannot restrict
(cross-attention inputs, which are refused). Classes are matched by their qualified name through
the MRO, so no model module is imported and subclasses match too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


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
    """

    name: str
    keep_positions: tuple[int, ...] = ()
    hidden_states_arg: str = "hidden_states"
    mask_args: tuple[str, ...] = ("attention_mask",)
    sequence_args: tuple[str, ...] = ("position_ids", "position_embeddings")
    unsupported_args: tuple[str, ...] = ("encoder_hidden_states",)
    cache_args: tuple[str, ...] = field(default=("past_key_values", "past_key_value", "layer_past"), repr=False)


_REGISTRY: dict[str, LayerSpec] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_random_ltd_layer(
    layer_cls: type[nn.Module] | str,
    *,
    keep_positions: Iterable[int] = (),
    hidden_states_arg: str = "hidden_states",
    mask_args: Iterable[str] = ("attention_mask",),
    sequence_args: Iterable[str] = ("position_ids", "position_embeddings"),
    unsupported_args: Iterable[str] = ("encoder_hidden_states",),
) -> LayerSpec:
    """Register a transformer layer class (or its qualified name) for :func:`apply_random_ltd`.

    The layer must be batch-first and return its hidden states (a tensor, or a tuple whose first
    element is the hidden states). Example for a custom block ``forward(self, x, mask=None, pos=None)``::

        hfde.register_random_ltd_layer(MyBlock, hidden_states_arg="x", mask_args=("mask",), sequence_args=("pos",))
    """
    name = layer_cls if isinstance(layer_cls, str) else _qualname(layer_cls)
    spec = LayerSpec(
        name=name,
        keep_positions=tuple(int(p) for p in keep_positions),
        hidden_states_arg=hidden_states_arg,
        mask_args=tuple(mask_args),
        sequence_args=tuple(sequence_args),
        unsupported_args=tuple(unsupported_args),
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

    A registered layer's children are not searched (no nested matches).
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


def model_max_positions(config: object | None) -> int | None:
    """Largest sequence the model accepts: ``(image_size // patch_size) ** 2 + 1`` for ViT-like configs
    (patches plus CLS), otherwise ``max_position_embeddings``; ``None`` when unknown."""
    if config is None:
        return None
    image_size, patch_size = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if isinstance(image_size, int) and isinstance(patch_size, int) and patch_size > 0:
        return (image_size // patch_size) ** 2 + 1
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) else None


_TF = "transformers.models"
# Decoders keep nothing by default (as DeepSpeed's GPT path); encoders with a CLS token keep position 0.
for _name in (
    f"{_TF}.gpt2.modeling_gpt2.GPT2Block",
    f"{_TF}.llama.modeling_llama.LlamaDecoderLayer",
    f"{_TF}.qwen2.modeling_qwen2.Qwen2DecoderLayer",
    f"{_TF}.mistral.modeling_mistral.MistralDecoderLayer",
):
    register_random_ltd_layer(_name)
for _name in (
    f"{_TF}.bert.modeling_bert.BertLayer",
    f"{_TF}.roberta.modeling_roberta.RobertaLayer",
    f"{_TF}.xlm_roberta.modeling_xlm_roberta.XLMRobertaLayer",
    f"{_TF}.vit.modeling_vit.ViTLayer",
):
    register_random_ltd_layer(_name, keep_positions=(0,))
