"""compute_metrics against a from-scratch pure-Python recomputation."""

from __future__ import annotations

import math
import os
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from _helpers import free_port

import hf_data_efficiency
from hf_data_efficiency.curriculum import metrics as metrics_module
from hf_data_efficiency.curriculum.metrics import (
    BUILTIN_METRICS,
    compute_metrics,
    count_tokens,
    is_registered_metric,
    metric_arrays,
    register_curriculum_metric,
    registered_metrics,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets.disable_progress_bars()

PAD = 0


def _padded_rows(seed: int = 0, n: int = 23, vocab: int = 30, width: int = 12):
    """Token rows padded to ``width`` with PAD on the left for even rows and on the right for odd rows.

    Real tokens are drawn from [1, vocab), so PAD never occurs as a real token.
    """
    rng = np.random.default_rng(seed)
    ids, mask, real = [], [], []
    for i in range(n):
        length = int(rng.integers(0, width + 1))
        tokens = rng.integers(1, vocab, size=length).tolist()
        pad = [PAD] * (width - length)
        ids.append(pad + tokens if i % 2 == 0 else tokens + pad)
        mask.append([0] * len(pad) + [1] * length if i % 2 == 0 else [1] * length + [0] * len(pad))
        real.append(tokens)
    return ids, mask, real


def _oracle(real_rows: list[list[int]]):
    """seqlen and vocab_rarity by hand: counts over the whole dataset, then sum of -log p per sample."""
    counts = Counter(t for row in real_rows for t in row)
    total = sum(counts.values())
    seqlen = [len(row) for row in real_rows]
    rarity = [sum(-math.log(counts[t] / total) for t in row) for row in real_rows]
    return seqlen, rarity, counts, total


def test_seqlen_and_vocab_rarity_with_attention_mask_left_and_right_padding():
    ids, mask, real = _padded_rows()
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    out = compute_metrics(ds, ("seqlen", "vocab_rarity"), batch_size=5)  # several batches, counts stay global
    seqlen, rarity, _, _ = _oracle(real)
    arrays = metric_arrays(out, ["seqlen", "vocab_rarity"])
    assert arrays["seqlen"].dtype == np.int64 and arrays["vocab_rarity"].dtype == np.float64
    np.testing.assert_array_equal(arrays["seqlen"], seqlen)
    np.testing.assert_allclose(arrays["vocab_rarity"], rarity, rtol=1e-12)
    assert out.column_names == ["input_ids", "attention_mask", "seqlen", "vocab_rarity"]
    # vocab_rarity is a float: DeepSpeed's integer truncation would lose the fractional parts
    assert not np.allclose(arrays["vocab_rarity"], np.floor(arrays["vocab_rarity"]))


def test_pad_token_id_without_mask_and_plain_rows():
    ids, _, real = _padded_rows(seed=1)
    ds = datasets.Dataset.from_dict({"input_ids": ids})
    seqlen, rarity, _, _ = _oracle(real)
    out = compute_metrics(ds, ("seqlen", "vocab_rarity"), pad_token_id=PAD)
    np.testing.assert_array_equal(out["seqlen"][:], seqlen)
    np.testing.assert_allclose(out["vocab_rarity"][:], rarity, rtol=1e-12)
    # neither a mask column nor a pad id: every token is real
    out = compute_metrics(ds, ("seqlen", "vocab_rarity"))
    seqlen_all, rarity_all, _, _ = _oracle(ids)
    np.testing.assert_array_equal(out["seqlen"][:], seqlen_all)
    np.testing.assert_allclose(out["vocab_rarity"][:], rarity_all, rtol=1e-12)


def test_mask_column_wins_over_pad_token_id_and_can_be_disabled():
    ids, mask, real = _padded_rows(seed=2)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    # a mask column present: pad_token_id is not needed
    np.testing.assert_array_equal(compute_metrics(ds, "seqlen", pad_token_id=7)["seqlen"][:], [len(r) for r in real])
    # the mask ignored on request
    out = compute_metrics(ds, "seqlen", attention_mask_column=None)
    np.testing.assert_array_equal(out["seqlen"][:], [len(r) for r in ids])


def test_count_tokens_over_whole_dataset():
    ids, mask, real = _padded_rows(seed=3, n=40)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    counts = count_tokens(ds, batch_size=3)
    _, _, expected, total = _oracle(real)
    assert counts.dtype == np.int64 and counts.sum() == total
    assert {t: int(c) for t, c in enumerate(counts) if c} == dict(expected)


def test_seqlen_vocab_rarity_orders_by_seqlen_then_rarity():
    ids, mask, real = _padded_rows(seed=4, n=60, width=6, vocab=12)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    out = compute_metrics(ds, ("seqlen", "vocab_rarity", "seqlen_vocab_rarity"))
    a = metric_arrays(out, ["seqlen", "vocab_rarity", "seqlen_vocab_rarity"])
    combined = a["seqlen_vocab_rarity"]
    assert combined.dtype == np.float64
    np.testing.assert_array_equal(np.floor(combined), a["seqlen"])  # the integer part is the length
    # for every pair: combined order == lexicographic (seqlen, rarity) order
    seqlen, rarity, _, _ = _oracle(real)
    keys = list(zip(seqlen, np.round(rarity, 9)))
    for i in range(len(keys)):
        for j in range(len(keys)):
            if keys[i] < keys[j]:
                assert combined[i] < combined[j], (keys[i], keys[j])
            elif keys[i] == keys[j]:
                assert combined[i] == pytest.approx(combined[j], abs=1e-12)


def test_user_metrics_callable_dict_and_tensor_outputs():
    ids, mask, real = _padded_rows(seed=5)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "label": list(range(len(ids)))})

    def num_distinct(batch):
        return [
            len({t for t, m in zip(row, msk) if m}) for row, msk in zip(batch["input_ids"], batch["attention_mask"])
        ]

    out = compute_metrics(
        ds,
        [num_distinct, "seqlen", {"half_label": lambda b: torch.tensor(b["label"], dtype=torch.float32) / 2}],
        batch_size=4,
    )
    assert out.column_names[-3:] == ["num_distinct", "seqlen", "half_label"]
    np.testing.assert_array_equal(out["num_distinct"][:], [len(set(r)) for r in real])
    np.testing.assert_allclose(out["half_label"][:], np.arange(len(ids)) / 2)
    assert out.features["num_distinct"].dtype == "int64" and out.features["half_label"].dtype == "float64"
    # a user metric alone needs no token column
    only = compute_metrics(ds.remove_columns(["input_ids", "attention_mask"]), {"lbl": lambda b: b["label"]})
    np.testing.assert_array_equal(only["lbl"][:], range(len(ids)))


