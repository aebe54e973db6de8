"""Benchmark padded vs packed (padding-free) batches, each with and without random-LTD, eager and compiled.

The same documents (token lengths of PTB lines or BBC News articles, GPT-2 BPE) are trained on as padded rows
(``batch x longest``) and as one packed row (``DataCollatorWithFlattening``: position ids restart per document, so
transformers builds a block-diagonal mask, or flash attention reads varlen arguments). random-LTD keeps
``--kept`` tokens: of every padded row (the padded-row rule), or ``min(len, kept)`` of every document (the
per-document rule). Every arm runs forward + backward on the same batches, interleaved round by round (warmup,
then ``--repeats`` rounds, median), so the ratios printed side by side share the machine's noise.

* real tokens/s: the documents' tokens (no padding) per second of one forward + backward;
* theoretical FLOP saving of random-LTD, from the shapes a path computes (forward + backward = 3x forward): a layer
  on ``t`` tokens of a row costs ``24 d^2 t + 4 t^2 d`` (sdpa over a packed row computes the whole ``t x t``
  score matrix under its mask; flash varlen only the documents' blocks), the LM head ``2 d V T``;
* efficiency: measured time saving / theoretical saving, per path against its own baseline;
* compiled arms: ``torch.compile`` (inductor by default); compile time is the first call's excess over the median
  step, graphs are dynamo's unique graphs over all steps.

Time is process CPU time with one intra-op thread by default (``--wall`` for wall-clock, e.g. on a GPU, where the
step is synchronised). ``scripts/benchmarks/gpu_check.sh`` runs this on a GPU in bf16 with sdpa and flash varlen.

Run: ``python scripts/benchmarks/bench_packed.py`` (PTB and BBC News lengths, GPT-2 6x384, about 10 minutes on 2
cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import hf_data_efficiency as hfde  # noqa: E402
from hf_data_efficiency.config import RandomLTDConfig  # noqa: E402

SAVED_LENGTHS = Path(__file__).with_name("document_lengths.json")


def document_lengths(data: str, count: int, max_len: int, seed: int, saved: bool = False) -> list[int]:
    """Token lengths of ``count`` documents drawn from PTB lines or BBC News articles (truncated at ``max_len``);
    ``saved``: the first of those recorded in :data:`SAVED_LENGTHS` (no offline data packages needed)."""
    if saved:
        return [min(n, max_len) for n in json.loads(SAVED_LENGTHS.read_text())[data][:count]]
    from offline_data import gpt2_tokenizer, load_bbc_news, load_ptb

    texts = (load_ptb("train") if data == "ptb" else load_bbc_news())["text"]
    rng = np.random.default_rng(seed)
    picked = [texts[i] for i in rng.choice(len(texts), size=count, replace=len(texts) < count)]
    lengths = [len(ids) for ids in gpt2_tokenizer()(picked)["input_ids"]]
    return [max(2, min(n, max_len)) for n in lengths]


def layer_flops(tokens: int, d: int) -> float:
    return 2 * (12 * d * d * tokens) + 4 * tokens * tokens * d


def path_flops(rows: list[list[int]], kept: int | None, d: int, layers: int, n_ltd: int, vocab: int, flash: bool):
    """Forward FLOPs of one batch: ``rows`` holds each row's document lengths (a padded row is one document of the
    row's width); random-LTD keeps ``min(len, kept)`` of each document in the ``n_ltd`` middle layers."""

    def layer(docs: list[int]) -> float:  # flash varlen computes each document's block; sdpa the whole row
        return sum(layer_flops(n, d) for n in docs) if flash else layer_flops(sum(docs), d)

    total = 0.0
    for docs in rows:
        kept_docs = docs if kept is None else [min(n, kept) for n in docs]
        total += (layers - n_ltd) * layer(docs) + n_ltd * layer(kept_docs) + 2 * d * vocab * sum(docs)
    return total


