"""The streaming curriculum over local parquet/json shards, checked against oracles: DeepSpeed's difficulty schedule,
eligibility and percentiles recomputed from scratch, the plain stream, and an uninterrupted run for resume."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from _helpers import torchrun, training_kwargs
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, RecordingTrainer, collate, make_dataset, step_losses, tiny_model

from hf_data_efficiency import DataEfficiencyTrainingArguments
from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig, StreamingConfig
from hf_data_efficiency.curriculum.streaming import StreamingCurriculum
from hf_data_efficiency.curriculum.transforms import MAX_TOKENS_KEY, POSITION_KEY
from hf_data_efficiency.engine import DataEfficiencyEngine

N, VOCAB = 240, 60
BATCH, GA = 4, 2
G = BATCH * GA
ROOT = Path(__file__).resolve().parent.parent


def make_rows(n: int = N, seed: int = 0) -> list[dict]:
    """Rows with an ``id``, token ids of length 4..40 and a skewed token distribution (for rarity)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 41, size=n)
    return [
        {"id": i, "input_ids": np.minimum(rng.geometric(0.08, size=int(length)), VOCAB - 1).tolist()}
        for i, length in enumerate(lengths)
    ]


def write_shards(folder: Path, rows: list[dict], shards: int = 3, fmt: str = "parquet") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(shards):
        path = str(folder / f"part-{s}.{fmt}")
        part = datasets.Dataset.from_list(rows[s::shards])
        part.to_parquet(path) if fmt == "parquet" else part.to_json(path)
        files.append(path)
    return files


def open_stream(files: list[str]) -> datasets.IterableDataset:
    builder = "parquet" if files[0].endswith(".parquet") else "json"
    return datasets.load_dataset(builder, data_files=files, split="train", streaming=True)


SEQLEN = {
    "min_difficulty": 8,
    "max_difficulty": 40,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 12, "difficulty_step": 2},
}


def curriculum(metric: dict | None = None, name: str = "seqlen", difficulty_type: str = "value", **streaming):
    entry = {**SEQLEN, **(metric or {})}
    return CurriculumConfig(
        sampling_metrics=[CurriculumMetricConfig(name=name, difficulty_type=difficulty_type, **entry)],
        streaming=StreamingConfig(**{"buffer_size": 64, "chunk_size": 16, **streaming}),
    )


def served(stream: StreamingCurriculum, limit: int | None = None, check=None) -> list[tuple[int, dict]]:
    """``(1-based step, sample)`` for every sample yielded (from its position tag), at most ``limit``."""
    out = []
    for sample in stream:
        out.append((sample[POSITION_KEY] // stream.global_batch_size + 1, sample))
        if check is not None:
            check(stream)
        if limit is not None and len(out) == limit:
            break
    return out


def test_served_samples_are_eligible_at_their_step_and_nothing_is_lost_silently(tmp_path):
    rows = make_rows()
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows)), curriculum(), batch_size=BATCH, gradient_accumulation_steps=GA
    )
    sizes = []
    out = served(stream, check=lambda s: sizes.append(s.buffered))
    schedule = CurriculumScheduler(SEQLEN)
    for step, sample in out:
        assert len(sample["input_ids"]) <= schedule.get_difficulty(step), (step, sample["id"])
    steps = [step for step, _ in out]
    assert steps == sorted(steps) and Counter(steps) == dict.fromkeys(range(1, len(out) // G + 1), G)
    # the multiset served is the input minus exactly the logged drops: no duplicates, nothing invented
    ids = [sample["id"] for _, sample in out]
    counters = stream.counters
    assert len(set(ids)) == len(ids) and set(ids) <= set(range(N))
    assert counters.read == N and len(ids) == N - counters.dropped - counters.excluded
    assert counters.dropped > 0 and counters.excluded == 0  # a 64-sample buffer and an 8-token start must drop
    assert max(sizes) <= 64
    # the logs report the same counts
    logs = stream.stream_logs(len(out) // G)
    assert logs["curriculum/stream_dropped"] == counters.dropped and logs["curriculum/stream_buffered"] == 0


def test_hold_keeps_every_sample_and_counts_the_early_ones(tmp_path):
    rows = make_rows()
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows)),
        curriculum(buffer_full="hold", buffer_size=32),
        batch_size=BATCH,
        gradient_accumulation_steps=GA,
    )
    sizes = []
    out = served(stream, check=lambda s: sizes.append(s.buffered))
    schedule = CurriculumScheduler(SEQLEN)
    early = sum(len(sample["input_ids"]) > schedule.get_difficulty(step) for step, sample in out)
    ids = [sample["id"] for _, sample in out]
    assert stream.counters.dropped == N % G and len(set(ids)) == len(ids) == N - N % G  # only the last partial step
    assert early == stream.counters.admitted_early > 0
    assert max(sizes) <= 32


