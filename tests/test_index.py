"""Metric files: .npy round-trips, sorted index, summary, and the reader for DeepSpeed DataAnalyzer indices."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pytest
import torch

from hf_data_efficiency.curriculum.index import (
    load_metric,
    load_metric_index,
    load_metric_summary,
    metric_array_from_deepspeed_index,
    ranks_from_index,
    read_mmap_indexed,
    save_metric,
    save_metrics,
    sorted_index,
    summarize,
)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    values[::7] = values[3]  # ties
    summary = save_metric(tmp_path, "vocab_rarity", values)
    np.testing.assert_array_equal(load_metric(tmp_path, "vocab_rarity"), values)
    assert load_metric(tmp_path, "vocab_rarity", mmap=True).dtype == np.float64
    index = load_metric_index(tmp_path, "vocab_rarity")
    # sorted by value, ties in dataset order
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    np.testing.assert_array_equal(index, order)
    on_disk = load_metric_summary(tmp_path, "vocab_rarity")
    assert on_disk == {"metric": "vocab_rarity", **summary}
    assert summary["count"] == 1000 and summary["min"] == values.min() and summary["max"] == values.max()
    for p in (1, 5, 25, 50, 75, 95, 99):
        assert summary[f"p{p}"] == pytest.approx(np.percentile(values, p))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file behind
    # files are plain .npy / JSON
    assert json.loads((tmp_path / "vocab_rarity_summary.json").read_text())["count"] == 1000


def test_ranks_invert_the_sorted_index():
    values = np.array([3, 1, 2, 1, 5])
    index = sorted_index(values)
    np.testing.assert_array_equal(index, [1, 3, 2, 0, 4])
    rank = ranks_from_index(index)
    np.testing.assert_array_equal(rank, [3, 0, 2, 1, 4])
    np.testing.assert_array_equal(index[rank], np.arange(5))


def test_save_metrics_and_bad_input(tmp_path):
    out = save_metrics(tmp_path, {"seqlen": np.array([3, 1]), "other": np.array([0.5, 0.25])})
    assert set(out) == {"seqlen", "other"}
    np.testing.assert_array_equal(load_metric(tmp_path, "seqlen"), [3, 1])
    with pytest.raises(ValueError, match="NaN"):
        save_metric(tmp_path, "bad", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        save_metric(tmp_path, "bad", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="cannot be used as a file name"):
        save_metric(tmp_path, "../escape", np.zeros(2))
    with pytest.raises(ValueError, match="not found"):
        load_metric(tmp_path, "missing")
    assert summarize(np.zeros(0))["min"] is None


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    save_metric(tmp_path, "seqlen", np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        save_metric(tmp_path, "seqlen", np.array(["a", "b"]))  # rejected before anything is written
    np.testing.assert_array_equal(load_metric(tmp_path, "seqlen"), [1, 2, 3])


# ----- DeepSpeed's own DataAnalyzer as the oracle -------------------------------------------------
VOCAB = 20
PAD = VOCAB  # one id past the vocabulary, so padding never counts as a token


def _analyzer_child(seqs, save_path, num_threads):
    """Runs in a fresh (spawned) interpreter: DataAnalyzer forks its workers, and forking a process whose
    torch/OpenMP thread pool already runs can deadlock them."""
    import multiprocessing

    from deepspeed.runtime.data_pipeline.data_sampling.data_analyzer import DataAnalyzer
    from deepspeed.utils import logger as ds_logger

    multiprocessing.set_start_method("fork", force=True)
    ds_logger.setLevel(logging.WARNING)

    class TokenRows(torch.utils.data.Dataset):
        def __len__(self):
            return len(seqs)

        def __getitem__(self, i):
            return seqs[i]

    def collate(rows):  # a padded LongTensor batch: DataAnalyzer counts len(batch) as samples
        out = torch.full((len(rows), max(1, max(len(r) for r in rows))), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    analyzer = DataAnalyzer(
        TokenRows(),
        num_threads=num_threads,
        batch_size=8,
        metric_names=["seqlen", "total_vocab_freq"],
        metric_functions=[
            lambda b: (b != PAD).sum(1).long(),
            lambda b: torch.bincount(b.view(-1), minlength=VOCAB + 1),
        ],
        metric_types=["single_value_per_sample", "accumulate_value_over_samples"],
        metric_dtypes=[torch.long, torch.long],
        save_path=save_path,
        collate_fn=collate,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its merge step prints per file
        analyzer.run_map()
        analyzer.run_reduce()


def _run_data_analyzer(tmp_path, seqs, num_threads=1):
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(
        target=_analyzer_child, args=(seqs, str(tmp_path), num_threads)
    )
    proc.start()
    proc.join(timeout=180)
    if proc.is_alive():
        proc.kill()
        pytest.fail("DeepSpeed's DataAnalyzer did not finish within 180 s")
    assert proc.exitcode == 0
    return tmp_path


def test_reader_matches_deepspeed_data_analyzer_output(tmp_path):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, VOCAB, size=rng.integers(0, 12)).tolist() for _ in range(57)]
    out = _run_data_analyzer(tmp_path, seqs, num_threads=2)
    seqlen = np.array([len(s) for s in seqs])
    d = out / "seqlen"
    values = metric_array_from_deepspeed_index(d / "seqlen_index_to_sample", d / "seqlen_index_to_metric", len(seqs))
    assert values.dtype == np.int64
    np.testing.assert_array_equal(values, seqlen)
    # percentile metrics: DeepSpeed keeps only index_to_sample; it becomes a rank array equal to our own
    rank = metric_array_from_deepspeed_index(d / "seqlen_index_to_sample_percentile_merged.bin", None, len(seqs))
    np.testing.assert_array_equal(rank, ranks_from_index(sorted_index(seqlen)))
    # the raw reader on the accumulated vocabulary counts
    flat, offsets = read_mmap_indexed(out / "total_vocab_freq" / "total_vocab_freq_metric_value")
    np.testing.assert_array_equal(offsets, [0, VOCAB + 1])
    np.testing.assert_array_equal(flat[:VOCAB], np.bincount(np.concatenate(seqs).astype(int), minlength=VOCAB))
    # a wrong dataset length is caught (e.g. an index written by DataAnalyzer with dict batches)
    with pytest.raises(ValueError, match="must appear exactly once.*tensor"):
        metric_array_from_deepspeed_index(d / "seqlen_index_to_sample", d / "seqlen_index_to_metric", len(seqs) + 3)
    with pytest.raises(ValueError, match="not found"):
        metric_array_from_deepspeed_index(d / "nope", None, len(seqs))


# ----- bounded, validated reads ---------------------------------------------------------------------
def _write_deepspeed_index(prefix, rows, dtype=np.int64):
    """Megatron index files written by DeepSpeed's own builder."""
    from deepspeed.runtime.data_pipeline.data_sampling.indexed_dataset import MMapIndexedDatasetBuilder

    builder = MMapIndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for row in rows:
        builder.add_item_numpy(np.asarray(row, dtype=dtype))
    builder.end_document()
    builder.finalize(f"{prefix}.idx")


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _bounded(fn):
    """Run ``fn``; return (seconds, peak bytes allocated through Python/numpy)."""
    import time
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, peak


