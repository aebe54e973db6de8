"""``ReferenceLoss`` (the ``reference_loss`` metric) against the reference model's own per-sample loss, its column and
cache, and the checks that a reference fits the trained model."""

import copy
import math

import datasets
import numpy as np
import pytest
import torch
from datasets.fingerprint import Hasher
from tiny import VOCAB, make_dataset, tiny_model

import hf_data_efficiency as hfde
from hf_data_efficiency.curriculum.reference import (
    REFERENCE_TOKEN_LOSS_COLUMN,
    ReferenceLoss,
    check_reference_compatible,
    matmul_parameters,
    model_fingerprint,
    reference_cost,
)


def own_loss(model, ids, labels=None) -> float:
    """The model's own loss on one unpadded sample: the mean over its shifted labels."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids if labels is None else torch.tensor([labels])).loss)


@pytest.fixture
def reference():
    return tiny_model(seed=3, dropout=0.0).eval()


def test_reference_loss_equals_the_models_own_per_sample_loss(reference):
    ds = make_dataset(30)
    scorer = hfde.ReferenceLoss(reference, batch_size=7)  # rows of different lengths padded together
    got = scorer(ds[:])
    want = [own_loss(reference, row) for row in ds["input_ids"]]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # with a labels column: -100 positions are not targets
    labels = [[-100 if j % 3 == 0 else t for j, t in enumerate(row)] for row in ds["input_ids"]]
    got = scorer({"input_ids": ds["input_ids"], "labels": labels})
    want = [own_loss(reference, row, lab) for row, lab in zip(ds["input_ids"], labels)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # a sample without a shifted label has no mean
    assert math.isnan(scorer({"input_ids": [[5]]})[0])


def test_token_column_is_aligned_with_the_tokens_and_averages_to_the_metric(reference):
    ds = make_dataset(12)
    out = ReferenceLoss(reference, batch_size=5).map(ds, token_losses=True)
    for row, per_token, mean in zip(out["input_ids"], out[REFERENCE_TOKEN_LOSS_COLUMN], out["reference_loss"]):
        assert len(per_token) == len(row) and math.isnan(per_token[0])
        assert np.isclose(np.mean(per_token[1:]), mean, rtol=1e-5)
        # entry j is the loss of token j given the tokens before it
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([row])).logits[0]
        j = len(row) // 2
        expected = float(-torch.log_softmax(logits[j - 1].double(), -1)[row[j]])
        assert np.isclose(per_token[j], expected, rtol=1e-4)


def test_multi_process_map_equals_one_process(reference):
    ds = make_dataset(24)
    scorer = ReferenceLoss(reference, batch_size=4)
    one = scorer.map(ds)["reference_loss"]
    two = scorer.map(ds, num_proc=2)["reference_loss"]
    np.testing.assert_allclose(two, one, rtol=1e-6)
    # the same through compute_metrics, the curriculum's metric path
    via_metrics = hfde.compute_metrics(ds, {"reference_loss": scorer}, num_proc=2)["reference_loss"]
    np.testing.assert_allclose(via_metrics, one, rtol=1e-6)


def test_fingerprint_is_the_models_identity_and_the_datasets_cache_uses_it(reference, tmp_path):
    reference.save_pretrained(tmp_path / "ref")
    again = ReferenceLoss(str(tmp_path / "ref"))
    scorer = ReferenceLoss(reference)
    assert model_fingerprint(again.model) == model_fingerprint(reference)
    assert again.fingerprint == scorer.fingerprint
    assert Hasher.hash(again) == Hasher.hash(scorer)  # datasets' own hasher sees the fingerprint, not the object
    changed = copy.deepcopy(reference)
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1e-3  # one weight changed: another model
    assert ReferenceLoss(changed).fingerprint != scorer.fingerprint
    assert Hasher.hash(ReferenceLoss(changed)) != Hasher.hash(scorer)
    # a dataset on disk: the second map is a cache hit, another model is not
    make_dataset(20).save_to_disk(str(tmp_path / "data"))
    ds = datasets.load_from_disk(str(tmp_path / "data"))
    first = scorer.map(ds)
    counted = scorer.scored_tokens
    second = scorer.map(ds)
    assert scorer.scored_tokens == counted and second["reference_loss"] == first["reference_loss"]
    assert second.cache_files == first.cache_files
    other = ReferenceLoss(changed).map(ds)
    assert other._fingerprint != first._fingerprint and other["reference_loss"] != first["reference_loss"]


def test_reference_loss_needs_a_model_and_a_token_column(reference):
    with pytest.raises(ValueError, match="'reference_loss' needs a reference model.*--curriculum_reference_model"):
        hfde.compute_metrics(make_dataset(4), ["reference_loss"])
    with pytest.raises(ValueError, match="no 'input_ids' column"):
        ReferenceLoss(reference)({"text": ["a"]})
    with pytest.raises(ValueError, match="batch_size=0 is not allowed"):
        ReferenceLoss(reference, batch_size=0)
    with pytest.raises(ValueError, match="does not exist"):
        ReferenceLoss("/nonexistent/reference")
    with pytest.raises(ValueError, match="only the 'reference_loss' metric reads a reference model"):
        hfde.CurriculumMetricConfig(
            name="seqlen",
            min_difficulty=1,
            max_difficulty=2,
            schedule_config={"total_curriculum_step": 2, "difficulty_step": 1},
            reference_model="/p",
        )


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0])


def test_mismatched_vocabulary_or_tokenizer_is_refused(reference):
    model = tiny_model(seed=0, dropout=0.0)
    small = tiny_model(seed=0, dropout=0.0)
    small.resize_token_embeddings(VOCAB // 2)
    with pytest.raises(ValueError, match=f"vocabulary has {VOCAB // 2} ids but the trained model's has {VOCAB}"):
        check_reference_compatible(small, model, where="token_selection.reference_model")
    words = ["<unk>", "a", "b", "c"]
    with pytest.raises(ValueError, match="maps tokens to other ids"):
        check_reference_compatible(
            reference, model, tokenizer=_word_tokenizer(words), reference_tokenizer=_word_tokenizer(words[::-1])
        )
    check_reference_compatible(
        reference, model, tokenizer=_word_tokenizer(words), reference_tokenizer=_word_tokenizer(words)
    )


def test_reference_cost_rule():
    model = tiny_model(seed=0)
    assert reference_cost(tiny_model(seed=1), model) == pytest.approx(1 / 3)  # same architecture: a third
    # the tied output layer counts, the embedding tables do not
    blocks = sum(p.numel() for p in model.transformer.h.parameters()) + sum(
        p.numel() for p in model.transformer.ln_f.parameters()
    )
    assert matmul_parameters(model) == blocks + model.lm_head.weight.numel()
