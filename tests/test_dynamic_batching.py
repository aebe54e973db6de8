"""Token-budget (dynamic) batching, each property against an independent oracle: DeepSpeed's own
``batch_by_seqlens`` and ``scale_lr``, DeepSpeed's ``CurriculumScheduler`` for eligibility and truncation, from-scratch
budget and greedy-maximality checks, the gradient of one big batch, and uninterrupted runs for resume."""

import json

import numpy as np
import pytest
import torch
from _helpers import torchrun, training_kwargs
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from deepspeed.runtime.data_pipeline.data_sampling.variable_batch_size_and_lr import batch_by_seqlens, scale_lr
from tiny import (
    CURRICULUM_FLAGS,
    SEQLEN_METRIC,
    TRUNCATE_METRIC,
    RecordingTrainer,
    collate,
    make_dataset,
    sample_lengths,
    tiny_model,
)

from hf_data_efficiency import DataEfficiencyConfig, DataEfficiencyTrainingArguments
from hf_data_efficiency.batching.budget import pack_micro_batches
from hf_data_efficiency.batching.sampler import TokenBudgetBatchSampler
from hf_data_efficiency.config import DynamicBatchingConfig
from hf_data_efficiency.engine import DataEfficiencyEngine, ResumeError

LENGTHS = np.random.default_rng(7).integers(3, 60, size=400)
CURRICULUM = {
    "enabled": True,
    "curriculum_metrics": {"seqlen": SEQLEN_METRIC, "seqlen_truncate": TRUNCATE_METRIC},
}


def pass_order(seed: int, n: int, p: int = 0) -> np.ndarray:
    """The documented order of pass ``p`` without a curriculum (sequence_picking_order='dataloader')."""
    return np.random.default_rng([seed, 3, p]).permutation(n)


def deepspeed_packs(lengths, max_tokens, **kwargs):
    """batch_by_seqlens' micro-batches; its loop never reaches the last sample, so a sentinel is appended."""
    ids, sizes, _ = batch_by_seqlens([int(v) for v in lengths] + [1], max_tokens, **kwargs)
    return [list(mb) for _, mb in ids], sizes


