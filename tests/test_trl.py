"""The trl integration (hf_data_efficiency.integrations.trl) on a tiny GPT-2 with a character tokenizer.

Oracles: trl itself (no option: bit-equal losses; the configs' defaults), DeepSpeed's CurriculumScheduler (the
difficulty of every generation's prompts), a from-scratch cross-entropy (SFT's step loss over completion tokens), the
generation groups as they reach generation (one prompt per group, none in two groups, the same over two processes),
the documented pass-rate rule re-derived from the scripted rewards, and uninterrupted runs (resume).
"""

import copy
import json
import os
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

trl = pytest.importorskip("trl")

from _helpers import torchrun  # noqa: E402
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler  # noqa: E402
from tiny import step_losses  # noqa: E402
from transformers import HfArgumentParser, TrainingArguments  # noqa: E402
from trl_tiny import (  # noqa: E402
    TOKENIZER,
    RecordingGRPO,
    RecordingMixin,
    RecordingSFT,
    addition_completions,
    addition_prompts,
    digit_reward,
    grpo_kwargs,
    scripted_reward,
    sft_kwargs,
    tiny_lm,
)

from hf_data_efficiency import DataEfficiencyTrainer, DataEfficiencyTrainingArguments  # noqa: E402
from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig  # noqa: E402
from hf_data_efficiency.curriculum.generation_groups import (  # noqa: E402
    GroupedPromptSampler,
    PassRateConfig,
    PassRateTracker,
)
from hf_data_efficiency.integrations.trl import (  # noqa: E402
    PASS_RATE_STATE_NAME,
    DataEfficiencyGRPOConfig,
    DataEfficiencyGRPOTrainer,
    DataEfficiencySFTConfig,
    DataEfficiencySFTTrainer,
)

ROOT = Path(__file__).resolve().parents[1]
G = 4  # num_generations of grpo_kwargs
SFT_CURRICULUM = {
    "curriculum_metrics": ["seqlen"],
    "curriculum_min_difficulty": [8],
    "curriculum_max_difficulty": [16],
    "curriculum_total_curriculum_step": [4],
    "curriculum_difficulty_step": [1],
    "seqlen_curriculum": "truncate",
    "seqlen_curriculum_min_difficulty": 6,
    "seqlen_curriculum_max_difficulty": 16,
    "seqlen_curriculum_total_curriculum_step": 4,
    "seqlen_curriculum_difficulty_step": 2,
}
RANDOM_LTD = {
    "random_ltd": True,
    "random_ltd_min_value": 4,
    "random_ltd_max_value": 16,
    "random_ltd_require_steps": 6,
    "random_ltd_seq_per_step": 2,
}
GRPO_CURRICULUM = {
    "curriculum_metrics": ["difficulty"],
    "curriculum_min_difficulty": [3],
    "curriculum_max_difficulty": [6],
    "curriculum_total_curriculum_step": [6],
    "curriculum_difficulty_step": [1],
}


def schedule(lo: int, hi: int, total: int, step: int) -> CurriculumScheduler:
    """DeepSpeed's fixed_linear curriculum scheduler."""
    return CurriculumScheduler(
        {
            "min_difficulty": lo,
            "max_difficulty": hi,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": total, "difficulty_step": step},
        }
    )


def char_length(row: dict) -> int:
    """Tokens of a prompt-completion row with the character tokenizer: one per character, plus trl's EOS."""
    return len(row["prompt"]) + len(row["completion"]) + 1


# ----------------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, trl_config", [(DataEfficiencySFTConfig, trl.SFTConfig), (DataEfficiencyGRPOConfig, trl.GRPOConfig)]
)
def test_configs_show_every_flag_and_keep_trls_defaults(config, trl_config, capsys):
    with pytest.raises(SystemExit):
        HfArgumentParser(config).parse_args(["--help"])
    help_text = capsys.readouterr().out
    ours = {f.name for f in fields(DataEfficiencyTrainingArguments)} - {f.name for f in fields(TrainingArguments)}
    ours |= {f.name for f in fields(config)} - {f.name for f in fields(trl_config)} - ours
    assert "curriculum_metrics" in ours and "random_ltd_min_value" in ours
    missing = [name for name in ours if not re.search(rf"--{name}\b", help_text)]
    assert not missing
    mine, theirs = config("x", use_cpu=True), trl_config("x", use_cpu=True)
    assert [f.name for f in fields(trl_config) if getattr(mine, f.name) != getattr(theirs, f.name)] == []


