"""Decode of each family: ours (the engine, and `generate`) against transformers' `generate`.

    .venv/bin/python bench/family_decode.py
    .venv/bin/python bench/family_decode.py --families gpt_oss,deepseek_v3 --precision fp32 --json

(Each row is also printed to stderr as one JSON line as soon as it is measured.)

For each family with a `transformers` reference (the `FAMILIES` table below:
one function a family, returning its config), builds a random-weight
`transformers` model of one small shape shared family-wide where the family
allows it (`SHAPE`: width 512, 8 layers of 8 query heads of 64 and 2 key-value
heads, a vocabulary of 32,000; dense MLPs of 2,048, or 16 experts of 512 with
4 active; local layers with a window of 32, shorter than the text generated),
saves it, imports it with our converter (`load_hf_model`, what `convert
from-hf` runs), and times decoding at batch 1: a 16-token prompt, `--new-tokens`
new ones, greedy, no stop token, in fp32 and bf16 on `--threads` threads.

Ours runs as `llmscratch generate` runs it, its linear layers and experts
packed for oneDNN where that measures faster (`generation/cpu_weights.py`), twice: the
engine (paged cache, `Engine.generate`) and the single-request loop
(`generation/sampling.py: generate`, dense cache). Where the engine refuses a
family (Gated DeltaNet layers, until the engine has a state pool), its row says
so and only `generate` is timed. Theirs: `transformers`' `generate` on the same
weights. Rounds are interleaved, so a busy machine slows all alike; the table
shows median tokens/s, ours over theirs (above 1: ours is faster), and whether
the greedy ids agree: ours (`generate`) against theirs, and the engine against
`generate`. In fp32 they should agree token for token; in bf16 rounding may
flip a near-tie, after which the texts part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from llmscratch.errors import LLMScratchError
from llmscratch.generation import Engine, SamplingConfig, generate
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.model.config import torch_dtype
from llmscratch.runs.hf_import import load_hf_model

WINDOW = 32  # local layers' window: shorter than prompt + new tokens, so it slides
# The shape every family shares where it can: ~30M parameters in the blocks, 33M in the
# embedding and output layer (a vocabulary of 32,000, not the families' 100-260 thousand).
SHAPE = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
             bos_token_id=None, eos_token_id=None, pad_token_id=None)
DENSE = dict(intermediate_size=2048)
EXPERTS = 16, 4, 512  # experts, active experts, each one's hidden width (active: 2,048)


def gemma3_text():
    """Gemma 3: five local layers to one global (8 layers: L L L L L G L L), GeGLU,
    sandwich norms, the embedding scaled by sqrt(width)."""
    from transformers import Gemma3TextConfig

    kinds = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(8)]
    return Gemma3TextConfig(**SHAPE, **DENSE, sliding_window=WINDOW, layer_types=kinds,
                            query_pre_attn_scalar=64)


def gemma4_text():
    """Gemma 4: three local layers to one global, wider global heads (128, a quarter of
    them rotated), per-layer input embeddings, soft-capped logits, and the last 2 layers
    reading an earlier layer's keys and values (KV sharing, with double-wide MLPs)."""
    from transformers import Gemma4TextConfig

    kinds = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(8)]
    rope = {"full_attention": {"rope_type": "proportional", "rope_theta": 1e6,
                               "partial_rotary_factor": 0.25},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    return Gemma4TextConfig(**SHAPE, **DENSE, sliding_window=WINDOW, layer_types=kinds,
                            global_head_dim=128, hidden_size_per_layer_input=64,
                            vocab_size_per_layer_input=SHAPE["vocab_size"],
                            num_kv_shared_layers=2, use_double_wide_mlp=True,
                            final_logit_softcapping=30.0, rope_parameters=rope)


def olmo3():
    """Olmo 3: three local layers to one global, post-norms, QK-norm."""
    from transformers import Olmo3Config

    kinds = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(8)]
    return Olmo3Config(**SHAPE, **DENSE, sliding_window=WINDOW, layer_types=kinds)


def gpt_oss():
    """gpt-oss: local and global layers alternating, attention sinks, biases, experts with a
    clamped SwiGLU, YaRN."""
    from transformers import GptOssConfig

    experts, active, hidden = EXPERTS
    return GptOssConfig(**SHAPE, intermediate_size=hidden, num_local_experts=experts,
                        num_experts_per_tok=active, sliding_window=WINDOW)


def deepseek_v3():
    """DeepSeek V3: latent attention (a 128-wide key-value latent, a 256-wide query latent,
    RoPE keys of 32), the first layer dense, then 16 experts in 4 groups (2 chosen), 4
    active, and a shared expert. Its query heads are its key-value heads (8 of 64 + 32)."""
    from transformers import DeepseekV3Config

    experts, active, hidden = EXPERTS
    shape = {**SHAPE, "num_key_value_heads": 8}
    del shape["head_dim"]
    return DeepseekV3Config(**shape, **DENSE, moe_intermediate_size=hidden,
                            n_routed_experts=experts, num_experts_per_tok=active, n_group=4,
                            topk_group=2, n_shared_experts=1, first_k_dense_replace=1,
                            kv_lora_rank=128, q_lora_rank=256, qk_rope_head_dim=32,
                            qk_nope_head_dim=64, v_head_dim=64, tie_word_embeddings=False)


DELTANET = dict(linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
                linear_value_head_dim=64, linear_conv_kernel_dim=4)


def qwen3_next():
    """Qwen3-Next: three Gated DeltaNet layers to one gated full-attention layer, experts
    with a shared one."""
    from transformers import Qwen3NextConfig

    experts, active, hidden = EXPERTS
    return Qwen3NextConfig(**SHAPE, **DELTANET, num_experts=experts,
                           num_experts_per_tok=active, moe_intermediate_size=hidden,
                           shared_expert_intermediate_size=hidden, norm_topk_prob=True)