def build_model(layers: int, d: int, vocab: int, max_len: int, attn: str, device: str, dtype) -> tf.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        vocab_size=vocab,
        n_positions=max_len,
        n_embd=d,
        n_layer=layers,
        n_head=max(1, d // 64),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    cfg._attn_implementation = attn
    return tf.GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).train()


def make_batches(lengths: list[int], docs_per_step: int, vocab: int, device: str) -> dict[str, list[dict]]:
    """The same documents as padded batches and as packed rows."""
    g = torch.Generator().manual_seed(1)
    padded, packed = [], []
    for start in range(0, len(lengths) - docs_per_step + 1, docs_per_step):
        docs = [torch.randint(0, vocab, (n,), generator=g) for n in lengths[start : start + docs_per_step]]
        width = max(len(x) for x in docs)
        ids = torch.zeros(len(docs), width, dtype=torch.long)
        mask = torch.zeros(len(docs), width, dtype=torch.long)
        for row, x in enumerate(docs):
            ids[row, : len(x)], mask[row, : len(x)] = x, 1
        padded.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
        flat = tf.DataCollatorWithFlattening()([{"input_ids": x.tolist()} for x in docs])
        packed.append(dict(flat))
    to = lambda batches: [{k: v.to(device) for k, v in b.items()} for b in batches]  # noqa: E731
    return {"padded": to(padded), "packed": to(packed)}


