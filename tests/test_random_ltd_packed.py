"""Random-LTD on packed (padding-free) rows: ``DataCollatorWithFlattening`` batches, in the ``position_ids`` form and
the ``return_flash_attn_kwargs=True`` form, with sdpa, eager and a flash-attention stand-in.

The per-document rule: each document of a packed row keeps ``min(len, kept)`` of its own tokens, sorted and uniform
within the document. Oracles: hook counts of the tokens each dropped layer's attention sees, the unpatched model on
the same packed batch (keep-all), each document alone (document independence), and the varlen arguments
recomputed here from the documents' lengths.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _random_ltd_archs import V, build, ltd_config
from transformers import AttentionInterface, DataCollatorWithFlattening
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

import hf_data_efficiency as hfde

FAMILIES = ("gpt2", "llama", "mistral")  # transformers packs these decoders (block-diagonal masks, varlen kwargs)
LENGTHS = [9, 3, 6, 12]  # documents of one packed row
FAKE_VARLEN = "fake_flash_varlen_for_tests"
CALLS: list[dict] = []


def fake_flash_varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Flash-attention input semantics in plain torch: explicit ``cu_seq_lens_q/k`` first, else restarting
    ``position_ids`` of one row, else the 2-D padding mask; causal within each document."""
    cu, position_ids = kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids")
    CALLS.append({"q_len": query.shape[2], "cu_seq_lens_q": cu, "max_length_q": kwargs.get("max_length_q")})
    batch, heads, q_len, _ = query.shape
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)
    i = torch.arange(q_len)
    allowed = (i[:, None] >= i[None, :]).expand(batch, q_len, q_len).clone()
    if cu is not None:
        segment = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu.diff().long())[None]
        allowed &= segment[:, :, None] == segment[:, None, :]
    elif attention_mask is not None:
        allowed &= attention_mask.bool()[:, None, :]
    elif position_ids is not None and batch == 1:
        segment = (position_ids.diff(dim=-1, prepend=position_ids[:, :1] - 1) != 1).cumsum(-1)
        allowed &= segment[:, :, None] == segment[:, None, :]
    bias = torch.zeros(allowed.shape, dtype=query.dtype).masked_fill(~allowed, torch.finfo(query.dtype).min)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[:, None], scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(FAKE_VARLEN, fake_flash_varlen)
AttentionMaskInterface.register(FAKE_VARLEN, flash_attention_mask)


def packed_batch(lengths=LENGTHS, flash_kwargs: bool = False, seed: int = 0, change: int | None = None) -> dict:
    """One flattened row of documents of ``lengths`` (document ``change`` gets other tokens)."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(2, V, (n,), generator=g).tolist() for n in lengths]
    if change is not None:
        docs[change] = torch.randint(2, V, (lengths[change],), generator=torch.Generator().manual_seed(99)).tolist()
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)([{"input_ids": d} for d in docs])
    return {**batch, "use_cache": False}


def model_for(family: str, impl: str):
    model, _ = build(family, "sdpa" if impl == FAKE_VARLEN else impl)
    model.config._attn_implementation = impl
    return model


def attention_of(layer):
    return getattr(layer, "self_attn", None) or layer.attn


def count_attention_tokens(handle) -> tuple[dict[int, list[int]], list]:
    """Pre-hooks on each patched layer's attention recording how many tokens it sees, by layer id."""
    seen: dict[int, list[int]] = {i: [] for i in handle.layer_ids}
    removers = []
    for layer_id, layer in zip(handle.layer_ids, handle.layers):

        def hook(module, args, kwargs, layer_id=layer_id):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[layer_id].append(hidden.shape[1])

        removers.append(attention_of(layer).register_forward_pre_hook(hook, with_kwargs=True))
    return seen, removers


@pytest.mark.parametrize("impl", ["sdpa", "eager", FAKE_VARLEN])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("flash_kwargs", [False, True], ids=["position_ids", "flash_kwargs"])
def test_each_document_keeps_min_length_kept_of_its_own_tokens(family, impl, flash_kwargs):
    model = model_for(family, impl)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    handle.kept_length, handle.record_indices = 5, True
    seen, removers = count_attention_tokens(handle)
    CALLS.clear()
    model(**packed_batch(flash_kwargs=flash_kwargs))
    for r in removers:
        r.remove()
    kept = [min(n, 5) for n in LENGTHS]
    bounds = torch.tensor([0, *LENGTHS]).cumsum(0).tolist()
    for layer_id in handle.layer_ids:
        assert seen[layer_id] == [sum(kept)]
        idx = handle.last_indices[layer_id][0]
        assert (idx.diff() > 0).all()
        assert [int(((idx >= a) & (idx < b)).sum()) for a, b in zip(bounds, bounds[1:])] == kept
    assert handle.kept_tokens_seen == len(handle.layer_ids) * sum(kept)
    if impl == FAKE_VARLEN:  # the dropped layers get the varlen arguments of their kept tokens
        cu = torch.tensor([0, *kept]).cumsum(0).tolist()
        dropped = [c for c in CALLS if c["q_len"] == sum(kept)]
        assert len(dropped) == len(handle.layer_ids)
        assert all(c["cu_seq_lens_q"].tolist() == cu and c["max_length_q"] == max(kept) for c in dropped)


