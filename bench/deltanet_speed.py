"""Gated DeltaNet (Qwen3-Next's linear attention): our chunked form against transformers'.

    .venv/bin/python bench/deltanet_speed.py
    .venv/bin/python bench/deltanet_speed.py --tokens 1024 --json

Builds a small random `transformers` Qwen3-Next model (its pure-PyTorch
`torch_chunk_gated_delta_rule`, the fallback when no FLA kernel is installed)
and the same model in llmscratch, with the same weights (imported by our
converter). Times, in one process and interleaved round by round:

    layer  fwd+bwd   one Gated DeltaNet layer, forward and backward
    layer  prefill   the same layer, forward without gradients
    model  fwd+bwd   the whole model (3 DeltaNet layers to 1 attention layer,
                     MoE), logits and a cross-entropy, forward and backward
    model  prefill   the whole model filling its cache, without gradients

and prints the median milliseconds of each and transformers' time over ours
(above 1: ours is faster). Both run in fp32 on the CPU (or --device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from llmscratch.model.hf_weights import gated_deltanet_links, join_tensors
from llmscratch.model.linear_attention import GatedDeltaNet
from llmscratch.runs.hf_import import load_hf_model


def hf_tiny_qwen3_next(width: int, layers: int, device: str):
    """A random transformers Qwen3-Next of `width`, with weights wider than their init."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    config = Qwen3NextConfig(
        vocab_size=1024, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
        linear_value_head_dim=64, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=width, shared_expert_intermediate_size=width,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.05)
    return model.to(device)


def our_layer(hf_model, ours_config) -> GatedDeltaNet:
    """Our layer 0 with the weights of transformers' layer 0."""
    hf_layer = hf_model.model.layers[0].linear_attn
    theirs = {f"linear_attn.{k}": v for k, v in hf_layer.state_dict().items()}
    layer = GatedDeltaNet(ours_config, 0).to(hf_layer.out_proj.weight.device)
    tensors = {}
    for link in gated_deltanet_links(ours_config, "attn", "linear_attn"):
        tensors[link.ours.removeprefix("attn.")] = join_tensors(
            link, [theirs[name] for name in link.theirs])
    layer.load_state_dict(tensors)
    return layer


def time_it(fn, steps: int) -> float:
    """Seconds per call of `fn`, averaged over `steps`."""
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def cases(hf, ours_model, ours_layer, batch: int, tokens: int, device: str) -> dict:
    """name -> (ours, theirs): the four timed passes of the module docstring."""
    width = hf.config.hidden_size
    x = torch.randn(batch, tokens, width, device=device, requires_grad=True)
    grad = torch.randn(batch, tokens, width, device=device)
    ids = torch.randint(0, hf.config.vocab_size, (batch, tokens), device=device)
    hf_layer = hf.model.layers[0].linear_attn

    def backward(out: torch.Tensor) -> None:
        out.backward(grad)
        x.grad = None

    def loss(logits: torch.Tensor) -> None:
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()

    @torch.no_grad()
    def ours_prefill() -> None:
        ours_model(ids, ours_model.new_cache(batch, tokens))

    @torch.no_grad()
    def hf_prefill() -> None:
        hf(ids, use_cache=True)

    return {
        ("layer", "fwd+bwd"): (lambda: backward(ours_layer(x)), lambda: backward(hf_layer(x))),
        ("layer", "prefill"): (torch.no_grad()(lambda: ours_layer(x)),
                               torch.no_grad()(lambda: hf_layer(x))),
        ("model", "fwd+bwd"): (lambda: loss(ours_model.logits(ours_model(ids))),
                               lambda: loss(hf(ids).logits)),
        ("model", "prefill"): (ours_prefill, hf_prefill),
    }


def check_same_function(hf, ours_model, ours_layer, device: str) -> float:
    """Max abs difference of the layer's outputs and of the model's logits (sanity)."""
    x = torch.randn(1, 100, hf.config.hidden_size, device=device)
    ids = torch.randint(0, hf.config.vocab_size, (1, 100), device=device)
    with torch.no_grad():
        layer = (ours_layer(x) - hf.model.layers[0].linear_attn(x)).abs().max().item()
        logits = (ours_model.logits(ours_model(ids)) - hf(ids).logits).abs().max().item()
    return max(layer, logits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="passes per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    hf = hf_tiny_qwen3_next(args.width, 4, args.device).eval()
    with tempfile.TemporaryDirectory() as folder:  # our converter reads the saved layout
        hf.save_pretrained(folder)
        ours_model = load_hf_model(folder).to(args.device).eval()
    ours_layer = our_layer(hf, ours_model.config)
    max_diff = check_same_function(hf, ours_model, ours_layer, args.device)

    timed = cases(hf, ours_model, ours_layer, args.batch, args.tokens, args.device)
    for ours, theirs in timed.values():  # warm-up
        time_it(ours, 1)
        time_it(theirs, 1)
    seconds = {key: ([], []) for key in timed}
    for _ in range(args.rounds):
        for key, (ours, theirs) in timed.items():
            seconds[key][0].append(time_it(ours, args.steps))
            seconds[key][1].append(time_it(theirs, args.steps))
    rows = []
    for (what, kind), (ours_s, theirs_s) in seconds.items():
        ours_ms, hf_ms = 1000 * statistics.median(ours_s), 1000 * statistics.median(theirs_s)
        rows.append({"what": what, "pass": kind, "ours_ms": round(ours_ms, 2),
                     "transformers_ms": round(hf_ms, 2),
                     "transformers_over_ours": round(hf_ms / ours_ms, 3)})
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "device": args.device, "load_average": round(os.getloadavg()[0], 2)}
    setup = {"batch": args.batch, "tokens": args.tokens, "width": args.width,
             "max_abs_diff": max_diff}
    if args.json:
        print(json.dumps({"machine": machine, "setup": setup, "rows": rows}))
        return 0
    print(f"Gated DeltaNet, batch {args.batch} x {args.tokens} tokens, width {args.width}, "
          f"fp32 on {args.device}, {machine['threads']} threads, torch {machine['torch']}, "
          f"load average {machine['load_average']}; median of {args.rounds} rounds; "
          f"outputs agree to {max_diff:.1e}")
    print("| what | pass | ours ms | transformers ms | transformers / ours |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['pass']} | {r['ours_ms']:.1f} | {r['transformers_ms']:.1f} | "
              f"{r['transformers_over_ours']:.2f}x |")
    print("ratios above 1 mean ours is faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
