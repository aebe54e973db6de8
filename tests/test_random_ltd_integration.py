"""random-LTD with the rest of the stack: torch.compile, output_attentions, an accelerate hook installed before
patching, packed-sequence masks from ``masking_utils`` and (faked) flash attention.

Oracles: an unpatched deep copy, the layer class's own forward on gathered tokens with a mask built from
scratch (block-diagonal causal for packed rows, plain causal for the flash stand-in), and shapes derived from
the kept length. Flash attention cannot run on CPU; ``fake_flash_attention`` below reproduces its input
semantics in plain torch (2-D padding mask, causal and sliding window over *indices*, one unpadded row with
restarting ``position_ids`` read as packed sequences) so random-LTD's flash code paths run for real.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from _random_ltd_archs import (
    ARCHS,
    B,
    T,
    V,
    assert_same_run,
    build,
    capture,
    dropped_mask,
    gather_rows,
    ltd_config,
    run,
)
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.testing_utils import CaptureLogger

import hf_data_efficiency as hfde
from hf_data_efficiency.routing import random_ltd as rl

tf.logging.set_verbosity_warning()

FAKE_FLASH = "fake_flash_attention_for_tests"
FLASH_CALLS: list[dict] = []


def fake_flash_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, **kwargs
):
    """Flash-attention semantics in plain torch (see the module docstring); records what each call received."""
    position_ids = kwargs.get("position_ids")
    FLASH_CALLS.append({"q_len": query.shape[2], "position_ids": position_ids})
    batch, heads, q_len, _ = query.shape
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)
    i = torch.arange(q_len)
    allowed = (i[:, None] >= i[None, :]).expand(batch, q_len, q_len).clone()
    if sliding_window is not None:
        allowed &= (i[:, None] - i[None, :]) < sliding_window
    if attention_mask is not None:
        allowed &= attention_mask.bool()[:, None, :]
    elif position_ids is not None and batch == 1:  # one unpadded row whose positions restart: packed sequences
        segment = (position_ids.diff(dim=-1, prepend=position_ids[:, :1] - 1) != 1).cumsum(-1)
        allowed &= segment[:, :, None] == segment[:, None, :]
    bias = torch.zeros(allowed.shape, dtype=query.dtype).masked_fill(~allowed, torch.finfo(query.dtype).min)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[:, None], scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(FAKE_FLASH, fake_flash_attention)
AttentionMaskInterface.register(FAKE_FLASH, flash_attention_mask)


def causal_bias(pos: torch.Tensor, segment: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """Additive ``(B, 1, k, k)`` mask from scratch over original positions ``pos`` (``(B, k)``)."""
    allowed = pos[:, :, None] >= pos[:, None, :]
    if segment is not None:
        allowed &= segment[:, :, None] == segment[:, None, :]
    if window is not None:
        allowed &= (pos[:, :, None] - pos[:, None, :]) < window
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


def rotary_layer_run(model, layer, hidden_sub, pos_sub, mask):
    """A Llama-family layer's class forward on gathered tokens in eager attention, rotary at ``pos_sub``."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return type(layer).forward(
                layer,
                hidden_sub,
                attention_mask=mask,
                position_ids=pos_sub,
                position_embeddings=model.model.rotary_emb(hidden_sub, position_ids=pos_sub),
            )
    finally:
        model.config._attn_implementation = impl


# ----- torch.compile ------------------------------------------------------------------------------


