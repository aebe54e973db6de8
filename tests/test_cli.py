"""``hf-data-efficiency analyze`` on small Penn Treebank slices."""

from __future__ import annotations

import json
import math
import os

import datasets
import numpy as np
import pytest

from hf_data_efficiency.cli import main
from hf_data_efficiency.curriculum.index import load_metric, load_metric_index, load_metric_summary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets.disable_progress_bars()
matplotlib_image = pytest.importorskip("matplotlib.image")


def _assert_png(path):
    image = matplotlib_image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0


def test_analyze_ptb_defaults_writes_arrays_summary_and_pngs(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "--max-samples", "300", "--output-dir", str(out)]) == 0
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
    from hf_data_efficiency.offline_data import gpt2_tokenizer, load_ptb

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


def test_analyze_deepspeed_config_two_metrics_text_file(tmp_path):
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
    argv = ["analyze", "--dataset", str(text), "--metrics", "seqlen", "--config", str(config)]
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


def test_analyze_saved_dataset_and_bad_arguments(tmp_path, capsys):
    saved = tmp_path / "tokenized"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"input_ids": [[1, 2, 3], [4], [1, 1]], "attention_mask": [[1, 1, 0], [1], [1, 1]]}
        )
    ).save_to_disk(str(saved))
    out = tmp_path / "o"
    assert main(["analyze", "--dataset", str(saved), "--preview-steps", "5", "--output-dir", str(out)]) == 0
    np.testing.assert_array_equal(load_metric(out, "seqlen"), [2, 1, 2])
    assert main(["analyze", "--dataset", str(saved), "--split", "test", "--output-dir", str(out)]) == 2
    assert "--split='test'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"curriculum": None, "random_ltd": None}))
    assert main(["analyze", "--dataset", str(saved), "--config", str(bad), "--output-dir", str(out)]) == 2
    assert "enables no curriculum" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "--metrics", "perplexity"])