@pytest.mark.parametrize(
    "metric, message",
    [
        ({"short": lambda b: [1.0] * (len(b["input_ids"]) - 1)}, "one number per sample"),
        ({"nan": lambda b: [float("nan")] * len(b["input_ids"])}, "NaN"),
        (lambda b: [0] * len(b["input_ids"]), "needs a column name"),
        ("perplexity", "registered metrics are seqlen, vocab_rarity, seqlen_vocab_rarity"),
    ],
)
def test_bad_metrics_raise(metric, message):
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]]})
    with pytest.raises(ValueError, match=message):
        compute_metrics(ds, metric)


def test_bad_datasets_raise():
    ds = datasets.Dataset.from_dict({"tokens": [[1, 2], [3]], "text": ["a b", "c"]})
    with pytest.raises(ValueError, match=r"input_column='input_ids'.*\['tokens', 'text'\]"):
        compute_metrics(ds)
    with pytest.raises(ValueError, match="IterableDataset: materialise it"):
        compute_metrics(ds.to_iterable_dataset(), input_column="tokens")
    with pytest.raises(ValueError, match="pass one split"):
        compute_metrics(datasets.DatasetDict(train=ds), input_column="tokens")
    with pytest.raises(ValueError, match="has 0 rows"):
        compute_metrics(ds.select([]), input_column="tokens")
    with pytest.raises(ValueError, match="negative token ids"):
        compute_metrics(datasets.Dataset.from_dict({"input_ids": [[1, -2]]}), "vocab_rarity")
    done = compute_metrics(ds, "seqlen", input_column="tokens")
    with pytest.raises(ValueError, match=r"already has column\(s\) \['seqlen'\]; pass overwrite=True"):
        compute_metrics(done, "seqlen", input_column="tokens")
    again = compute_metrics(done, "seqlen", input_column="tokens", overwrite=True)
    assert again.column_names == done.column_names and again["seqlen"][:] == [2, 1]


