"""`llmscratch generate`: text from a run's model (generation/). `eval` is in cli/eval.py."""

from __future__ import annotations

import argparse
import json
import sys

from llmscratch.cli.common import add_command, say
from llmscratch.errors import LLMScratchError


def register(sub) -> None:
    p = add_command(sub, "generate", "Generate text from a trained or imported model.",
                    "  llmscratch generate --run runs/demo --prompt 'ROMEO:'\n"
                    "  llmscratch generate --run runs/demo --prompt 'To be' --temperature 0 "
                    "--json\n"
                    "  llmscratch generate --run runs/demo --prompt \"$(cat notes.txt)\" "
                    "--speculative prompt-lookup\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, help="at most this many tokens")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="keep tokens at least this fraction as likely as the best (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already seen (1 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="per repeat of a generated token, in [-2, 2] (0 = off)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="once for any generated token, in [-2, 2] (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_speculative_options(p)
    add_device_options(p)
    p.set_defaults(func=cmd_generate)


def add_speculative_options(p) -> None:
    """--speculative and --draft-tokens, for `generate`, `chat` and `serve`
    (generation/speculative.py)."""
    p.add_argument("--speculative", metavar="prompt-lookup|RUN_DIR",
                   help="speculative decoding: draft tokens by looking the last few up in the "
                        "prompt and reply, or with a smaller run's model (same tokenizer); the "
                        "model checks them in one pass. Same distribution, often faster")
    p.add_argument("--draft-tokens", type=int, default=5,
                   help="with --speculative: at most this many draft tokens a step")


def engine_speculation(args: argparse.Namespace) -> tuple[int, str | None]:
    """The engine's draft tokens a step (0: no speculation) and the draft run (None: prompt
    lookup), from --speculative and --draft-tokens, checked before anything is loaded."""
    if args.draft_tokens < 1:
        raise LLMScratchError(f"--draft-tokens must be at least 1, got {args.draft_tokens}")
    if args.speculative is None:
        return 0, None
    return args.draft_tokens, None if args.speculative == "prompt-lookup" else args.speculative


def load_draft_model(run_dir: str, tokenizer, device, dtype):
    """A draft run's model, checked to read the same tokens before its weights are read
    and to be able to drop rejected drafts, packed for the CPU."""
    from llmscratch.generation.cpu_weights import pack_linear_weights
    from llmscratch.generation.speculative import check_can_rewind
    from llmscratch.runs.load import load_draft

    draft = load_draft(run_dir, tokenizer, device, dtype)
    check_can_rewind(draft.config, "draft model")
    pack_linear_weights(draft)
    return draft


def add_device_options(p) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs (auto: a CUDA GPU if there is one)")
    p.add_argument("--dtype", choices=["fp32", "bf16"],
                   help="the weights' dtype (default: the checkpoint's, but fp32 for bf16 "
                        "weights on a CPU without fast bf16 matmuls)")
    p.add_argument("--quantize", choices=["int8", "int4"],
                   help="weight-only quantization of the linear layers, on the CPU: int8 per "
                        "output channel, int4 in groups of 32 (docs/inference.md)")


def cmd_generate(args: argparse.Namespace) -> int:
    from llmscratch.distributed import resolve_device
    from llmscratch.generation.cpu_weights import pack_linear_weights
    from llmscratch.generation.quantize import quantize_linear_weights
    from llmscratch.generation.sampling import SamplingConfig
    from llmscratch.generation.speculative import check_can_rewind
    from llmscratch.runs.load import load_for_inference
    from llmscratch.tokenizer import StreamDecoder

    if not args.prompt:
        raise LLMScratchError("the prompt is empty; give some text with --prompt")
    if args.draft_tokens < 1:
        raise LLMScratchError(f"--draft-tokens must be at least 1, got {args.draft_tokens}")
    sampling = SamplingConfig(  # checks every value before the model is loaded
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.min_p,
        args.repetition_penalty, args.frequency_penalty, args.presence_penalty)
    device = resolve_device(args.device)
    model, tokenizer, settings = load_for_inference(args.run, device, args.dtype)
    quantize_linear_weights(model, args.quantize)  # --quantize int8|int4 (None: unchanged)
    pack_linear_weights(model)  # on the CPU: oneDNN's kernels where faster (inference only)
    prompt_ids = tokenizer.encode(args.prompt)
    if len(prompt_ids) >= model.config.context_length:
        raise LLMScratchError(
            f"the prompt is {len(prompt_ids)} tokens; the model's context length is "
            f"{model.config.context_length}; shorten the prompt")
    drafter = None
    if args.speculative is not None:
        check_can_rewind(model.config, "model")
        drafter = make_drafter(args, tokenizer, device, len(prompt_ids) + args.max_new_tokens)
    new_ids = []
    stream = StreamDecoder(tokenizer)
    if not args.json:
        say(args.prompt, end="")
    tokens, stats = token_stream(model, prompt_ids, sampling, settings.stop_token_ids,
                                 tokenizer.vocab_size, drafter, args.draft_tokens)
    for token in tokens:
        new_ids.append(token)
        if not args.json:
            say(stream.push(token), end="")
    if args.json:
        result = {"prompt": args.prompt, "text": tokenizer.decode(new_ids),
                  "token_ids": new_ids, "prompt_token_ids": prompt_ids}
        if stats is not None:
            result["speculative"] = {"drafted": stats.drafted, "accepted": stats.accepted,
                                     "acceptance_rate": stats.acceptance_rate,
                                     "forward_passes": stats.steps}
        print(json.dumps(result))
    else:
        sys.stdout.write(stream.flush() + "\n")
        if stats is not None:
            print(stats.describe(), file=sys.stderr)
    return 0


def token_stream(model, prompt_ids, sampling, stop, vocab, drafter, draft_tokens):
    """The new tokens as they come (plain decoding, or speculative with a drafter), and the
    speculation's statistics (None without a drafter)."""
    from llmscratch.generation.sampling import generate_tokens
    from llmscratch.generation.speculative import SpeculationStats, speculative_tokens

    if drafter is None:
        return generate_tokens(model, prompt_ids, sampling, stop, vocab), None
    stats = SpeculationStats()
    tokens = speculative_tokens(model, prompt_ids, sampling, drafter, draft_tokens, stop, vocab,
                                stats)
    return tokens, stats


def make_drafter(args, tokenizer, device, max_len: int):
    """--speculative's drafter: prompt lookup, or a draft run's model (`load_draft_model`)
    with a cache for `max_len` tokens."""
    from llmscratch.generation.speculative import DraftModel, PromptLookup

    if args.speculative == "prompt-lookup":
        return PromptLookup()
    draft = load_draft_model(args.speculative, tokenizer, device, args.dtype)
    return DraftModel(draft, tokenizer.vocab_size, max_len)
