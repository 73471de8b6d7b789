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
                    "--json\n")
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
    add_device_options(p)
    p.set_defaults(func=cmd_generate)


def add_device_options(p) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs (auto: a CUDA GPU if there is one)")
    p.add_argument("--dtype", choices=["fp32", "bf16"],
                   help="the weights' dtype (default: the checkpoint's, but fp32 for bf16 "
                        "weights on a CPU without fast bf16 matmuls)")


def cmd_generate(args: argparse.Namespace) -> int:
    from llmscratch.distributed import resolve_device
    from llmscratch.generation.cpu_weights import pack_linear_weights
    from llmscratch.generation.sampling import SamplingConfig, generate_tokens
    from llmscratch.runs.load import load_for_inference
    from llmscratch.tokenizer import StreamDecoder

    if not args.prompt:
        raise LLMScratchError("the prompt is empty; give some text with --prompt")
    sampling = SamplingConfig(  # checks every value before the model is loaded
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.min_p,
        args.repetition_penalty, args.frequency_penalty, args.presence_penalty)
    model, tokenizer, settings = load_for_inference(args.run, resolve_device(args.device),
                                                    args.dtype)
    pack_linear_weights(model)  # on the CPU: oneDNN's kernels where faster (inference only)
    prompt_ids = tokenizer.encode(args.prompt)
    if len(prompt_ids) >= model.config.context_length:
        raise LLMScratchError(
            f"the prompt is {len(prompt_ids)} tokens; the model's context length is "
            f"{model.config.context_length}; shorten the prompt")
    new_ids = []
    stream = StreamDecoder(tokenizer)
    if not args.json:
        say(args.prompt, end="")
    for token in generate_tokens(model, prompt_ids, sampling, settings.stop_token_ids,
                                 tokenizer.vocab_size):
        new_ids.append(token)
        if not args.json:
            say(stream.push(token), end="")
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": tokenizer.decode(new_ids),
                          "token_ids": new_ids, "prompt_token_ids": prompt_ids}))
    else:
        sys.stdout.write(stream.flush() + "\n")
    return 0