def test_grpo_flags_parse_from_a_command_line():
    parsed = HfArgumentParser(DataEfficiencyGRPOConfig).parse_args_into_dataclasses(
        ["--output_dir", "x", "--use_cpu", "--curriculum_metrics", "difficulty", "--curriculum_min_difficulty", "3"]
        + ["--curriculum_max_difficulty", "6", "--curriculum_total_curriculum_step", "6"]
        + ["--pass_rate_curriculum", "--pass_rate_band", "0.1", "0.9", "--pass_rate_outside_weight", "0"]
    )[0]
    rule = parsed.get_pass_rate_config()
    assert rule.band == (0.1, 0.9) and rule.outside_weight == 0.0 and rule.threshold == 0.5
    assert [m.name for m in parsed.get_data_efficiency_config().curriculum.sampling_metrics] == ["difficulty"]


# ----------------------------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------------------------
def test_sft_without_options_is_trl(tmp_path):
    data = addition_completions()
    plain = trl.SFTTrainer(
        model=tiny_lm(dropout=0.1),
        args=trl.SFTConfig(**sft_kwargs(tmp_path / "a")),
        train_dataset=data,
        processing_class=TOKENIZER,
    )
    plain.train()
    ours = DataEfficiencySFTTrainer(
        model=tiny_lm(dropout=0.1),
        args=DataEfficiencySFTConfig(**sft_kwargs(tmp_path / "b")),
        train_dataset=data,
        processing_class=TOKENIZER,
    )
    ours.train()
    expected = step_losses(plain.state.log_history)
    assert len(expected) == 6 and step_losses(ours.state.log_history) == expected  # bit-equal
    assert not ours.data_efficiency_config.enabled
    assert not any(k.startswith(("curriculum/", "data_efficiency/")) for h in ours.state.log_history for k in h)


def test_sft_curriculum_loss_is_the_mean_over_the_steps_completion_tokens(tmp_path):
    """Step 1 of a seqlen curriculum with truncation and GA 2 on prompt-completion rows: every row is eligible under
    DeepSpeed's schedule and cut to its truncation; the labels are -100 exactly on the prompt and the padding (trl's
    completion-only loss); the logged loss is the cross-entropy over the step's shifted completion tokens, recomputed
    from scratch with the initial weights."""
    model = tiny_lm()
    initial = copy.deepcopy(model)
    data = addition_completions()
    by_prompt = {row["prompt"]: row for row in data}
    args = DataEfficiencySFTConfig(**sft_kwargs(tmp_path, max_steps=1), **SFT_CURRICULUM)
    trainer = RecordingSFT(model=model, args=args, train_dataset=data, processing_class=TOKENIZER)
    trainer.train()
    eligible, cut = schedule(8, 16, 4, 1).get_difficulty(1), schedule(6, 16, 4, 2).get_difficulty(1)
    total, count = 0.0, 0
    assert len(trainer.records) == 2
    for r in trainer.records:
        ids, labels, mask = r["input_ids"], r["labels"], r["attention_mask"]
        for row_ids, row_labels, row_mask in zip(ids, labels, mask):
            text = TOKENIZER.decode(row_ids[row_mask == 1], skip_special_tokens=True)
            row = by_prompt[text[: text.index("=") + 1]]
            assert char_length(row) <= eligible
            kept = min(char_length(row), cut)
            assert int(row_mask.sum()) == kept and ids.shape[1] <= cut
            expected = torch.full_like(row_labels, -100)
            expected[len(row["prompt"]) : kept] = row_ids[len(row["prompt"]) : kept]
            assert torch.equal(row_labels, expected)
        with torch.no_grad():
            logits = initial(input_ids=ids, attention_mask=mask).logits
        shifted = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += int((shifted != -100).sum())
    assert all(r["num_items_in_batch"] == count for r in trainer.records)
    assert step_losses(trainer.state.log_history)[1] == pytest.approx(total / count, rel=1e-5)


