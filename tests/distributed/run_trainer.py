"""Train the tiny GPT-2 with DataEfficiencyTrainer and write what each rank saw to ``--record``.

Launched by the trainer tests: under ``python -m torch.distributed.run --nproc_per_node 2`` (DDP on gloo),
as a plain process that resumes from a checkpoint, as one that gets SIGKILLed, and with DeepSpeed ZeRO-2.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from tiny import (
    CURRICULUM_FLAGS,
    RANDOM_LTD_FLAGS,
    RecordingTrainer,
    collate,
    deepspeed_block,
    dump,
    make_dataset,
    step_losses,
    tiny_model,
)
from transformers import TrainerCallback

from hf_data_efficiency import DataEfficiencyTrainingArguments


class PrintSteps(TrainerCallback):
    """Print every finished step, so a test can time a kill."""

    def on_step_end(self, args, state, control, **kwargs):
        print(f"STEP {state.global_step}", flush=True)


def slow_down_saves(seconds: float) -> None:
    """Sleep before every checkpoint file write (torch.save, safetensors, our state), so kills land inside saves."""
    import torch
    import transformers.modeling_utils as modeling_utils

    import hf_data_efficiency.engine as engine

    def slowed(fn):
        def wrapper(*args, **kwargs):
            print(f"SAVING {fn.__name__}", flush=True)
            time.sleep(seconds)
            return fn(*args, **kwargs)

        return wrapper

    torch.save = slowed(torch.save)
    modeling_utils.safe_save_file = slowed(modeling_utils.safe_save_file)
    engine.atomic_write_text = slowed(engine.atomic_write_text)


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Stall(TrainerCallback):
    """Hang after a given step, so the test can SIGKILL a process that is mid-training."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print("STALLING", flush=True)
            time.sleep(600)


def build_trainer(
    output_dir: str,
    max_steps: int = 8,
    save_steps: int = 4,
    batch_size: int = 4,
    ga: int = 2,
    workers: int = 0,
    zero_stage: int = 0,
    callbacks: list | None = None,
    random_ltd: bool = True,
    deterministic: bool = False,
    layer_token_lr: bool = False,
    stream: bool = False,
    dynamic_max_tokens: int = 0,
    token_selection: bool = False,
) -> RecordingTrainer:
    """Curriculum (seqlen + truncate) and random-LTD from flags, or (``zero_stage`` 2 or 3) from the
    data_efficiency block of a DeepSpeed ZeRO config. ``deterministic`` turns dropout off, so runs on different
    process layouts can be compared loss for loss. ``stream``: the data as a 4-shard ``datasets.IterableDataset``.
    ``token_selection``: excess-loss selection (ratio 0.5) against a second tiny GPT-2."""
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=ga,
        max_steps=max_steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        dataloader_num_workers=workers,
        report_to=[],
        seed=42,
        disable_tqdm=True,
        use_cpu=True,
    )
    if zero_stage:
        kwargs["deepspeed"] = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "zero_optimization": {"stage": zero_stage},
            "zero_force_ds_cpu_optimizer": False,
            "data_efficiency": deepspeed_block(seed=42, layer_token_lr=layer_token_lr),
        }
    else:
        kwargs.update(CURRICULUM_FLAGS, **(RANDOM_LTD_FLAGS if random_ltd else {}))
        if layer_token_lr:
            kwargs["layer_token_lr_schedule"] = True
    if layer_token_lr:
        kwargs["warmup_steps"] = 2
    if dynamic_max_tokens:
        kwargs.update(dynamic_batching=True, dynamic_batching_max_tokens=dynamic_max_tokens)
        kwargs.update(dynamic_batching_lr_scaling_method="sqrt")
    if token_selection:
        kwargs.update(token_selection="excess_loss", token_selection_ratio=0.5)
    args = DataEfficiencyTrainingArguments(**kwargs)
    return RecordingTrainer(
        model=tiny_model(dropout=0.0 if deterministic else 0.1),
        args=args,
        train_dataset=make_dataset().to_iterable_dataset(num_shards=4) if stream else make_dataset(),
        data_collator=collate,
        callbacks=callbacks,
        reference_model=tiny_model(seed=7, dropout=0.0) if token_selection else None,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--max_steps", type=int, default=8)
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--ga", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--resume", default=None, help="checkpoint path, or 'last'")
    p.add_argument(
        "--zero_stage", type=int, default=0, choices=[0, 2, 3], help="DeepSpeed ZeRO stage (0: no DeepSpeed)"
    )
    p.add_argument("--stall_after", type=int, default=0)
    p.add_argument("--no_random_ltd", action="store_true", help="curriculum only")
    p.add_argument("--deterministic", action="store_true", help="no dropout")
    p.add_argument("--layer_token_lr", action="store_true", help="the layer-token LR schedule, 2 warmup steps")
    p.add_argument("--stream", action="store_true", help="the data as a datasets.IterableDataset (4 shards)")
    p.add_argument("--dynamic_max_tokens", type=int, default=0, help="token-budget batching with this budget")
    p.add_argument("--token_selection", action="store_true", help="excess-loss token selection (ratio 0.5)")
    p.add_argument("--slow_saves", type=float, default=0.0, help="seconds to sleep before each checkpoint file write")
    a = p.parse_args()
    if a.slow_saves:
        slow_down_saves(a.slow_saves)

    trainer = build_trainer(
        a.output_dir,
        max_steps=a.max_steps,
        save_steps=a.save_steps,
        batch_size=a.batch_size,
        ga=a.ga,
        workers=a.workers,
        zero_stage=a.zero_stage,
        random_ltd=not a.no_random_ltd,
        deterministic=a.deterministic,
        layer_token_lr=a.layer_token_lr,
        stream=a.stream,
        dynamic_max_tokens=a.dynamic_max_tokens,
        token_selection=a.token_selection,
        callbacks=[PrintSteps()] + ([Stall(a.stall_after)] if a.stall_after else []),
    )
    args = trainer.args
    resume = True if a.resume == "last" else a.resume
    trainer.train(resume_from_checkpoint=resume)
    payload = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "records": trainer.records,
        "losses": step_losses(trainer.state.log_history),
        "log_history": trainer.state.log_history,
        "config": trainer.data_efficiency_config.to_dict(),
        "weights": weights_digest(trainer.model),
    }
    if a.zero_stage:
        engine = trainer.model_wrapped
        payload["deepspeed_engine"] = type(engine).__name__
        payload["zero_stage"] = int(engine.zero_optimization_stage())
        payload["engine_data_efficiency"] = bool(engine.data_efficiency_enabled())
        payload["engine_config_keys"] = sorted(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
    dump(a.record.replace("RANK", str(args.process_index)), payload)
    trainer.accelerator.wait_for_everyone()
    # tear the process group down before exit: gloo threads left running abort the process at interpreter exit
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
