"""random-LTD on real transformers models, each checked against an independent oracle.

Oracles: an unpatched deep copy (``remove()``, eval, checkpointing), and a from-scratch run of the original
layer on the gathered tokens with a freshly built mask (and, for Llama-family layers, freshly computed rotary
embeddings at the kept positions). The per-architecture keep-all, forced-gather, drop/recompute and bf16 tests
run over the whole registry in ``test_random_ltd_architectures.py``.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as tf
from _random_ltd_archs import B, T, V, assert_same_run, build, ltd_config, run
from _random_ltd_archs import capture as _capture

import hf_data_efficiency as hfde

tf.logging.set_verbosity_error()


def logits_of(out):
    return out.logits


def test_sliding_window_mask_restricted_by_original_positions():
    """Mistral eager with a window shorter than the sequence: the window must apply to original positions."""
    model, _ = build("mistral", "eager")
    model.config.sliding_window = 5
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
    handle = hfde.apply_random_ltd(model, ltd_config(family))
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
