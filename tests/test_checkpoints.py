"""Checkpoint completeness, resume selection and atomic saving, on hand-built checkpoint folders whose completeness
is known by construction."""

import json

import pytest

from hf_data_efficiency.checkpoints import (
    TRAINER_STATE_NAME,
    checkpoint_problems,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from hf_data_efficiency.engine import STATE_NAME


def make_checkpoint(out, step, *, state_step=None, trainer_step=None, state=True, trainer=True):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state:
        (folder / STATE_NAME).write_text(json.dumps({"global_step": step if state_step is None else state_step}))
    if trainer:
        (folder / TRAINER_STATE_NAME).write_text(
            json.dumps({"global_step": step if trainer_step is None else trainer_step})
        )
    return folder


def test_completeness_names_each_missing_corrupt_or_mismatched_file(tmp_path):
    complete = make_checkpoint(tmp_path, 2)
    assert checkpoint_problems(complete) == {}
    no_state = make_checkpoint(tmp_path, 3, state=False)
    assert checkpoint_problems(no_state) == {STATE_NAME: "missing"}
    no_trainer_state = make_checkpoint(tmp_path, 4, trainer=False)
    assert checkpoint_problems(no_trainer_state) == {TRAINER_STATE_NAME: "missing"}
    assert checkpoint_problems(no_trainer_state, trainer=False) == {}  # a plain loop's checkpoint
    mismatched = make_checkpoint(tmp_path, 5, state_step=4)
    assert set(checkpoint_problems(mismatched)) == {STATE_NAME}
    assert "for step 4" in checkpoint_problems(mismatched)[STATE_NAME]
    corrupt = make_checkpoint(tmp_path, 6)
    (corrupt / STATE_NAME).write_text('{"global_step": 6')  # a save killed mid-write
    assert checkpoint_problems(corrupt)[STATE_NAME].startswith("corrupt")
    (corrupt / STATE_NAME).write_text("[6]")
    assert checkpoint_problems(corrupt) == {STATE_NAME: "not a JSON object"}
    assert checkpoint_problems(tmp_path / "checkpoint-99") == {str(tmp_path / "checkpoint-99"): "not a directory"}


def test_resume_true_takes_the_newest_complete_checkpoint(tmp_path):
    for step in (5, 10, 40):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 100, state=False)  # killed while saving
    make_checkpoint(tmp_path, 90, state_step=80)  # state of another step
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    # numeric order, not name order ("checkpoint-5" > "checkpoint-40" as strings)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-40")
    assert resolve_resume_checkpoint(True, tmp_path) == str(tmp_path / "checkpoint-40")
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-10"), tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint(False, tmp_path) is None
    with pytest.raises(ValueError, match=r"incomplete checkpoint.*missing.*checkpoint-40"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-100"), tmp_path)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint(True, tmp_path / "empty")


def test_save_checkpoint_is_atomic_and_replaces_an_earlier_save(tmp_path):
    def write(folder):
        # while writing, the checkpoint is not visible under its final name
        assert not (tmp_path / "checkpoint-3").exists()
        (tmp_path / "seen").write_text(folder)
        with open(f"{folder}/{STATE_NAME}", "w") as f:
            json.dump({"global_step": 3}, f)

    (tmp_path / ".checkpoint-3.partial").mkdir()
    (tmp_path / ".checkpoint-3.partial" / "stale").write_text("left by a killed save")
    path = save_checkpoint(tmp_path, 3, write)
    assert path == str(tmp_path / "checkpoint-3")
    assert (tmp_path / "seen").read_text() == str(tmp_path / ".checkpoint-3.partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "seen"]
    assert sorted(p.name for p in (tmp_path / "checkpoint-3").iterdir()) == [STATE_NAME]
    assert checkpoint_problems(path, trainer=False) == {}

    def rewrite(folder):
        with open(f"{folder}/{STATE_NAME}", "w") as f:
            json.dump({"global_step": 3, "again": True}, f)

    (tmp_path / "seen").unlink()
    save_checkpoint(tmp_path, 3, rewrite)  # saved again after a resume: the new one replaces the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]
    assert json.loads((tmp_path / "checkpoint-3" / STATE_NAME).read_text())["again"] is True