# ----- packing ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tokens,min_bs,max_bs", [(64, 1, None), (200, 1, 6), (300, 3, None), (500, 2, 9)])
def test_packs_equal_deepspeed_batch_by_seqlens(max_tokens, min_bs, max_bs):
    """Packed budget (sum of lengths), dataloader order: the slices equal DeepSpeed's micro-batches."""
    lengths = np.minimum(LENGTHS, max_tokens // min_bs)
    ours = pack_micro_batches(lengths, max_tokens, min_batch_size=min_bs, max_batch_size=max_bs, packed=True)
    theirs, _ = deepspeed_packs(lengths, max_tokens, min_batch_size=min_bs, max_batch_size=max_bs)
    assert [list(range(a, b)) for a, b in ours] == theirs


@pytest.mark.parametrize("world,ga", [(1, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("method", ["linear", "sqrt", "none"])
def test_sampler_steps_and_lr_equal_deepspeed(world, ga, method):
    """Without a curriculum, the steps of pass 0 are DeepSpeed's batches on the same order (its effective batch is
    world x GA micro-batches), and every LR factor is DeepSpeed's scale_lr on that batch size."""
    cfg = DynamicBatchingConfig(max_tokens=240, max_batch_size=10, lr_scaling_method=method)
    sampler = TokenBudgetBatchSampler(
        LENGTHS, cfg, world_size=world, gradient_accumulation_steps=ga, reference_batch_size=12, seed=5, packed=True
    )
    order = pass_order(5, len(LENGTHS))
    m = world * ga
    packs, sizes = deepspeed_packs(LENGTHS[order], 240, max_batch_size=10, effective_batch_size=m)
    assert sampler.steps_per_epoch == len(sizes) and len(sampler) == len(packs)
    for k in range(1, len(sizes) + 1):
        plan = sampler.plan(k)
        assert plan.micro_batches == [order[mb].tolist() for mb in packs[(k - 1) * m : k * m]]
        assert plan.samples == sizes[k - 1]
        assert sampler.lr_factor(k) == pytest.approx(scale_lr(12, sizes[k - 1], method=method))


def check_plan(sampler, plan, lengths, max_tokens, min_bs, max_bs, packed=False):
    """From scratch: within budget and bounds, never empty, greedy-maximal in the step's order, disjoint."""
    seen = [i for mb in plan.micro_batches for i in mb]
    assert len(seen) == len(set(seen)), "a sample twice in one step"
    assert len(plan.micro_batches) == sampler.micro_batches_per_step
    for mb, counted in zip(plan.micro_batches, plan.lengths):
        assert counted == [int(lengths[i]) for i in mb]
        cost = sum(counted) if packed else len(counted) * max(counted)
        assert 1 <= len(mb) and min_bs <= len(mb) and (max_bs is None or len(mb) <= max_bs)
        assert cost <= max_tokens


@pytest.mark.parametrize("world,ga", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)])
def test_budget_bounds_disjoint_without_curriculum(world, ga):
    cfg = DynamicBatchingConfig(max_tokens=180, min_batch_size=2, max_batch_size=8, sequence_picking_order="seqlen")
    sampler = TokenBudgetBatchSampler(
        LENGTHS, cfg, world_size=world, gradient_accumulation_steps=ga, reference_batch_size=8
    )
    flat = []
    for k in range(1, 2 * sampler.steps_per_epoch + 1):  # two epochs
        plan = sampler.plan(k)
        check_plan(sampler, plan, LENGTHS, 180, 2, 8)
        flat.append(plan)
    # seqlen order: pass 0 is sorted by length, and each micro-batch stops where the next sample would not fit
    order = np.argsort(LENGTHS[pass_order(0, len(LENGTHS))], kind="stable")
    stream = pass_order(0, len(LENGTHS))[order].tolist()
    pos = 0
    for plan in flat[: sampler.steps_per_epoch]:
        for mb in plan.micro_batches:
            assert mb == stream[pos : pos + len(mb)]
            pos += len(mb)
            if len(mb) < 8 and pos < len(stream):
                nxt = LENGTHS[stream[pos]]
                assert (len(mb) + 1) * max(nxt, max(LENGTHS[mb])) > 180
    # the iterator yields every step's micro-batches in order, each key tagged with its position
    sampler.set_epoch(0)
    yielded = [[i for i, _ in keys] for keys in sampler]
    assert yielded == [mb for plan in flat[: sampler.steps_per_epoch] for mb in plan.micro_batches]


def deepspeed_config(curriculum=CURRICULUM, seed=3, **dynamic):
    sampling = {"enabled": True, "curriculum_learning": curriculum, "dynamic_batching": {"enabled": True, **dynamic}}
    return DataEfficiencyConfig.from_deepspeed({"enabled": True, "seed": seed, "data_sampling": sampling})


def curriculum_sampler(world, ga, max_tokens=200, order="dataloader", seed=3):
    engine = DataEfficiencyEngine(
        deepspeed_config(seed=seed, max_tokens=max_tokens, sequence_picking_order=order),
        batch_size=2,
        world_size=world,
        gradient_accumulation_steps=ga,
    )
    return engine, engine.build_batch_sampler(make_dataset())


@pytest.mark.parametrize("order", ["random", "seqlen"])
@pytest.mark.parametrize("world,ga", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)])
def test_with_curriculum_every_sample_is_eligible_and_truncated_lengths_are_budgeted(world, ga, order):
    """Seqlen curriculum + seqlen_truncate: every sample of step k has length <= DeepSpeed's difficulty at k, the
    budget counts min(length, truncation at k), each sample appears once per step, and early (short) steps hold
    more samples than late ones. 'seqlen' order takes the samples 'dataloader' order takes, sorted by length."""
    _, sampler = curriculum_sampler(world, ga, order=order)
    _, in_draw_order = curriculum_sampler(world, ga, order="dataloader")
    lengths = sample_lengths()
    sampling, truncate = CurriculumScheduler(SEQLEN_METRIC), CurriculumScheduler(TRUNCATE_METRIC)
    samples, sorted_steps = [], 0
    for k in range(1, 13):
        plan = sampler.plan(k)
        assert all(lengths[i] <= sampling.get_difficulty(k) for mb in plan.micro_batches for i in mb)
        assert plan.truncate_to == truncate.get_difficulty(k)
        counted = np.minimum(lengths, truncate.get_difficulty(k))
        check_plan(sampler, plan, counted, 200, 1, None)
        samples.append(plan.samples)
        if order == "seqlen":
            mine = [i for mb in plan.micro_batches for i in mb]
            assert sorted(mine) == sorted(i for mb in in_draw_order.plan(k).micro_batches for i in mb)
            sorted_steps += bool(np.all(np.diff(counted[mine]) >= 0))
    if world * ga <= 2:  # (with more micro-batches, step 1 is bounded by the few samples eligible, not the budget)
        assert samples[0] > samples[-1]
    if order == "seqlen":
        assert sorted_steps >= 10  # sorted, bar a rare step whose sorted packing does not fit


