"""``hf-data-efficiency analyze``: Penn Treebank slices, the preview against the sampler, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest

from hf_data_efficiency.cli import curriculum_preview, main
from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig
from hf_data_efficiency.curriculum.index import load_metric, load_metric_index, load_metric_summary
from hf_data_efficiency.curriculum.sampler import CurriculumSampler

os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets.disable_progress_bars()


def _assert_png(path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    image = matplotlib_image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """The offline GPT-2 BPE (from scripts/examples/offline_data.py) saved as a tokenizer folder, as a user passes
    it."""
    from offline_data import gpt2_tokenizer

    path = tmp_path_factory.mktemp("gpt2_bpe")
    gpt2_tokenizer().save_pretrained(str(path))
    return str(path)


def test_analyze_ptb_with_the_offline_tokenizer_writes_arrays_summary_and_pngs(tmp_path, capsys, gpt2_dir):
    from offline_data import gpt2_tokenizer, load_ptb

    ptb = tmp_path / "ptb"
    load_ptb("train").select(range(400)).save_to_disk(str(ptb))
    out = tmp_path / "analysis"
    argv = ["analyze", "--dataset", str(ptb), "--tokenizer", gpt2_dir, "--max-samples", "300"]
    assert main(argv + ["--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vocab_rarity" in printed and "eligible at step 1" in printed
    for name in ("seqlen", "vocab_rarity"):
        values = load_metric(out, name)
        assert values.shape == (300,)
        np.testing.assert_array_equal(load_metric_index(out, name), np.argsort(values, kind="stable"))
        assert load_metric_summary(out, name)["count"] == 300
        _assert_png(out / f"{name}_hist.png")
    _assert_png(out / "curriculum_preview.png")
    # the recomputed seqlen equals the GPT-2 BPE token counts of the first 300 PTB lines
    tok = gpt2_tokenizer()
    text = load_ptb("train")[:300]["text"]
    np.testing.assert_array_equal(load_metric(out, "seqlen"), [len(tok(t)["input_ids"]) for t in text])
    # demo curriculum: vocab_rarity percentile, fixed_root 1 -> 100 over 1000 steps (root degree 2)
    preview = json.loads((out / "curriculum_preview.json").read_text())
    for step in (1, 10, 250, 999, 1000, 1100):
        pct = min(100, math.floor(math.floor((step / 1000) ** 0.5 * 99 + 1)))
        assert preview["eligible"][step - 1] == pytest.approx(math.floor(300 * pct / 100) / 300)
    manifest = json.loads((out / "analysis.json").read_text())
    assert manifest["num_samples"] == 300 and manifest["preview"]["first_full_step"] == 1000


def test_analyze_deepspeed_config_two_metrics_text_file(tmp_path, gpt2_dir):
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

    text = tmp_path / "corpus.txt"
    lines = [" ".join(["word"] * (1 + i % 9) + [f"rare{i % 13}"]) for i in range(120)]
    text.write_text("\n".join(lines) + "\n\n")
    seqlen_cfg = {
        "index_to_sample_path": "unused",
        "index_to_metric_path": "unused",
        "difficulty_type": "value",
        "clustering_type": "schedule_based",
        "min_difficulty": 3,
        "max_difficulty": 12,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": 40, "difficulty_step": 1},
    }
    rarity_cfg = {
        "index_to_sample_path": "unused",
        "index_to_metric_path": "unused",
        "difficulty_type": "percentile",
        "clustering_type": "schedule_based",
        "min_difficulty": 10,
        "max_difficulty": 100,
        "schedule_type": "fixed_discrete",
        "schedule_config": {"difficulty": [10, 50, 100], "max_step": [10, 30]},
    }
    ds_config = {
        "train_batch_size": 8,
        "data_efficiency": {
            "enabled": True,
            "data_sampling": {
                "enabled": True,
                "curriculum_learning": {
                    "enabled": True,
                    "data_cluster_path": str(tmp_path / "clusters"),
                    "curriculum_metrics": {"seqlen": seqlen_cfg, "vocab_rarity": rarity_cfg},
                },
            },
        },
    }
    config = tmp_path / "ds_config.json"
    config.write_text(json.dumps(ds_config))
    out = tmp_path / "out"
    # only seqlen requested: the curriculum's vocab_rarity is added
    argv = ["analyze", "--dataset", str(text), "--tokenizer", gpt2_dir, "--metrics", "seqlen", "--config", str(config)]
    assert main(argv + ["--preview-steps", "50", "--output-dir", str(out)]) == 0
    seqlen, rarity = load_metric(out, "seqlen"), load_metric(out, "vocab_rarity")
    assert seqlen.shape == rarity.shape == (120,)
    _assert_png(out / "curriculum_preview.png")
    preview = json.loads((out / "curriculum_preview.json").read_text())
    rank = np.empty(120, dtype=int)
    rank[sorted(range(120), key=lambda i: (rarity[i], i))] = np.arange(120)
    for step in range(1, 51):
        d_len = CurriculumScheduler(seqlen_cfg).update_difficulty(step)
        d_pct = CurriculumScheduler(rarity_cfg).update_difficulty(step)
        expected = sum(1 for i in range(120) if seqlen[i] <= d_len and rank[i] < math.floor(120 * d_pct / 100))
        assert preview["eligible"][step - 1] == pytest.approx(expected / 120), step


def _metric(name, lo, hi, kind="value", schedule="fixed_linear", clustering="schedule_based", **config):
    return CurriculumMetricConfig(
        name=name,
        min_difficulty=lo,
        max_difficulty=hi,
        schedule_type=schedule,
        schedule_config=config or {"total_curriculum_step": 30, "difficulty_step": 1},
        difficulty_type=kind,
        clustering_type=clustering,
    )


SEQLEN = _metric("seqlen", 8, 64, total_curriculum_step=40, difficulty_step=4)
RARITY = _metric(
    "rarity", 5, 100, "percentile", "fixed_root", total_curriculum_step=50, difficulty_step=3, root_degree=2
)
DECREASING = _metric("seqlen", 10, 64, schedule="fixed_discrete", difficulty=[40, 20, 64], max_step=[10, 25])
SINGLE = _metric("rarity", 5, 100, "percentile", clustering="single_cluster")


@pytest.mark.parametrize(
    "metrics",
    [(SEQLEN,), (RARITY,), (SEQLEN, RARITY), (DECREASING,), (DECREASING, RARITY), (SEQLEN, SINGLE)],
    ids=["value", "percentile", "value+percentile", "decreasing-discrete", "decreasing+percentile", "single-cluster"],
)
def test_preview_counts_equal_the_sampler_at_every_step(metrics):
    rng = np.random.default_rng(3)
    n = 997
    arrays = {"seqlen": rng.integers(1, 65, n), "rarity": rng.gamma(2.0, 5.0, n)}
    arrays["rarity"][::5] = arrays["rarity"][3]  # ties: ranks are by stable order
    curriculum = CurriculumConfig(sampling_metrics=list(metrics))
    steps = 70
    preview = curriculum_preview(arrays, curriculum, steps, n)
    sampler = CurriculumSampler(arrays, curriculum, batch_size=4, world_size=2)
    for step in range(1, steps + 1):
        assert preview["eligible_count"][step - 1] == sampler.num_eligible(step), step
        assert preview["eligible"][step - 1] == sampler.num_eligible(step) / n
        for name, difficulty in sampler.difficulty_at(step).items():
            assert preview["difficulty"][name][step - 1] == difficulty, (name, step)
    if metrics == (DECREASING,):  # the running maximum holds 40 while the schedule drops to 20
        assert (
            preview["difficulty"]["seqlen"][14] == 40
            and preview["eligible_count"][14] == (arrays["seqlen"] <= 40).sum()
        )


def test_analyze_saved_tokenized_dataset_needs_no_tokenizer(tmp_path):
    saved = tmp_path / "tokenized"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"input_ids": [[1, 2, 3], [4], [1, 1]], "attention_mask": [[1, 1, 0], [1], [1, 1]]}
        )
    ).save_to_disk(str(saved))
    out = tmp_path / "o"
    assert main(["analyze", "--dataset", str(saved), "--preview-steps", "5", "--output-dir", str(out)]) == 0
    np.testing.assert_array_equal(load_metric(out, "seqlen"), [2, 1, 2])
    # a JSON-lines file with precomputed token ids and a metric column of its own
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input_ids": [1] * (i + 1), "score": 0.5 * i}) + "\n" for i in range(6)))
    out = tmp_path / "o2"
    argv = ["analyze", "--dataset", str(rows), "--metrics", "seqlen", "score", "--preview-steps", "5"]
    assert main(argv + ["--output-dir", str(out)]) == 0
    np.testing.assert_array_equal(load_metric(out, "seqlen"), np.arange(1, 7))
    np.testing.assert_array_equal(load_metric(out, "score"), 0.5 * np.arange(6))


def _bad_inputs(tmp_path):
    """(argv, the argument the error must name) for each kind of user error."""
    saved = tmp_path / "saved"
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]]})).save_to_disk(str(saved))
    text = tmp_path / "corpus.txt"
    text.write_text("a b c\nd e\n")
    no_text = tmp_path / "labels.jsonl"
    no_text.write_text('{"label": 1}\n{"label": 2}\n')
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x00\x01not parquet")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("curriculum: [unclosed\n  metrics: {\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"curriculum": ')
    no_curriculum = tmp_path / "none.json"
    no_curriculum.write_text(json.dumps({"curriculum": None, "random_ltd": None}))
    unknown_metric = tmp_path / "unknown.json"
    unknown_metric.write_text(json.dumps({"curriculum": {"metrics": [{**SEQLEN.to_dict(), "name": "perplexity"}]}}))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ds = ["analyze", "--dataset", str(saved)]
    return [
        (["analyze"], "--dataset"),
        (["analyze", "--dataset", str(tmp_path / "nope")], "--dataset"),
        (["analyze", "--dataset", str(junk)], "--dataset"),
        ([*ds, "--split", "test"], "--split"),
        (["analyze", "--dataset", str(text)], "--tokenizer"),
        (["analyze", "--dataset", str(text), "--tokenizer", str(tmp_path / "no_tok")], "--tokenizer"),
        (["analyze", "--dataset", str(no_text)], "--text-column"),
        ([*ds, "--config", str(bad_yaml)], "--config"),
        ([*ds, "--config", str(bad_json)], "--config"),
        ([*ds, "--config", str(tmp_path / "missing.json")], "--config"),
        ([*ds, "--config", str(no_curriculum)], "--config"),
        ([*ds, "--config", str(unknown_metric)], "--config"),
        ([*ds, "--metrics", "perplexity"], "--metrics"),
        ([*ds, "--output-dir", str(a_file / "sub")], "--output-dir"),
        ([*ds, "--max-length", "0"], "--max-length"),
        ([*ds, "--max-samples", "abc"], "--max-samples"),
        ([*ds, "--preview-steps", "-3"], "--preview-steps"),
        ([*ds, "--global-batch-size", "1.5"], "--global-batch-size"),
        ([*ds, "--num-proc", ""], "--num-proc"),
        ([*ds, "--bins", "0"], "--bins"),
    ]


def test_every_bad_input_is_one_error_line_naming_the_argument(tmp_path, capfd):
    for argv, flag in _bad_inputs(tmp_path):
        code = main([*argv, "--output-dir", str(tmp_path / "out")] if flag != "--output-dir" else argv)
        err = capfd.readouterr().err  # file-descriptor level: dependencies' loggers write there too
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and "error: " in lines[0] and flag in lines[0], (argv, err)
        assert "Traceback" not in err


def test_console_script_exit_status_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_data_efficiency.cli", "analyze", "--dataset", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("hf-data-efficiency analyze: error: --dataset=")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
