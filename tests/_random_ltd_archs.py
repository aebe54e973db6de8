"""The random-LTD test table: one entry per registered architecture, with a tiny random model, a padded
batch and an oracle that runs the original layer from scratch on gathered tokens.

``test_random_ltd_architectures.py`` fails when a transformers layer class is registered without an
entry here. Adding an architecture with standard argument names means one ``register_random_ltd_layer``
line in the library plus one ``Arch`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from hf_data_efficiency.config import RandomLTDConfig

B, T, V = 3, 16, 64
_TF = "transformers.models"


@dataclass(frozen=True)
class Arch:
    """A registered layer class, how to build a tiny model holding it, and how its layers are fed."""

    layer: str  # registered qualified class name
    kind: str  # "decoder" (causal, left padding), "encoder" (bidirectional, right padding) or "vision"
    make: Callable[[str], tf.PreTrainedModel]  # attention implementation -> model
    rotary: bool = False  # Llama-family: rotary (cos, sin) computed by model.model.rotary_emb

    @property
    def seq_len(self) -> int:
        return 17 if self.kind == "vision" else T  # ViT: 16 patches + CLS

    @property
    def keeps_cls(self) -> bool:
        return self.kind != "decoder"


_COMMON = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=4, intermediate_size=64)
_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _with_impl(cfg: tf.PretrainedConfig, impl: str) -> tf.PretrainedConfig:
    cfg._attn_implementation = impl
    return cfg


def _gpt2(impl: str) -> tf.PreTrainedModel:
    cfg = tf.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=32, n_layer=4, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    return tf.GPT2LMHeadModel(_with_impl(cfg, impl))


def _encoder(config_cls: type, model_cls: type, **extra: Any) -> Callable[[str], tf.PreTrainedModel]:
    def make(impl: str) -> tf.PreTrainedModel:
        cfg = config_cls(vocab_size=V, max_position_embeddings=34, **_COMMON, **_NO_DROPOUT, **extra)
        return model_cls(_with_impl(cfg, impl))

    return make


def _vit(impl: str) -> tf.PreTrainedModel:
    cfg = tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, num_labels=3, **_COMMON, **_NO_DROPOUT)
    return tf.ViTForImageClassification(_with_impl(cfg, impl))


def _decoder(config_cls: type) -> Callable[[str], tf.PreTrainedModel]:
    def make(impl: str) -> tf.PreTrainedModel:
        cfg = config_cls(vocab_size=V, num_key_value_heads=2, max_position_embeddings=64, **_COMMON)
        return tf.AutoModelForCausalLM.from_config(_with_impl(cfg, impl))

    return make


ARCHS: dict[str, Arch] = {
    "gpt2": Arch(f"{_TF}.gpt2.modeling_gpt2.GPT2Block", "decoder", _gpt2),
    "bert": Arch(f"{_TF}.bert.modeling_bert.BertLayer", "encoder", _encoder(tf.BertConfig, tf.BertForMaskedLM)),
    "roberta": Arch(
        f"{_TF}.roberta.modeling_roberta.RobertaLayer", "encoder", _encoder(tf.RobertaConfig, tf.RobertaForMaskedLM)
    ),
    "xlm-roberta": Arch(
        f"{_TF}.xlm_roberta.modeling_xlm_roberta.XLMRobertaLayer",
        "encoder",
        _encoder(tf.XLMRobertaConfig, tf.XLMRobertaForMaskedLM),
    ),
    "vit": Arch(f"{_TF}.vit.modeling_vit.ViTLayer", "vision", _vit),
    "llama": Arch(f"{_TF}.llama.modeling_llama.LlamaDecoderLayer", "decoder", _decoder(tf.LlamaConfig), rotary=True),
    "qwen2": Arch(f"{_TF}.qwen2.modeling_qwen2.Qwen2DecoderLayer", "decoder", _decoder(tf.Qwen2Config), rotary=True),
    "qwen3": Arch(f"{_TF}.qwen3.modeling_qwen3.Qwen3DecoderLayer", "decoder", _decoder(tf.Qwen3Config), rotary=True),
    "mistral": Arch(
        f"{_TF}.mistral.modeling_mistral.MistralDecoderLayer", "decoder", _decoder(tf.MistralConfig), rotary=True
    ),
}


def build(family: str, impl: str = "sdpa", seed: int = 0) -> tuple[tf.PreTrainedModel, dict[str, torch.Tensor]]:
    """A tiny model in training mode and a batch with padding (left padding for decoders, right for encoders)."""
    arch = ARCHS[family]
    torch.manual_seed(seed)
    model = arch.make(impl)
    assert model.config._attn_implementation == impl
    model.train()
    g = torch.Generator().manual_seed(seed + 1)
    if arch.kind == "vision":
        return model, {"pixel_values": torch.randn(B, 3, 16, 16, generator=g), "labels": torch.tensor([0, 1, 2])}
    ids = torch.randint(2, V, (B, T), generator=g)  # no RoBERTa padding id (1) inside the text
    am = torch.ones(B, T, dtype=torch.long)
    if arch.kind == "decoder":
        am[1, :5] = 0  # left padding
        am[2, :2] = 0
        inputs = {"input_ids": ids, "attention_mask": am, "position_ids": (am.cumsum(-1) - 1).clamp(min=0)}
    else:
        am[1, 11:] = 0  # right padding
        inputs = {"input_ids": ids, "attention_mask": am}
    return model, {**inputs, "labels": ids.masked_fill(am == 0, -100)}


def ltd_config(family: str = "gpt2", **kw: Any) -> RandomLTDConfig:
    """A schedule whose ``max_value`` fits the tiny model of ``family``."""
    base = dict(
        min_value=16, max_value=17 if ARCHS[family].kind == "vision" else 32, require_steps=10, seq_per_step=16
    )
    base.update(kw)
    return RandomLTDConfig(**base)


def run(model: torch.nn.Module, inputs: dict, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One training forward+backward: (loss, logits, gradients by parameter name)."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    return out.loss.detach(), out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_run(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[b, idx[b]]`` stacked, written as a loop (independent of the library's gather)."""
    return torch.stack([t[b, idx[b]] for b in range(idx.shape[0])])


