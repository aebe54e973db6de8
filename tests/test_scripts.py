"""The example training scripts, recipes and benchmark helpers, run at a tiny size on CPU.

Oracles: the pacing schedules recomputed from scratch (``DifficultySchedule``/``RandomLTDScheduler`` and
the benchmark's planner), token counts measured by forward hooks independently of the library, and the
saved model reloaded as plain transformers and evaluated again.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import torchrun

import hf_data_efficiency as hfde
from hf_data_efficiency.config import DataEfficiencyConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "scripts" / "examples"


def _script(name: str):
    return importlib.import_module(name)


def _logged(result: dict, key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in result["log_history"] if key in e and "loss" in e}


def _kept_schedule(min_kept: int, max_kept: int, total: int, step: int):
    return hfde.RandomLTDScheduler(min_kept, max_kept, total, step)


def _gpt2_flags(out: Path, steps: int, batch: int, block: int, trunc_total: int, ltd_total: int) -> list[str]:
    return [
        *("--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", str(batch)),
        *("--n_layer", "3", "--n_embd", "32", "--n_head", "2", "--block_size", str(block)),
        *("--logging_steps", "1", "--eval_steps", str(steps), "--max_eval_samples", "16", "--learning_rate", "1e-3"),
        *(
            "--seqlen_curriculum",
            "truncate",
            "--seqlen_curriculum_min_difficulty",
            "8",
            "--seqlen_curriculum_max_difficulty",
            str(block),
        ),
        *("--seqlen_curriculum_difficulty_step", "8", "--seqlen_curriculum_total_curriculum_step", str(trunc_total)),
        *("--curriculum_metrics", "vocab_rarity", "--curriculum_difficulty_type", "percentile"),
        *("--curriculum_schedule_type", "fixed_root", "--curriculum_root_degree", "2"),
        *("--curriculum_min_difficulty", "20", "--curriculum_max_difficulty", "100"),
        *("--curriculum_difficulty_step", "1", "--curriculum_total_curriculum_step", str(trunc_total)),
        *("--random_ltd", "--random_ltd_min_value", "8", "--random_ltd_max_value", str(block)),
        *("--random_ltd_seq_per_step", "8", "--random_ltd_require_steps", str(ltd_total)),
    ]


def test_train_gpt2_curriculum_and_random_ltd(tmp_path):
    """PTB, packed blocks, seqlen_truncate + vocab-rarity percentile + random-LTD, in one process."""
    steps, batch, block, trunc_total, ltd_total = 6, 4, 32, 4, 5
    out = tmp_path / "gpt2"
    argv = _gpt2_flags(out, steps, batch, block, trunc_total, ltd_total)
    result = _script("train_gpt2").main(
        [*argv, "--max_train_samples", "64", "--final_eval_splits", "validation", "--save_strategy", "no"]
    )
    # the difficulties and kept lengths logged at every step follow the schedules, recomputed here
    trunc = hfde.DifficultySchedule.from_dict(
        {
            "min_difficulty": 8,
            "max_difficulty": block,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": trunc_total, "difficulty_step": 8},
        }
    )
    logged = _logged(result, "curriculum/difficulty_seqlen_truncate")
    assert logged == {k: trunc(k) for k in range(1, steps + 1)}
    kept = _kept_schedule(8, block, ltd_total, 8)
    assert _logged(result, "random_ltd/kept_length") == {k: kept.kept_length(k - 1) for k in range(1, steps + 1)}
    # tokens measured by hooks on every layer == what the schedules predict (benchmark planner)
    bench = _script("bench_data_efficiency")
    task = {"seq": block, "batch": batch, "layers": 3, "curriculum": None, "random_ltd": None}
    rows = [min(trunc(k), block) for k in range(1, steps + 1)]
    assert result["tokens"] == batch * sum(rows)  # Trainer's num_input_tokens_seen, after truncation
    expected_layer_tokens = sum(batch * (2 * r + min(kept.kept_length(k - 1), r)) for k, r in enumerate(rows, 1))
    assert result["layer_tokens"] == expected_layer_tokens
    assert _logged(result, "data_efficiency/effective_tokens")[steps] == pytest.approx(expected_layer_tokens / 3)
    task["curriculum"] = {"fraction": trunc_total / steps, "seqlen_min": 8, "seqlen_step": 8, "rarity_min": 20}
    task["curriculum"]["root_degree"] = 2
    task["random_ltd"] = {"fraction": ltd_total / steps, "min_kept": 8, "step": 8}
    assert bench.planned_effective_tokens(task, "both", steps) == pytest.approx(expected_layer_tokens / 3)
    assert np.isfinite(result["final"]["validation"]["loss"])
    assert result["final"]["validation"]["perplexity"] == pytest.approx(np.exp(result["final"]["validation"]["loss"]))


def test_train_gpt2_reshape_tokens_match_the_benchmark_plan(tmp_path):
    """seqlen_reshape with random-LTD (the benchmark's ``both-reshape`` variant): the layer-tokens measured by the
    script's hooks equal the benchmark planner's, which counts ceil(block / length) padded rows per sample and a
    kept length capped by the row length."""
    steps, batch, block, trunc_total, ltd_total = 5, 2, 32, 4, 5
    argv = _gpt2_flags(tmp_path / "gpt2", steps, batch, block, trunc_total, ltd_total)
    argv[argv.index("truncate")] = "reshape"
    rarity = argv.index("--curriculum_metrics")
    del argv[rarity : argv.index("--random_ltd")]  # the seqlen_only part of the variant: no rarity metric
    result = _script("train_gpt2").main(
        [*argv, "--max_train_samples", "32", "--final_eval_splits", "validation", "--save_strategy", "no"]
    )
    bench = _script("bench_data_efficiency")
    task = {"seq": block, "batch": batch, "layers": 3, "random_ltd": {"fraction": 1.0, "min_kept": 8, "step": 8}}
    task["curriculum"] = {"fraction": trunc_total / steps, "seqlen_min": 8, "seqlen_step": 8, "rarity": False}
    task["curriculum"]["transform"] = "reshape"
    planned = bench.planned_effective_tokens(task, "both", steps)
    # steps 1-4 reshape to lengths 8, 16, 24, 32: 4, 2, 2 (24 + 8 padded) and 1 rows per sample
    assert result["layer_tokens"] == planned * 3 > steps * batch * block * 3 * 0.5
    assert _logged(result, "curriculum/difficulty_seqlen_reshape")[1] == 8


def test_train_gpt2_saved_model_is_vanilla(tmp_path):
    """Line mode (per-sentence samples, seqlen metric), vocabulary capped by --max_vocab: the kept ids are the most
    frequent training ids, the saved model is plain transformers, and evaluating it from scratch (rare ids mapped to
    the unknown id) reproduces the validation loss the Trainer reported."""
    from collections import Counter

    from transformers import GPT2LMHeadModel

    gpt2 = _script("train_gpt2")
    out = tmp_path / "lines"
    argv = [
        *("--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1"),
        *("--n_layer", "3", "--n_embd", "32", "--n_head", "2", "--block_size", "48", "--sample_mode", "line"),
        *("--max_train_samples", "200", "--max_eval_samples", "24", "--eval_steps", "4", "--final_eval_splits", ""),
        *("--curriculum_metrics", "seqlen", "--curriculum_min_difficulty", "12", "--curriculum_max_difficulty", "48"),
        *("--curriculum_total_curriculum_step", "3", "--curriculum_difficulty_step", "4"),
        *("--random_ltd", "--random_ltd_min_value", "16", "--random_ltd_max_value", "48"),
        *("--random_ltd_require_steps", "3", "--random_ltd_seq_per_step", "8", "--max_vocab", "300"),
    ]
    result = gpt2.main(argv)
    model = GPT2LMHeadModel.from_pretrained(out).eval()
    vocab = json.loads((out / "vocab_map.json").read_text())
    assert model.config.vocab_size == len(vocab["gpt2_token_ids"]) + 1
    # recompute the loss on the validation lines from scratch: tokenize, remap, pad, average over tokens
    from offline_data import gpt2_tokenizer, load_ptb

    tok = gpt2_tokenizer()
    counts = Counter()
    for line in load_ptb("train")["text"]:
        if line.strip():
            counts.update((tok(" " + line.strip())["input_ids"] + [tok.eos_token_id])[:48])
    most_frequent = sorted(counts, key=lambda t: (t != tok.eos_token_id, -counts[t], t))[:300]
    assert vocab["gpt2_token_ids"] == sorted(most_frequent)
    lookup = {t: i for i, t in enumerate(vocab["gpt2_token_ids"])}
    eos = lookup[tok.eos_token_id]
    total, count = 0.0, 0
    for line in load_ptb("valid")["text"][:24]:
        ids = ([lookup.get(t, vocab["unknown_id"]) for t in tok(" " + line)["input_ids"]] + [eos])[:48]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
        count += len(ids) - 1
    valid_subset_loss = [e["eval_loss"] for e in result["log_history"] if "eval_loss" in e][-1]
    assert valid_subset_loss == pytest.approx(total / count, rel=2e-3)
    # the per-sample seqlen curriculum: every logged difficulty follows the schedule
    sched = hfde.DifficultySchedule.from_dict(
        {
            "min_difficulty": 12,
            "max_difficulty": 48,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 3, "difficulty_step": 4},
        }
    )
    assert _logged(result, "curriculum/difficulty_seqlen") == {k: sched(k) for k in range(1, 5)}


@pytest.mark.parametrize("flags", [("--no_compact_vocab",), ("--max_vocab", "1")])
def test_train_gpt2_refuses_a_max_vocab_it_cannot_apply(tmp_path, flags):
    with pytest.raises(ValueError, match="max_vocab"):
        _script("train_gpt2").main(["--output_dir", str(tmp_path), "--max_vocab", "10", *flags])


def test_train_bert_cls_minilm(tmp_path):
    """MiniLM fine-tuning on BBC News with a seqlen curriculum and random-LTD; accuracy recomputed from the save."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    bert = _script("train_bert")
    out = tmp_path / "bert"
    argv = [
        *("--task", "cls", "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4"),
        *("--max_seq_length", "32", "--max_train_samples", "48", "--max_eval_samples", "16", "--logging_steps", "1"),
        *("--final_eval_splits", "test", "--learning_rate", "1e-4"),
        *("--curriculum_metrics", "seqlen", "--curriculum_difficulty_type", "percentile"),
        *(
            "--curriculum_min_difficulty",
            "50",
            "--curriculum_max_difficulty",
            "100",
            "--curriculum_total_curriculum_step",
            "2",
        ),
        *("--random_ltd", "--random_ltd_min_value", "16", "--random_ltd_max_value", "32"),
        *("--random_ltd_require_steps", "3", "--random_ltd_seq_per_step", "8"),
    ]
    result = bert.main(argv)
    assert set(_logged(result, "random_ltd/kept_length").values()) <= {16, 24, 32}
    model = BertForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    test = bert.split_articles(0)["test"]
    correct = 0
    for start in range(0, len(test), 64):
        rows = test[start : start + 64]
        enc = tok(rows["text"], truncation=True, max_length=32, padding=True, return_tensors="pt")
        with torch.no_grad():
            correct += int((model(**enc).logits.argmax(-1) == torch.tensor(rows["label"])).sum())
    assert result["final"]["test"]["accuracy"] == pytest.approx(correct / len(test))


def test_train_bert_mlm_from_scratch(tmp_path):
    """MLM on BBC paragraphs with the paper's BERT curriculum (seqlen + vocab rarity) and random-LTD."""
    result = _script("train_bert").main(
        [
            *("--task", "mlm", "--from_scratch", "--num_hidden_layers", "3", "--hidden_size", "32"),
            *("--num_attention_heads", "2", "--output_dir", str(tmp_path / "mlm"), "--max_steps", "3"),
            *("--per_device_train_batch_size", "4", "--max_seq_length", "32", "--max_train_samples", "64"),
            *("--max_eval_samples", "16", "--final_eval_splits", "validation", "--logging_steps", "1"),
            *("--curriculum_metrics", "seqlen", "vocab_rarity", "--curriculum_difficulty_type", "value", "percentile"),
            *("--curriculum_min_difficulty", "16", "50", "--curriculum_max_difficulty", "32", "100"),
            *("--curriculum_total_curriculum_step", "2", "--curriculum_difficulty_step", "4", "1"),
            *("--random_ltd", "--random_ltd_min_value", "16", "--random_ltd_max_value", "32"),
            *("--random_ltd_require_steps", "2", "--random_ltd_seq_per_step", "8", "--save_strategy", "no"),
        ]
    )
    assert _logged(result, "curriculum/difficulty_seqlen")[1] == 24
    assert np.isfinite(result["final"]["validation"]["loss"])


def test_train_vit_random_ltd_digits(tmp_path):
    """A random-init ViT on sklearn digits with an ``ink`` percentile curriculum and random-LTD: the layers really
    see fewer tokens, and the logged difficulty follows the schedule."""
    vit = _script("train_vit")
    steps, batch = 4, 16
    result = vit.main(
        [
            *("--dataset", "digits", "--patch_size", "2", "--hidden_size", "32", "--num_hidden_layers", "4"),
            *("--output_dir", str(tmp_path / "vit"), "--max_steps", str(steps), "--logging_steps", "1"),
            *("--per_device_train_batch_size", str(batch), "--final_eval_splits", "validation,test"),
            *("--random_ltd", "--random_ltd_min_value", "8", "--random_ltd_max_value", "17"),
            *("--random_ltd_require_steps", "3", "--random_ltd_seq_per_step", "4", "--save_strategy", "no"),
            *("--curriculum_metrics", "ink", "--curriculum_difficulty_type", "percentile"),
            *("--curriculum_min_difficulty", "40", "--curriculum_max_difficulty", "100"),
            *("--curriculum_total_curriculum_step", "3", "--curriculum_difficulty_step", "10"),
        ]
    )
    sched = hfde.DifficultySchedule.from_dict(
        {
            "min_difficulty": 40,
            "max_difficulty": 100,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 3, "difficulty_step": 10},
        }
    )
    assert _logged(result, "curriculum/difficulty_ink") == {k: sched(k) for k in range(1, steps + 1)}
    kept = _kept_schedule(8, 17, 3, 4)
    per_step = [batch * (2 * 17 + 2 * kept.kept_length(k - 1)) for k in range(1, steps + 1)]
    assert result["layer_tokens"] == sum(per_step)
    assert 0.0 <= result["final"]["test"]["accuracy"] <= 1.0