def test_torch_compile_forward_backward_fresh_subsets_and_keep_all():
    """``aot_eager`` traces forward and backward through dynamo and AOTAutograd (inductor codegen takes ~90 s on
    2 cores, so it is not run here; see docs/random_ltd.md)."""
    torch._dynamo.reset()
    model, inputs = build("gpt2")
    del model.transformer.h[2:]  # two layers, the second one patched: half the graph to compile
    model.config.n_layer = 2
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(random_ltd_layer_id=[1]))
    handle.kept_length, handle.record_indices = 5, True
    compiled = torch.compile(model, backend="aot_eager")
    subsets = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        compiled(**inputs).loss.backward()
        assert all(p.grad is not None for p in model.parameters()), "backward must reach every parameter"
        idx = handle.last_indices[1].clone()
        assert idx.shape == (B, 5) and (idx.diff(dim=1) > 0).all()
        subsets.append(idx)
    assert not torch.equal(subsets[0], subsets[1]), "each compiled call must draw a fresh subset"
    handle.kept_length = None
    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    out = compiled(**inputs)
    out.loss.backward()
    got = (out.loss.detach(), out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    want = run(ref, inputs)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


# ----- output_attentions ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_output_attentions_shapes_follow_the_kept_length(family):
    model, inputs = build(family, "eager")
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    handle.kept_length = 6
    out = model(**inputs, output_attentions=True)
    seq_len = ARCHS[family].seq_len
    heads = model.config.num_attention_heads
    expected = [(B, heads, n, n) for n in (seq_len, 6, 6, seq_len)]
    assert [tuple(a.shape) for a in out.attentions] == expected
    for a in out.attentions:  # softmax rows (no dropout in the tiny configs)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), rtol=0, atol=1e-5)


# ----- an instance forward installed before patching (accelerate hook) -----------------------------


class RecordingHook(ModelHook):
    """An accelerate hook that leaves the values alone and records the sequence length it sees."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def pre_forward(self, module, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.lengths.append(hidden.shape[1])
        return args, kwargs


def test_remove_restores_an_earlier_accelerate_hook():
    model, inputs = build("llama")
    ref = copy.deepcopy(model)
    layer = hfde.find_layers(model)[1][1]
    hook = RecordingHook()
    add_hook_to_module(layer, hook)
    hooked_forward = layer.forward
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length = 5
    run(model, inputs)
    assert hook.lengths == [5], "the hook must run inside random-LTD, on the token subset"
    handle.remove()
    assert layer.forward is hooked_forward and layer._hf_hook is hook
    assert_same_run(run(model, inputs), run(ref, inputs))
    assert hook.lengths == [5, T]
    remove_hook_from_module(layer)
    assert layer.forward.__func__ is type(layer).forward
    assert_same_run(run(model, inputs), run(ref, inputs))


# ----- packed sequences -----------------------------------------------------------------------------


def _packed_position_ids(lengths_per_row: list[list[int]]) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in lengths_per_row])


def _segments(pos: torch.Tensor) -> torch.Tensor:
    """Sequence number of each token, by a loop: a new sequence starts wherever the position does not go up by 1."""
    seg = torch.zeros_like(pos)
    for b in range(pos.shape[0]):
        for t in range(1, pos.shape[1]):
            seg[b, t] = seg[b, t - 1] + int(pos[b, t] != pos[b, t - 1] + 1)
    return seg


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_sequence_masks_from_masking_utils_stay_exact(impl):
    """No attention mask, no cache and restarting position_ids: masking_utils builds a block-diagonal causal mask, which
    random-LTD restricts by rows and columns; kept tokens equal the layer run on their own packed sequences."""
    model, _ = build("llama", impl)
    ids = torch.randint(0, V, (2, T))
    pos = _packed_position_ids([[7, 9], [4, 5, 7]])
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length, handle.record_indices = 8, True
    records, removers = capture(handle)
    model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)  # masking_utils packs only without a cache
    for r in removers:
        r.remove()
    seg = _segments(pos)
    for layer_id, layer in zip(handle.layer_ids, handle.layers):
        hidden_in, hidden_out = records[layer_id]
        idx = handle.last_indices[layer_id]
        pos_sub = gather_rows(pos, idx)
        expected = rotary_layer_run(
            model, layer, gather_rows(hidden_in, idx), pos_sub, causal_bias(pos_sub, gather_rows(seg, idx))
        )
        torch.testing.assert_close(gather_rows(hidden_out, idx), expected, rtol=1e-5, atol=1e-6)
        dropped = dropped_mask(idx, T)
        assert torch.equal(hidden_out[dropped], hidden_in[dropped])


# ----- faked flash attention ----------------------------------------------------------------------


def _flash(family: str, **config):
    model, inputs = build(family)
    for key, value in config.items():
        setattr(model.config, key, value)
    model.config._attn_implementation = FAKE_FLASH
    FLASH_CALLS.clear()
    return model, inputs


@pytest.mark.parametrize("padded", [False, True], ids=["one-row", "padded-batch"])
def test_flash_drops_position_ids_and_stays_exact(padded):
    """Gathered positions are not contiguous, so flash would read them as packed sequences; random-LTD must not
    pass position_ids to flash in the dropped layers (rotary still gets the original positions)."""
    model, inputs = _flash("llama")
    if not padded:
        ids = inputs["input_ids"][:1]
        inputs = {"input_ids": ids, "position_ids": torch.arange(T)[None], "labels": ids}
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length, handle.record_indices = 7, True
    records, removers = capture(handle)
    model(**inputs)
    for r in removers:
        r.remove()
    assert [c["q_len"] for c in FLASH_CALLS] == [T, 7, 7, T]
    assert [c["position_ids"] is None for c in FLASH_CALLS] == [False, True, True, False]
    am = inputs.get("attention_mask")
    for layer_id, layer in zip(handle.layer_ids, handle.layers):
        hidden_in, hidden_out = records[layer_id]
        idx = handle.last_indices[layer_id]
        pos_sub = gather_rows(inputs["position_ids"].expand(idx.shape[0], T), idx)
        mask = causal_bias(pos_sub)
        if am is not None:
            mask = mask.masked_fill(gather_rows(am, idx)[:, None, None, :] == 0, torch.finfo(torch.float32).min)
        expected = rotary_layer_run(model, layer, gather_rows(hidden_in, idx), pos_sub, mask)
        real = gather_rows(am, idx).bool() if am is not None else torch.ones(idx.shape, dtype=torch.bool)
        # padded query rows attend to nothing; flash leaves them undefined, so only real tokens are compared
        torch.testing.assert_close(gather_rows(hidden_out, idx)[real], expected[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "case, family, config, position_ids",
    [("sliding window shorter than the sequence", "mistral", {"sliding_window": 5}, torch.arange(T)[None])],
)
def test_flash_fallbacks_run_full_length_with_one_warning(case, family, config, position_ids):
    model, _ = _flash(family, **config)
    ref = copy.deepcopy(model)
    ids = torch.randint(0, V, (1, T))
    inputs = {"input_ids": ids, "position_ids": position_ids, "labels": ids}
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length, handle.record_indices = 6, True
    with CaptureLogger(tf.utils.logging.get_logger(rl.__name__)) as cl:
        got = run(model, inputs)
        run(model, inputs)
    assert cl.out.count("flash attention with a sliding window shorter than the sequence") == 1, case
    assert handle.last_indices == {}, "no subset may be drawn"
    assert handle.kept_tokens_seen == handle.full_tokens_seen > 0, "a full-length layer counts its whole sequence"
    assert all(c["q_len"] == T for c in FLASH_CALLS)
    assert_same_run(got, run(ref, inputs))
    if family == "mistral":  # a window covering the sequence is exact on indices, so dropping goes ahead
        model.config.sliding_window = T
        run(model, inputs)
        assert sorted(handle.last_indices) == [1, 2]