def qwen3_5_text():
    """Qwen3.5 (text): Qwen3-Next's hybrid layers with dense MLPs."""
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(**SHAPE, **DENSE, **DELTANET)


# Family (transformers' model_type) -> its config. A new family is one more entry.
FAMILIES: dict[str, Callable] = {f.__name__: f for f in (
    gemma3_text, gemma4_text, olmo3, gpt_oss, deepseek_v3, qwen3_next, qwen3_5_text)}


def hf_model(family: str):
    """A random `transformers` model of `family` in fp32, eval mode. Its matrices are drawn
    wider than their init (0.05 against 0.02), so that the logits of random weights part
    clearly and greedy ids do not flip on rounding."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES[family](), dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.05)
    return model.eval()


def hf_generate(model, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy `generate`: the new ids."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return out[0, len(prompt):].tolist()


def first_difference(a: list[int], b: list[int]) -> int:
    """How many leading ids two outputs share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def measure(family: str, folder: str, hf, precision: str, new_tokens: int,
            rounds: int) -> dict:
    """One row: median tokens/s of ours (engine, generate) and theirs, and agreement."""
    dtype = torch_dtype(precision)
    ours = load_hf_model(folder, dtype=precision).eval()
    packed = pack_linear_weights(ours)  # as `llmscratch generate` does
    theirs = hf.to(dtype)
    prompt = torch.randint(0, SHAPE["vocab_size"], (16,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    greedy = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    runs = {"generate": lambda: generate(ours, prompt, greedy),
            "transformers": lambda: hf_generate(theirs, prompt, new_tokens)}
    engine_note = None
    try:
        engine = Engine(ours, max_batch=1)
        runs["engine"] = lambda: engine.generate([prompt], greedy)[0]
    except LLMScratchError as err:
        engine_note = str(err)
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the ids compared
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    rate = {name: new_tokens / statistics.median(times) for name, times in seconds.items()}
    engine_rate = rate.get("engine")
    return {
        "family": family, "precision": precision,
        "parameters": sum(p.numel() for p in hf.parameters()),
        "packed_linear_layers": packed,
        "engine_tokens_per_s": engine_rate, "generate_tokens_per_s": rate["generate"],
        "transformers_tokens_per_s": rate["transformers"],
        "engine_vs_transformers": engine_rate / rate["transformers"] if engine_rate else None,
        "generate_vs_transformers": rate["generate"] / rate["transformers"],
        "generate_agrees_with_transformers":
            f"{first_difference(outputs['generate'], outputs['transformers'])}/{new_tokens}",
        "engine_agrees_with_generate":
            f"{first_difference(outputs['engine'], outputs['generate'])}/{new_tokens}"
            if engine_rate else None,
        "engine_refused": engine_note,
    }


def bench_family(family: str, precisions: list[str], new_tokens: int, rounds: int) -> list[dict]:
    """Every precision's row for one family, from one saved random model."""
    hf = hf_model(family)
    with tempfile.TemporaryDirectory() as folder:  # our converter reads the saved layout
        hf.save_pretrained(folder)
        rows = []
        for precision in precisions:
            rows.append(measure(family, folder, hf, precision, new_tokens, rounds))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # kept if cut short
        return rows


def describe(row: dict) -> str:
    """One line of the markdown table for a result row."""
    if row["engine_tokens_per_s"] is None:
        engine, versus = "refused", f"{row['generate_vs_transformers']:.2f}x (`generate`)"
    else:
        engine = f"{row['engine_tokens_per_s']:.1f}"
        versus = f"{row['engine_vs_transformers']:.2f}x (`generate` " \
            f"{row['generate_vs_transformers']:.2f}x)"
    same = f"{row['generate_agrees_with_transformers']}"
    if row["engine_agrees_with_generate"] is not None:
        same += f"; engine = generate {row['engine_agrees_with_generate']}"
    kernel = "packed" if row["packed_linear_layers"] else "nn.Linear"  # packing_pays' verdict
    return (f"| {row['family']} | {row['parameters'] / 1e6:.0f}M | {row['precision']}, {kernel} | "
            f"{engine} | {row['generate_tokens_per_s']:.1f} | "
            f"{row['transformers_tokens_per_s']:.1f} | {versus} | {same} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma list of: {', '.join(FAMILIES)}")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list: fp32, bf16")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    precisions = [p for p in ("fp32", "bf16") if p in args.precision.split(",")]  # fp32 first:
    # transformers' model is turned to bf16 in place
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    if not precisions or set(args.precision.split(",")) - {"fp32", "bf16"}:
        parser.error("--precision: a comma list of fp32 and bf16")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = [row for family in families
            for row in bench_family(family, precisions, args.new_tokens, args.rounds)]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
               "seconds": round(time.perf_counter() - started, 1)}
    setup = {"prompt_tokens": 16, "new_tokens": args.new_tokens, "rounds": args.rounds,
             "window": WINDOW, "shape": SHAPE}
    if args.json:
        print(json.dumps({"machine": machine, "setup": setup, "rows": rows}))
        return 0
    print(f"decode at batch 1: 16-token prompt, {args.new_tokens} new tokens, greedy; "
          f"{machine['threads']} threads, torch {machine['torch']}, load average "
          f"{machine['load_average'][0]} to {machine['load_average'][1]}; median of "
          f"{args.rounds} interleaved rounds; {machine['seconds']} s in all")
    print("| family | parameters | precision, linear layers | engine tok/s | `generate` tok/s | "
          "transformers tok/s | ours / transformers | greedy ids: ours = transformers |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(describe(row))
    print("ratios above 1 mean ours is faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
