"""Benchmark random-LTD on a GPT-2-shaped model: measured vs theoretical saving, activation memory, overhead.

For each sequence length the unpatched model and every kept fraction are timed (forward + backward)
in alternation within one run (warmup, then ``--repeats`` rounds, median). The baseline is the truly
vanilla model (the patch is removed and re-applied around it, which costs microseconds).

* Theoretical FLOP saving, from the shapes (forward + backward = 3x forward, matmul FLOPs = 2 * MACs):
  a layer on ``t`` tokens costs ``24 d^2 t`` (QKV, output projection, 4d MLP) ``+ 4 t^2 d`` (QK^T and AV,
  full square) per sample; the LM head costs ``2 d V T``; embedding lookups, norms and the loss are
  counted as zero. saving = sum over patched layers of (F(T) - F(k)) / (L F(T) + head).
* Efficiency = measured time saving / theoretical saving.
* Activation memory = bytes of the tensors autograd saves for backward (``saved_tensors_hooks``,
  deduplicated by storage, parameters excluded); this is what random-LTD shrinks and what a training
  step holds at its peak on top of weights, grads and optimizer state. The theoretical activation
  saving assumes a patched layer's saved tensors scale linearly with its tokens (true for sdpa,
  which keeps no T x T tensor): (bytes saved inside the patched layers at full length) * (1 - k/T) / total.
* Overhead = the gather/scatter path forced at kept = T (``handle.force_gather``) vs the unpatched model.
* Time is the process CPU time with one intra-op thread by default: on a shared machine wall-clock is
  dominated by other processes (``--wall --threads N`` measures wall-clock instead).

Run: ``python scripts/benchmarks/bench_random_ltd.py`` (about 5 minutes on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import transformers as tf
from tqdm import tqdm

import hf_data_efficiency as hfde
from hf_data_efficiency.config import RandomLTDConfig


def build_model(layers: int, d: int, heads: int, vocab: int, max_len: int) -> tf.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        vocab_size=vocab,
        n_positions=max_len,
        n_embd=d,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    cfg._attn_implementation = "sdpa"
    return tf.GPT2LMHeadModel(cfg).train()


def layer_flops(tokens: int, d: int) -> float:
    return 2 * (12 * d * d * tokens) + 4 * tokens * tokens * d


def theoretical_saving(seq: int, kept: int, d: int, layers: int, n_ltd: int, vocab: int) -> float:
    total = layers * layer_flops(seq, d) + 2 * d * vocab * seq
    return n_ltd * (layer_flops(seq, d) - layer_flops(kept, d)) / total


class SavedBytes:
    """Counts bytes autograd saves for backward, split into inside/outside the patched layers."""

    def __init__(self, model: torch.nn.Module, layers: list[torch.nn.Module]) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.layers = layers
        self.inside = 0
        self.seen: dict[int, tuple[int, bool]] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen[ptr] = (storage.nbytes(), self.inside > 0)
        return t

    def measure(self, step) -> tuple[int, int]:
        """Run ``step`` (forward+backward) and return (total bytes, bytes saved inside the patched layers)."""

        def enter(*_):
            self.inside += 1

        def leave(*_):
            self.inside -= 1

        hooks = [h for m in self.layers for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        self.seen = {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            step()
        for h in hooks:
            h.remove()
        total = sum(n for n, _ in self.seen.values())
        inside = sum(n for n, flag in self.seen.values() if flag)
        return total, inside


class Runner:
    """One forward+backward; ``kept=None`` runs the vanilla model (patch removed, then re-applied)."""

    def __init__(self, model: torch.nn.Module, cfg: RandomLTDConfig, ids: torch.Tensor) -> None:
        self.model, self.cfg, self.ids = model, cfg, ids
        self.handle = hfde.apply_random_ltd(model, cfg)

    def step(self, kept: int | None, force: bool) -> None:
        if kept is None:
            self.handle.remove()
        else:
            self.handle.kept_length, self.handle.force_gather = kept, force
        self.model.zero_grad(set_to_none=True)
        self.model(input_ids=self.ids, labels=self.ids).loss.backward()
        if kept is None:
            self.handle = hfde.apply_random_ltd(self.model, self.cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 layers, d=384, seq 256/512")
    parser.add_argument("--seqs", type=int, nargs="+", default=None)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--wall", action="store_true", help="time wall-clock instead of process CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    layers = args.layers or (6 if args.quick else 12)
    d = args.d_model or (384 if args.quick else 768)
    heads = d // 64
    seqs = args.seqs or ([256, 512] if args.quick else [512, 1024])
    repeats = args.repeats or 3
    tf.logging.set_verbosity_error()

    model = build_model(layers, d, heads, args.vocab, max(seqs))
    ltd_layers = list(range(1, len(hfde.find_layers(model)) - 1))  # every layer but the first and the last
    cfg = RandomLTDConfig(min_value=16, max_value=max(seqs), require_steps=1, random_ltd_layer_id=ltd_layers)
    print(
        f"GPT-2-shaped model: {layers} layers, d={d}, {heads} heads, vocab {args.vocab}, batch {args.batch}, "
        f"sdpa, fp32, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{'wall-clock' if args.wall else 'process CPU time'}; random-LTD on layers "
        f"{ltd_layers[0]}..{ltd_layers[-1]}; {repeats} timed rounds after 1 warmup round, median."
    )
    rows = []
    for seq in seqs:
        ids = torch.randint(0, args.vocab, (args.batch, seq))
        arms: list[tuple[str, int | None, bool]] = [("baseline", None, False), ("gather at kept=T", seq, True)]
        arms += [(f"kept {f:g}", max(1, round(f * seq)), False) for f in args.fractions]
        runner = Runner(model, cfg, ids)
        times: dict[str, list[float]] = {name: [] for name, _, _ in arms}
        memory: dict[str, tuple[int, int]] = {}
        for rnd in tqdm(range(repeats + 1), desc=f"seq {seq}", leave=False):
            for name, kept, force in arms:
                if rnd == 0:  # warmup round doubles as the activation-memory measurement
                    meter = SavedBytes(model, runner.handle.layers)
                    memory[name] = meter.measure(functools.partial(runner.step, kept, force))
                    continue
                start = clock()
                runner.step(kept, force)
                times[name].append(clock() - start)
        runner.handle.remove()
        base_t = statistics.median(times["baseline"])
        base_mem, base_inside = memory["baseline"]
        for name, kept, force in arms:
            t = statistics.median(times[name])
            mem = memory[name][0]
            row = {"seq": seq, "arm": name, "time": t, "mem": mem / 2**20}
            if name != "baseline" and not force:
                theory = theoretical_saving(seq, kept, d, layers, len(ltd_layers), args.vocab)
                mem_theory = base_inside * (1 - kept / seq) / base_mem
                row.update(
                    kept=kept,
                    theory=theory,
                    measured=1 - t / base_t,
                    mem_saving=1 - mem / base_mem,
                    mem_theory=mem_theory,
                )
            if force:
                row["overhead"] = t / base_t - 1
            rows.append(row)

    print()
    print(
        "| seq | arm | kept | time (s) | theoretical FLOP saving | measured time saving | efficiency "
        "| activation MiB | activation saving (measured / theory / ratio) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "theory" in r:
            print(
                f"| {r['seq']} | {r['arm']} | {r['kept']} | {r['time']:.3f} | {r['theory']:.1%} | {r['measured']:.1%} "
                f"| {r['measured'] / r['theory']:.2f} | {r['mem']:.0f} | {r['mem_saving']:.1%} / {r['mem_theory']:.1%} "
                f"/ {r['mem_saving'] / r['mem_theory']:.2f} |"
            )
        elif "overhead" in r:
            print(
                f"| {r['seq']} | {r['arm']} | {r['seq']} | {r['time']:.3f} | 0 | overhead {r['overhead']:+.1%} | - "
                f"| {r['mem']:.0f} | - |"
            )
        else:
            print(f"| {r['seq']} | {r['arm']} | {r['seq']} | {r['time']:.3f} | - | - | - | {r['mem']:.0f} | - |")


if __name__ == "__main__":
    main()