@pytest.mark.parametrize("impl", ["sdpa", FAKE_VARLEN])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("flash_kwargs", [False, True], ids=["position_ids", "flash_kwargs"])
def test_keep_all_equals_the_unpatched_model_on_the_same_packed_batch(family, impl, flash_kwargs):
    model = model_for(family, impl)
    ref = copy.deepcopy(model)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    handle.kept_length, handle.force_gather = max(LENGTHS), True  # every token kept, through gather and scatter
    batch = packed_batch(flash_kwargs=flash_kwargs)
    got, want = model(**batch), ref(**batch)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    got.loss.backward()
    want.loss.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("impl", ["sdpa", "eager", FAKE_VARLEN])
@pytest.mark.parametrize("family", FAMILIES)
def test_documents_are_independent(family, impl):
    """Under a fixed seed (the same subsets), other tokens in one document leave every other document's logits as
    they were: no attention crosses documents in the dropped layers."""
    model = model_for(family, impl)
    handle = hfde.apply_random_ltd(model, ltd_config(family))
    handle.kept_length = 4
    outs = []
    for change in (None, 2):
        torch.manual_seed(7)
        outs.append(model(**packed_batch(change=change)).logits[0])
    bounds = torch.tensor([0, *LENGTHS]).cumsum(0).tolist()
    for d, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if d == 2:
            assert not torch.allclose(outs[0][a:b], outs[1][a:b])
        else:
            torch.testing.assert_close(outs[0][a:b], outs[1][a:b], rtol=1e-5, atol=1e-6)