def test_curriculum_step_indices_are_the_iterated_global_batches():
    """CurriculumSampler.step_indices(k), in any order of k, is the k-th global batch of its own iteration."""
    _, sampler = curriculum_sampler(2, 2)
    draw = sampler.curriculum_sampler
    g = draw.global_batch_size
    draw.set_epoch(0)
    stream = [i for _ in range(5) for i in draw]  # each pass continues with the next epoch
    steps = len(stream) // g
    assert steps >= 5
    for k in [steps, 1, 3, 2, steps - 1]:
        assert draw.step_indices(k) == stream[(k - 1) * g : k * g]


def test_iteration_resumes_from_any_position_and_ranks_agree():
    """Two samplers (two ranks) built alike yield the same stream; one resumed from a state continues it exactly."""
    engine_a, a = curriculum_sampler(2, 2, order="seqlen")
    _, b = curriculum_sampler(2, 2, order="seqlen")
    a.set_epoch(0)
    whole = list(a)
    state = a.state_dict(position=5)
    b.load_state_dict(json.loads(json.dumps(state)))
    rest = list(b)
    per_step = a.micro_batches_per_step
    assert rest == whole[5 * per_step :]
    # a state from another geometry or seed is refused, naming the field
    _, other = curriculum_sampler(1, 2, order="seqlen")
    with pytest.raises(ValueError, match="world_size=2 but this run has world_size=1"):
        other.load_state_dict(state)
    _, reseeded = curriculum_sampler(2, 2, order="seqlen", seed=4)
    with pytest.raises(ValueError, match="seed=3 but this run has seed=4"):
        reseeded.load_state_dict(state)


# ----- errors -------------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_field():
    cfg = DynamicBatchingConfig(max_tokens=50)
    with pytest.raises(ValueError, match=r"max_tokens=2 is below the shortest sample \(3 tokens\)"):
        TokenBudgetBatchSampler(LENGTHS, DynamicBatchingConfig(max_tokens=2), reference_batch_size=4)
    longer = int((LENGTHS > 50).sum())
    with pytest.raises(
        ValueError, match=rf"{longer} of 400 samples are longer than max_tokens=50 tokens \(longest: 59\)"
    ):
        TokenBudgetBatchSampler(LENGTHS, cfg, reference_batch_size=4)
    with pytest.raises(ValueError, match=r"max_tokens // min_batch_size = 100 // 4 = 25"):
        TokenBudgetBatchSampler(
            LENGTHS, DynamicBatchingConfig(max_tokens=100, min_batch_size=4), reference_batch_size=4
        )
    with pytest.raises(ValueError, match="min_batch_size=5 is larger than dynamic_batching.max_batch_size=2"):
        DynamicBatchingConfig(max_tokens=50, min_batch_size=5, max_batch_size=2)
    for key, value in (("lr_scaling_method", "cubic"), ("sequence_picking_order", "len"), ("max_tokens", 0)):
        with pytest.raises(ValueError, match=f"dynamic_batching.{key}"):
            DynamicBatchingConfig.from_dict({"max_tokens": 50, key: value})
    with pytest.raises(ValueError, match="sentence_picking_order is not a DeepSpeed key.*sequence_picking_order"):
        deepspeed_config(max_tokens=9, sentence_picking_order="seqlen")
    # a dataset without lengths
    from datasets import Dataset

    engine = DataEfficiencyEngine({"dynamic_batching": {"max_tokens": 50}}, batch_size=2)
    with pytest.raises(ValueError, match="neither a 'seqlen' nor an 'input_ids' column"):
        engine.build_batch_sampler(Dataset.from_dict({"text": ["a", "b"]}))
    # seqlen_reshape turns rows into several: refused
    reshape = {**CURRICULUM, "curriculum_metrics": {"seqlen_reshape": TRUNCATE_METRIC}}
    engine = DataEfficiencyEngine(deepspeed_config(reshape, max_tokens=200), batch_size=2)
    with pytest.raises(ValueError, match="seqlen_reshape curriculum"):
        engine.build_batch_sampler(make_dataset())