def fresh_layer_run(
    family: str, model: tf.PreTrainedModel, layer: torch.nn.Module, hidden_sub: torch.Tensor, inputs: dict, idx
) -> torch.Tensor:
    """The layer class's own forward on gathered tokens, with a mask built from scratch by ``masking_utils`` and
    positions (and rotary embeddings) recomputed at the kept positions; no random-LTD code involved."""
    arch = ARCHS[family]
    forward, cfg = type(layer).forward, model.config
    am = inputs.get("attention_mask")
    am_sub = None if am is None else gather_rows(am, idx)
    if arch.kind == "vision":
        return forward(layer, hidden_sub, None)
    if arch.kind == "encoder":
        mask = create_bidirectional_mask(config=cfg, inputs_embeds=hidden_sub, attention_mask=am_sub)
        return forward(layer, hidden_sub, mask)
    mask = create_causal_mask(
        config=cfg, inputs_embeds=hidden_sub, attention_mask=am_sub, past_key_values=None, position_ids=None
    )
    pos_sub = gather_rows(inputs["position_ids"], idx)
    if not arch.rotary:
        return forward(layer, hidden_sub, None, mask, None, use_cache=False, position_ids=pos_sub)
    cos_sin = model.model.rotary_emb(hidden_sub, position_ids=pos_sub)
    return forward(
        layer,
        hidden_sub,
        attention_mask=mask,
        position_ids=pos_sub,
        past_key_values=None,
        use_cache=False,
        position_embeddings=cos_sin,
    )


def capture(handle) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list]:
    """Forward hooks recording each patched layer's (input hidden states, output) by layer id."""
    records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(layer_id: int):
        def fn(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            records[layer_id] = (hidden.detach().clone(), out.detach().clone())

        return fn

    removers = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in zip(handle.layer_ids, handle.layers)
    ]
    return records, removers


def dropped_mask(idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    dropped = torch.ones(idx.shape[0], seq_len, dtype=torch.bool)
    dropped[torch.arange(idx.shape[0])[:, None], idx] = False
    return dropped