def doc_rows(batch: dict, path: str) -> list[list[int]]:
    if path == "padded":
        return [[batch["input_ids"].shape[1]]] * batch["input_ids"].shape[0]
    pos = batch["position_ids"].reshape(-1).tolist()
    lengths: list[int] = []
    for p in pos:
        if p == 0:
            lengths.append(0)
        lengths[-1] += 1
    return [lengths]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", choices=("ptb", "bbc"), default=["ptb", "bbc"])
    p.add_argument("--quick", action="store_true", help="GPT-2 4x256, fewer documents and rounds")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--max-len", type=int, default=1024, help="BBC News articles are truncated to this many tokens")
    p.add_argument("--docs-per-step", type=int, nargs=2, default=None, metavar=("PTB", "BBC"))
    p.add_argument(
        "--kept", type=float, default=0.5, help="random-LTD kept length as a fraction of the longest document"
    )
    p.add_argument("--steps", type=int, default=None, help="distinct batches per arm")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--compile", choices=("none", "inductor", "aot_eager"), default="inductor")
    p.add_argument("--attn", nargs="+", default=["sdpa"], help="attention implementations (flash_attention_2 on GPU)")
    p.add_argument(
        "--lengths",
        choices=("data", "saved"),
        default="data",
        help=f"tokenize the corpora, or read their lengths from {SAVED_LENGTHS.name}",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wall", action="store_true", help="wall-clock (synchronised on CUDA) instead of process CPU time")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tf.logging.set_verbosity_error()
    layers = args.layers or (4 if args.quick else 6)
    d = args.d_model or (256 if args.quick else 384)
    steps = args.steps or (2 if args.quick else 3)
    repeats = args.repeats or (2 if args.quick else 3)
    docs = dict(zip(("ptb", "bbc"), args.docs_per_step or ((32, 2) if args.quick else (64, 4))))
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() if args.wall or cuda else time.process_time()

    print(
        f"GPT-2 {layers}x{d}, vocab {args.vocab}, {args.device} {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {'wall-clock' if args.wall or cuda else 'process CPU time'}; random-LTD "
        f"on every layer but the first and the last, kept {args.kept:g} of the longest document; {steps} batches per arm, {repeats} rounds after a "
        f"warmup round, median; compile: {args.compile}."
    )
    rows = []
    for data in args.data:
        lengths = document_lengths(data, docs[data] * steps, args.max_len, seed=0, saved=args.lengths == "saved")
        kept = max(2, round(args.kept * max(lengths)))
        print(
            f"\n{data}: {len(lengths)} documents, mean {np.mean(lengths):.0f} tokens (max {max(lengths)}), "
            f"{docs[data]} per step; kept length {kept}"
        )
        for attn in args.attn:
            model = build_model(layers, d, args.vocab, args.max_len, attn, args.device, dtype)
            ltd_layers = list(range(1, layers - 1))
            cfg = RandomLTDConfig(
                min_value=16, max_value=args.max_len, require_steps=1, random_ltd_layer_id=ltd_layers
            )
            handle = hfde.apply_random_ltd(model, cfg)
            batches = make_batches(lengths, docs[data], args.vocab, args.device)
            compiled = torch.compile(model, backend=args.compile, dynamic=None) if args.compile != "none" else None
            arms = [(path, ltd, False) for path in ("padded", "packed") for ltd in (False, True)]
            if compiled is not None:
                arms += [(path, ltd, True) for path in ("padded", "packed") for ltd in (False, True)]
            times = {arm: [] for arm in arms}
            first = {}
            for rnd in range(repeats + 1):
                for arm in arms:
                    path, ltd, comp = arm
                    handle.kept_length = kept if ltd else None
                    run = compiled if comp else model
                    for batch in batches[path]:
                        start = clock()
                        run(**batch).loss.backward()
                        elapsed = clock() - start
                        model.zero_grad(set_to_none=True)
                        if rnd == 0:
                            first.setdefault(arm, elapsed)
                        else:
                            times[arm].append(elapsed)
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            real = sum(sum(sum(r) for r in doc_rows(b, "packed")) for b in batches["packed"]) / len(batches["packed"])
            flash = "flash" in attn
            for path, ltd, comp in arms:
                t = statistics.median(times[(path, ltd, comp)])
                row = {
                    "kept": kept,
                    "data": data,
                    "attn": attn,
                    "path": path,
                    "random_ltd": ltd,
                    "compiled": comp,
                    "step_s": t,
                    "real_tokens_per_s": real / t,
                }
                if comp:
                    row["compile_s"] = max(0.0, first[(path, ltd, comp)] - t)
                    row["graphs"] = graphs
                if ltd:
                    base = statistics.median(times[(path, False, comp)])
                    full = sum(
                        path_flops(doc_rows(b, path), None, d, layers, len(ltd_layers), args.vocab, flash)
                        for b in batches[path]
                    )
                    cut = sum(
                        path_flops(doc_rows(b, path), kept, d, layers, len(ltd_layers), args.vocab, flash)
                        for b in batches[path]
                    )
                    row.update(theory=1 - cut / full, measured=1 - t / base)
                    row["efficiency"] = row["measured"] / row["theory"] if row["theory"] > 0 else float("nan")
                rows.append(row)
            handle.remove()
            torch._dynamo.reset()
    print()
    print(
        "| data | attention | path | random-LTD | compiled | step (s) | real tokens/s | vs padded + LTD eager "
        "| theoretical saving | measured saving | efficiency | compile (s) / graphs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(
            x
            for x in rows
            if x["data"] == r["data"]
            and x["attn"] == r["attn"]
            and x["path"] == "padded"
            and x["random_ltd"]
            and not x["compiled"]
        )
        eff = f"{r['theory']:.1%} | {r['measured']:.1%} | {r['efficiency']:.2f}" if r["random_ltd"] else "- | - | -"
        comp = f"{r['compile_s']:.0f} / {r['graphs']}" if r["compiled"] else "-"
        print(
            f"| {r['data']} | {r['attn']} | {r['path']} | {'on' if r['random_ltd'] else 'off'} | "
            f"{'yes' if r['compiled'] else 'no'} | {r['step_s']:.3f} | {r['real_tokens_per_s']:.0f} | "
            f"{r['real_tokens_per_s'] / ref['real_tokens_per_s']:.2f}x | {eff} | {comp} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
