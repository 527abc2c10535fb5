"""Size of the top-k store on disk: bytes per position for k = 1, 5, 10, 100, and the ratio to a
full-vocabulary fp16 distribution at vocabulary 32k and 128k, extrapolated to the paper's scale.

Every store is written by the real `first_core.knowledge.answer_topk.extract_topk` (Parquet shards +
manifest);
bytes per position is the manifest's `bytes_per_position_measured`: the compressed on-disk size
of the `topk_ids` + `topk_probs` column chunks divided by the number of positions.

Teachers: the `tiny-teacher` preset (a word-level vocabulary of ~120 tokens), and randomly
initialised Llama models with a 32k and a 128k vocabulary whose output layer is scaled up so
that their distributions are peaked like a trained model's. At the answer position their top
ids repeat across prompts (as a trained teacher's answer letters do), which Parquet's
dictionary encoding exploits; the `raw` column is the uncompressed k x (4 + b) bytes, the
worst case of all-distinct ids. Stores use the default shard size (one shard here).

The last section does the same per *token* for the instruction setting (top-5 at every
response token) and redoes the 120 TB / 1.2 GB arithmetic with token counts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import parse_args, print_machine, random_llama, report, tiny_setup

KS = (1, 5, 10, 100)
WIDE_VOCABS = (32_000, 128_000)
FULL_FP16 = 2  # bytes per vocabulary entry of a full fp16 distribution
PAPER_FULL_BYTES = 120e12  # "120 TB" for full fp16 distributions at vocabulary 32k (issue 6)
PAPER_TOPK_BYTES = 1.2e9  # "1.2 GB" for the top-5 store (issue 6)
TARGET_BPP_TOP5 = 30.0
TARGET_RATIO_32K = 2000.0
LOGIT_STD = 8.0  # peaked outputs, like a fine-tuned teacher's (the table shows top-1 mass)


def measure(model, tokenizer, examples, work: Path, k: int, dtype: str) -> tuple[float, float]:
    """(bytes per position, mean top-1 mass) of a real top-k store of `model` on `examples`."""
    from first_core.knowledge.answer_topk import extract_topk

    manifest = extract_topk(model, tokenizer, examples, work / f"store-{k}-{dtype}", k=k,
                            coverage_k=k, dtype=dtype, batch_size=64, progress=False)
    return manifest.bytes_per_position_measured, manifest.coverage["mean"][0]


def main() -> None:
    args = parse_args(__doc__, n=(int, None, "positions per store (default 4000, quick 64)"))
    n = args.n or (64 if args.quick else 4000)
    print_machine(f"bench_store: top-k store size ({n} positions per store)")
    from first_core.models.loading import load_model

    with tempfile.TemporaryDirectory(prefix="bench_store-") as tmp:
        work = Path(tmp)
        setup = tiny_setup(work, n_train=n, roles=("teacher",))
        tiny, tok = load_model(setup.teacher_dir, device="cpu")
        examples = setup.train[:n]
        teachers = {len(tok): tiny, **{v: random_llama(tok, v, logit_std=LOGIT_STD)
                                        for v in WIDE_VOCABS}}

        print(f"\n{'vocab':>7} {'dtype':>7} {'k':>4} {'bytes/pos':>10} {'raw k*(4+b)':>11} "
              f"{'full fp16':>10} {'full/top-k':>10} {'top-1 mass':>10}")
        bpp: dict[tuple[int, str, int], float] = {}
        ks, dtypes = ((1, 5), ("float16",)) if args.quick else (KS, ("float16", "float32"))
        for vocab, model in teachers.items():
            for dtype in dtypes:
                for k in (k for k in ks if k <= vocab):
                    b, top1 = measure(model, tok, examples, work, k, dtype)
                    bpp[vocab, dtype, k] = b
                    raw = k * (4 + (2 if dtype == "float16" else 4))
                    full = FULL_FP16 * vocab
                    print(f"{vocab:>7} {dtype:>7} {k:>4} {b:>10.2f} {raw:>11} {full:>10} "
                          f"{full / b:>10.0f} {top1:>10.3f}")

        print()
        b5 = bpp[32_000, "float16", 5]
        report("store_top5_fp16_bytes_per_position@32k", b5, f"<= {TARGET_BPP_TOP5:g} bytes",
               b5 <= TARGET_BPP_TOP5, unit=" B")
        report("full_fp16/top5_fp16@32k", FULL_FP16 * 32_000 / b5,
               f">= {TARGET_RATIO_32K:g}x", FULL_FP16 * 32_000 / b5 >= TARGET_RATIO_32K)
        report("full_fp16/top5_fp16@128k", FULL_FP16 * 128_000 / bpp[128_000, "float16", 5])
        report("top5_fp16_bytes_per_position@tiny", bpp[len(tok), "float16", 5], unit=" B")

        positions = PAPER_FULL_BYTES / (FULL_FP16 * 32_000)
        store = positions * b5
        print("\nExtrapolation to the paper's scale (the '120 TB vs 1.2 GB' claim):")
        print(f"  positions N such that full fp16 at V=32k is 120 TB: N = 120e12 / (2 B x 32000)"
              f" = {positions:.4g}")
        print(f"  full fp16 store : N x 2 B x 32000      = {positions * FULL_FP16 * 32_000:.4g} B"
              f" = {positions * FULL_FP16 * 32_000 / 1e12:.1f} TB")
        print(f"  top-5 fp16 store: N x {b5:.2f} B (measured) = {store:.4g} B"
              f" = {store / 1e9:.1f} GB")
        print(f"  claimed top-5 store 1.2 GB -> {PAPER_TOPK_BYTES / positions:.3f} B per "
              "position at the same N, less than one (id, probability) pair")
        report("claimed_full/topk (120 TB / 1.2 GB)", PAPER_FULL_BYTES / PAPER_TOPK_BYTES)
        report("measured_full/top5 at the same N", PAPER_FULL_BYTES / store)
        print("  -> the per-position saving is what the measured ratio shows; the claimed ratio "
              f"is {PAPER_FULL_BYTES / PAPER_TOPK_BYTES / (PAPER_FULL_BYTES / store):.0f}x "
              "larger, so the 1.2 GB can only hold that many fewer positions (e.g. the answer "
              "positions alone, not every token of every sequence).")

        per_token_store(work, args.quick)


ALPACA_EXAMPLES = 52_002  # Stanford Alpaca's alpaca_data.json
ALPACA_MAX_LENGTH = 512  # Stanford Alpaca's training max length (tokens per sequence)


def per_token_store(work: Path, quick: bool) -> None:
    """Bytes per *token* of a real per-token store (the instruction setting: top-5 at every
    response token, `token_topk.extract_token_topk`), and the 120 TB / 1.2 GB arithmetic
    redone with token counts: the embedded instruction data's real count, and Alpaca's
    upper bound (every example at the 512-token training maximum)."""
    from first_core.data.instruct_data import InstructTemplate, load_instruct
    from first_core.data.instruct_tasks import write_instruct_task
    from first_core.models.loading import load_model
    from first_core.models.presets import build_preset
    from first_core.knowledge.token_topk import extract_token_topk

    n = 64 if quick else 2000
    files = write_instruct_task(work / "instruct", n_train=n, n_val=1, n_test=1)
    short = InstructTemplate(with_input="### Instruction:\n{instruction}\n### Input:\n{input}"
                                        "\n### Response:",
                             no_input="### Instruction:\n{instruction}\n### Response:")
    examples = load_instruct(files["train"], "alpaca", short)
    build_preset("tiny-teacher", [e.prompt + " " + e.response for e in examples],
                 work / "instruct_teacher")
    tiny, tok = load_model(work / "instruct_teacher", device="cpu")
    teachers = {len(tok): tiny, 32_000: random_llama(tok, 32_000, logit_std=LOGIT_STD)}
    print(f"\nPer-token store (instruction setting): top-5 fp16 at every response token of "
          f"{n} embedded instruction examples")
    print(f"{'vocab':>7} {'tokens':>8} {'tok/example':>11} {'bytes/token':>11} "
          f"{'full fp16':>10} {'full/top-5':>10}")
    per_token = {}
    for vocab, model in teachers.items():
        m = extract_token_topk(model, tok, examples, work / f"tokens-{vocab}", k=5,
                               coverage_k=5, dtype="float16", batch_size=32, max_length=128)
        per_token[vocab] = m
        b = m.bytes_per_position_measured
        print(f"{vocab:>7} {m.n_positions:>8} {m.n_positions / n:>11.2f} {b:>11.2f} "
              f"{FULL_FP16 * vocab:>10} {FULL_FP16 * vocab / b:>10.0f}")
    m = per_token[32_000]
    b = m.bytes_per_position_measured
    report("store_top5_fp16_bytes_per_token@32k", b, f"<= {TARGET_BPP_TOP5:g} bytes",
           b <= TARGET_BPP_TOP5, unit=" B")
    report("full_fp16/top5_fp16_per_token@32k", FULL_FP16 * 32_000 / b)
    full_here = m.n_positions * FULL_FP16 * 32_000
    print(f"\n  this data: {m.n_positions} response tokens -> full fp16 at V=32k "
          f"{full_here / 1e6:.1f} MB, top-5 {m.n_positions * b / 1e3:.1f} kB (measured)")
    bound = ALPACA_EXAMPLES * ALPACA_MAX_LENGTH
    print(f"  Alpaca, upper bound: {ALPACA_EXAMPLES} examples x {ALPACA_MAX_LENGTH} tokens = "
          f"{bound:.4g} tokens -> full fp16 at V=32k <= {bound * FULL_FP16 * 32_000 / 1e12:.2f}"
          f" TB, top-5 <= {bound * b / 1e9:.2f} GB at {b:.2f} B/token")
    implied = PAPER_FULL_BYTES / (FULL_FP16 * 32_000)
    print(f"  120 TB of full fp16 at V=32k is {implied:.4g} tokens = "
          f"{implied / ALPACA_EXAMPLES:.0f} per Alpaca example ({implied / bound:.0f}x the "
          f"bound); 1.2 GB over those tokens is {PAPER_TOPK_BYTES / implied:.2f} B per token")
    report("alpaca_full_fp16_upper_bound@32k", bound * FULL_FP16 * 32_000, unit=" B")
    report("alpaca_top5_fp16_upper_bound (measured B/token)", bound * b, unit=" B")
    print(f"  -> per token, full/top-5 is the measured ratio above. Over Alpaca's tokens the "
          f"1.2 GB is within reach of a top-5 store (bound {bound * b / 1e9:.2f} GB), the "
          f"120 TB is not a full fp16 store at V=32k (it needs {implied / bound:.0f}x more "
          f"tokens than Alpaca can hold). Run an Alpaca extraction to replace the bound by its "
          f"manifest's n_tokens.")


if __name__ == "__main__":
    main()