def test_train_gpt2_two_processes_torchrun(tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo): both ranks train; the global token count is twice one rank's."""
    data = tmp_path / "data"
    data.mkdir()
    from offline_data import load_ptb

    (data / "train.txt").write_text("\n".join(load_ptb("train")["text"][:400]) + "\n")
    (data / "valid.txt").write_text("\n".join(load_ptb("valid")["text"][:40]) + "\n")
    steps, batch, block = 4, 2, 32
    out = tmp_path / "ddp"
    cmd = [
        *torchrun(),
        str(EXAMPLES / "train_gpt2.py"),
        *("--dataset_name", "none", "--train_file", str(data / "train.txt")),
        *("--validation_file", str(data / "valid.txt"), "--final_eval_splits", "validation"),
        *_gpt2_flags(out, steps, batch, block, 3, 3),
        "--save_strategy",
        "no",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    trunc = hfde.DifficultySchedule.from_dict(
        {
            "min_difficulty": 8,
            "max_difficulty": block,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 3, "difficulty_step": 8},
        }
    )
    per_rank = sum(batch * min(trunc(k), block) for k in range(1, steps + 1))
    assert result["tokens"] == 2 * per_rank  # num_input_tokens_seen is gathered over both ranks
    assert _logged(result, "data_efficiency/consumed_samples")[steps] == 2 * batch * steps