# ----- through the Trainer ----------------------------------------------------------------------------------------
class PositionRecordingTrainer(hfde.DataEfficiencyTrainer):
    """Records each micro-batch's ``position_ids`` and the kept length it trains at."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.records.append((inputs["position_ids"].clone(), self.random_ltd_handle.kept_length))
        return super().training_step(model, inputs, num_items_in_batch)


def flattening_trainer(out, **overrides):
    from _helpers import training_kwargs
    from tiny import RANDOM_LTD_FLAGS, make_dataset, tiny_model

    args = hfde.DataEfficiencyTrainingArguments(
        **training_kwargs(out, **{"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1, **overrides}),
        **{**RANDOM_LTD_FLAGS, "random_ltd_layer_id": [1]},
    )
    trainer = PositionRecordingTrainer(
        model=tiny_model(dropout=0.0),
        args=args,
        train_dataset=make_dataset().remove_columns("attention_mask"),
        data_collator=DataCollatorWithFlattening(),
    )
    trainer.records = []
    return trainer


def documents(position_ids: torch.Tensor) -> list[int]:
    """Document lengths of a flattened row, by a loop over its positions."""
    lengths = []
    for p in position_ids.reshape(-1).tolist():
        if p == 0:
            lengths.append(0)
        lengths[-1] += 1
    return lengths


def test_trainer_with_a_flattening_collator_keeps_per_document_and_builds_a_packed_mask(tmp_path):
    """The issue's probe (batch 6, documents of 6-40 tokens): the dropped layer sees sum(min(len, kept)) tokens at
    every step, and, since the Trainer's forward makes no KV cache, a block-diagonal mask (no cross-document
    attention)."""
    trainer = flattening_trainer(tmp_path, max_steps=6)
    layer = trainer.random_ltd_handle.layers[0]
    seen, masks = [], []
    layer.attn.register_forward_pre_hook(lambda m, a, k: seen.append(a[0].shape[1]), with_kwargs=True)
    layer.register_forward_pre_hook(lambda m, a, k: masks.append(a[2] if len(a) > 2 else None), with_kwargs=True)
    trainer.train()
    assert len(seen) == len(trainer.records) == 6
    for count, (positions, kept) in zip(seen, trainer.records):
        assert count == sum(min(n, kept) for n in documents(positions))
    assert seen[0] < trainer.records[0][0].shape[-1]  # tokens really dropped at the first kept length
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["data_efficiency/consumed_samples"] for h in logs] == [6 * k for k in range(1, 7)]  # documents
    for mask, (positions, _) in zip(masks, trainer.records):
        bounds = torch.tensor([0, *documents(positions)]).cumsum(0)
        doc = torch.bucketize(torch.arange(positions.shape[-1]), bounds[1:], right=True)
        assert mask is not None and mask.dim() == 4
        assert torch.equal(
            mask[0, 0].bool(), (doc[:, None] == doc[None, :]) & torch.ones_like(mask[0, 0]).bool().tril()
        )


@pytest.mark.parametrize("packed", [False, True], ids=["padded-seqlen-curriculum", "packed"])
def test_trainer_under_torch_compile_matches_eager(tmp_path, packed):
    """Random-LTD trains under --torch_compile with eager's per-step losses (shapes vary every step: the seqlen
    curriculum's truncation, or the packed row's length); the kept positions are marked dynamic, so the kept lengths
    do not recompile without bound."""
    from _helpers import training_kwargs
    from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, collate, make_dataset, tiny_model

    def losses(compile_: bool) -> list[float]:
        torch._dynamo.reset()
        kwargs = {"max_steps": 5, "torch_compile": compile_}
        if compile_:  # dynamo and AOTAutograd; inductor's codegen is slow on 2 cores
            kwargs["torch_compile_backend"] = "aot_eager"
        if packed:
            trainer = flattening_trainer(tmp_path / str(compile_), **kwargs)
        else:
            args = hfde.DataEfficiencyTrainingArguments(
                **training_kwargs(tmp_path / str(compile_), **kwargs), **CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS
            )
            trainer = hfde.DataEfficiencyTrainer(
                model=tiny_model(dropout=0.0), args=args, train_dataset=make_dataset(), data_collator=collate
            )
        trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    eager = losses(False)
    torch._dynamo.utils.counters.clear()
    compiled = losses(True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert len(eager) == len(compiled) == 5
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert 0 < graphs <= 24  # measured: see docs/random_ltd.md


def test_the_prepared_gpu_check_runs_in_its_cpu_dry_mode(tmp_path):
    """``scripts/benchmarks/gpu_check.sh --dry-run``: the GPU check's code paths (every arm of bench_packed.py, the
    two-process DDP check) on CPU with a tiny model, so the script is ready when a GPU is lent."""
    import json
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        ["bash", "scripts/benchmarks/gpu_check.sh", "--dry-run"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((tmp_path / "dry_run.json").read_text())["rows"]
    arms = {(r["data"], r["path"], r["random_ltd"], r["compiled"]) for r in rows}
    assert len(rows) == len(arms) == 16  # ptb and bbc x padded/packed x random-LTD off/on x eager/compiled
    assert all(r["real_tokens_per_s"] > 0 for r in rows) and all(0 < r["theory"] < 1 for r in rows if r["random_ltd"])
    assert (tmp_path / "two_process.md").read_text().count("parameters equal across ranks: True") == 2


def test_layer_token_lr_schedule_on_packed_rows_counts_the_documents_real_tokens(tmp_path):
    """On packed rows each step counts G documents of the training set's lengths, each keeping min(len, kept) tokens
    in the dropped layer (1 of 3) and len in the others: every logged LR equals base x f(c) recomputed from the
    dataset's rows by a loop, not DeepSpeed's formula (every document at max_value); and the expected count is
    within 15% of the tokens the dropped layer really saw."""
    trainer = flattening_trainer(tmp_path, max_steps=6, warmup_steps=2, layer_token_lr_schedule=True)
    seen = []
    layer = trainer.random_ltd_handle.layers[0]
    layer.attn.register_forward_pre_hook(lambda m, a, k: seen.append(a[0].shape[1]), with_kwargs=True)
    trainer.train()
    lengths = [len(row) for row in trainer.train_dataset["input_ids"]]
    kept = [k for _, k in trainer.records]

    def layer_tokens(step0: int) -> float:
        mean = sum(min(n, kept[step0]) + 2 * n for n in lengths) / len(lengths)
        return round(6 * mean)

    warmup, total = layer_tokens(0) + layer_tokens(1), sum(layer_tokens(j) for j in range(6))
    formula = 6 * sum(k + 2 * 40 for k in kept)  # DeepSpeed's count of the same steps
    assert total < 0.8 * formula
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 6
    for h in logged:
        consumed = sum(layer_tokens(j) for j in range(h["step"] - 1))
        factor = consumed / warmup if consumed < warmup else 1 - (consumed - warmup) / (total - warmup)
        assert h["learning_rate"] == pytest.approx(1e-3 * factor)
    expected_dropped = sum(6 * sum(min(n, k) for n in lengths) / len(lengths) for k in kept)
    assert sum(seen) == pytest.approx(expected_dropped, rel=0.15)