def test_truncate_long_samples_cuts_and_counts():
    cfg = DynamicBatchingConfig(max_tokens=50, truncate_long_samples=True)
    sampler = TokenBudgetBatchSampler(LENGTHS, cfg, reference_batch_size=4)
    assert sampler.truncated_samples == int((LENGTHS > 50).sum()) > 0
    plan = sampler.plan(1)
    assert plan.truncate_to == 50
    check_plan(sampler, plan, np.minimum(LENGTHS, 50), 50, 1, None)
    total = sum(len(mb) for k in range(1, sampler.steps_per_epoch + 1) for mb in sampler.plan(k).micro_batches)
    assert total > len(LENGTHS) - sampler.micro_batches_per_step * 50  # nothing is dropped but the last partial step


# ----- Trainer -------------------------------------------------------------------------------------------------------
def trainer_kwargs(out, **overrides):
    dynamic = {
        "dynamic_batching": True,
        "dynamic_batching_max_tokens": 160,
        "dynamic_batching_lr_scaling_method": "sqrt",
    }
    return training_kwargs(out, **{**dynamic, **overrides})


def test_trainer_logs_match_the_batches_it_trained_on(tmp_path):
    """The logged samples, real tokens, padding fraction and LR factor of each step equal what the model saw."""
    args = DataEfficiencyTrainingArguments(**trainer_kwargs(tmp_path, **CURRICULUM_FLAGS))
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    lengths = sample_lengths()
    truncate = CurriculumScheduler(TRUNCATE_METRIC)
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert sorted(logs) == list(range(1, 9))
    sizes = []
    for step, h in logs.items():
        recs = [r for r in trainer.records if r["step"] == step]
        assert len(recs) == 2  # GA micro-batches on the one process
        real = sum(min(int(lengths[i]), truncate.get_difficulty(step)) for r in recs for i in r["indices"])
        computed = sum(len(r["indices"]) * r["width"] for r in recs)
        samples = sum(len(r["indices"]) for r in recs)
        assert all(len(r["indices"]) * r["width"] <= 160 for r in recs)
        assert h["dynamic_batching/samples"] == samples
        assert h["dynamic_batching/real_tokens"] == real
        assert h["dynamic_batching/padding_fraction"] == pytest.approx(1 - real / computed)
        assert h["dynamic_batching/lr_factor"] == pytest.approx(np.sqrt(samples / 8))
        sizes.append(samples)
    assert sizes[0] > sizes[-1]  # short samples early, more of them per step