# ----- recipes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*/*.yaml")), ids=lambda p: p.name)
def test_recipe_files_parse(path):
    """Accelerate configs load with accelerate's own reader; argument recipes parse into the script's classes."""
    if path.parent.name == "accelerate":
        from accelerate.commands.config.config_args import ClusterConfig

        config = ClusterConfig.from_yaml_file(path)
        assert config.num_processes >= 1
        if config.distributed_type == "DEEPSPEED":
            ds = config.deepspeed_config["deepspeed_config_file"]
            assert "data_efficiency" not in json.loads((ROOT / ds).read_text())
        return
    script = {"gpt2": "train_gpt2", "bert": "train_bert", "vit": "train_vit"}[path.parent.name]
    module = _script(script)
    args_cls = hfde.DataEfficiencyTrainingArguments
    recipe = yaml.safe_load(path.read_text())
    if "deepspeed" in recipe:
        pytest.importorskip("deepspeed")
        cfg = DataEfficiencyConfig.from_deepspeed(ROOT / recipe["deepspeed"])
    else:
        _, _, targs = module._examples.parse_args(
            (module.ModelArguments, module.DataArguments, args_cls), [str(path), "--output_dir", "/tmp/unused"]
        )
        cfg = targs.get_data_efficiency_config()
        assert targs.max_steps == recipe["max_steps"]
    if recipe.get("random_ltd"):
        assert cfg.random_ltd is not None and cfg.random_ltd.max_value == recipe["random_ltd_max_value"]
    if "curriculum_metrics" in recipe or "seqlen_curriculum" in recipe:
        assert cfg.curriculum is not None


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_templates(path):
    """Every template is valid JSON; the data_efficiency ones parse into a config that is switched on."""
    ds = json.loads(path.read_text())
    if "data_efficiency" in ds:
        assert DataEfficiencyConfig.from_deepspeed(ds).enabled
    assert ds["zero_optimization"]["stage"] in (2, 3)