def test_shuffled_selected_and_formatted_datasets_keep_row_alignment():
    ids, mask, real = _padded_rows(seed=6, n=30)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "row": list(range(30))})
    view = ds.shuffle(seed=0).select(range(20)).with_format("torch")
    out = compute_metrics(view, ("seqlen", "vocab_rarity"))
    assert out.format["type"] == "torch"
    assert isinstance(out[:]["seqlen"], torch.Tensor)
    got = metric_arrays(out, ["row", "seqlen", "vocab_rarity"])  # full float64 (torch format gives float32)
    seqlen, rarity, _, _ = _oracle([real[r] for r in got["row"]])  # counts over the shuffled selection itself
    np.testing.assert_array_equal(got["seqlen"], seqlen)
    np.testing.assert_allclose(got["vocab_rarity"], rarity, rtol=1e-12)


def test_token_counts_from_another_dataset():
    train = datasets.Dataset.from_dict({"input_ids": [[1, 1, 2], [1, 3]]})
    valid = datasets.Dataset.from_dict({"input_ids": [[1, 2], [4]]})  # 4 never occurs in train
    counts = count_tokens(train)
    out = compute_metrics(valid, "vocab_rarity", token_counts=counts)
    total = 5
    np.testing.assert_allclose(
        out["vocab_rarity"][:], [-math.log(3 / total) - math.log(1 / total), -math.log(1 / total)]
    )


def test_cache_is_reused_for_a_dataset_loaded_from_disk(tmp_path):
    ids, mask, real = _padded_rows(seed=7)
    datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask}).save_to_disk(tmp_path / "ds")
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    first = compute_metrics(ds, ("seqlen", "vocab_rarity"))
    created = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds").glob("cache-*.arrow")}
    assert len(created) == 2  # the token-count pass and the metric pass
    metric_files = {f["filename"] for f in first.cache_files} - {f["filename"] for f in ds.cache_files}
    assert len(metric_files) == 1 and os.path.basename(metric_files.pop()) in created
    again = compute_metrics(datasets.load_from_disk(str(tmp_path / "ds")), ("seqlen", "vocab_rarity"))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds").glob("cache-*.arrow")} == created
    assert [f["filename"] for f in again.cache_files] == [f["filename"] for f in first.cache_files]
    assert again["vocab_rarity"][:] == first["vocab_rarity"][:]
    np.testing.assert_allclose(again["vocab_rarity"][:], _oracle(real)[1], rtol=1e-12)
    # another metric set is another fingerprint, hence another cache file
    compute_metrics(ds, "seqlen")
    assert len(list((tmp_path / "ds").glob("cache-*.arrow"))) == 3


def test_num_proc_2_equals_in_process():
    ids, mask, _ = _padded_rows(seed=8, n=16)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    names = ["seqlen", "vocab_rarity", "seqlen_vocab_rarity"]
    single = metric_arrays(compute_metrics(ds, names), names)
    multi = metric_arrays(compute_metrics(ds, names, num_proc=2, batch_size=4), names)
    for name in names:
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-12)


def _distributed_worker(rank: int, world: int, port: int, ds: datasets.Dataset, out_dir: str) -> None:
    import torch.distributed as dist

    datasets.disable_progress_bars()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        names = ["seqlen", "vocab_rarity", "seqlen_vocab_rarity"]
        out = compute_metrics(ds, names, distributed=True)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **metric_arrays(out, names))
    finally:
        dist.destroy_process_group()


