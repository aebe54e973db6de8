"""GRPO benchmark: uniform prompt sampling against the pass-rate curriculum, at equal generations.

Task (generated in code, nothing fetched): ``a+b=`` for ``a, b`` in ``0..19`` (400 prompts); a completion earns
reward 1 when it is exactly ``a + b``, else 0. Model: a GPT-2 of ``--layers`` x ``--width`` on a character tokenizer,
SFT-warmed on CPU first (trl's ``SFTTrainer``, ``--warmup_steps`` steps) on the one-digit sums and a tenth of the
others, so that after the warm-up some prompts are solved, many are out of reach and some are in between, as in a
real GRPO run.

Then GRPO (``DataEfficiencyGRPOTrainer``), once per arm from the same warm model, for ``--generations`` generations of
``--prompts_per_generation`` prompts x ``--num_generations`` completions:

* ``uniform``: no data-efficiency option, i.e. trl's ``GRPOTrainer`` and its ``RepeatSampler``;
* ``pass_rate``: ``--pass_rate_curriculum`` with its defaults (band 0.2-0.8, threshold 0.5, smoothing 0.5, unseen
  prompts at 0.5, outside weight 0.1).

Reported per run (``docs/bench_records/grpo/<arm>_s<seed>.json``) and summarised over the seeds:

* the fraction of generation groups with zero reward spread (all completions right or all wrong: no learning signal),
  over the run, after the first pass over the prompts (the first ``400 / prompts_per_generation`` generations, which
  a pass-rate curriculum spends mostly on prompts it has not scored yet) and per generation;
* the mean training reward per generation step;
* the final reward: the mean reward of ``--eval_samples`` sampled completions (temperature 1, as in training) of
  every one of the 400 prompts, and the greedy accuracy over them, after GRPO (and after the warm-up);
* the wall-clock of the GRPO run.

The GRPO learning rate (3e-4) is the better of 1e-4 and 3e-4 for the uniform arm's final reward on seed 0, which
is not among the reported seeds.

Run: ``python scripts/benchmarks/bench_grpo.py`` (3 seeds, about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "examples"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _examples import char_gpt2  # noqa: E402
from datasets import Dataset  # noqa: E402
from offline_data import char_tokenizer  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

OPERANDS = 20
ARMS = ("uniform", "pass_rate")


def prompts() -> list[tuple[str, str]]:
    return [(f"{a}+{b}=", str(a + b)) for a in range(OPERANDS) for b in range(OPERANDS)]


def warmup_rows() -> list[dict[str, str]]:
    """The SFT warm-up set: every one-digit sum and a fixed tenth of the others."""
    rng = np.random.default_rng(0)
    rows = []
    for a in range(OPERANDS):
        for b in range(OPERANDS):
            if (a < 10 and b < 10) or rng.random() < 0.1:
                rows.append({"prompt": f"{a}+{b}=", "completion": str(a + b)})
    return rows


def exact_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """1 when the completion is exactly the sum, else 0."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def common_args(out: Path, seed: int) -> dict[str, Any]:
    return dict(
        output_dir=str(out),
        seed=seed,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )


def warm_model(args: argparse.Namespace, tokenizer: Any, seed: int, out: Path) -> GPT2LMHeadModel:
    """The SFT-warmed model. trl patches its ``forward`` (a fused LM head bound to this instance), so each GRPO arm
    starts from a fresh model loaded with its weights, never from a deep copy."""
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    model = char_gpt2(tokenizer, args.layers, args.width, 32)
    sft = SFTConfig(
        **common_args(out / "warmup", seed),
        max_steps=args.warmup_steps,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=args.warmup_steps,
    )
    SFTTrainer(
        model=model, args=sft, train_dataset=Dataset.from_list(warmup_rows()), processing_class=tokenizer
    ).train()
    return model


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, tokenizer: Any, samples: int, seed: int) -> dict[str, float]:
    """Mean sampled reward (temperature 1) and greedy accuracy over every prompt."""
    pairs = prompts()
    model.eval()
    enc = tokenizer([p for p, _ in pairs], return_tensors="pt", padding=True, padding_side="left")
    answers = [a for _, a in pairs]
    torch.manual_seed(seed)
    common = {"max_new_tokens": 4, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    sampled = model.generate(
        **{k: v.repeat_interleave(samples, 0) for k, v in enc.items()}, do_sample=True, top_k=0, **common
    )
    texts = tokenizer.batch_decode(sampled[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    reward = np.mean([t.strip() == answers[i // samples] for i, t in enumerate(texts)])
    greedy = model.generate(**enc, do_sample=False, **common)
    texts = tokenizer.batch_decode(greedy[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    model.train()
    return {
        "sampled_reward": float(reward),
        "greedy_accuracy": float(np.mean([t.strip() == a for t, a in zip(texts, answers)])),
    }


def run_grpo(arm: str, model: GPT2LMHeadModel, tokenizer: Any, args: argparse.Namespace, seed: int, out: Path) -> dict:
    from hf_data_efficiency.integrations.trl import DataEfficiencyGRPOConfig, DataEfficiencyGRPOTrainer

    class Recorder(DataEfficiencyGRPOTrainer):
        """Records every training generation's rewards, grouped by prompt."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.groups: list[list[list[float]]] = []

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.model.training:
                self.groups.append(rewards[:, 0].view(-1, self.num_generations).tolist())
            return rewards

    batch = args.prompts_per_generation * args.num_generations // args.steps_per_generation
    grpo = DataEfficiencyGRPOConfig(
        **common_args(out / arm, seed),
        max_steps=args.generations,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=args.steps_per_generation,
        num_generations=args.num_generations,
        max_completion_length=4,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        logging_steps=args.generations,
        pass_rate_curriculum=arm == "pass_rate",
    )
    data = Dataset.from_list([{"prompt": p, "answer": a} for p, a in prompts()])
    trainer = Recorder(
        model=model, reward_funcs=exact_reward, args=grpo, train_dataset=data, processing_class=tokenizer
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    groups = np.asarray(trainer.groups)  # (generations, prompts, completions)
    spread = groups.max(axis=2) != groups.min(axis=2)
    first_pass = -(-len(prompts()) // args.prompts_per_generation)  # generations that draw as many prompts as exist
    return {
        "arm": arm,
        "seed": seed,
        "generations": len(groups),
        "completions": int(groups.size),
        "zero_spread_fraction": float(1 - spread.mean()),
        "zero_spread_after_first_pass": float(1 - spread[first_pass:].mean()),
        "zero_spread_per_generation": (1 - spread.mean(axis=1)).tolist(),
        "all_right_fraction": float((groups.min(axis=2) == 1).mean()),
        "all_wrong_fraction": float((groups.max(axis=2) == 0).mean()),
        "reward_per_generation": groups.mean(axis=(1, 2)).tolist(),
        "grpo_seconds": seconds,
        "final": evaluate(model, tokenizer, args.eval_samples, seed),
    }


def summarise(records: list[dict]) -> str:
    rows = [
        "| arm | zero-spread groups | after the first pass | train reward, last 20% | final sampled reward "
        "| final greedy acc. | GRPO s |"
    ]
    rows.append("|---|---|---|---|---|---|---|")
    for arm in ARMS:
        runs = [r for r in records if r["arm"] == arm]
        if not runs:
            continue

        def stat(values: list[float], digits: int = 3) -> str:
            return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"

        tail = [np.mean(r["reward_per_generation"][-max(1, len(r["reward_per_generation"]) // 5) :]) for r in runs]
        rows.append(
            f"| {arm} | {stat([r['zero_spread_fraction'] for r in runs])} | "
            f"{stat([r['zero_spread_after_first_pass'] for r in runs])} | {stat(tail)} | "
            f"{stat([r['final']['sampled_reward'] for r in runs])} | {stat([r['final']['greedy_accuracy'] for r in runs])} "
            f"| {stat([r['grpo_seconds'] for r in runs], 0)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--generations", type=int, default=150, help="GRPO generations (= optimizer steps) per arm")
    parser.add_argument("--prompts_per_generation", type=int, default=16)
    parser.add_argument("--num_generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--steps_per_generation", type=int, default=2, help="micro-steps per generation (= GA)")
    parser.add_argument("--warmup_steps", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4, help="GRPO learning rate")
    parser.add_argument("--eval_samples", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_records" / "grpo"))
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_grpo_"))  # the trainers' output_dir (nothing is saved there)
    tokenizer = char_tokenizer()
    records = []
    for seed in args.seeds:
        start = time.perf_counter()
        warm = warm_model(args, tokenizer, seed, scratch)
        warmup = {"seconds": time.perf_counter() - start, **evaluate(warm, tokenizer, args.eval_samples, seed)}
        for arm in ARMS:
            model = GPT2LMHeadModel(warm.config)
            model.load_state_dict(warm.state_dict())
            record = run_grpo(arm, model, tokenizer, args, seed, scratch)
            record.update(warmup={**warmup}, settings={k: v for k, v in vars(args).items() if k != "out"})
            records.append(record)
            (out / f"{arm}_s{seed}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(
                f"seed {seed} {arm}: zero-spread {record['zero_spread_fraction']:.3f}, final sampled reward "
                f"{record['final']['sampled_reward']:.3f} (warm {warmup['sampled_reward']:.3f}), "
                f"{record['grpo_seconds']:.0f} s",
                flush=True,
            )
    print(summarise(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