# ----- benchmark helpers ------------------------------------------------------------------------------------
def test_bench_docs_only_rewrites_its_block(tmp_path):
    bench = _script("bench_data_efficiency")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        f"# B\n\n<!-- other:begin -->\nkeep me\n<!-- other:end -->\n\n{bench.DOC_BEGIN}\n_Not yet measured._\n{bench.DOC_END}\ntail\n"
    )
    bench.write_docs("gpt2", "first gpt2", doc)
    bench.write_docs("vit", "vit table", doc)
    bench.write_docs("gpt2", "second gpt2", doc)
    text = doc.read_text()
    assert "keep me" in text and text.endswith("tail\n") and "Not yet measured" not in text
    assert "second gpt2" in text and "first gpt2" not in text and "vit table" in text
    inner = text.split(bench.DOC_BEGIN)[1].split(bench.DOC_END)[0]
    assert inner.index("gpt2") < inner.index("vit table")


def test_bench_plan_fits_budget():
    bench = _script("bench_data_efficiency")
    task = bench.TASKS["gpt2"]
    full = task["steps"] * task["batch"] * task["seq"]
    for arm in bench.ARMS:
        for budget in (1.0, 0.5):
            steps = bench.plan_steps(task, arm, budget * full)
            assert bench.planned_effective_tokens(task, arm, steps) >= 0.999 * budget * full
            assert bench.planned_effective_tokens(task, arm, steps - 2) < budget * full
    assert bench.plan_steps(task, "both", full) > bench.plan_steps(task, "curriculum", full) > task["steps"]
    # the auto recipe chooses, for this model and run, the random-LTD arm's settings
    assert bench.planned_effective_tokens(task, "auto", 300) == bench.planned_effective_tokens(task, "random_ltd", 300)
    curve = [{"eval_loss": 3.0, "x": 0.0}, {"eval_loss": 2.0, "x": 10.0}, {"eval_loss": 1.0, "x": 20.0}]
    assert bench.reach(curve, 1.5, "x") == pytest.approx(15.0)
    assert bench.reach(curve, 0.5, "x") is None
    # the seed spread of the crossing: each run's own curve; a run that never reaches the target is only counted
    runs = [
        {"curve": [{"eval_loss": 3.0, "effective_tokens": 0, "train_seconds": 0}, {**p, "eval_loss": 1.0}]}
        for p in ({"effective_tokens": 20, "train_seconds": 40}, {"effective_tokens": 40, "train_seconds": 40})
    ]
    runs.append({"curve": [{"eval_loss": 3.0, "effective_tokens": 0, "train_seconds": 0}]})
    # crossings at loss 2.0: 10 and 20 tokens (0.25x and 0.5x of 40), 20 s both (0.5x of 40)
    assert bench.per_seed_reach(runs, 2.0, 40, 40) == "0.38 ± 0.18x, 0.50 ± 0.00x (2/3 seeds)"


