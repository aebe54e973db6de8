"""random-LTD on real transformers models, each checked against an independent oracle.

Oracles: an unpatched deep copy (bit-identical no-drop steps, ``remove()``, eval), and a
from-scratch run of the original layer on the gathered tokens with a freshly built mask (and, for
Llama-family layers, freshly computed rotary embeddings at the kept positions).
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import transformers as tf
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

import hf_data_efficiency as hfde
from hf_data_efficiency.config import RandomLTDConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
tf.logging.set_verbosity_error()

B, T, V = 3, 16, 64
FAMILIES = ["gpt2", "bert", "vit", "llama", "qwen2", "mistral"]
DECODERS = {"gpt2", "llama", "qwen2", "mistral"}


def _config(family: str, impl: str):
    common = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=4)
    if family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=V, n_positions=32, n_embd=32, n_layer=4, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
        )
    elif family == "bert":
        cfg = tf.BertConfig(
            vocab_size=V,
            intermediate_size=64,
            max_position_embeddings=32,
            hidden_dropout_prob=0,
            attention_probs_dropout_prob=0,
            **common,
        )
    elif family == "vit":
        cfg = tf.ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=3,
            intermediate_size=64,
            hidden_dropout_prob=0,
            attention_probs_dropout_prob=0,
            num_labels=3,
            **common,
        )
    else:
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
        cfg = cls(vocab_size=V, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64, **common)
    cfg._attn_implementation = impl
    return cfg


def build(family: str, impl: str = "sdpa", seed: int = 0):
    """A tiny model in training mode and a batch with padding (left padding for decoders)."""
    torch.manual_seed(seed)
    cfg = _config(family, impl)
    if family == "gpt2":
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "bert":
        model = tf.BertForMaskedLM(cfg)
    elif family == "vit":
        model = tf.ViTForImageClassification(cfg)
    else:
        model = tf.AutoModelForCausalLM.from_config(cfg)
    assert model.config._attn_implementation == impl
    model.train()
    g = torch.Generator().manual_seed(seed + 1)
    if family == "vit":
        return model, {"pixel_values": torch.randn(B, 3, 16, 16, generator=g), "labels": torch.tensor([0, 1, 2])}
    ids = torch.randint(0, V, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    if family in DECODERS:
        am[1, :5] = 0  # left padding
        am[2, :2] = 0
        inputs = {"input_ids": ids, "attention_mask": am, "position_ids": (am.cumsum(-1) - 1).clamp(min=0)}
    else:
        am[1, 11:] = 0  # right padding
        inputs = {"input_ids": ids, "attention_mask": am}
    labels = ids.masked_fill(am == 0, -100)
    return model, {**inputs, "labels": labels}


def ltd_config(**kw) -> RandomLTDConfig:
    base = dict(min_value=16, max_value=32, require_steps=10, seq_per_step=16)
    base.update(kw)
    return RandomLTDConfig(**base)


def logits_of(out):
    return out.logits


def run(model, inputs, seed=123):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    return out.loss.detach(), logits_of(out).detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_run(a, b):
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_no_drop_is_bit_identical(family, impl):
    model, inputs = build(family, impl)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(max_value=17 if family == "vit" else 32))
    seq_len = 17 if family == "vit" else T
    for kept in (seq_len, 32):
        handle.kept_length = kept
        assert_same_run(run(model, inputs), run(ref, inputs))


def _fresh_layer_run(family, model, layer, hidden_sub, inputs, idx):
    """Original layer class forward on gathered tokens with freshly built masks/positions (no handle involved)."""
    forward = type(layer).forward
    cfg = model.config
    am = inputs.get("attention_mask")
    am_sub = None if am is None else torch.stack([am[b, idx[b]] for b in range(idx.shape[0])])
    if family == "vit":
        return forward(layer, hidden_sub, None)
    if family == "bert":
        return forward(
            layer, hidden_sub, create_bidirectional_mask(config=cfg, inputs_embeds=hidden_sub, attention_mask=am_sub)
        )
    mask = create_causal_mask(
        config=cfg, inputs_embeds=hidden_sub, attention_mask=am_sub, past_key_values=None, position_ids=None
    )
    pos_sub = torch.stack([inputs["position_ids"][b, idx[b]] for b in range(idx.shape[0])])
    if family == "gpt2":
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


def _capture(handle):
    records = {}

    def hook(layer_id):
        def fn(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            records[layer_id] = (hidden.detach().clone(), output.detach().clone())

        return fn

    removers = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in zip(handle.layer_ids, handle.layers)
    ]
    return records, removers


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_matches_layer_oracle(family, impl):
    model, inputs = build(family, impl)
    handle = hfde.apply_random_ltd(model, ltd_config(max_value=17 if family == "vit" else 32))
    handle.kept_length = 7
    handle.record_indices = True
    records, removers = _capture(handle)
    torch.manual_seed(5)
    model(**inputs).loss.backward()
    assert sorted(records) == handle.layer_ids == [1, 2]
    for layer_id, layer in zip(handle.layer_ids, handle.layers):
        hidden_in, hidden_out = records[layer_id]
        idx = handle.last_indices[layer_id]
        seq_len = hidden_in.shape[1]
        assert idx.shape == (B, 7)
        assert (idx.diff(dim=1) > 0).all(), "subset must be strictly increasing (order preserved, no repeats)"
        if family in ("bert", "vit"):
            assert (idx[:, 0] == 0).all(), "CLS at position 0 is kept by default"
        dropped = torch.ones(B, seq_len, dtype=torch.bool)
        dropped[torch.arange(B)[:, None], idx] = False
        assert torch.equal(hidden_out[dropped], hidden_in[dropped])
        gathered = torch.stack([hidden_in[b, idx[b]] for b in range(B)])
        with torch.no_grad():
            expected = _fresh_layer_run(family, model, layer, gathered, inputs, idx)
        kept_out = torch.stack([hidden_out[b, idx[b]] for b in range(B)])
        assert torch.equal(kept_out, expected)
    for r in removers:
        r.remove()


def test_sliding_window_mask_restricted_by_original_positions():
    """Mistral eager with a window shorter than the sequence: the window must apply to original positions."""
    torch.manual_seed(0)
    cfg = _config("mistral", "eager")
    cfg.sliding_window = 5
    model = tf.MistralForCausalLM(cfg).train()
    ids = torch.randint(0, V, (B, T))
    pos = torch.arange(T).expand(B, T)
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length = 9
    handle.record_indices = True
    records, _ = _capture(handle)
    model(input_ids=ids, labels=ids)
    layer = handle.layers[0]
    hidden_in, hidden_out = records[1]
    idx = handle.last_indices[1]
    p = idx  # original positions of the kept tokens
    allowed = (p[:, None, :, None] >= p[:, None, None, :]) & (p[:, None, :, None] - p[:, None, None, :] < 5)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    gathered = torch.stack([hidden_in[b, idx[b]] for b in range(B)])
    with torch.no_grad():
        expected = type(layer).forward(
            layer,
            gathered,
            attention_mask=mask,
            position_ids=p,
            position_embeddings=model.model.rotary_emb(gathered, position_ids=p),
        )
    kept_out = torch.stack([hidden_out[b, idx[b]] for b in range(B)])
    torch.testing.assert_close(kept_out, expected, rtol=1e-5, atol=1e-6)
    del pos


@pytest.mark.parametrize("family", ["gpt2", "bert", "vit", "llama"])
def test_remove_and_eval_are_vanilla(family):
    model, inputs = build(family)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(max_value=17 if family == "vit" else 32))
    handle.kept_length = 5
    dropped_run = run(model, inputs)
    assert not torch.equal(dropped_run[1], run(ref, inputs)[1]), "dropping must change training outputs"
    model.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(model(**inputs)), logits_of(ref(**inputs)), rtol=0, atol=0)
    model.train(), ref.train()
    layers = handle.layers
    handle.remove()
    assert all("forward" not in layer.__dict__ and not hasattr(layer, "_random_ltd_handle") for layer in layers)
    assert_same_run(run(model, inputs), run(ref, inputs))


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_state_dict_and_save_pretrained_roundtrip(family, tmp_path):
    model, inputs = build(family)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length = 5
    run(model, inputs)  # a dropping step must not leave anything behind
    assert list(model.state_dict()) == list(ref.state_dict())
    model.save_pretrained(tmp_path)
    loaded = type(ref).from_pretrained(tmp_path).eval()
    assert sorted(loaded.state_dict()) == sorted(ref.state_dict())
    model.eval()
    with torch.no_grad():
        assert torch.equal(logits_of(loaded(**inputs)), logits_of(model(**inputs)))
    assert handle.kept_length == 5


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_gradient_checkpointing_matches_plain_run(family):
    model, inputs = build(family)
    ckpt = copy.deepcopy(model)
    ckpt.activation_checkpointing_enable()
    handles = [hfde.apply_random_ltd(m, ltd_config()) for m in (model, ckpt)]
    for h in handles:
        h.kept_length = 6
    calls = []
    mlp = next(m for name, m in handles[1].layers[0].named_modules() if name.endswith("mlp") or name == "intermediate")
    mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    plain, checkpointed = run(model, inputs, seed=7), run(ckpt, inputs, seed=7)
    assert len(calls) == 2, "the checkpointed layer must be recomputed in backward"
    assert_same_run(plain, checkpointed)


def test_external_checkpoint_wrapper_resamples_identically():
    """Sampling inside a torch.utils.checkpoint region: the recomputation must draw the same subset."""
    model, _ = build("gpt2")
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length = 5
    layer = handle.layers[0]
    hidden = torch.randn(B, T, 32)
    grads = []
    for wrap in (False, True):
        x = hidden.clone().requires_grad_(True)
        torch.manual_seed(11)
        out = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False) if wrap else layer(x)
        (out * torch.linspace(-1, 1, 32)).sum().backward()
        grads.append((out.detach(), x.grad, [p.grad.clone() for p in layer.parameters()]))
        layer.zero_grad(set_to_none=True)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][2], grads[1][2]))


def test_output_hidden_states_shapes_and_passthrough():
    model, inputs = build("gpt2")
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length = 4
    handle.record_indices = True
    out = model(**inputs, output_hidden_states=True)
    vanilla = ref(**inputs, output_hidden_states=True)
    assert [h.shape for h in out.hidden_states] == [h.shape for h in vanilla.hidden_states]
    idx = handle.last_indices[1]
    dropped = torch.ones(B, T, dtype=torch.bool)
    dropped[torch.arange(B)[:, None], idx] = False
    assert torch.equal(out.hidden_states[2][dropped], out.hidden_states[1][dropped])


def test_bf16_autocast_cpu():
    model, inputs = build("llama")
    handle = hfde.apply_random_ltd(model, ltd_config())
    handle.kept_length = 6
    handle.record_indices = True
    records, _ = _capture(handle)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    hidden_in, hidden_out = records[1]
    idx = handle.last_indices[1]
    dropped = torch.ones(B, T, dtype=torch.bool)
    dropped[torch.arange(B)[:, None], idx] = False
    assert torch.equal(hidden_out[dropped], hidden_in[dropped].to(hidden_out.dtype))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_scheduler_driven_update_and_counters():
    model, inputs = build("gpt2")
    cfg = ltd_config(min_value=16, max_value=32, require_steps=4, seq_per_step=8, global_batch_size=B)
    handle = hfde.apply_random_ltd(model, cfg)
    assert (handle.num_layers, handle.total_layers) == (2, 4)
    seen = []
    for step in range(3):
        seen.append(handle.update(step))
        model(**inputs)
    # 16 + 16 * step / 4, rounded down to a multiple of 8: 16, 16, 24
    assert seen == [16, 16, 24]
    expected = sum(B * (k * 2 + 32 * 2) for k in seen)
    assert handle.consumed_layer_tokens == expected
    # actual: kept tokens in the 2 patched layers (capped by the sequence length 16) + full length elsewhere
    assert handle.actual_layer_tokens == 3 * B * (16 * 2 + 16 * 2)
    state = json.loads(json.dumps(handle.state_dict()))
    fresh = hfde.apply_random_ltd(build("gpt2")[0], cfg)
    fresh.load_state_dict(state)
    assert fresh.update(3) == handle.update(3)
    assert fresh.consumed_layer_tokens == handle.consumed_layer_tokens


def test_deepspeed_section_and_keep_positions_override():
    model, inputs = build("gpt2")
    section = {
        "enabled": True,
        "random_ltd_schedule": {
            "min_value": 16,
            "max_value": 32,
            "schedule_type": "fixed_linear",
            "schedule_config": {"require_steps": 10, "seq_per_step": 16},
        },
        "random_ltd_layer_id": [2, 1, 3],
        "random_ltd_layer_num": 3,
        "keep_positions": [0, -1],
    }
    handle = hfde.apply_random_ltd(model, section)
    assert handle.layer_ids == [1, 2, 3]
    handle.kept_length = 3
    handle.record_indices = True
    for _ in range(5):
        model(**inputs)
        for idx in handle.last_indices.values():
            assert (idx[:, 0] == 0).all() and (idx[:, -1] == T - 1).all()


def test_deepcopy_of_patched_model_is_independent():
    model, inputs = build("gpt2")
    handle = hfde.apply_random_ltd(model, ltd_config())
    clone = copy.deepcopy(model)
    assert clone.transformer.h[1].forward.__self__ is clone.transformer.h[1]
    handle.kept_length = 4
    clone_handle = clone.transformer.h[1]._random_ltd_handle
    assert clone_handle is not handle and clone_handle.model is clone
    clone_handle.remove()
    assert "forward" in model.transformer.h[1].__dict__
