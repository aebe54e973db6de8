"""Bad inputs found by the second hardening probe: each gives a clear error (or skips a bad checkpoint with a warning)
that names the file, field or column and what is allowed, instead of an error from deep inside a dependency."""

import datasets
import numpy as np
import pytest
from _helpers import training_kwargs
from tiny import CURRICULUM_FLAGS, collate, tiny_model

import hf_data_efficiency as hfde
from hf_data_efficiency.curriculum.metrics import count_tokens

# ---------------------------------------------------------------------------------------------
# 1. token ids of the wrong type
# ---------------------------------------------------------------------------------------------
BAD_TOKEN_COLUMNS = {
    "one int per row": ([1, 2, 3], "int"),
    "float token ids": ([[1.0, 2.0], [3.0]], "float"),
    "fractional float token ids": ([[1.5, 2.0], [3.0]], "float"),
    "string token ids": ([["a", "b"], ["c"]], "string"),
    "nested lists": ([[[1, 2]], [[3]]], "list"),
}


@pytest.mark.parametrize("column", ["input_ids", "tokens"])
@pytest.mark.parametrize("case", BAD_TOKEN_COLUMNS)
def test_compute_metrics_refuses_token_ids_of_the_wrong_type(case, column):
    values, found = BAD_TOKEN_COLUMNS[case]
    ds = datasets.Dataset.from_dict({column: values})
    with pytest.raises(ValueError, match=rf"'{column}'.*{found}.*integer token ids") as e:
        hfde.compute_metrics(ds, metrics=("seqlen", "vocab_rarity"), input_column=column)
    assert "tokenize" in str(e.value).lower()
    with pytest.raises(ValueError, match=rf"'{column}'.*{found}.*integer token ids"):
        count_tokens(ds, input_column=column)


def test_float_token_ids_are_refused_even_when_integral_and_the_message_says_how_to_cast():
    ds = datasets.Dataset.from_dict({"input_ids": [[1.0, 2.0], [3.0]]})
    with pytest.raises(ValueError, match="integral") as e:
        hfde.compute_metrics(ds, metrics=("seqlen",))
    assert "cast_column" in str(e.value)


def test_null_token_ids_inside_a_row_are_named():
    ds = datasets.Dataset.from_dict({"input_ids": [[1, None, 3], [4]]})
    with pytest.raises(ValueError, match=r"'input_ids' has 1 null value"):
        hfde.compute_metrics(ds, metrics=("seqlen", "vocab_rarity"))


def test_valid_integer_token_ids_of_any_width_still_work():
    for dtype in ("int8", "uint16", "int32", "int64"):
        ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 2], [3]]}).cast_column(
            "input_ids", datasets.List(datasets.Value(dtype))
        )
        out = hfde.compute_metrics(ds, metrics=("seqlen", "vocab_rarity"))
        assert out["seqlen"] == [3, 1]


def test_trainer_computing_missing_metric_columns_refuses_float_token_ids(tmp_path):
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_dict(
        {"input_ids": [rng.integers(0, 60, 8).astype(float).tolist() for _ in range(16)]}
    )
    args = hfde.DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **CURRICULUM_FLAGS)
    trainer = hfde.DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=data, data_collator=collate)
    with pytest.raises(ValueError, match=r"'input_ids'.*float.*integer token ids"):
        trainer.get_train_dataloader()