def test_hold_completes_a_step_with_the_samples_closest_to_eligibility():
    """Under ``hold`` a step short of eligible samples takes all of them, then the waiting samples of the lowest
    difficulty level, oldest first: recomputed from the rows read so far and the samples served before."""

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(make_rows())

    rows = make_rows()
    stream = StreamingCurriculum(
        Rows(), curriculum(buffer_full="hold", buffer_size=32), batch_size=BATCH, gradient_accumulation_steps=GA
    )
    reads = []
    out = served(stream, check=lambda s: reads.append(s.counters.read))
    schedule = CurriculumScheduler(SEQLEN)
    grid = sorted({schedule.get_difficulty(k) for k in range(1, 13)})

    def level(length):  # the first difficulty that admits the sample: what "closest to eligibility" orders by
        return next(i for i, d in enumerate(grid) if d >= length)

    served_before, checked = set(), 0
    for first in range(0, len(out) - G + 1, G):
        step = out[first][0]
        ids = {sample["id"] for _, sample in out[first : first + G]}
        buffered = [r for r in rows[: reads[first]] if r["id"] not in served_before]
        eligible = [r["id"] for r in buffered if len(r["input_ids"]) <= schedule.get_difficulty(step)]
        if len(eligible) < G:
            waiting = [r for r in buffered if r["id"] not in eligible]
            waiting.sort(key=lambda r: (level(len(r["input_ids"])), r["id"]))
            assert ids == set(eligible) | {r["id"] for r in waiting[: G - len(eligible)]}, step
            checked += 1
        served_before |= ids
    assert checked > 0


def test_error_policy_refuses_to_drop(tmp_path):
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, make_rows())),
        curriculum(buffer_full="error", buffer_size=16),
        batch_size=BATCH,
        gradient_accumulation_steps=GA,
    )
    with pytest.raises(ValueError, match=r"buffer_size=16.*buffer_full='error'.*allowed"):
        served(stream)


def test_samples_above_the_final_difficulty_are_excluded_and_counted(tmp_path):
    rows = make_rows()
    metric = {"max_difficulty": 20, "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 2}}
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows)),
        curriculum(metric, buffer_size=4096),
        batch_size=BATCH,
        gradient_accumulation_steps=GA,
    )
    out = served(stream)
    assert stream.counters.excluded == sum(len(r["input_ids"]) > 20 for r in rows)
    assert len(out) == N - stream.counters.excluded - stream.counters.dropped and stream.counters.dropped < G


def test_percentile_over_the_warmup_prefix_recomputed_from_scratch(tmp_path):
    rows = make_rows()
    metric = {
        "min_difficulty": 10,
        "max_difficulty": 100,
        "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 5},
    }
    warmup = 48
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows, shards=1)),
        curriculum(metric, difficulty_type="percentile", warmup_samples=warmup, buffer_size=64),
        batch_size=BATCH,
        gradient_accumulation_steps=GA,
    )
    out = served(stream)
    reference = sorted(len(r["input_ids"]) for r in rows[:warmup])  # the first samples of the (single-shard) stream
    schedule = CurriculumScheduler(metric | {"schedule_type": "fixed_linear"})
    for step, sample in out:
        count = math.floor(warmup * schedule.get_difficulty(step) / 100)
        assert count == warmup or 0 < count and len(sample["input_ids"]) <= reference[count - 1], (step, sample["id"])
    assert len(out) == N - stream.counters.dropped - stream.counters.excluded


