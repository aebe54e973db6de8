"""Preemption-safe checkpoints: which checkpoints are complete, which one to resume from, and atomic saving.

A checkpoint is **complete** when its ``data_efficiency_state.json`` is present and readable, so is
``trainer_state.json`` (for a Trainer checkpoint) at the same step, and its safetensors weights are whole: every
``*.safetensors`` file's header parses and accounts for the file's exact size (a truncated copy does not), and every
shard a ``*.safetensors.index.json`` lists is there. JSON is read with bounded size and nesting
(:func:`~hf_data_efficiency._validation.read_json`). Both integrations write the state file *last*:

* ``DataEfficiencyTrainer`` writes it after the Trainer's own files, once every process has finished saving, and
  only then rotates old checkpoints (``save_total_limit``), so a kill at any instant leaves the previous complete
  checkpoint in place;
* a plain loop saves with :func:`save_checkpoint`, which fills ``.checkpoint-N.partial`` and renames it to
  ``checkpoint-N`` once complete, so an incomplete checkpoint is never visible under its final name.

:func:`resolve_resume_checkpoint` turns ``resume_from_checkpoint=True`` into the newest complete checkpoint
(skipping incomplete ones with a warning that names what they lack), and refuses an explicit incomplete one with
an error naming the missing files and the newest complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.utils import logging

from ._validation import UnreadableFileError, read_json
from .engine import STATE_NAME

logger = logging.get_logger(__name__)

PREFIX = "checkpoint"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX}-(\d+)$")


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, "missing"
    try:
        data = read_json(path)
    except UnreadableFileError as e:
        return None, f"corrupt ({e.reason})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


def _weights_problems(folder: Path) -> dict[str, str]:
    """Unreadable safetensors weights in ``folder`` as ``{file name: problem}``: a listed shard that is missing, or a
    file whose header does not parse or does not cover the file exactly. ``safe_open`` reads only the header."""
    problems = {}
    for index in sorted(folder.glob("*.safetensors.index.json")):
        data, problem = _read_json(index)
        weight_map = data.get("weight_map") if data is not None else None
        if problem or not isinstance(weight_map, dict):
            problems[index.name] = problem or "has no weight_map object"
            continue
        for shard in sorted({str(name) for name in weight_map.values()}):
            if not (folder / shard).is_file():
                problems[shard] = f"missing (listed in {index.name})"
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            problems[path.name] = f"unreadable ({e}; a truncated or damaged safetensors file)"
    return problems


def checkpoint_problems(folder: str | os.PathLike, *, trainer: bool = True) -> dict[str, str]:
    """What keeps ``folder`` from being a complete checkpoint, as ``{file name: problem}`` (empty when complete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {str(folder): "not a directory"}
    problems = {}
    state, problem = _read_json(folder / STATE_NAME)
    if problem:
        problems[STATE_NAME] = problem
    if trainer:
        trainer_state, problem = _read_json(folder / TRAINER_STATE_NAME)
        if problem:
            problems[TRAINER_STATE_NAME] = problem
        elif state is not None and trainer_state.get("global_step") != state.get("global_step"):
            problems[STATE_NAME] = (
                f"for step {state.get('global_step')} while {TRAINER_STATE_NAME} is for step "
                f"{trainer_state.get('global_step')}"
            )
    problems.update(_weights_problems(folder))
    return problems


def _describe(problems: dict[str, str]) -> str:
    return "; ".join(f"{name} {problem}" for name, problem in problems.items())


def _checkpoints_newest_first(output_dir: str | os.PathLike) -> list[Path]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike, *, trainer: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (``None`` if there is none); incomplete newer ones are
    skipped with a warning naming what they lack."""
    for folder in _checkpoints_newest_first(output_dir):
        problems = checkpoint_problems(folder, trainer=trainer)
        if not problems:
            return str(folder)
        logger.warning(f"Skipping incomplete checkpoint {folder}: {_describe(problems)}.")
    return None


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: str | os.PathLike, *, trainer: bool = True
) -> str | None:
    """The checkpoint to resume from: ``True`` means the newest complete one in ``output_dir``; a path must be
    complete. ``None``/``False`` mean a fresh start."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        found = last_complete_checkpoint(output_dir, trainer=trainer)
        if found is None:
            raise ValueError(
                f"resume_from_checkpoint=True: no complete checkpoint found in {output_dir}."
                + _without_state_hint(output_dir, trainer)
            )
        return found
    problems = checkpoint_problems(resume_from_checkpoint, trainer=trainer)
    if problems:
        raise ValueError(incomplete_message(resume_from_checkpoint, problems, trainer=trainer))
    return str(resume_from_checkpoint)


def _without_state_hint(output_dir: str | os.PathLike, trainer: bool) -> str:
    """A hint naming the newest Trainer checkpoint that lacks only the data-efficiency state (a plain ``Trainer``
    run's)."""
    for folder in _checkpoints_newest_first(output_dir) if trainer else ():
        if checkpoint_problems(folder) == {STATE_NAME: "missing"}:
            return (
                f" {folder} has every file but {STATE_NAME}: it was not written by DataEfficiencyTrainer with data "
                "efficiency on (a plain Trainer run), or its save was interrupted. To continue from its model and "
                "optimizer, resume from its path with --ignore_data_skip (TrainingArguments.ignore_data_skip=True): "
                "the data-efficiency state then restarts."
            )
    return ""


def incomplete_message(checkpoint: str | os.PathLike, problems: dict[str, str], *, trainer: bool = True) -> str:
    """Why ``checkpoint`` cannot be resumed from, and the newest complete checkpoint beside it."""
    newest = last_complete_checkpoint(Path(checkpoint).parent, trainer=trainer)
    hint = (
        f"The newest complete checkpoint beside it is {newest}: resume from that path, or with "
        "resume_from_checkpoint=True."
        if newest
        else "There is no complete checkpoint beside it."
    )
    return (
        f"resume_from_checkpoint={str(checkpoint)!r} is an incomplete checkpoint (its save was interrupted, a file "
        f"was damaged, or it was not written with data efficiency on): {_describe(problems)}. {hint}"
    )


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    write: Callable[[str], None],
    *,
    is_main_process: bool = True,
    wait_for_everyone: Callable[[], None] | None = None,
) -> str:
    """Save ``checkpoint-<step>`` atomically: every process calls ``write(partial_dir)`` into
    ``.checkpoint-<step>.partial``, which the main process renames once all have finished. Returns the final path."""
    barrier = wait_for_everyone or (lambda: None)
    final = Path(output_dir) / f"{PREFIX}-{step}"
    partial = Path(output_dir) / f".{PREFIX}-{step}.partial"
    if is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
        partial.mkdir(parents=True)
    barrier()
    write(str(partial))
    barrier()
    if is_main_process:
        if final.exists():  # saved again after a resume: the new one replaces it
            shutil.rmtree(final)
        os.replace(partial, final)
    barrier()
    return str(final)