def test_bench_retabulates_committed_records_and_picks_each_arms_best_lr(tmp_path):
    """A study re-tabulated from committed run records alone (no training): each arm's LR is the grid value with
    the lowest final validation loss, and the table's rows are the runs at that LR."""
    bench = _script("bench_data_efficiency")
    records = tmp_path / "records"

    def record(loss: float, arm: str, seed: int, lr: float) -> dict:
        curve = [
            {
                "effective_tokens": t,
                "tokens": t,
                "train_seconds": t / 1e3,
                "train_cpu_seconds": t / 1e3,
                "eval_loss": v,
            }
            for t, v in ((1e5, loss + 1.0), (4e5, loss))
        ]
        return {
            "tokens": 4e5,
            "layer_tokens": 2.4e6,
            "effective_tokens": 4e5,
            "train_seconds": 400.0,
            "train_cpu_seconds": 400.0,
            "curve": curve,
            "final": {"validation": {"loss": loss, "perplexity": float(np.exp(loss))}},
            "bench": {"task": "gpt2", "arm": arm, "seed": seed, "steps": 200, "lr": lr, "budget": 1.0},
        }

    losses = {("baseline", 1e-3): 5.6, ("baseline", 2e-3): 5.4, ("auto", 1e-3): 5.0, ("auto", 2e-3): 5.2}
    for (arm, lr), loss in losses.items():
        for seed in (1, 2):
            path = bench.record_path(str(records), "gpt2", arm, 1.0, seed, lr)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record(loss + 0.01 * seed, arm, seed, lr)))
    argv = ["--task", "gpt2", "--arms", "auto", "--budgets", "1.0", "--baseline_budgets", "1.0", "--seeds", "1", "2"]
    argv += ["--lrs", "1e-3", "2e-3", "--records_dir", str(records), "--out_dir", str(tmp_path / "out")]
    summary = bench.main([*argv, "--only_existing", "--no_docs"])
    assert summary["lr_grid"]["baseline"]["chosen"] == 2e-3 and summary["lr_grid"]["auto"]["chosen"] == 1e-3
    assert summary["runs"]["baseline@1.0"]["lr"] == 2e-3 and summary["runs"]["auto@1.0"]["lr"] == 1e-3
    assert summary["runs"]["auto@1.0"]["val"] == pytest.approx([np.exp(5.01), np.exp(5.02)])


