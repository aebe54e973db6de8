"""LayerSpec behaviour hooks (custom gathers, max positions, cache past length) and registration checks.

Oracles: the layer class's forward on inputs restricted by explicit loops, the vanilla model failing beyond the
length a ``max_positions`` hook reports, and the number of tokens a hand-made cache holds.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from _random_ltd_archs import build, gather_rows, ltd_config
from torch import nn

import hf_data_efficiency as hfde
from hf_data_efficiency.routing.architectures import cache_past_length

tf.logging.set_verbosity_error()


def gather_rows_and_columns(bias: torch.Tensor, idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    assert bias.shape[-1] == seq_len
    return torch.stack([bias[b][idx[b]][:, idx[b]] for b in range(idx.shape[0])])


class RelBiasBlock(nn.Module):
    """Attention-like mixing with a ``(B, T, T)`` relative bias: no default gather fits the bias."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x, bias=None, memory=None):
        self.seen_memory = memory
        scores = x @ x.transpose(1, 2) + bias
        return x + torch.softmax(scores, -1) @ self.proj(x)


class RelBiasModel(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RelBiasBlock() for _ in range(layers))

    def forward(self, x, bias, memory=None):
        for block in self.blocks:
            x = block(x, bias=bias, memory=memory)
        return x


def _register(**kw):
    return hfde.register_random_ltd_layer(
        RelBiasBlock,
        hidden_states_arg="x",
        mask_args=(),
        sequence_args=(),
        cache_args=("memory",),
        gather_fns={"bias": gather_rows_and_columns},
        **kw,
    )


def _patched(kept: int):
    torch.manual_seed(0)
    model = RelBiasModel().train()
    handle = hfde.apply_random_ltd(model, {"min_value": 16, "max_value": 64, "require_steps": 5})
    handle.kept_length, handle.record_indices = kept, True
    return model, handle


def test_custom_gather_hook_restricts_a_pairwise_input():
    _register()
    model, handle = _patched(kept=5)
    x, bias = torch.randn(2, 12, 8), torch.randn(2, 12, 12)
    layer = handle.layers[0]
    out = layer(x, bias=bias)
    idx = handle.last_indices[1]
    expected = RelBiasBlock.forward(layer, gather_rows(x, idx), gather_rows_and_columns(bias, idx, 12))
    assert torch.equal(gather_rows(out, idx), expected)
    dropped = torch.ones(2, 12, dtype=torch.bool)
    dropped[torch.arange(2)[:, None], idx] = False
    assert torch.equal(out[dropped], x[dropped])


def test_past_length_hook_refuses_a_filled_cache_and_drops_an_empty_one():
    _register(past_length=lambda memory, layer_idx: memory.shape[1])
    model, handle = _patched(kept=5)
    x, bias = torch.randn(2, 12, 8), torch.randn(2, 12, 12)
    with pytest.raises(ValueError, match="memory holds 3 past tokens"):
        model(x, bias, memory=torch.zeros(2, 3, 8))
    model(x, bias, memory=torch.zeros(2, 0, 8))
    assert sorted(handle.last_indices) == [1]
    assert model.blocks[1].seen_memory is None, "a token subset must never reach the cache"
    assert model.blocks[0].seen_memory is not None and model.blocks[2].seen_memory is not None


def test_default_past_length_reads_caches_and_legacy_tuples():
    key = torch.zeros(2, 4, 7, 8)
    assert cache_past_length((key, key), 0) == 7
    cache = tf.DynamicCache()
    cache.update(key, key, layer_idx=0)
    assert cache_past_length(cache, 0) == 7
    with pytest.raises(ValueError, match="register the layer with past_length"):
        cache_past_length(object(), 0)


def test_max_positions_hook_bounds_the_schedule():
    _register(max_positions=lambda config: 20)
    torch.manual_seed(0)
    model = RelBiasModel()
    model.config = object()  # any config object: the hook decides what it means
    with pytest.raises(ValueError, match=r"max_value=64 is larger than the model's maximum sequence length 20"):
        hfde.apply_random_ltd(model, {"min_value": 16, "max_value": 64, "require_steps": 5})
    hfde.apply_random_ltd(model, {"min_value": 16, "max_value": 20, "require_steps": 5})


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_roberta_max_positions_is_the_longest_sequence_the_model_accepts(family):
    """Positions start after the padding id, so max_position_embeddings=34 holds 32 tokens; the model itself is
    the oracle: it runs 32 tokens and fails on 33."""
    model, _ = build(family)
    model.eval()
    model(input_ids=torch.full((1, 32), 5))
    with pytest.raises((IndexError, RuntimeError)):
        model(input_ids=torch.full((1, 33), 5))
    with pytest.raises(ValueError, match=r"max_value=33 is larger than the model's maximum sequence length 32"):
        hfde.apply_random_ltd(model, ltd_config(family, max_value=33))
    hfde.apply_random_ltd(model, ltd_config(family, max_value=32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keep_positions": ["cls"]}, r"keep_positions=\['cls'\] must be a list of ints"),
        ({"keep_positions": [True]}, r"keep_positions=\[True\] must be a list of ints"),
        ({"hidden_states_arg": 3}, r"hidden_states_arg=3 must be a str"),
        ({"mask_args": "mask"}, r"mask_args='mask' must be a list or tuple of argument names"),
        ({"sequence_args": [1]}, r"sequence_args=\[1\] must be a list or tuple"),
        ({"cache_args": None}, r"cache_args=None must be a list or tuple"),
        ({"gather_fns": {"bias": 3}}, r"gather_fns=\{'bias': 3\} must map argument names to callables"),
        ({"gather_fns": ["bias"]}, r"gather_fns=\['bias'\] must map argument names"),
        ({"max_positions": 512}, r"max_positions=512 must be a callable fn\(model_config\)"),
        ({"past_length": "x"}, r"past_length='x' must be a callable fn\(cache, layer_idx\)"),
    ],
)
def test_registration_refuses_bad_fields(kwargs, match):
    with pytest.raises(TypeError, match=match):
        hfde.register_random_ltd_layer(RelBiasBlock, **kwargs)


def test_registration_refuses_a_non_class():
    with pytest.raises(TypeError, match=r"layer_cls=5 must be a class or a qualified name"):
        hfde.register_random_ltd_layer(5)
