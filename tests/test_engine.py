"""DataEfficiencyEngine on its own: the checkpoint state it writes round-trips, and a crafted or mismatched state is
refused with an error naming the field, leaving nothing half-restored."""

import copy
import json

import pytest
from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, collate, make_dataset, tiny_model

from hf_data_efficiency import DataEfficiencyEngine, DataEfficiencyTrainingArguments
from hf_data_efficiency.engine import ResumeError


@pytest.fixture
def engine(tmp_path):
    args = DataEfficiencyTrainingArguments(
        output_dir=str(tmp_path), report_to=[], **CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS
    )
    engine = DataEfficiencyEngine(args.get_data_efficiency_config(), batch_size=4, gradient_accumulation_steps=2)
    engine.attach(tiny_model())
    engine.build_sampler(make_dataset())
    return engine


def _trained_state(engine):
    model = engine.random_ltd_handle.model
    model.train()
    for step in range(3):
        engine.begin_step(step)
        batch = collate([make_dataset()[i] for i in range(4)])
        engine.count_batch(batch)
        model(**batch)
    engine.sync_counters()
    return engine.state_dict(global_step=3)


def test_state_round_trips_through_a_file(engine, tmp_path):
    state = _trained_state(engine)
    engine.save_state(tmp_path, 3)
    assert engine.read_state(tmp_path, global_step=3) == json.loads(json.dumps(state))
    engine.reset()
    engine.load_state_dict(state)
    assert engine.state_dict(global_step=3) == state


BAD = [
    ("unknown key", lambda s: s.update(extra=1), "extra"),
    ("missing counters", lambda s: s.pop("counters"), "counters"),
    ("version 1", lambda s: s.update(version=1), "state.version"),
    ("negative step", lambda s: s.update(global_step=-1), "state.global_step"),
    ("bool counter", lambda s: s["counters"].update(tokens=True), "state.counters.tokens"),
    ("negative counter", lambda s: s["counters"].update(layer_tokens=-5), "state.counters.layer_tokens"),
    ("float counter", lambda s: s["counters"].update(consumed_samples=2.5), "state.counters.consumed_samples"),
    ("unknown counter", lambda s: s["counters"].update(samples=1), "samples"),
    ("sampler null", lambda s: s.update(sampler=None), "state.sampler"),
    ("random_ltd null", lambda s: s.update(random_ltd=None), "state.random_ltd"),
    ("sampler a list", lambda s: s.update(sampler=[1]), "state.sampler"),
    ("kept length 1e9", lambda s: s["random_ltd"].update(kept_length=10**9), "kept_length"),
    ("sampler position", lambda s: s["sampler"].update(position=s["sampler"]["position"] + 4), "sampler.position"),
    ("sampler seed", lambda s: s["sampler"].update(seed=7), "seed"),
    ("config", lambda s: s["config"]["random_ltd"].update(max_value=32), "different data-efficiency config"),
]


@pytest.mark.parametrize("mutate, field", [(m, f) for _, m, f in BAD], ids=[name for name, _, _ in BAD])
def test_crafted_state_is_refused_naming_the_field(engine, tmp_path, mutate, field):
    state = _trained_state(engine)
    bad = copy.deepcopy(state)
    mutate(bad)
    (tmp_path / "data_efficiency_state.json").write_text(json.dumps(bad))
    with pytest.raises(ResumeError, match=field.replace(".", r"\.")):
        engine.load_state_dict(engine.read_state(tmp_path))
    before = engine.state_dict(global_step=3)
    with pytest.raises(ResumeError):
        engine.load_state_dict(bad)
    if field != "sampler.position":  # (the sampler's own checks have passed then; nothing else is restored late)
        assert engine.state_dict(global_step=3)["counters"] == before["counters"]


def replay_position(global_step, micro_batches_per_epoch, ga):
    """(epoch, micro-batches consumed in it) after ``global_step`` optimizer steps, by walking the micro-batches one
    by one: a step ends every ``ga`` micro-batches, and an epoch's leftover micro-batches (fewer than ``ga``) are
    never used."""
    epoch, consumed, steps = 0, 0, 0
    usable = micro_batches_per_epoch // ga * ga
    while steps < global_step:
        consumed += 1
        if consumed % ga == 0:
            steps += 1
        if consumed == usable:
            epoch, consumed = epoch + 1, 0
    return epoch, consumed


@pytest.mark.parametrize("ga", [1, 2, 3])
def test_resume_position_replays_the_micro_batches_of_completed_steps(ga):
    engine = DataEfficiencyEngine({}, batch_size=4, gradient_accumulation_steps=ga)
    for micro_batches_per_epoch in (6, 7, 12):
        for step in range(0, 30):
            got = engine.resume_position(step, micro_batches_per_epoch)
            assert got == replay_position(step, micro_batches_per_epoch, ga), (step, micro_batches_per_epoch)


def test_a_registered_metric_of_the_batch_needs_no_token_column():
    """A registered metric that reads the batch (e.g. the prompt text of a GRPO dataset) is computed without an
    input_ids column; a token metric still asks for one."""
    from datasets import Dataset

    from hf_data_efficiency import register_curriculum_metric
    from hf_data_efficiency.engine import add_metric_columns

    register_curriculum_metric("text_chars", lambda b: [len(t) for t in b["text"]], fingerprint="v1", overwrite=True)
    text = Dataset.from_dict({"text": ["a", "bbb", "cc"]})
    out, added = add_metric_columns(text, ["text_chars"])
    assert out["text_chars"] == [1, 3, 2] and added == ["text_chars"]
    with pytest.raises(ValueError, match=r"curriculum metric\(s\) \['seqlen'\] .* no 'input_ids' column"):
        add_metric_columns(text, ["text_chars", "seqlen"])