def test_train_gpt2_streaming_curriculum(tmp_path):
    """``--streaming`` trains the same curriculum from a shuffled, sharded stream: the logged truncation follows its
    schedule (recomputed), every step consumes one global batch, and the stream's buffer counters are logged."""
    steps, batch, block, trunc_total, ltd_total = 4, 4, 32, 3, 4
    argv = _gpt2_flags(tmp_path / "gpt2", steps, batch, block, trunc_total, ltd_total)
    result = _script("train_gpt2").main(
        [*argv, "--streaming", "--max_train_samples", "64", "--final_eval_splits", "", "--save_strategy", "no"]
    )
    trunc = hfde.DifficultySchedule.from_dict(
        {
            "min_difficulty": 8,
            "max_difficulty": block,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": trunc_total, "difficulty_step": 8},
        }
    )
    assert _logged(result, "curriculum/difficulty_seqlen_truncate") == {k: trunc(k) for k in range(1, steps + 1)}
    assert _logged(result, "data_efficiency/consumed_samples") == {k: k * batch for k in range(1, steps + 1)}
    buffered = _logged(result, "curriculum/stream_buffered")
    dropped = _logged(result, "curriculum/stream_dropped")
    # the 64-sample stream is all read during the warm-up: what is not served is buffered or dropped
    assert all(buffered[k] + dropped[k] == 64 - k * batch for k in range(1, steps + 1))


def test_bench_dynamic_batching_arms(tmp_path):
    """The dynamic-batching benchmark's arms, interleaved on a slice of PTB: each reaches the real-token target, the
    token-budget micro-batches stay within the budget and save activation memory and padding against fixed batches,
    and the two fixed arms (the same batches, padded differently) reach the same loss."""
    bench = _script("bench_dynamic_batching")
    argv = ["--data", "ptb", "--ptb_lines", "200", "--valid", "8", "--vocab", "256", "--real_tokens", "600"]
    rows = {r["arm"]: r for r in bench.main([*argv, "--max_tokens", "160", "--n_embd", "16"])}
    assert set(rows) == set(bench.ARMS) and all(r["real_tokens"] >= 600 for r in rows.values())
    for arm in ("token_budget", "token_budget_curriculum"):
        assert rows[arm]["largest_micro_batch_tokens"] <= 160
        assert rows[arm]["peak_activation_mb"] < rows["fixed_pad_longest"]["peak_activation_mb"]
    assert rows["token_budget"]["padding_fraction"] < rows["fixed_pad_batch"]["padding_fraction"]
    assert rows["fixed_pad_batch"]["padding_fraction"] < rows["fixed_pad_longest"]["padding_fraction"]
    assert rows["fixed_pad_batch"]["valid_loss"] == pytest.approx(rows["fixed_pad_longest"]["valid_loss"], rel=1e-5)