def test_vocab_rarity_from_warmup_counts_matches_compute_metrics(tmp_path):
    from hf_data_efficiency.curriculum.metrics import compute_metrics

    rows = make_rows()
    warmup = 40
    metric = {"min_difficulty": 1e9, "max_difficulty": 1e9}  # every sample eligible
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows, shards=1)),
        curriculum(metric, name="vocab_rarity", warmup_samples=warmup),
        batch_size=BATCH,
        gradient_accumulation_steps=GA,
    )
    out = served(stream)
    counts = np.bincount(np.concatenate([r["input_ids"] for r in rows[:warmup]]), minlength=VOCAB)
    ds = datasets.Dataset.from_list(rows)
    expected = compute_metrics(ds, ["vocab_rarity"], token_counts=counts)["vocab_rarity"]
    got = stream._measure([sample for _, sample in out])["vocab_rarity"]
    np.testing.assert_allclose(got, [expected[s["id"]] for _, s in out], rtol=1e-12)


def test_percentile_rarity_over_an_analyze_folder_needs_no_warmup(tmp_path):
    """``hf-data-efficiency analyze`` writes token counts and the corpus's metric values; the stream then computes
    rarity with those counts and ranks it against the whole corpus. Oracle: the map-style analysis itself."""
    from hf_data_efficiency.cli import main
    from hf_data_efficiency.curriculum.index import load_metric

    rows = make_rows()
    files = write_shards(tmp_path / "data", rows, shards=2, fmt="json")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    analysis = tmp_path / "analysis"
    argv = ["analyze", "--dataset", str(corpus), "--metrics", "vocab_rarity", "--preview-steps", "5"]
    assert main([*argv, "--output-dir", str(analysis)]) == 0
    counts = np.load(analysis / "token_counts.npy")
    np.testing.assert_array_equal(counts, np.bincount(np.concatenate([r["input_ids"] for r in rows])))
    metric = {"min_difficulty": 20, "max_difficulty": 80}
    cfg = curriculum(metric, name="vocab_rarity", difficulty_type="percentile", warmup_samples=0)
    cfg.streaming.metrics_dir = str(analysis)
    stream = StreamingCurriculum(open_stream(files), cfg, batch_size=BATCH, gradient_accumulation_steps=GA)
    out = served(stream)
    values = load_metric(analysis, "vocab_rarity")  # row i of the corpus is sample id i
    reference = np.sort(values)
    schedule = CurriculumScheduler({**SEQLEN, **metric})
    for step, sample in out:
        count = math.floor(N * schedule.get_difficulty(step) / 100)
        assert values[sample["id"]] <= reference[count - 1] * (1 + 1e-12), (step, sample["id"])
    assert stream.counters.excluded == int((values > reference[math.floor(N * 0.8) - 1] * (1 + 1e-12)).sum())


def test_custom_schedule_levels_grow_as_the_steps_go(tmp_path):
    """A custom schedule is paced lazily, step by step (new levels re-bucket the buffer): every sample is eligible
    under the running maximum of the callable at its step, recomputed here."""

    def schedule(step: int) -> float:
        return 4 + step // 36 - (3 if step % 7 == 0 else 0)  # grows past step 1024, with dips the maximum ignores

    # lengths grow with the stream; every 10th sample is 5 tokens harder and waits in the buffer for its difficulty
    n = 1400
    rows = [{"id": i, "input_ids": [7] * (4 + i // 40 + 5 * (i % 10 == 9))} for i in range(n)]
    cfg = curriculum({"schedule_type": "custom", "schedule_config": {}}, buffer_size=32, chunk_size=4)
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows, shards=1)), cfg, batch_size=1, schedule_fns={"seqlen": schedule}
    )
    out = served(stream)
    late = [len(s["input_ids"]) > max(schedule(k) for k in range(1, step + 1)) for step, s in out]
    # only the drain after the end of the stream serves samples before their difficulty, and counts each
    assert sum(late) == stream.counters.admitted_early and not any(late[: n - 32])
    assert len(out) == n > 1100  # past the first pacing horizon (1024 steps), with samples waiting across it
    assert stream.counters.dropped == stream.counters.excluded == 0