def test_deepspeed_index_headers_are_checked_against_the_file_sizes(tmp_path):
    import struct

    prefix = tmp_path / "m"
    rows = [[3, 1], [], [7, 7, 7]]
    _write_deepspeed_index(prefix, rows)
    flat, offsets = read_mmap_indexed(prefix)
    np.testing.assert_array_equal(flat, [3, 1, 7, 7, 7])
    np.testing.assert_array_equal(offsets, [0, 2, 2, 5])
    idx = tmp_path / "m.idx"
    good = idx.read_bytes()

    # a header claiming 2**40 rows: refused from the file size, quickly and without allocating
    _patch(idx, 18, struct.pack("<Q", 2**40))

    def read_bomb():
        with pytest.raises(ValueError, match=r"claims 1099511627776 rows .* corrupt or truncated"):
            read_mmap_indexed(prefix)

    seconds, peak = _bounded(read_bomb)
    assert seconds < 1.0 and peak < 100 * 2**20, (seconds, peak)

    idx.write_bytes(good)
    _patch(idx, 34 + 4, struct.pack("<i", -5))  # a negative row size
    with pytest.raises(ValueError, match="negative row sizes"):
        read_mmap_indexed(prefix)
    idx.write_bytes(good)
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:16])  # 2 of the 5 items left
    with pytest.raises(ValueError, match=r"m.bin is shorter than its index .* 5 items of 8 bytes, the file has 16"):
        read_mmap_indexed(prefix)


def test_metric_files_must_hold_finite_values_and_honest_headers(tmp_path):
    values = np.array([0.5, 2.0, np.inf, np.nan])
    with pytest.raises(
        ValueError, match=r"metric 'r' has a non-finite value \(inf\) at sample index 2 \(2 non-finite"
    ):
        save_metric(tmp_path, "r", values)
    np.save(tmp_path / "r.npy", values)  # written by someone else
    for mmap in (False, True):
        with pytest.raises(
            ValueError, match=r"metric array 'r' .*r.npy\) has a non-finite value \(inf\) at sample index 2"
        ):
            load_metric(tmp_path, "r", mmap=mmap)
    # a .npy header claiming 2**40 float64 values over 16 bytes of data: refused before allocating
    header = np.lib.format.header_data_from_array_1_0(np.zeros(2, dtype=np.float64))
    header["shape"] = (2**40,)
    with open(tmp_path / "big.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(2).tobytes())

    def read_bomb():
        with pytest.raises(ValueError, match=r"metric array 'big' .* is not a readable .npy array"):
            load_metric(tmp_path, "big")

    seconds, peak = _bounded(read_bomb)
    assert seconds < 1.0 and peak < 100 * 2**20, (seconds, peak)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="metric array 'obj'"):
        load_metric(tmp_path, "obj")  # never unpickled