def test_one_step_with_unequal_micro_batches_equals_one_big_batch(tmp_path):
    """SGD with lr 1, no clipping, no dropout, lr_scaling none: the Trainer's update of step 1 (two unequal
    micro-batches, loss normalised by num_items_in_batch) is minus the gradient of the mean loss of one big batch of
    the same samples over their real, shifted label tokens."""
    args = DataEfficiencyTrainingArguments(
        **trainer_kwargs(
            tmp_path,
            max_steps=1,
            learning_rate=1.0,
            optim="sgd",
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            weight_decay=0.0,
            dynamic_batching_sequence_picking_order="seqlen",  # ascending: unequal micro-batches
            dynamic_batching_lr_scaling_method="none",
        )
    )
    model = tiny_model(dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RecordingTrainer(model=model, args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    recs = trainer.records
    assert len(recs) == 2 and len(recs[0]["indices"]) != len(recs[1]["indices"])
    data = make_dataset()
    big = collate([data[i] for r in recs for i in r["indices"]])
    reference = tiny_model(dropout=0.0)
    logits = reference(input_ids=big["input_ids"], attention_mask=big["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), big["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    loss.backward()
    for name, p in reference.named_parameters():
        update = trainer.model.get_parameter(name).detach() - before[name]
        torch.testing.assert_close(update, -p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_resume_gives_identical_batches_and_losses(tmp_path):
    """Resumed from its step-4 checkpoint, a run sees the batches, LR factors and losses of the uninterrupted run."""

    def run(resume=None):
        args = DataEfficiencyTrainingArguments(
            **trainer_kwargs(tmp_path, save_strategy="steps", save_steps=4, **CURRICULUM_FLAGS)
        )
        trainer = RecordingTrainer(
            model=tiny_model(dropout=0.0), args=args, train_dataset=make_dataset(), data_collator=collate
        )
        trainer.train(resume_from_checkpoint=resume)
        logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
        return trainer.records, logs

    whole_records, whole_logs = run()
    state = json.loads((tmp_path / "checkpoint-4" / "data_efficiency_state.json").read_text())
    assert state["version"] == 4 and state["dynamic_batching"]["position"] == 4
    records, logs = run(resume=str(tmp_path / "checkpoint-4"))
    assert records == [r for r in whole_records if r["step"] > 4]
    for step in range(5, 9):
        for key in ("loss", "dynamic_batching/lr_factor", "dynamic_batching/samples", "learning_rate"):
            assert logs[step][key] == whole_logs[step][key], (step, key)


def test_dataloader_workers_and_a_packing_collator(tmp_path):
    """Two DataLoader workers see the micro-batches of the in-process loader; with DataCollatorWithFlattening the
    budget counts packed tokens: every collated (one-row) micro-batch holds at most max_tokens real tokens, more
    samples than padding would allow."""

    def run(name, **overrides):
        args = DataEfficiencyTrainingArguments(**trainer_kwargs(tmp_path / name, max_steps=3, **overrides))
        trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
        trainer.train()
        return trainer.records

    assert run("workers", dataloader_num_workers=2) == run("inline")

    from transformers import DataCollatorWithFlattening

    args = DataEfficiencyTrainingArguments(**trainer_kwargs(tmp_path / "packed", max_steps=3))
    seen = []

    class Recording(RecordingTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(tuple(inputs["input_ids"].shape))
            return super(RecordingTrainer, self).training_step(model, inputs, num_items_in_batch)

    trainer = Recording(
        model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=DataCollatorWithFlattening()
    )
    trainer.train()
    assert trainer.engine.packed
    assert len(seen) == 6 and all(rows == 1 and tokens <= 160 for rows, tokens in seen)
    plans = [trainer.engine.batch_sampler.plan(k) for k in (1, 2, 3)]
    assert [tokens for _, tokens in seen] == [sum(ls) for p in plans for ls in p.lengths]
    assert any(len(ls) * max(ls) > 160 for p in plans for ls in p.lengths)  # over budget had it been padded


def test_engine_refuses_a_state_of_another_run():
    engine, sampler = curriculum_sampler(1, 2)
    state = engine.state_dict(3)
    state["dynamic_batching"]["position"] = 2
    with pytest.raises(ResumeError, match="dynamic_batching.position=2 disagrees with global_step=3"):
        engine.load_state_dict(state)
    state = engine.state_dict(3)
    state["dynamic_batching"] = None
    with pytest.raises(ResumeError, match="state.dynamic_batching=None must be an object"):
        engine.load_state_dict(state)


def test_version_2_and_3_states_still_load():
    """States written before dynamic batching (version 2) and before mixing and warmup (version 3) existed, without
    those sections, load into a run without them."""
    block = {"enabled": True, "data_sampling": {"enabled": True, "curriculum_learning": CURRICULUM}}
    engine = DataEfficiencyEngine(DataEfficiencyConfig.from_deepspeed(block), batch_size=2)
    engine.build_sampler(make_dataset())
    state = engine.state_dict(0)
    assert state["version"] == 4 and state["dynamic_batching"] is None
    old = {k: v for k, v in state.items() if k not in ("dynamic_batching", "mixing", "batch_size_warmup")}
    engine.load_state_dict({**old, "version": 2})
    engine.load_state_dict({**old, "version": 3, "dynamic_batching": None})  # version 3: no mixing or warmup yet
    with pytest.raises(ResumeError, match="dynamic_batching"):
        engine.load_state_dict({**old, "version": 3})  # version 3 needs the section


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"train_sampling_strategy": "group_by_length"}, "train_sampling_strategy='group_by_length' cannot be"),
        ({"auto_find_batch_size": True}, "auto_find_batch_size=True cannot be combined with dynamic batching"),
        ({"accelerator_config": {"split_batches": True}}, "accelerator_config.split_batches=True cannot be"),
    ],
)
def test_trainer_refuses_options_it_cannot_honour(tmp_path, overrides, message):
    args = DataEfficiencyTrainingArguments(**trainer_kwargs(tmp_path, **overrides))
    with pytest.raises(ValueError, match=message):
        RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)


def test_lengths_from_deepspeed_metrics_path(tmp_path):
    """metrics_path: the seqlen files DeepSpeed's own index builder writes give the lengths (not input_ids)."""
    from deepspeed.runtime.data_pipeline.data_sampling.indexed_dataset import MMapIndexedDatasetBuilder

    data = make_dataset()
    fake = np.arange(len(data)) % 7 + 3  # differs from the real lengths, so the source is visible
    (tmp_path / "seqlen").mkdir()
    prefix = str(tmp_path / "seqlen" / "seqlen_sample_to_metric")
    builder = MMapIndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int64)
    for value in fake:
        builder.add_item_numpy(np.asarray([value], dtype=np.int64))
    builder.end_document()
    builder.finalize(f"{prefix}.idx")
    engine = DataEfficiencyEngine(
        {"dynamic_batching": {"max_tokens": 30, "metrics_path": str(tmp_path)}}, batch_size=2
    )
    plan = engine.build_batch_sampler(data).plan(1)
    assert plan.lengths == [[int(fake[i]) for i in mb] for mb in plan.micro_batches]
    with pytest.raises(ValueError, match="holds 96 rows .* but the dataset has 95 samples"):
        engine.build_batch_sampler(data.select(range(95)))


