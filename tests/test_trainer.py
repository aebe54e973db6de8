"""DataEfficiencyTrainer in one process: drop-in parity, curriculum + random-LTD with GA and workers, logs,
checkpoint state, the vanilla saved model, the layer-token LR schedule and the bad-input errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from _helpers import training_kwargs
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from tiny import (
    CURRICULUM_FLAGS,
    RANDOM_LTD_FLAGS,
    SEQLEN_METRIC,
    TRUNCATE_METRIC,
    RecordingTrainer,
    collate,
    make_dataset,
    sample_lengths,
    step_losses,
    tiny_model,
)
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

from hf_data_efficiency import DataEfficiencyTrainer, DataEfficiencyTrainingArguments
from hf_data_efficiency.trainer import STATE_NAME

BATCH, GA = 4, 2
GLOBAL = BATCH * GA


def kept_length_oracle(step0: int, lo=8, hi=40, steps=8, size=8) -> int:
    """DeepSpeed's fixed_linear random-LTD schedule at 0-based step, from scratch."""
    value = math.floor(step0 / steps * (hi - lo) + lo)
    return min(hi, value - value % size)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """8 steps of curriculum (seqlen + truncate) and random-LTD, GA 2, 2 DataLoader workers, saving at 4."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("full")
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(out, dataloader_num_workers=2, save_strategy="steps", save_steps=4),
        **CURRICULUM_FLAGS,
        **RANDOM_LTD_FLAGS,
    )
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    return trainer, out


def test_drop_in_equals_trainer_without_options(tmp_path):
    data = make_dataset()
    kwargs = training_kwargs(tmp_path / "a", max_steps=6)
    vanilla = Trainer(model=tiny_model(), args=TrainingArguments(**kwargs), train_dataset=data, data_collator=collate)
    vanilla.train()
    ours = DataEfficiencyTrainer(
        model=tiny_model(),
        args=DataEfficiencyTrainingArguments(**training_kwargs(tmp_path / "b", max_steps=6)),
        train_dataset=data,
        data_collator=collate,
    )
    ours.train()
    expected, got = step_losses(vanilla.state.log_history), step_losses(ours.state.log_history)
    assert len(expected) == 6 and got == expected  # bit-identical per-step losses
    assert not ours.data_efficiency_config.enabled and ours.random_ltd_handle is None
    keys = {k for h in ours.state.log_history for k in h}
    assert not any(k.startswith(("curriculum/", "random_ltd/", "data_efficiency/")) for k in keys)
    # plain TrainingArguments work too
    plain = DataEfficiencyTrainer(
        model=tiny_model(), args=TrainingArguments(**kwargs), train_dataset=data, data_collator=collate
    )
    plain.train()
    assert step_losses(plain.state.log_history) == expected


def test_curriculum_is_obeyed_with_ga_and_workers(full_run):
    trainer, _ = full_run
    lengths = sample_lengths()
    sampling, truncate = CurriculumScheduler(SEQLEN_METRIC), CurriculumScheduler(TRUNCATE_METRIC)
    by_step = {}
    for r in trainer.records:
        by_step.setdefault(r["step"], []).append(r)
    assert sorted(by_step) == list(range(1, 9))
    for step, micro in by_step.items():
        assert len(micro) == GA and all(len(r["indices"]) == BATCH for r in micro)
        difficulty, max_tokens = sampling.get_difficulty(step), truncate.get_difficulty(step)
        for r in micro:
            # every example is eligible at difficulty(k), and the batch is truncated to max_tokens(k)
            assert all(lengths[i] <= difficulty for i in r["indices"]), (step, r)
            assert r["width"] == min(max_tokens, max(lengths[i] for i in r["indices"]))
        # num_items_in_batch is counted on the truncated batch
        shifted = sum(r["shifted_labels"] for r in micro)
        unshifted = shifted + sum(len(r["indices"]) for r in micro)
        expected = shifted if trainer._loss_shifts_labels else unshifted
        assert all(r["num_items_in_batch"] == expected for r in micro)
        # the kept length is set before the step's first forward, from the 0-based step
        assert all(r["kept_length"] == kept_length_oracle(step - 1) for r in micro)
    # some batch really was cut
    assert any(r["width"] < max(lengths[i] for i in r["indices"]) for r in trainer.records)
    # the global order is the sampler's stream
    from hf_data_efficiency import CurriculumSampler

    cfg = trainer.data_efficiency_config.curriculum
    ref = CurriculumSampler({"seqlen": lengths}, cfg, batch_size=BATCH, gradient_accumulation_steps=GA)
    stream = [i for i, _ in zip(ref, range(8 * GLOBAL))]
    assert [i for r in trainer.records for i in r["indices"]] == stream


def test_logs_hold_data_efficiency_values(full_run):
    trainer, _ = full_run
    sampling, truncate = CurriculumScheduler(SEQLEN_METRIC), CurriculumScheduler(TRUNCATE_METRIC)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == list(range(1, 9))
    layer_tokens = 0
    for h in logs:
        k = h["step"]
        for r in (r for r in trainer.records if r["step"] == k):
            kept = kept_length_oracle(k - 1)
            # layer 1 of 3 drops tokens: B * (min(kept, T) + 2 T) layer-tokens per micro-batch
            layer_tokens += BATCH * (min(kept, r["width"]) + 2 * r["width"])
        assert h["curriculum/difficulty_seqlen"] == sampling.get_difficulty(k)
        assert h["curriculum/difficulty_seqlen_truncate"] == truncate.get_difficulty(k)
        assert h["random_ltd/kept_length"] == kept_length_oracle(k - 1)
        assert h["data_efficiency/consumed_samples"] == k * GLOBAL
        assert h["data_efficiency/layer_tokens"] == layer_tokens
        assert h["data_efficiency/effective_tokens"] == pytest.approx(layer_tokens / 3)


def test_checkpoint_state_and_vanilla_saved_model(full_run, tmp_path):
    trainer, out = full_run
    state = json.loads((out / "checkpoint-4" / STATE_NAME).read_text())
    assert state["global_step"] == 4
    assert state["sampler"]["position"] == 4 * GLOBAL
    assert state["random_ltd"]["kept_length"] == kept_length_oracle(3)
    assert state["counters"]["consumed_samples"] == 4 * GLOBAL
    first_four = [r for r in trainer.records if r["step"] <= 4]
    assert len(first_four) == 4 * GA
    # tokens (padding included) and layer-tokens of the micro-batches of steps 1-4, counted from the records
    assert state["counters"]["tokens"] == sum(BATCH * r["width"] for r in first_four)
    layer_tokens = sum(
        BATCH * (min(kept_length_oracle(r["step"] - 1), r["width"]) + 2 * r["width"]) for r in first_four
    )
    assert state["counters"]["layer_tokens"] == layer_tokens
    assert state["config"] == json.loads(json.dumps(trainer.data_efficiency_config.to_dict()))
    assert not list(out.glob("**/*.tmp"))

    trainer.save_model(str(tmp_path / "saved"))
    loaded = GPT2LMHeadModel.from_pretrained(str(tmp_path / "saved"))
    ours = trainer.model.state_dict()
    assert set(loaded.state_dict()) == set(ours)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, ours[key])
    for block in loaded.transformer.h:
        assert "forward" not in block.__dict__  # nothing of the patch leaks into the saved model
    trainer.model.eval()
    loaded.eval()
    ids = torch.randint(2, 128, (2, 20))
    torch.testing.assert_close(loaded(ids).logits, trainer.model(ids).logits)


def test_resume_refuses_missing_or_corrupt_state(full_run, tmp_path):
    _, out = full_run
    for case in ("missing", "corrupt", "truncated"):
        ckpt = tmp_path / case / "checkpoint-4"
        shutil.copytree(out / "checkpoint-4", ckpt)
        state = ckpt / STATE_NAME
        if case == "missing":
            state.unlink()
        elif case == "corrupt":
            state.write_text("{not json")
        else:
            state.write_text(json.dumps({"version": 1, "global_step": 4}))
        args = DataEfficiencyTrainingArguments(
            **training_kwargs(tmp_path / case, max_steps=5), **CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS
        )
        trainer = DataEfficiencyTrainer(
            model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate
        )
        with pytest.raises(ValueError, match="ignore_data_skip") as err:
            trainer.train(resume_from_checkpoint=str(ckpt))
        assert ("missing" if case == "missing" else "corrupt") in str(err.value)

    # a different config than the checkpoint's is refused too
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path / "other", max_steps=5),
        **{**CURRICULUM_FLAGS, "curriculum_max_difficulty": [36]},
        **RANDOM_LTD_FLAGS,
    )
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    with pytest.raises(ValueError, match="different data-efficiency config"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))

    # --ignore_data_skip resumes anyway
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path / "missing", max_steps=5, ignore_data_skip=True),
        **CURRICULUM_FLAGS,
        **RANDOM_LTD_FLAGS,
    )
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train(resume_from_checkpoint=str(tmp_path / "missing" / "checkpoint-4"))
    assert trainer.state.global_step == 5


def test_layer_token_lr_schedule(tmp_path):
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=4, warmup_steps=2), **RANDOM_LTD_FLAGS, layer_token_lr_schedule=True
    )
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()

    def layer_tokens(step0):  # DeepSpeed's formula: G * (kept * n + M * (L - n)), 1 of 3 layers, M = 40
        return GLOBAL * (kept_length_oracle(step0) + 40 * 2)

    warmup, total = layer_tokens(0) + layer_tokens(1), sum(layer_tokens(j) for j in range(4))
    for h in (h for h in trainer.state.log_history if "loss" in h):
        consumed = sum(layer_tokens(j) for j in range(h["step"] - 1))
        factor = consumed / warmup if consumed < warmup else 1 - (consumed - warmup) / (total - warmup)
        assert h["learning_rate"] == pytest.approx(1e-3 * factor)


def test_random_ltd_only_counts_tokens_without_curriculum(tmp_path):
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=2), **RANDOM_LTD_FLAGS)
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert last["data_efficiency/consumed_samples"] == 2 * GLOBAL
    expected = sum(
        BATCH * (min(kept_length_oracle(r["step"] - 1), r["width"]) + 2 * r["width"]) for r in trainer.records
    )
    assert last["data_efficiency/layer_tokens"] == expected
    assert trainer.curriculum_sampler is None


def test_bad_inputs(tmp_path):
    data = make_dataset()
    cur = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **CURRICULUM_FLAGS)

    no_tokens = data.rename_column("input_ids", "tokens")
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=cur, train_dataset=no_tokens, data_collator=collate)
    with pytest.raises(ValueError, match="no 'input_ids' column"):
        trainer.get_train_dataloader()

    unknown = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=1), **{**CURRICULUM_FLAGS, "curriculum_metrics": ["my_score"]}
    )
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=unknown, train_dataset=data, data_collator=collate)
    with pytest.raises(ValueError, match="my_score.*neither columns"):
        trainer.get_train_dataloader()
    # a precomputed column of that name is used as is
    scored = data.add_column("my_score", np.arange(len(data), dtype=np.float64).tolist())
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=unknown, train_dataset=scored, data_collator=collate)
    assert trainer.get_train_dataloader() is not None

    class NotATransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, input_ids=None, labels=None):
            return {"loss": self.proj(input_ids.float()).sum()}

    ltd = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **RANDOM_LTD_FLAGS)
    with pytest.raises(ValueError, match="NotATransformer"):
        DataEfficiencyTrainer(model=NotATransformer(), args=ltd, train_dataset=data, data_collator=collate)


def test_metric_from_deepspeed_index_files(tmp_path):
    """A config naming DeepSpeed DataAnalyzer index files reads the metric from them (not from the data)."""
    from deepspeed.runtime.data_pipeline.data_sampling.utils import (
        close_mmap_dataset_builder,
        create_mmap_dataset_builder,
    )

    from hf_data_efficiency import DataEfficiencyConfig

    # a metric unrelated to the sequence length, so using it (and not recomputing seqlen) is visible
    values = (np.arange(96) * 7) % 23
    sample_file, metric_file = str(tmp_path / "m_index_to_sample"), str(tmp_path / "m_index_to_metric")
    samples, metric = (
        create_mmap_dataset_builder(sample_file, np.int64),
        create_mmap_dataset_builder(metric_file, np.int64),
    )
    for v in np.unique(values):
        samples.add_item(torch.tensor(np.flatnonzero(values == v), dtype=torch.long))
        metric.add_item(torch.tensor([v], dtype=torch.long))
    close_mmap_dataset_builder(samples, sample_file)
    close_mmap_dataset_builder(metric, metric_file)
    entry = {
        "min_difficulty": 5,
        "max_difficulty": 22,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 1},
        "index_to_sample_path": sample_file,
        "index_to_metric_path": metric_file,
    }
    block = {
        "enabled": True,
        "data_sampling": {
            "enabled": True,
            "curriculum_learning": {"enabled": True, "curriculum_metrics": {"seqlen": entry}},
        },
    }
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=4), data_efficiency_config={"data_efficiency": block}
    )
    assert DataEfficiencyConfig.from_deepspeed({"data_efficiency": block}) == args.get_data_efficiency_config()
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    oracle = CurriculumScheduler(entry)
    for r in trainer.records:
        assert all(values[i] <= oracle.get_difficulty(r["step"]) for i in r["indices"]), r
    assert trainer.curriculum_sampler.num_eligible(1) == int((values <= oracle.get_difficulty(1)).sum())


def test_curriculum_refuses_another_train_sampling_strategy(tmp_path):
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=1, train_sampling_strategy="group_by_length"), **CURRICULUM_FLAGS
    )
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'"):
        DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)


def test_callback_drives_random_ltd_in_a_plain_trainer(tmp_path):
    from hf_data_efficiency import DataEfficiencyCallback, DataEfficiencyConfig, apply_random_ltd

    cfg = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path / "x"), **RANDOM_LTD_FLAGS
    ).get_data_efficiency_config()
    model = tiny_model()
    handle = apply_random_ltd(model, cfg.random_ltd, global_batch_size=GLOBAL)
    seen = []

    class Spy(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append((self.state.global_step, handle.kept_length))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Spy(
        model=model,
        args=TrainingArguments(**training_kwargs(tmp_path, max_steps=4)),
        train_dataset=make_dataset(),
        data_collator=collate,
        callbacks=[DataEfficiencyCallback(handle)],
    )
    trainer.train()
    assert seen == [(s, kept_length_oracle(s)) for s in range(4) for _ in range(GA)]
    assert isinstance(cfg, DataEfficiencyConfig)


def test_step_loss_is_the_mean_over_real_shifted_label_tokens(tmp_path):
    """A from-scratch GPT-2 (loss_type unset in transformers 5.23) with a truncating curriculum and GA 2: the logged
    loss of step 1 equals the token-mean cross-entropy over the real, shifted labels of the step's truncated
    micro-batches, recomputed from scratch with the initial weights."""
    import copy

    model = tiny_model()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    assert model.loss_type is None
    initial = copy.deepcopy(model)
    data = make_dataset()
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **CURRICULUM_FLAGS)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    total, count = 0.0, 0
    for r in trainer.records:
        batch = collate([data[i] for i in r["indices"]])
        ids, labels = batch["input_ids"][:, : r["width"]], batch["labels"][:, : r["width"]]
        mask = batch["attention_mask"][:, : r["width"]]
        with torch.no_grad():
            logits = initial(input_ids=ids, attention_mask=mask).logits
        shifted = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += int((shifted != -100).sum())
    assert len(trainer.records) == GA and all(r["num_items_in_batch"] == count for r in trainer.records)
    assert step_losses(trainer.state.log_history)[1] == pytest.approx(total / count, rel=1e-5)


def test_a_compiled_causal_lm_gets_its_loss_declared_too():
    """A model the user compiled before the Trainer sees it (``torch.compile`` wraps it in an ``OptimizedModule``)
    gets the same ``loss_type`` declaration as the plain model, on the model inside, so the step loss is normalised
    over the shifted labels either way."""
    from hf_data_efficiency.engine import declare_causal_lm_loss, is_causal_lm

    plain, inner = tiny_model(), tiny_model()
    compiled = torch.compile(inner)  # lazy: nothing compiles until a forward
    assert declare_causal_lm_loss(plain) and plain.loss_type == "ForCausalLM"
    assert is_causal_lm(compiled) and declare_causal_lm_loss(compiled)
    assert inner.loss_type == compiled.loss_type == "ForCausalLM"
    assert not declare_causal_lm_loss(compiled)  # declared once


@pytest.mark.parametrize("option", ["random_ltd", "curriculum"])
def test_mlm_resume_masks_exactly_as_the_uninterrupted_run(tmp_path, option):
    """A BERT MLM run (DataCollatorForLanguageModeling masking from the global RNG, as HF's run_mlm.py) resumed from
    its step-3 checkpoint: with the per-micro-batch seeded collation (the default) every later loss equals the
    uninterrupted run's; without it (plain Trainer behaviour) they differ."""
    from datasets import Dataset
    from offline_data import minilm_path
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    rng = np.random.default_rng(0)
    rows = [rng.integers(1000, 3000, size=int(n)).tolist() for n in rng.integers(8, 33, size=64)]
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    if option == "random_ltd":
        flags = {"random_ltd": True, "random_ltd_min_value": 8, "random_ltd_max_value": 32}
        flags.update(random_ltd_require_steps=6, random_ltd_seq_per_step=8)
    else:
        flags = {k: v for k, v in CURRICULUM_FLAGS.items() if not k.startswith("seqlen_curriculum")}

    def run(out, seeded=True, resume=None):
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        args = DataEfficiencyTrainingArguments(
            **training_kwargs(out, max_steps=6, save_strategy="steps", save_steps=3),
            data_efficiency_seeded_collation=seeded,
            **flags,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
        trainer = DataEfficiencyTrainer(
            model=BertForMaskedLM(config), args=args, train_dataset=data, data_collator=collator
        )
        trainer.train(resume_from_checkpoint=resume)
        return step_losses(trainer.state.log_history)

    for seeded in (True, False):
        whole = run(tmp_path / f"whole{seeded}", seeded)
        resumed = run(tmp_path / f"whole{seeded}", seeded, resume=str(tmp_path / f"whole{seeded}" / "checkpoint-3"))
        later = {k: v for k, v in whole.items() if k > 3}
        assert len(later) == 3
        if seeded:
            assert {k: v for k, v in resumed.items() if k > 3} == later
        else:
            assert {k: v for k, v in resumed.items() if k > 3} != later


def test_logged_layer_tokens_with_several_patched_layers(tmp_path):
    """Layers 0 and 1 of 3 drop tokens: the logged layer-tokens equal a from-scratch count over the recorded
    micro-batches, B * (2 * min(kept, T) + T), and effective tokens are that over the 3 layers."""
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=5),
        **CURRICULUM_FLAGS,
        **{**RANDOM_LTD_FLAGS, "random_ltd_layer_id": [0, 1]},
    )
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    assert trainer.random_ltd_handle.layer_ids == [0, 1]
    layer_tokens = 0
    for h in (h for h in trainer.state.log_history if "loss" in h):
        for r in (r for r in trainer.records if r["step"] == h["step"]):
            layer_tokens += BATCH * (2 * min(kept_length_oracle(h["step"] - 1), r["width"]) + r["width"])
        assert h["data_efficiency/layer_tokens"] == layer_tokens
        assert h["data_efficiency/effective_tokens"] == pytest.approx(layer_tokens / 3)