def test_sft_resume_equals_uninterrupted(tmp_path):
    """Curriculum + truncation + random-LTD, GA 2: a run resumed from step 3 trains on the batches, kept lengths and
    losses of the uninterrupted run; random-LTD processed fewer layer-tokens than the full rows."""
    data = addition_completions()
    options = {**SFT_CURRICULUM, **RANDOM_LTD}

    def build(out):
        args = DataEfficiencySFTConfig(**sft_kwargs(out, save_strategy="steps", save_steps=3), **options)
        return RecordingSFT(model=tiny_lm(dropout=0.1), args=args, train_dataset=data, processing_class=TOKENIZER)

    whole = build(tmp_path / "a")
    whole.train()
    resumed = build(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    later = [r for r in whole.records if r["step"] > 3]
    assert len(later) == len(resumed.records) == 6
    for a, b in zip(later, resumed.records):
        assert a["step"] == b["step"] and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
    logs = {h["step"]: h for h in whole.state.log_history if "loss" in h}
    resumed_logs = {h["step"]: h for h in resumed.state.log_history if "loss" in h}
    for step in (4, 5, 6):
        assert resumed_logs[step]["loss"] == logs[step]["loss"]
        assert resumed_logs[step]["random_ltd/kept_length"] == logs[step]["random_ltd/kept_length"]
    # layer-tokens: layers 0 and 2 see every position, layer 1 min(kept, width) of each row
    expected = 0
    for r in whole.records:
        rows, width = r["input_ids"].shape
        expected += 2 * rows * width + rows * min(logs[r["step"]]["random_ltd/kept_length"], width)
    assert logs[6]["data_efficiency/layer_tokens"] == expected < 3 * sum(r["input_ids"].numel() for r in whole.records)


def test_sft_recipe_reads_the_rows_trl_prepared(tmp_path):
    """--data_efficiency_recipe auto on a text dataset: the kept length grows to the longest row as trl tokenized it
    (characters + EOS), not to the model's 64 positions."""
    texts = [row["prompt"] + row["completion"] for row in addition_completions()]
    from datasets import Dataset

    args = DataEfficiencySFTConfig(**sft_kwargs(tmp_path, max_steps=10), data_efficiency_recipe="auto")
    trainer = DataEfficiencySFTTrainer(
        model=tiny_lm(), args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=TOKENIZER
    )
    rl = trainer.data_efficiency_config.random_ltd
    assert rl.max_value == max(len(t) for t in texts) + 1 and rl.random_ltd_layer_id == [1]
    assert rl.require_steps == 7 and trainer.random_ltd_handle is not None
    trainer.train()
    assert "random_ltd/kept_length" in trainer.state.log_history[0]


def test_sft_token_budgets_with_padding_free_and_packing(tmp_path):
    """Dynamic batching over trl's padding-free rows (a seqlen curriculum on the documents): every micro-batch is one
    row of at most the budget's 40 real tokens, holding whole documents eligible at its step under DeepSpeed's
    schedule. Packing without random-LTD trains within the budget too."""
    data = addition_completions()
    lengths = {char_length(row) for row in data}
    curriculum = {k: v for k, v in SFT_CURRICULUM.items() if not k.startswith("seqlen_curriculum")}
    budget = {"dynamic_batching": True, "dynamic_batching_max_tokens": 40}
    args = DataEfficiencySFTConfig(
        **sft_kwargs(tmp_path / "a", max_steps=3), padding_free=True, max_length=None, **curriculum, **budget
    )
    flat = RecordingSFT(model=tiny_lm(), args=args, train_dataset=data, processing_class=TOKENIZER)
    flat.train()
    sched = schedule(8, 16, 4, 1)
    documents = []
    for r in flat.records:
        assert r["input_ids"].shape[0] == 1 and r["input_ids"].shape[1] <= 40
        starts = torch.nonzero(r["position_ids"][0] == 0).flatten().tolist() + [r["input_ids"].shape[1]]
        sizes = [b - a for a, b in zip(starts, starts[1:])]
        assert all(size in lengths and size <= sched.get_difficulty(r["step"]) for size in sizes)
        documents.append(len(sizes))
    assert flat.engine.packed and max(documents) > 1
    args = DataEfficiencySFTConfig(**sft_kwargs(tmp_path / "b", max_steps=2), packing=True, max_length=16, **budget)
    packed = RecordingSFT(model=tiny_lm(), args=args, train_dataset=data, processing_class=TOKENIZER)
    packed.train()
    assert packed.records and all(r["input_ids"].numel() <= 40 for r in packed.records)


@pytest.mark.parametrize("options", [{"padding_free": True}, {"packing": True, "max_length": 16}], ids=str)
def test_sft_padding_free_random_ltd_keeps_per_document(tmp_path, options):
    """trl's padding-free rows (padding_free, or bfd packing): the dropped layer's attention sees sum(min(len, kept))
    tokens of each micro-batch's documents, recomputed here from its position_ids."""
    args = DataEfficiencySFTConfig(
        **sft_kwargs(tmp_path, max_steps=4), **{"max_length": None, **options}, **RANDOM_LTD, random_ltd_layer_id=[1]
    )
    trainer = RecordingSFT(
        model=tiny_lm(), args=args, train_dataset=addition_completions(), processing_class=TOKENIZER
    )
    seen, kept = [], []
    layer = trainer.random_ltd_handle.layers[0]
    layer.attn.register_forward_pre_hook(lambda m, a, k: seen.append(a[0].shape[1]), with_kwargs=True)
    layer.register_forward_pre_hook(
        lambda m, a, k: kept.append(trainer.random_ltd_handle.kept_length), with_kwargs=True
    )
    trainer.train()
    assert len(seen) == len(trainer.records) == 8  # 4 steps x GA 2
    dropped = 0
    for count, k, record in zip(seen, kept, trainer.records):
        assert record["input_ids"].shape[0] == 1  # one row of documents
        starts = [i for i, p in enumerate(record["position_ids"].reshape(-1).tolist()) if p == 0]
        lengths = [b - a for a, b in zip(starts, [*starts[1:], record["input_ids"].shape[1]])]
        assert len(lengths) > 1 and count == sum(min(n, k) for n in lengths)
        dropped += count < record["input_ids"].shape[1]
    assert dropped > 0


@pytest.mark.parametrize("options", [{"padding_free": True}, {"packing": True, "max_length": 16}], ids=str)
def test_sft_padding_free_layer_token_lr_counts_the_documents(tmp_path, options):
    """trl's padding-free rows: the layer-token LR schedule's total is the steps' expected real layer-tokens,
    recomputed by a loop from the prepared rows (each row one document, or bfd's seq_lengths per row)."""
    args = DataEfficiencySFTConfig(
        **sft_kwargs(tmp_path, max_steps=4), **{"max_length": None, **options}, **RANDOM_LTD, random_ltd_layer_id=[1],
        layer_token_lr_schedule=True,
    )  # fmt: skip
    trainer = RecordingSFT(
        model=tiny_lm(), args=args, train_dataset=addition_completions(), processing_class=TOKENIZER
    )
    trainer.train()
    rows = trainer.train_dataset
    if "seq_lengths" in rows.column_names:
        docs = [n for row in rows["seq_lengths"] for n in row]
    else:
        docs = [len(ids) for ids in rows["input_ids"]]
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * len(docs) / len(rows)
    schedule, layers = trainer.random_ltd_handle.scheduler, trainer.model.config.num_hidden_layers
    total = 0
    for step in range(4):
        k = schedule.kept_length(step)
        total += round(per_step * sum(min(n, k) + n * (layers - 1) for n in docs) / len(docs))
    assert trainer.lr_scheduler.total_layer_tokens == total
    assert total < schedule.total_layer_tokens(4)  # DeepSpeed's formula counts every document at max_value


def test_sft_padding_free_seqlen_curriculum_cuts_each_document(tmp_path):
    """The seqlen curriculum on trl's padding-free rows cuts every document to the step's max tokens before they are
    concatenated (DeepSpeed's schedule is the oracle), and keeps every document of the micro-batch."""
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

    args = DataEfficiencySFTConfig(
        **sft_kwargs(tmp_path, max_steps=4), padding_free=True, max_length=None, **SFT_CURRICULUM
    )
    trainer = RecordingSFT(
        model=tiny_lm(), args=args, train_dataset=addition_completions(), processing_class=TOKENIZER
    )
    trainer.train()
    keys = ("min_difficulty", "max_difficulty", "schedule_type")
    schedule = CurriculumScheduler(
        {
            **{
                k: SFT_CURRICULUM[f"seqlen_curriculum_{k}"] for k in keys if f"seqlen_curriculum_{k}" in SFT_CURRICULUM
            },
            "schedule_type": "fixed_linear",
            "schedule_config": {
                "total_curriculum_step": SFT_CURRICULUM["seqlen_curriculum_total_curriculum_step"],
                "difficulty_step": SFT_CURRICULUM["seqlen_curriculum_difficulty_step"],
            },
        }
    )
    cut = 0
    for record in trainer.records:
        positions = record["position_ids"].reshape(-1).tolist()
        starts = [i for i, p in enumerate(positions) if p == 0]
        lengths = [b - a for a, b in zip(starts, [*starts[1:], len(positions)])]
        cap = schedule.get_difficulty(record["step"])
        assert len(lengths) == args.per_device_train_batch_size and max(lengths) <= cap
        cut += max(lengths) == cap
    assert cut > 0


def test_sft_refuses_what_it_cannot_honour(tmp_path):
    data = addition_completions()

    def build(**options):
        args = DataEfficiencySFTConfig(**sft_kwargs(tmp_path, max_steps=1), **options)
        return DataEfficiencySFTTrainer(model=tiny_lm(), args=args, train_dataset=data, processing_class=TOKENIZER)

    with pytest.raises(ValueError, match=r"curriculum_metrics \['seqlen'\] cannot be combined with packing=True"):
        build(packing=True, packing_strategy="wrapped", max_length=16, **SFT_CURRICULUM)
    build(packing=True, packing_strategy="wrapped", max_length=16, **RANDOM_LTD).train()  # rows, not documents


# ----------------------------------------------------------------------------------------------------------------
# GRPO
# ----------------------------------------------------------------------------------------------------------------
class PlainGRPO(RecordingMixin, trl.GRPOTrainer):
    pass


def groups_of(prompts: list[str]) -> list[str]:
    """The prompt of each generation group, after checking that the group holds one prompt."""
    groups = [prompts[i : i + G] for i in range(0, len(prompts), G)]
    assert all(len(set(group)) == 1 for group in groups), groups
    return [group[0] for group in groups]


def test_grpo_without_options_is_trl(tmp_path):
    data = addition_prompts()
    plain = PlainGRPO(
        model=tiny_lm(),
        reward_funcs=digit_reward,
        args=trl.GRPOConfig(**grpo_kwargs(tmp_path / "a")),
        train_dataset=data,
        processing_class=TOKENIZER,
    )
    plain.train()
    ours = RecordingGRPO(
        model=tiny_lm(),
        reward_funcs=digit_reward,
        args=DataEfficiencyGRPOConfig(**grpo_kwargs(tmp_path / "b")),
        train_dataset=data,
        processing_class=TOKENIZER,
    )
    ours.train()
    expected = step_losses(plain.state.log_history)
    assert len(expected) == 4 and any(expected.values())
    assert step_losses(ours.state.log_history) == expected and ours.generations == plain.generations
    assert ours.prompt_sampler is None and ours.pass_rates is None


@pytest.mark.parametrize("steps_per_generation, num_iterations", [(2, 1), (4, 2), (1, 1)])
def test_grpo_prompts_follow_the_schedule_in_whole_groups(tmp_path, steps_per_generation, num_iterations):
    """Each generation's prompts are eligible under DeepSpeed's schedule at the step the generation happens in; every
    group holds one prompt and no prompt is in two groups; each generation batch is read num_iterations *
    steps_per_generation times in a row (trl's layout), with 1, 4 or 1/2 optimizer steps per generation; the
    pass rates are recorded for every generation."""
    data = addition_prompts()
    difficulty = dict(zip(data["prompt"], data["difficulty"]))
    args = DataEfficiencyGRPOConfig(
        **grpo_kwargs(tmp_path, max_steps=8, steps_per_generation=steps_per_generation, num_iterations=num_iterations),
        **GRPO_CURRICULUM,
        pass_rate_curriculum=True,  # its draws wait for the generations they need (lag 2, 1 and 3 here)
    )
    trainer = RecordingGRPO(
        model=tiny_lm(), reward_funcs=digit_reward, args=args, train_dataset=data, processing_class=TOKENIZER
    )
    trainer.train()
    repeats = steps_per_generation * num_iterations
    sched = schedule(3, 6, 6, 1)
    assert len(trainer.generations) == 8 * 2 // repeats
    for g in trainer.generations:
        heads = groups_of(g["prompts"])
        assert len(heads) == len(g["prompts"]) // G == 8 * steps_per_generation // G and len(set(heads)) == len(heads)
        assert all(difficulty[p] <= sched.get_difficulty(g["step"]) for p in heads), g
    assert max(difficulty[p] for p in trainer.generations[-1]["prompts"]) > sched.get_difficulty(1)
    batches = trainer.batches
    assert len(batches) == 16 and all(batches[i] == batches[i - i % repeats] for i in range(16))
    assert batches[::repeats] == [g["prompts"] for g in trainer.generations]
    assert trainer.pass_rates.recorded_through == len(trainer.generations) - 1
    assert trainer.pass_rate_lag == {2: 2, 8: 1, 1: 3}[repeats]
    logged = {h["step"]: h["curriculum/difficulty_difficulty"] for h in trainer.state.log_history if "loss" in h}
    first_of = {s: trainer.generations[(s - 1) * 2 // repeats]["step"] for s in logged}  # the step its batch came from
    assert logged == {s: sched.get_difficulty(first_of[s]) for s in logged}


def test_grpo_two_processes_keep_groups_whole(tmp_path):
    """torchrun, 2 processes (gloo): 2 completions per device and 3 steps per generation, so groups of 4 span both
    processes. Put back together in process order, every generation's groups hold one prompt each, distinct and
    eligible; both processes hold the same pass rates and log the same losses."""
    cmd = [*torchrun(), str(ROOT / "tests" / "distributed" / "run_grpo.py")]
    cmd += ["--output_dir", str(tmp_path), "--record", str(tmp_path / "rec_RANK.json")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join([str(ROOT / "scripts" / "examples"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rec_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["lag"] == 2
    difficulty = dict(zip(addition_prompts()["prompt"], addition_prompts()["difficulty"]))
    sched = schedule(3, 6, 4, 1)
    gens = [r["generations"] for r in ranks]
    assert len(gens[0]) == len(gens[1]) == 5
    for g0, g1 in zip(*gens):
        assert g0["step"] == g1["step"] and len(g0["prompts"]) == len(g1["prompts"]) == 6
        assert g0["prompts"][-1] == g1["prompts"][0]  # a group split over the processes
        heads = groups_of(g0["prompts"] + g1["prompts"])
        assert len(set(heads)) == 3 and all(difficulty[p] <= sched.get_difficulty(g0["step"]) for p in heads)
    assert ranks[0]["pass_rates"] == ranks[1]["pass_rates"] and ranks[0]["pass_rates"]["recorded_through"] == 4
    assert ranks[0]["losses"] == ranks[1]["losses"]
    for r in ranks:  # each process reads its generation batch 3 times (GA 3 = steps_per_generation)
        assert all(r["batches"][i] == r["batches"][i - i % 3] for i in range(len(r["batches"])))


def shifting_reward(prompts, completions, passes, trainer_state, **kwargs):
    """The first ``(passes + step) % 5`` completions of each prompt pass (step: the optimizer steps done)."""
    step = trainer_state.global_step
    return scripted_reward(prompts, completions, [(p + step) % 5 for p in passes])


def test_pass_rate_curriculum_draws_by_the_documented_rule(tmp_path):
    """Band [0.25, 0.75], outside weight 0, smoothing 0.5, GA 2 (lag 2): re-deriving each prompt's pass fraction
    from the scripted reward and the moving average from scratch, no generation ever draws a prompt known (through
    generation c - 2) to be outside the band, though such prompts were eligible; the tracker's rates equal the
    re-derived ones."""
    data = addition_prompts()
    passes = dict(zip(data["prompt"], data["passes"]))
    index = {p: i for i, p in enumerate(data["prompt"])}
    args = DataEfficiencyGRPOConfig(
        **grpo_kwargs(tmp_path, max_steps=12),
        pass_rate_curriculum=True,
        pass_rate_band=[0.25, 0.75],
        pass_rate_outside_weight=0.0,
    )
    trainer = RecordingGRPO(
        model=tiny_lm(), reward_funcs=shifting_reward, args=args, train_dataset=data, processing_class=TOKENIZER
    )
    trainer.train()
    assert trainer.pass_rate_lag == 2 and len(trainer.generations) == 12
    rates, history, avoided = {}, [], 0
    for c, g in enumerate(trainer.generations):
        known = history[c - 2] if c >= 2 else {}
        heads = groups_of(g["prompts"])
        assert all(p not in known or 0.25 <= known[p] <= 0.75 for p in heads), (c, heads, known)
        avoided += sum(1 for r in known.values() if not 0.25 <= r <= 0.75)
        for p in heads:
            fraction = ((passes[p] + g["step"] - 1) % 5) / G
            rates[p] = fraction if p not in rates else 0.5 * rates[p] + 0.5 * fraction
        history.append(dict(rates))
    assert avoided > 0
    trainer.pass_rates.commit(len(trainer.generations))
    state = trainer.pass_rates.state_dict()
    assert dict(zip(state["prompts"], state["rates"])) == {index[p]: r for p, r in rates.items()}


def test_grpo_resume_with_pass_rates_equals_uninterrupted(tmp_path):
    """Curriculum + pass rates, a checkpoint at step 4: the resumed run generates for the prompts and trains to the
    losses of the uninterrupted run, and ends with the same pass rates; the pass-rate file is JSON and checked."""
    data = addition_prompts()
    options = {**GRPO_CURRICULUM, "pass_rate_curriculum": True, "pass_rate_outside_weight": 0.0}
    options.update(save_strategy="steps", save_steps=4, max_steps=8)

    def build(out):
        args = DataEfficiencyGRPOConfig(**grpo_kwargs(out, **options))
        return RecordingGRPO(
            model=tiny_lm(), reward_funcs=scripted_reward, args=args, train_dataset=data, processing_class=TOKENIZER
        )

    whole = build(tmp_path / "a")
    whole.train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    saved = json.loads((checkpoint / PASS_RATE_STATE_NAME).read_text())
    assert saved["global_step"] == 4 and saved["pass_rates"]["recorded_through"] == 3
    resumed = build(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.generations == [g for g in whole.generations if g["step"] > 4]
    losses = step_losses(whole.state.log_history)
    assert {s: v for s, v in step_losses(resumed.state.log_history).items() if s > 4} == {
        s: v for s, v in losses.items() if s > 4
    }
    assert resumed.pass_rates.state_dict() == whole.pass_rates.state_dict()
    # the restored pass rates decide the draws: without them, generations 4-7 (steps 5-8) would differ
    unguided = GroupedPromptSampler(
        len(data),
        num_generations=G,
        generation_batch_size=16,
        repeat_count=2,
        gradient_accumulation_steps=2,
        seed=whole.prompt_sampler.seed,
        curriculum_config=whole.data_efficiency_config.curriculum,
        metric_values={"difficulty": np.asarray(data["difficulty"])},
    )
    uniform = [[data["prompt"][i] for i in unguided.prompts(c)] for c in range(4, 8)]
    assert uniform != [groups_of(g["prompts"]) for g in resumed.generations]
    # a pass-rate file from other settings is refused, naming the setting
    saved["pass_rates"]["config"]["band"] = [0.1, 0.9]
    (checkpoint / PASS_RATE_STATE_NAME).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"pass_rates\.config=.*'band': \[0.1, 0.9\].*but this run has"):
        build(tmp_path / "c").train(resume_from_checkpoint=str(checkpoint))


def test_grpo_refusals(tmp_path):
    data = addition_prompts()

    class Composed(DataEfficiencyTrainer, trl.GRPOTrainer):  # what main allowed, silently mixing prompts
        pass

    args = DataEfficiencyGRPOConfig(**grpo_kwargs(tmp_path), **GRPO_CURRICULUM)
    with pytest.raises(ValueError, match=r"args.num_generations=4: Composed .*DataEfficiencyGRPOTrainer"):
        Composed(model=tiny_lm(), reward_funcs=digit_reward, args=args, train_dataset=data, processing_class=TOKENIZER)

    def build(**options):
        args = DataEfficiencyGRPOConfig(**grpo_kwargs(tmp_path), **options)
        return DataEfficiencyGRPOTrainer(
            model=tiny_lm(), reward_funcs=digit_reward, args=args, train_dataset=data, processing_class=TOKENIZER
        )

    with pytest.raises(ValueError, match=r"random_ltd cannot be used with GRPO"):
        build(**RANDOM_LTD)
    with pytest.raises(ValueError, match=r"data_efficiency_recipe='auto'.*GRPO"):
        build(data_efficiency_recipe="auto")
    with pytest.raises(ValueError, match=r"--pass_rate_band.*add --pass_rate_curriculum"):
        build(pass_rate_band=[0.1, 0.9])
    with pytest.raises(ValueError, match=r"pass_rate_band=\[0.9, 0.1\] must be two pass rates lo <= hi"):
        build(pass_rate_curriculum=True, pass_rate_band=[0.9, 0.1])
    with pytest.raises(ValueError, match=r"pass_rate_smoothing=0 is not allowed"):
        build(pass_rate_curriculum=True, pass_rate_smoothing=0)
    with pytest.raises(ValueError, match=r"dataloader_num_workers=2 .*allowed: 0"):
        build(pass_rate_curriculum=True, dataloader_num_workers=2)
    with pytest.raises(ValueError, match=r"only 5 prompts are eligible at step 1 .* needs 8 distinct prompts"):
        build(**{**GRPO_CURRICULUM, "curriculum_min_difficulty": [2], "steps_per_generation": 4}).train()


def test_example_script_trains_sft_then_grpo_from_it(tmp_path):
    """scripts/examples/train_trl.py: SFT with the auto recipe, then GRPO with the pass-rate curriculum from its
    output."""
    import train_trl

    sft = train_trl.main(
        ["sft", "--output_dir", str(tmp_path / "sft"), "--max_steps", "6", "--data_efficiency_recipe", "auto"]
        + ["--operands", "8", "--use_cpu", "--logging_steps", "1"]
    )
    assert "random_ltd/kept_length" in sft["last_log"]
    grpo = train_trl.main(
        ["grpo", "--model_name_or_path", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "grpo")]
        + ["--max_steps", "2", "--pass_rate_curriculum", "--operands", "8", "--use_cpu", "--logging_steps", "1"]
    )
    assert grpo["last_log"]["step"] == 2 and "pass_rate/seen_prompts" in grpo["last_log"]


def test_prompt_sampler_refuses_a_custom_schedule_without_a_callable():
    metric = CurriculumMetricConfig(name="seqlen", min_difficulty=1, max_difficulty=9, schedule_type="custom")
    with pytest.raises(ValueError, match="curriculum metric 'seqlen' has schedule_type='custom' but no callable"):
        GroupedPromptSampler(
            48,
            num_generations=G,
            generation_batch_size=12,
            repeat_count=3,
            gradient_accumulation_steps=2,
            seed=5,
            curriculum_config=CurriculumConfig(sampling_metrics=[metric]),
            metric_values={"seqlen": np.arange(48)},
        )


def test_prompt_sampler_has_trls_layout_and_checks_its_state():
    """The stream of each generation is trl's RepeatSampler layout (G in a row, the generation's batch R times)
    applied to that generation's draw; states from another geometry, seed or tracker are refused."""
    from trl.trainer.utils import RepeatSampler

    sampler = GroupedPromptSampler(
        48, num_generations=G, generation_batch_size=12, repeat_count=3, gradient_accumulation_steps=2, seed=5
    )
    layout = list(RepeatSampler(range(3), mini_repeat_count=G, batch_size=3, repeat_count=3, shuffle=False))
    stream = [index for index, _ in sampler]
    per_generation = 12 * 3
    assert len(stream) == len(sampler) == 48 // 3 * per_generation // 72 * 72  # whole generations and steps
    for c in range(len(stream) // per_generation):
        draw = sampler.prompts(c)
        assert len(set(draw.tolist())) == 3
        assert stream[c * per_generation : (c + 1) * per_generation] == [int(draw[i]) for i in layout]
    state = sampler.state_dict(position=72)
    for key, value in (("seed", 6), ("num_generations", 2), ("repeat_count", 1), ("gradient_accumulation_steps", 3)):
        with pytest.raises(ValueError, match=rf"{key}={value}.*resume with the same"):
            sampler.load_state_dict({**state, key: value})
    sampler.load_state_dict(state)
    assert sampler.position == 72
    tracker = PassRateTracker(48, PassRateConfig(), lag=2)
    tracker.record(0, [1, 2, 3], [0.0, 0.5, 1.0])
    with pytest.raises(RuntimeError, match="generation 3 is drawn before generation 1 is scored"):
        tracker.rates_at(3)
    good = tracker.state_dict()
    bad = [
        ({**good, "lag": 1}, r"lag=1 but this run has lag=2"),
        ({**good, "recorded_through": 3}, r"do not reach recorded_through=3"),
        ({**good, "pending": [{**good["pending"][0], "pass_fractions": [0.0, 0.5, 2.0]}]}, r"pass_fractions\[2\]"),
        ({**good, "prompts": [1, 1], "rates": [0.5, 0.5], "counts": [1, 1]}, "holds a prompt index twice"),
    ]
    for state, message in bad:
        with pytest.raises(ValueError, match=message):
            PassRateTracker(48, PassRateConfig(), lag=2).load_state_dict(state)
    restored = PassRateTracker(48, PassRateConfig(), lag=2)
    restored.load_state_dict(good)
    assert restored.state_dict() == good


def test_grpo_curriculum_from_a_registered_metric(tmp_path):
    """A registered metric of the prompt text (no input_ids: GRPO datasets hold raw prompts) is computed and
    followed: every generation's prompts are at most as long as DeepSpeed's schedule allows at its step."""
    import hf_data_efficiency as hfde

    hfde.register_curriculum_metric(
        "prompt_chars", lambda batch: [len(p) for p in batch["prompt"]], fingerprint="v1", overwrite=True
    )
    options = {**GRPO_CURRICULUM, "curriculum_metrics": ["prompt_chars"], "curriculum_min_difficulty": [4]}
    args = DataEfficiencyGRPOConfig(**grpo_kwargs(tmp_path, max_steps=6), **options)
    trainer = RecordingGRPO(
        model=tiny_lm(),
        reward_funcs=digit_reward,
        args=args,
        train_dataset=addition_prompts(),
        processing_class=TOKENIZER,
    )
    trainer.train()
    sched = schedule(4, 6, 6, 1)
    assert len(trainer.generations) == 6
    assert all(len(p) <= sched.get_difficulty(g["step"]) for g in trainer.generations for p in groups_of(g["prompts"]))
    assert max(len(p) for p in trainer.generations[-1]["prompts"]) > sched.get_difficulty(1)