def test_plain_accelerate_loop_normalises_and_scales_like_one_big_batch(tmp_path):
    """scripts/examples/train_no_trainer.py with dynamic batching (GA 2, unequal micro-batches, no dropout): the logged
    loss of step 1 is the mean token loss of one big batch of its samples, and step 2's is the same after one AdamW
    step on that big batch with the LR times step 1's factor (recomputed as sqrt(samples / 16))."""
    from train_no_trainer import build_dataset, main, make_collator, parse_args
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    config = tmp_path / "de.json"
    dynamic = {"max_tokens": 200, "lr_scaling_method": "sqrt", "sequence_picking_order": "seqlen"}
    config.write_text(json.dumps({"dynamic_batching": dynamic}))
    argv = ["--config", str(config), "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--cpu"]
    argv += ["--gradient_accumulation_steps", "2", "--dropout", "0", "--num_samples", "64", "--max_length", "32"]
    history = main(argv)
    args = parse_args(argv)
    data, vocab, pad = build_dataset(args)
    engine = DataEfficiencyEngine(config.read_text(), batch_size=8, gradient_accumulation_steps=2)
    plans = [engine.build_batch_sampler(data).plan(k) for k in (1, 2)]
    assert len({len(mb) for mb in plans[0].micro_batches}) == 2
    set_seed(42)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=4,
            n_embd=64,
            n_head=2,
            vocab_size=vocab,
            n_positions=32,
            bos_token_id=pad,
            eos_token_id=pad,
            pad_token_id=pad,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    collate = make_collator(pad)

    def mean_loss(plan):
        big = collate([data[i] for mb in plan.micro_batches for i in mb])
        logits = model(input_ids=big["input_ids"], attention_mask=big["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), big["labels"][:, 1:].reshape(-1), ignore_index=-100
        )

    first = mean_loss(plans[0])
    assert history[0]["loss"] == pytest.approx(float(first.detach()), rel=1e-5)
    first.backward()
    factor = np.sqrt(plans[0].samples / 16)
    assert abs(factor - 1) > 0.1  # the factor matters
    assert history[0]["dynamic_batching/lr_factor"] == pytest.approx(factor)
    torch.optim.AdamW(model.parameters(), lr=1e-3 * factor).step()
    with torch.no_grad():
        assert history[1]["loss"] == pytest.approx(float(mean_loss(plans[1])), rel=1e-5)


# ----- processes ------------------------------------------------------------------------------------------------------
def test_two_processes_deal_the_single_process_stream(tmp_path):
    """Two DDP processes (GA 2) against one process (GA 4), curriculum on, no dropout: 4 micro-batches per step in
    both, the ranks' micro-batches interleave into the single process's, and the losses are equal."""
    from test_trainer_distributed import RUN, run, trainer_run

    flags = [
        "--batch_size",
        "2",
        "--max_steps",
        "6",
        "--no_random_ltd",
        "--deterministic",
        "--dynamic_max_tokens",
        "120",
    ]
    cmd = [*torchrun(), RUN]
    run(cmd + ["--output_dir", str(tmp_path), "--record", str(tmp_path / "rec_RANK.json"), "--ga", "2", *flags])
    ranks = [json.loads((tmp_path / f"rec_{r}.json").read_text()) for r in (0, 1)]
    single = trainer_run(tmp_path / "single", "--ga", "4", *flags)
    assert [r["world_size"] for r in ranks] == [2, 2]
    sizes = set()
    for step in range(1, 7):
        mine = [[rec["indices"] for rec in r["records"] if rec["step"] == step] for r in ranks]
        alone = [rec["indices"] for rec in single["records"] if rec["step"] == step]
        assert [len(m) for m in mine] == [2, 2] and len(alone) == 4
        assert [mine[j % 2][j // 2] for j in range(4)] == alone  # micro-batch j of a step runs on rank j % 2
        sizes.update(len(mb) for mb in alone)
    assert len(sizes) > 1  # the micro-batches really vary in size
    for k, loss in single["losses"].items():
        assert ranks[0]["losses"][k] == pytest.approx(loss, rel=1e-5), k
    logs = [
        {h["step"]: h["dynamic_batching/lr_factor"] for h in r["log_history"] if "loss" in h} for r in (*ranks, single)
    ]
    assert logs[0] == logs[1] == logs[2]


def test_sigkill_then_resume_continues_the_stream(tmp_path):
    """SIGKILL mid-run after the step-4 checkpoint, resume in a new process: steps 5-8 have the batches, LR factors
    and losses of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_trainer_distributed import ROOT, RUN, TIMEOUT, env, trainer_run

    flags = [
        "--max_steps",
        "8",
        "--save_steps",
        "4",
        "--no_random_ltd",
        "--deterministic",
        "--dynamic_max_tokens",
        "160",
    ]
    whole = trainer_run(tmp_path / "whole", *flags)
    out = tmp_path / "killed"
    cmd = [sys.executable, RUN, "--output_dir", str(out), "--record", str(out / "rec_RANK.json"), *flags]
    proc = subprocess.Popen(
        cmd + ["--stall_after", "5"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    try:
        deadline = time.time() + TIMEOUT
        for line in proc.stdout:
            if "STALLING" in line or time.time() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and (out / "checkpoint-4").is_dir()
    resumed = trainer_run(out, *flags, "--resume", "last")
    assert resumed["records"] == [r for r in whole["records"] if r["step"] > 4]
    assert {k: v for k, v in resumed["losses"].items() if int(k) > 4} == {
        k: v for k, v in whole["losses"].items() if int(k) > 4
    }
    factors = [
        {h["step"]: h["dynamic_batching/lr_factor"] for h in r["log_history"] if "loss" in h} for r in (whole, resumed)
    ]
    later = [{k: v for k, v in f.items() if k > 4} for f in factors]  # the resumed history holds steps 1-4 too
    assert later[1] == later[0] and len(later[0]) == 4