def test_difficulty_at_growing_the_levels_re_buckets_the_buffer(tmp_path):
    """``difficulty_at`` of a step past the known levels (custom schedules; the logs ask it) re-buckets the buffer
    like the draw does: no sample is served before its difficulty."""

    def schedule(step: int) -> float:
        return 4 + step // 36

    rows = [{"id": i, "input_ids": [7] * (4 + i // 40 + 5 * (i % 10 == 9))} for i in range(1400)]
    cfg = curriculum({"schedule_type": "custom", "schedule_config": {}}, buffer_size=32, chunk_size=4)
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, rows, shards=1)), cfg, batch_size=1, schedule_fns={"seqlen": schedule}
    )
    out = served(stream, check=lambda s: s.difficulty_at(s.position // s.global_batch_size + 1))
    late = [len(s["input_ids"]) > schedule(step) for step, s in out]
    assert sum(late) == stream.counters.admitted_early and not any(late[:-32])


def test_at_max_difficulty_the_stream_passes_through_in_order(tmp_path):
    files = write_shards(tmp_path, make_rows(), fmt="json")
    metric = {"min_difficulty": 40, "max_difficulty": 40}
    stream = StreamingCurriculum(
        open_stream(files), curriculum(metric), batch_size=BATCH, gradient_accumulation_steps=GA
    )
    got = [sample["id"] for _, sample in served(stream)]
    plain = [row["id"] for row in open_stream(files)]
    assert got == plain[: len(plain) // G * G]


def test_seqlen_transform_tags_every_sample_with_its_steps_max_tokens(tmp_path):
    transform = {
        "name": "seqlen_truncate",
        "min_difficulty": 8,
        "max_difficulty": 40,
        "schedule_config": {"total_curriculum_step": 12, "difficulty_step": 8},
    }
    cfg = CurriculumConfig.from_dict({**curriculum().to_dict(), "transform": transform})
    stream = StreamingCurriculum(
        open_stream(write_shards(tmp_path, make_rows())), cfg, batch_size=BATCH, gradient_accumulation_steps=GA
    )
    truncate = CurriculumScheduler({**cfg.transform.to_dict(), "schedule_type": "fixed_linear"})
    for step, sample in served(stream):
        assert sample[MAX_TOKENS_KEY] == truncate.get_difficulty(step)


@pytest.mark.parametrize("cut", [3 * G, 3 * G + 5])
def test_resume_continues_bit_identically(tmp_path, cut):
    files = write_shards(tmp_path, make_rows())
    metric = {
        "min_difficulty": 20,
        "max_difficulty": 100,
        "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 5},
    }
    cfg = curriculum(metric, name="vocab_rarity", difficulty_type="percentile", warmup_samples=32, buffer_size=48)

    def build():
        return StreamingCurriculum(open_stream(files), cfg, batch_size=BATCH, gradient_accumulation_steps=GA)

    uninterrupted = build()
    full = served(uninterrupted)
    first = build()
    head = served(first, limit=cut)  # the stream has already formed the step after the checkpoint
    done = cut // G
    state = json.loads(json.dumps(first.state_dict(position=done * G)))
    resumed = build()
    resumed.load_state_dict(state)
    tail = served(resumed)
    assert len(full) > done * G + G and uninterrupted.counters.dropped > 0
    assert head[: done * G] == full[: done * G] and tail == full[done * G :]
    assert resumed.counters == uninterrupted.counters


def test_resume_refuses_other_shards_buffer_or_an_uncheckpointable_stream(tmp_path):
    files = write_shards(tmp_path / "a", make_rows())
    cfg = curriculum()
    first = StreamingCurriculum(open_stream(files), cfg, batch_size=BATCH, gradient_accumulation_steps=GA)
    served(first, limit=2 * G)
    state = first.state_dict(position=2 * G)

    other = write_shards(tmp_path / "b", make_rows())
    with pytest.raises(ValueError, match="source=.*resume with the same shards"):
        StreamingCurriculum(open_stream(other), cfg, batch_size=BATCH, gradient_accumulation_steps=GA).load_state_dict(
            state
        )
    bigger = curriculum(buffer_size=128)
    with pytest.raises(ValueError, match=r"curriculum\.streaming\.buffer_size=64 but this run has 128"):
        StreamingCurriculum(
            open_stream(files), bigger, batch_size=BATCH, gradient_accumulation_steps=GA
        ).load_state_dict(state)

    class Plain(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from make_rows()

    plain = StreamingCurriculum(Plain(), cfg, batch_size=BATCH, gradient_accumulation_steps=GA)
    served(plain, limit=G)
    saved = plain.state_dict(position=G)
    with pytest.raises(ValueError, match="no state_dict.*cannot resume exactly"):
        StreamingCurriculum(Plain(), cfg, batch_size=BATCH, gradient_accumulation_steps=GA).load_state_dict(saved)

    # a shuffle buffer is not in datasets' state: its order after a resume would differ, so resume is refused
    def shuffled():
        return open_stream(files).shuffle(seed=0, buffer_size=16)

    run = StreamingCurriculum(shuffled(), cfg, batch_size=BATCH, gradient_accumulation_steps=GA)
    served(run, limit=G)
    saved = run.state_dict(position=G)
    with pytest.raises(ValueError, match=r"shuffled through a buffer \(IterableDataset\.shuffle\).*cannot resume"):
        StreamingCurriculum(shuffled(), cfg, batch_size=BATCH, gradient_accumulation_steps=GA).load_state_dict(saved)


def test_bad_inputs_name_the_field(tmp_path):
    files = write_shards(tmp_path, make_rows())
    pct = {"min_difficulty": 10, "max_difficulty": 100}
    with pytest.raises(ValueError, match=r"curriculum\.streaming\.warmup_samples=0.*allowed"):
        StreamingCurriculum(
            open_stream(files), curriculum(pct, difficulty_type="percentile", warmup_samples=0), batch_size=BATCH
        )
    with pytest.raises(ValueError, match=r"curriculum\.streaming\.buffer_size=4 is smaller than the global batch 8"):
        StreamingCurriculum(
            open_stream(files), curriculum(buffer_size=4), batch_size=BATCH, gradient_accumulation_steps=GA
        )
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=0 must be an integer >= 1"):
        StreamingCurriculum(open_stream(files), curriculum(), batch_size=BATCH, gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match=r"warmup_samples=100 .*is larger than curriculum\.streaming\.buffer_size=64"):
        StreamingCurriculum(
            open_stream(files), curriculum(pct, difficulty_type="percentile", warmup_samples=100), batch_size=BATCH
        )
    text_only = datasets.IterableDataset.from_generator(lambda: ({"text": "a b c"} for _ in range(20)))
    rarity = curriculum({"min_difficulty": 1e9, "max_difficulty": 1e9}, name="vocab_rarity", warmup_samples=8)
    with pytest.raises(ValueError, match="need the 'input_ids' field in every streamed sample"):
        served(StreamingCurriculum(text_only, rarity, batch_size=BATCH))
    empty = datasets.IterableDataset.from_generator(lambda: iter(()))
    with pytest.raises(ValueError, match="the stream yielded no sample"):
        served(StreamingCurriculum(empty, curriculum(), batch_size=BATCH))
    workers = torch.utils.data.DataLoader(
        StreamingCurriculum(open_stream(files), curriculum(), batch_size=BATCH), batch_size=BATCH, num_workers=1
    )
    with pytest.raises(ValueError, match="dataloader_num_workers=1.*allowed: 0"):
        next(iter(workers))
    with pytest.raises(
        ValueError,
        match=r"curriculum\.streaming\.buffer_full='keep' is not supported; allowed values: drop, hold, error",
    ):
        curriculum(buffer_full="keep")


def test_engine_builds_the_stream_and_logs_its_counts(tmp_path):
    engine = DataEfficiencyEngine(
        {"curriculum": curriculum().to_dict()}, batch_size=BATCH, gradient_accumulation_steps=GA
    )
    source = open_stream(write_shards(tmp_path, make_rows()))
    assert engine.metric_dataset(source) is source
    stream = engine.build_stream(source)
    out = served(stream, limit=3 * G)
    logs = engine.step_logs(3)
    assert logs["data_efficiency/consumed_samples"] == 3 * G == len(out)
    assert logs["curriculum/stream_buffered"] == stream.stream_logs(3)["curriculum/stream_buffered"] <= 64
    assert logs["curriculum/difficulty_seqlen"] == CurriculumScheduler(SEQLEN).get_difficulty(3)
    state = json.loads(json.dumps(engine.state_dict(3)))
    again = DataEfficiencyEngine(
        {"curriculum": curriculum().to_dict()}, batch_size=BATCH, gradient_accumulation_steps=GA
    )
    again.build_stream(open_stream(write_shards(tmp_path, make_rows())))
    again.load_state_dict(state)
    assert again.sampler.position == 3 * G
    # without seeded collation no sample carries a position key to the user's collator
    plain = DataEfficiencyEngine(
        {"curriculum": curriculum().to_dict()},
        batch_size=BATCH,
        gradient_accumulation_steps=GA,
        seeded_collation=False,
    )
    samples = list(plain.build_stream(open_stream(write_shards(tmp_path, make_rows()))))
    assert len(samples) > G and not any(POSITION_KEY in s for s in samples)


def trainer(out, dataset, **overrides):
    kwargs = training_kwargs(
        out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=GA, save_strategy="steps", save_steps=4
    )
    args = DataEfficiencyTrainingArguments(**{**kwargs, **overrides}, **CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS)
    return RecordingTrainer(model=tiny_model(), args=args, train_dataset=dataset, data_collator=collate)


def test_trainer_on_a_stream_logs_like_map_style_and_resumes_exactly(tmp_path):
    from tiny import SEQLEN_METRIC, TRUNCATE_METRIC, sample_lengths

    map_style = trainer(tmp_path / "map", make_dataset(), save_strategy="no")
    map_style.train()
    streamed = trainer(tmp_path / "stream", make_dataset().to_iterable_dataset(num_shards=3))
    streamed.train()
    keys = lambda t: {k for h in t.state.log_history if "loss" in h for k in h}  # noqa: E731
    stream_keys = {
        "curriculum/stream_buffered",
        "curriculum/stream_dropped",
        "curriculum/stream_excluded",
        "curriculum/stream_admitted_early",
    }
    assert keys(streamed) == keys(map_style) | stream_keys
    # the curriculum and the truncation hold on every micro-batch, from scratch
    lengths = sample_lengths()
    sampling, truncate = CurriculumScheduler(SEQLEN_METRIC), CurriculumScheduler(TRUNCATE_METRIC)
    assert sorted({r["step"] for r in streamed.records}) == list(range(1, 9))
    for r in streamed.records:
        assert all(lengths[i] <= sampling.get_difficulty(r["step"]) for i in r["indices"])
        assert r["width"] == min(truncate.get_difficulty(r["step"]), max(lengths[i] for i in r["indices"]))
    # resume from step 4 in a new trainer: the same batches and bit-identical losses
    resumed = trainer(tmp_path / "stream", make_dataset().to_iterable_dataset(num_shards=3))
    resumed.train(resume_from_checkpoint=str(tmp_path / "stream" / "checkpoint-4"))
    tail = [(r["step"], r["indices"], r["width"]) for r in streamed.records if r["step"] > 4]
    assert [(r["step"], r["indices"], r["width"]) for r in resumed.records] == tail
    full, again = step_losses(streamed.state.log_history), step_losses(resumed.state.log_history)
    assert len(full) == 8 and {k: v for k, v in full.items() if k > 4} == {k: v for k, v in again.items() if k > 4}


def test_two_processes_read_disjoint_shards_and_agree_on_the_end(tmp_path):
    """Shards of unequal size: one process runs dry first. Oracle: each process's shard run alone, in-process."""
    from datasets.distributed import split_dataset_by_node
    from run_stream import stream_config

    rows = make_rows()
    files = []
    for s, (lo, hi) in enumerate([(0, 100), (100, 150), (150, 180), (180, N)]):
        files += write_shards(tmp_path / "data" / str(s), rows[lo:hi], shards=1)
    script = ROOT / "tests" / "distributed" / "run_stream.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [*torchrun(), str(script), str(tmp_path / "out"), *files]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    alone = []
    for rank in range(2):
        shard = split_dataset_by_node(open_stream(files), rank=rank, world_size=2)
        stream = StreamingCurriculum(shard, stream_config(), batch_size=BATCH, gradient_accumulation_steps=GA)
        alone.append([sample["id"] for _, sample in served(stream)])
    steps = min(len(ids) for ids in alone) // G
    assert len(alone[0]) != len(alone[1])  # one process really runs dry first
    assert not set(results[0]["ids"]) & set(results[1]["ids"])  # disjoint
    for rank, r in enumerate(results):
        assert r["steps"] == steps  # the same number of steps, agreed
        assert r["ids"] == alone[rank][: steps * G]


RUN_TRAINER = str(ROOT / "tests" / "distributed" / "run_trainer.py")


def launch(cmd: list[str], **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, **popen)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_trainer_on_a_stream_resumes_exactly_after_sigkill(tmp_path):
    """SIGKILL a streamed run after step 7 (checkpoint 6), resume it in a new process: steps 7-8 see the batches and
    losses of an uninterrupted run of the same script."""
    import signal

    whole = tmp_path / "whole"
    launch(
        [sys.executable, RUN_TRAINER, "--stream", "--output_dir", str(whole), "--record", str(whole / "r_RANK.json")]
    )
    reference = json.loads((whole / "r_0.json").read_text())
    out = tmp_path / "killed"
    cmd = [sys.executable, RUN_TRAINER, "--stream", "--output_dir", str(out), "--record", str(out / "r_RANK.json")]
    proc = launch([*cmd, "--save_steps", "3", "--stall_after", "7"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:
            if "STALLING" in line:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "r_0.json").exists()
    launch([*cmd, "--save_steps", "3", "--resume", "last"])
    resumed = json.loads((out / "r_0.json").read_text())
    assert [r["step"] for r in resumed["records"]] == [7, 7, 8, 8]
    assert resumed["records"] == [r for r in reference["records"] if r["step"] > 6]
    assert {k: v for k, v in resumed["losses"].items() if int(k) > 6} == {
        k: v for k, v in reference["losses"].items() if int(k) > 6
    }


def two_stream_trainers(tmp_path: Path, *flags: str) -> list[dict]:
    """Run ``RUN_TRAINER --stream`` in two gloo processes under ``tmp_path/run``; each rank's record."""
    out = tmp_path / "run"
    launch(
        [*torchrun(), RUN_TRAINER, "--stream", "--output_dir", str(out), "--record", str(out / "RANK.json"), *flags]
    )
    return [json.loads((out / f"{r}.json").read_text()) for r in (0, 1)]


def test_trainer_on_a_stream_with_two_processes_and_resume(tmp_path):
    """Two DDP processes (gloo) on a 4-shard stream: disjoint samples, the same steps, the curriculum obeyed; a resume
    of both from checkpoint 3 sees the batches the uninterrupted processes saw."""
    from tiny import SEQLEN_METRIC, sample_lengths

    flags = ["--batch_size", "2", "--ga", "2", "--max_steps", "6", "--save_steps", "3", "--no_random_ltd"]
    ranks = two_stream_trainers(tmp_path, *flags)
    seen = [{i for rec in r["records"] for i in rec["indices"]} for r in ranks]
    assert not seen[0] & seen[1]
    assert [sorted({rec["step"] for rec in r["records"]}) for r in ranks] == [list(range(1, 7))] * 2
    lengths, sampling = sample_lengths(), CurriculumScheduler(SEQLEN_METRIC)
    for r in ranks:
        assert all(lengths[i] <= sampling.get_difficulty(rec["step"]) for rec in r["records"] for i in rec["indices"])
    resumed = two_stream_trainers(tmp_path, *flags, "--resume", str(tmp_path / "run" / "checkpoint-3"))
    for before, after in zip(ranks, resumed):
        assert after["records"] == [rec for rec in before["records"] if rec["step"] > 3]