def test_distributed_two_ranks_equal_single_process(tmp_path):
    ids, mask, _ = _padded_rows(seed=9, n=25)  # 25 rows: uneven shards (13 + 12)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    names = ["seqlen", "vocab_rarity", "seqlen_vocab_rarity"]
    expected = metric_arrays(compute_metrics(ds, names), names)
    torch.multiprocessing.spawn(_distributed_worker, args=(2, free_port(), ds, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for name in names:
            assert got[name].dtype == expected[name].dtype
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-12)


@pytest.mark.parametrize(
    "feature",
    [
        datasets.List(datasets.Value("int16")),
        datasets.LargeList(datasets.Value("int64")),
        datasets.List(datasets.Value("int64"), length=12),  # fixed-size lists (padded to one width)
    ],
)
def test_token_column_list_types(feature):
    ids, mask, real = _padded_rows(seed=10)
    features = datasets.Features({"input_ids": feature, "attention_mask": datasets.List(datasets.Value("int8"))})
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask}, features=features)
    out = metric_arrays(compute_metrics(ds, ("seqlen", "vocab_rarity"), batch_size=7), ["seqlen", "vocab_rarity"])
    seqlen, rarity, _, _ = _oracle(real)
    np.testing.assert_array_equal(out["seqlen"], seqlen)
    np.testing.assert_allclose(out["vocab_rarity"], rarity, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# the metric registry
# ---------------------------------------------------------------------------------------------
def _seqlen_vocab_rarity_oracle(real_rows):
    seqlen, rarity, _, total = _oracle(real_rows)
    return [n + (r / n if n else 0.0) / (math.log(total) + 1) for n, r in zip(seqlen, rarity)]


#: One entry per built-in metric: a from-scratch pure-Python recomputation over the real tokens of each row.
BUILTIN_ORACLES = {
    "seqlen": lambda real: _oracle(real)[0],
    "vocab_rarity": lambda real: _oracle(real)[1],
    "seqlen_vocab_rarity": _seqlen_vocab_rarity_oracle,
}
#: Built-in metrics computed by a model rather than from the tokens; their oracles are in tests/test_reference_loss.py.
MODEL_METRICS = {"reference_loss"}


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so metrics registered by a test do not leak into others."""
    monkeypatch.setattr(metrics_module, "_REGISTRY", dict(metrics_module._REGISTRY))
    return metrics_module._REGISTRY


def test_every_builtin_metric_is_registered_and_equals_its_oracle():
    assert set(BUILTIN_METRICS) == set(BUILTIN_ORACLES) | MODEL_METRICS and registered_metrics()[
        : len(BUILTIN_METRICS)
    ] == tuple(BUILTIN_METRICS)
    ids, mask, real = _padded_rows(seed=11, n=37)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    got = metric_arrays(compute_metrics(ds, list(BUILTIN_ORACLES), batch_size=6), list(BUILTIN_ORACLES))
    for name, oracle in BUILTIN_ORACLES.items():
        assert is_registered_metric(name)
        np.testing.assert_allclose(got[name], oracle(real), rtol=1e-12, err_msg=name)


def test_registered_user_metrics_are_computed_by_name(registry):
    assert hf_data_efficiency.register_curriculum_metric is register_curriculum_metric

    def num_distinct(batch):
        return [len(set(row)) for row in batch["input_ids"]]

    def mean_rarity(tokens):  # vectorised over flat token arrays, with whole-dataset counts
        return tokens.row_sums(tokens.token_rarity) / np.maximum(tokens.seqlen, 1)

    register_curriculum_metric("num_distinct", num_distinct)
    register_curriculum_metric("mean_rarity", mean_rarity, inputs="tokens", needs_token_counts=True)
    assert is_registered_metric("num_distinct") and "mean_rarity" in registered_metrics()
    _, _, real = _padded_rows(seed=12, n=29)
    ds = datasets.Dataset.from_dict({"input_ids": real, "label": list(range(29))})
    out = compute_metrics(ds, ["num_distinct", "mean_rarity"], batch_size=4)
    assert out.column_names == ["input_ids", "label", "num_distinct", "mean_rarity"]
    _, rarity, _, _ = _oracle(real)
    np.testing.assert_array_equal(out["num_distinct"][:], [len(set(r)) for r in real])
    np.testing.assert_allclose(out["mean_rarity"][:], [r / max(len(t), 1) for r, t in zip(rarity, real)], rtol=1e-12)
    assert out.features["num_distinct"].dtype == "int64"


def test_registered_metric_cache_follows_its_fingerprint(registry, tmp_path):
    ids, mask, _ = _padded_rows(seed=13)
    datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask}).save_to_disk(tmp_path / "ds")

    def load():
        return datasets.load_from_disk(str(tmp_path / "ds"))

    register_curriculum_metric("width", lambda b: [len(r) for r in b["input_ids"]], fingerprint="v1")
    first = compute_metrics(load(), "width")
    np.testing.assert_array_equal(first["width"][:], [len(r) for r in ids])
    again = compute_metrics(load(), "width")  # same fingerprint: the cached column is reused
    assert [f["filename"] for f in again.cache_files] == [f["filename"] for f in first.cache_files]
    register_curriculum_metric(
        "width", lambda b: [2 * len(r) for r in b["input_ids"]], fingerprint="v2", overwrite=True
    )
    changed = compute_metrics(load(), "width")  # a new fingerprint: a new cache file, the new values
    assert {f["filename"] for f in changed.cache_files} != {f["filename"] for f in first.cache_files}
    np.testing.assert_array_equal(changed["width"][:], [2 * len(r) for r in ids])


def test_unhashable_metric_still_computes(registry):
    import threading

    lock = threading.Lock()  # cannot be pickled, so datasets cannot hash a function that uses it

    def guarded_len(batch):
        with lock:
            return [len(r) for r in batch["input_ids"]]

    register_curriculum_metric("guarded_len", guarded_len)
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]]})
    assert compute_metrics(ds, "guarded_len")["guarded_len"][:] == [2, 1, 3]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_metric_values_name_the_metric_and_the_sample(registry, bad):
    def spiky(batch):
        return [bad if i == 5 else 1.0 for i in batch["row"]]

    register_curriculum_metric("spiky", spiky)
    ds = datasets.Dataset.from_dict({"input_ids": [[1]] * 9, "row": list(range(9))})
    shown = "NaN" if math.isnan(bad) else str(bad)
    with pytest.raises(ValueError, match=rf"metric 'spiky' has a non-finite value \({shown}\) at sample index 5"):
        compute_metrics(ds, "spiky", batch_size=2)  # the bad value is in the third map batch
    with pytest.raises(ValueError, match=r"metric 'array_inf' .* at sample index 1 "):
        compute_metrics(ds, {"array_inf": lambda b: np.where(np.array(b["row"]) == 1, np.inf, 0.0)}, batch_size=4)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (("seqlen", len), {}, ValueError, "'seqlen' is already registered; pass overwrite=True"),
        (("seqlen_truncate", len), {}, ValueError, "reserved for the sequence-length batch transforms"),
        (("../x", len), {}, ValueError, "cannot be used as a file name"),
        (("", len), {}, ValueError, "cannot be used as a file name"),
        (("m", "not callable"), {}, TypeError, "batched_fn must be callable"),
        (("m", len), {"inputs": "rows"}, ValueError, r"inputs='rows'; allowed values: \('batch', 'tokens'\)"),
        (("m", len), {"needs_token_counts": True}, ValueError, "needs_token_counts=True needs inputs='tokens'"),
        (("m", len), {"needs_token_counts": 1}, TypeError, "needs_token_counts must be a bool"),
        (("m", len), {"fingerprint": ""}, ValueError, "fingerprint='' must be a non-empty str"),
    ],
)
def test_bad_registrations_raise(registry, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        register_curriculum_metric(*args, **kwargs)
    assert registered_metrics() == BUILTIN_METRICS


def test_token_metric_without_counts_cannot_read_rarities(registry):
    register_curriculum_metric("rare", lambda tokens: tokens.rarity, inputs="tokens")
    with pytest.raises(ValueError, match="register the metric with needs_token_counts=True"):
        compute_metrics(datasets.Dataset.from_dict({"input_ids": [[1, 2]]}), "rare")