def test_resume_refuses_another_global_batch(full_run, tmp_path):
    """The checkpoint's curriculum stream was drawn for a global batch of 8: resuming with 4 is refused, naming it."""
    _, out = full_run
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=6, per_device_train_batch_size=2), **CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS
    )
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    with pytest.raises(ValueError, match="global_batch_size=8 but this run has global_batch_size=4"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))


@pytest.mark.parametrize("seeded", [True, False])
def test_the_users_collator_never_sees_private_tags(tmp_path, seeded):
    """Whatever carries the draw's tags (max tokens, stream position) to the collator is removed before the user's
    collator runs, with and without seeded collation."""
    seen = set()

    def recording_collate(features):
        seen.update(k for f in features for k in f)
        return collate(features)

    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=2), data_efficiency_seeded_collation=seeded, **CURRICULUM_FLAGS
    )
    trainer = DataEfficiencyTrainer(
        model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=recording_collate
    )
    trainer.train()
    assert seen == {"input_ids", "attention_mask"}


def test_second_epoch_continues_the_stream_and_resumes_in_it(tmp_path):
    """15 steps of 8 samples over 96 samples are two epochs: every step's batch is the next global batch of one
    stream iterated epoch after epoch, and a run resumed inside the second epoch draws the same batches."""
    from hf_data_efficiency import CurriculumSampler

    def run(out, resume=None):
        args = DataEfficiencyTrainingArguments(
            **training_kwargs(out, max_steps=15, save_strategy="steps", save_steps=14), **CURRICULUM_FLAGS
        )
        trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run(tmp_path / "whole")
    cfg = whole.data_efficiency_config.curriculum
    ref = CurriculumSampler({"seqlen": sample_lengths()}, cfg, batch_size=BATCH, gradient_accumulation_steps=GA)
    assert len(ref) == 96 and 15 * GLOBAL > len(ref)
    stream = []
    for epoch in range(2):
        ref.set_epoch(epoch)
        stream.extend(ref)
    assert [i for r in whole.records for i in r["indices"]] == stream[: 15 * GLOBAL]
    resumed = run(tmp_path / "whole", resume=str(tmp_path / "whole" / "checkpoint-14"))
    assert [r["indices"] for r in resumed.records] == [r["indices"] for r in whole.records if r["step"] == 15]


def test_collator_randomness_is_fresh_in_every_epoch(tmp_path):
    """Without the curriculum the collation seed is keyed by (epoch, sample indices): a sequential loader gives
    every epoch the same indices, so only the epoch can make the collator's randomness (e.g. MLM masks) differ."""
    draws = []

    def noisy_collate(features):
        draws.append(torch.rand(3).tolist())
        return collate(features)

    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=3, per_device_train_batch_size=8, gradient_accumulation_steps=1),
        train_sampling_strategy="sequential",
        **RANDOM_LTD_FLAGS,
    )
    trainer = RecordingTrainer(
        model=tiny_model(), args=args, train_dataset=make_dataset(8), data_collator=noisy_collate
    )
    trainer.train()
    assert [r["indices"] for r in trainer.records] == [list(range(8))] * 3  # one step per epoch, same batch
    assert len(draws) == 3 and len({tuple(d) for d in draws}) == 3
