"""Every registered architecture, from the registry: keep-all and forced gather/scatter are bit-identical to an
unpatched deep copy, and dropped runs match the original layer recomputed from scratch (fp32 and bf16 autocast).

Oracles: an unpatched ``copy.deepcopy`` of the model (logits, loss and every gradient), and the layer class's own
``forward`` on tokens gathered by a loop, with a mask freshly built by ``transformers.masking_utils`` and rotary
embeddings recomputed at the kept positions (``_random_ltd_archs.fresh_layer_run``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from _random_ltd_archs import (
    ARCHS,
    B,
    assert_same_run,
    build,
    capture,
    dropped_mask,
    fresh_layer_run,
    gather_rows,
    ltd_config,
    run,
)

import hf_data_efficiency as hfde
from hf_data_efficiency.routing.architectures import supported_layer_classes

tf.logging.set_verbosity_error()

FAMILIES = sorted(ARCHS)
IMPLS = ["eager", "sdpa"]


def test_every_registered_architecture_has_a_test_entry():
    registered = {name for name in supported_layer_classes() if name.startswith("transformers.")}
    tested = {arch.layer for arch in ARCHS.values()}
    assert registered == tested, (
        f"registered without a test entry: {registered - tested}; stale: {tested - registered}"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_entry_builds_the_registered_layer_and_its_default_keep_positions(family):
    model, _ = build(family)
    found = hfde.find_layers(model)
    assert len(found) == 4 and {spec.name for _, _, spec in found} == {ARCHS[family].layer}
    assert all(f"{type(module).__module__}.{type(module).__qualname__}" == spec.name for _, module, spec in found)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    assert handle.layers == [found[1][1], found[2][1]]
    expected_keep = (0,) if ARCHS[family].keeps_cls else ()
    assert all(spec.keep_positions == expected_keep for _, _, spec in found)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_bit_identical(family, impl):
    model, inputs = build(family, impl)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    for kept in (ARCHS[family].seq_len, 32):
        handle.kept_length = kept
        assert_same_run(run(model, inputs), run(ref, inputs))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_forced_gather_scatter_at_full_length_is_bit_identical(family, impl):
    """``force_gather`` at kept = T runs the whole gather / mask-restriction / scatter path on every position."""
    model, inputs = build(family, impl)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    seq_len = ARCHS[family].seq_len
    handle.kept_length, handle.force_gather, handle.record_indices = seq_len, True, True
    got, want = run(model, inputs), run(ref, inputs)
    if (family, impl) == ("gpt2", "eager"):
        # forward bit-identical; GPT-2's eager attention backward sums in another float32 order once its input is a
        # gathered copy (measured <= 2e-7 relative, in the layers below and inside the patched attention)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        for name, grad in want[2].items():
            torch.testing.assert_close(got[2][name], grad, rtol=1e-6, atol=1e-6 * grad.abs().max().item())
    else:
        assert_same_run(got, want)
    assert sorted(handle.last_indices) == [1, 2], "the gather path must have run in both patched layers"
    assert all(torch.equal(idx, torch.arange(seq_len).expand(B, seq_len)) for idx in handle.last_indices.values())


def _check_dropping_against_oracle(family, model, handle, inputs, kept, autocast=False):
    records, removers = capture(handle)
    handle.kept_length, handle.record_indices = kept, True
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**inputs).loss
    loss.backward()
    for r in removers:
        r.remove()
    assert sorted(records) == handle.layer_ids == [1, 2]
    for layer_id, layer in zip(handle.layer_ids, handle.layers):
        hidden_in, hidden_out = records[layer_id]
        idx = handle.last_indices[layer_id]
        assert idx.shape == (B, kept)
        assert (idx.diff(dim=1) > 0).all(), "subset must be strictly increasing (order preserved, no repeats)"
        if ARCHS[family].keeps_cls:
            assert (idx[:, 0] == 0).all(), "CLS at position 0 is kept by default"
        dropped = dropped_mask(idx, hidden_in.shape[1])
        assert torch.equal(hidden_out[dropped], hidden_in[dropped].to(hidden_out.dtype))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            expected = fresh_layer_run(family, model, layer, gather_rows(hidden_in, idx), inputs, idx)
        assert torch.equal(gather_rows(hidden_out, idx), expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_matches_layer_oracle(family, impl):
    model, inputs = build(family, impl)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    _check_dropping_against_oracle(family, model, handle, inputs, kept=7)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_keep_all_and_dropping(family):
    """bf16 autocast: keep-all and the forced gather path equal vanilla bf16 bit for bit; under dropping, kept
    tokens equal the original layer recomputed in bf16 on the gathered tokens and dropped ones pass through."""
    model, inputs = build(family)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(family))

    def bf16_run(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(123)
            m.zero_grad(set_to_none=True)
            out = m(**inputs)
        out.loss.backward()
        return out.loss.detach(), out.logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    vanilla = bf16_run(ref)
    assert vanilla[1].dtype == torch.bfloat16, "autocast must have produced bf16 logits"
    for force in (False, True):
        handle.kept_length, handle.force_gather = ARCHS[family].seq_len, force
        assert_same_run(bf16_run(model), vanilla)
    handle.force_gather = False
    _check_dropping_against_oracle(family, model, handle, inputs, kept=6, autocast=True)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
