"""Decoding and prefill at batch 1 against llama.cpp: the same weights, four precisions each.

    make bench-setup                                  # llama-cpp-python from source, once
    .venv/bin/python bench/llamacpp_speed.py          # GPT-2 124M shapes, random weights
    .venv/bin/python bench/llamacpp_speed.py --hf FOLDER --json

The weights: GPT-2 124M's architecture with random weights (seed 0; speed
does not depend on their values), written as a transformers folder with
GPT-2's tokenizer, or `--hf FOLDER`, any GPT-2 transformers folder whose
tokenizer llama.cpp's converter knows (GPT-2's own, as `llmscratch convert
to-hf` writes it for a run with GPT-2's tokenizer). Ours loads the folder
(`runs/hf_import.py`); llama.cpp reads GGUF files converted from the same
folder by its own converter, `convert_hf_to_gguf.py`, which ships in
llama-cpp-python's source (vendor/llama.cpp, with its own `gguf-py`; `make
bench-setup` unpacks it beside the virtual environment). The converter
reads a GPT-2 config's `n_ctx`, which transformers 5 no longer writes: it is
given a copy of the folder's config.json with `n_ctx` added (the folder is
never changed).

The pairs, each at its matching precision:

    ours fp32            llama.cpp F32      (converter --outtype f32)
    ours bf16            llama.cpp BF16     (converter --outtype bf16)
    ours int8            llama.cpp Q8_0     (converter --outtype q8_0)
    ours int4            llama.cpp Q4_K_M   (llama.cpp's quantizer, `llama_model_quantize`,
                                             from the F32 file)

Ours runs through the engine with one sequence, as `generate` runs it: the
float linear layers packed for oneDNN where that measures faster on this
machine (`pack_linear_weights`), int8 and int4 as `--quantize` makes them
from the fp32 weights (`generation/quantize.py`: per-channel int8; int4 in
groups of 32 with the output layer in int8, as Q4_K_M keeps its output
layer at 6 bits). llama.cpp runs through llama-cpp-python's C API (its
`llama_decode` on one sequence and an argmax over the last logits, no
sampler), with its defaults otherwise (an f16 KV cache, flash attention
where it chooses it). Its "extra buffer types" repack weights for its
fastest CPU kernels; on a Xeon with AMX its Q8_0 crashed in the AMX path
with them on, so `--extra-bufts auto` turns them off where the CPU has AMX
and leaves them on elsewhere; the machine line says which was used.

Both get `--threads` threads (2 by default). Rounds are interleaved (every
model once per round, decode then prefill), so a busy machine slows all
alike; the table shows medians.

decode: a 16-token prompt and `--new-tokens` greedy tokens, tokens/s over
the whole request. A decode step reads every weight once, so tokens/s is at
most (copy bandwidth) / (bytes of weights a step reads); the bandwidth is
measured here at the start, and each side's bytes are its own (the
embeddings left out: a lookup reads one row; a tied output layer counted).
prefill: a 512-token prompt to its first token, milliseconds.
"same ids": how many of the greedy tokens equal the peer's before the first
difference. Random weights give nearly flat logits, so only fp32 against F32
can be expected to agree for long; bf16 rounds differently in each, and the
quantized pairs use different schemes (a check of the plumbing, not of
quality: bench/quantize_quality.py measures ours).

Without llama-cpp-python, or without its source tree, the llama.cpp columns
are empty and the reason is printed.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import logging
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import torch
from safetensors.torch import save_file

from llmscratch.generation import Engine, SamplingConfig
from llmscratch.generation.cpu_weights import PackedLinear, pack_linear_weights
from llmscratch.generation.quantize import Int4Linear, Int8Linear, quantize_linear_weights
from llmscratch.model import GPT, get_preset
from llmscratch.model.hf_config import config_to_hf
from llmscratch.model.hf_weights import hf_tensors
from llmscratch.runs.hf_import import load_hf_model
from llmscratch.tokenizer.hf_json import save_hf_tokenizer
from llmscratch.tokenizer.tokenizer import Tokenizer
from quantize_speed import common_prefix, copy_bandwidth, step_bytes  # bench/, beside this

LLAMA_CPP_VERSION = "0.3.36"  # the Makefile's bench-setup pins the same
# (ours, llama.cpp): the matching precisions
PAIRS = [("fp32", "F32"), ("bf16", "BF16"), ("int8", "Q8_0"), ("int4", "Q4_K_M")]
CONVERTER_OUTTYPES = {"F32": "f32", "BF16": "bf16", "Q8_0": "q8_0"}


def default_source() -> Path:
    """Where `make bench-setup` unpacks llama.cpp's source: beside the virtual environment."""
    return Path(sys.prefix) / "src" / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" \
        / "llama.cpp"


# --- the weights -----------------------------------------------------------------------


def write_random_gpt2(folder: Path) -> Path:
    """GPT-2 124M with random weights (seed 0) and GPT-2's tokenizer, as a transformers folder."""
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2")).eval()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    tensors = {name: t.contiguous() for name, t in hf_tensors(model).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    save_hf_tokenizer(Tokenizer.gpt2().parts, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024}))
    return folder


def converter_view(folder: Path, view: Path) -> Path:
    """The folder as llama.cpp's converter reads it: links to every file, and a copy of
    config.json with GPT-2's `n_ctx` (= n_positions) where transformers 5 left it out."""
    view.mkdir(parents=True)
    for path in folder.iterdir():
        if path.name != "config.json":
            (view / path.name).symlink_to(path.resolve())
    config = json.loads((folder / "config.json").read_text())
    if "n_positions" in config:
        config.setdefault("n_ctx", config["n_positions"])
    (view / "config.json").write_text(json.dumps(config, indent=2))
    return view


def convert_to_gguf(folder: Path, source: Path, out: Path, threads: int) -> dict[str, Path]:
    """GGUF files of the folder, one per llama.cpp precision: F32, BF16 and Q8_0 by
    llama.cpp's converter, Q4_K_M by its quantizer from the F32 file."""
    files = {}
    for name, outtype in CONVERTER_OUTTYPES.items():
        files[name] = out / f"model-{name}.gguf"
        done = subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(folder),
                               "--outtype", outtype, "--outfile", str(files[name])],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: llama.cpp's converter failed ({outtype}):\n{done.stderr[-2000:]}")
    files["Q4_K_M"] = quantize_gguf(files["F32"], out / "model-Q4_K_M.gguf", threads)
    return files


def quantize_gguf(source: Path, target: Path, threads: int) -> Path:
    """llama.cpp's own quantizer (what its llama-quantize tool calls): Q4_K_M."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                      ctypes.byref(params)) != 0:
        sys.exit(f"error: llama.cpp's quantizer failed on {source}")
    return target


def gguf_step_bytes(path: Path, source: Path) -> tuple[int, dict[str, int]]:
    """Bytes of weights one decode step reads from a GGUF file (all tensors but the
    embeddings; the token embedding again where it is also the output layer), and how many
    tensors of each type the file holds. Read with the converter's own gguf-py."""
    if str(source / "gguf-py") not in sys.path:
        sys.path.insert(0, str(source / "gguf-py"))
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(path).tensors}
    skip = {"token_embd.weight", "position_embd.weight"}
    total = sum(int(t.n_bytes) for name, t in tensors.items() if name not in skip)
    if "output.weight" not in tensors:  # tied: the output layer reads the token embedding
        total += int(tensors["token_embd.weight"].n_bytes)
    types: dict[str, int] = {}
    for t in tensors.values():
        if len(t.shape) > 1:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return total, types


# --- the two sides ---------------------------------------------------------------------


def our_models(folder: Path) -> dict[str, GPT]:
    """The folder's model at each of our precisions, prepared as `generate` prepares it."""
    base = load_hf_model(folder, dtype="fp32").eval()
    models = {"fp32": copy.deepcopy(base), "bf16": copy.deepcopy(base).to(torch.bfloat16)}
    for mode in ("int8", "int4"):
        models[mode] = copy.deepcopy(base)
        quantize_linear_weights(models[mode], mode)
    for model in models.values():
        pack_linear_weights(model)  # what stays float, packed where it measures faster
    return models


LINEAR_LAYERS = (torch.nn.Linear, PackedLinear, Int8Linear, Int4Linear)


class Ours:
    """Our engine with one sequence: greedy tokens for a prompt; and the matrix products of
    its decode steps alone, through the same layers (the most its kernels allow)."""

    def __init__(self, model: GPT) -> None:
        self.engine, self.step_bytes = Engine(model, max_batch=1), step_bytes(model)
        dtype = model.tok_emb.weight.dtype
        self.layers = [(layer, torch.randn(1, layer.in_features, dtype=dtype))
                       for layer in model.modules() if isinstance(layer, LINEAR_LAYERS)]

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        config = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
        return self.engine.generate([prompt], config)[0]

    @torch.no_grad()
    def products(self, steps: int) -> None:
        """Every linear layer once on one row, `steps` times: a decode step's products."""
        for _ in range(steps):
            for layer, x in self.layers:
                layer(x)


class LlamaCpp:
    """One GGUF file in llama.cpp, through llama-cpp-python's C API: greedy tokens for a
    prompt, from `llama_decode` and an argmax over the last position's logits."""

    def __init__(self, path: Path, source: Path, threads: int, extra_bufts: bool,
                 context: int = 1024, batch: int = 512) -> None:
        import llama_cpp

        self.api = llama_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = extra_bufts
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            sys.exit(f"error: llama.cpp could not load {path}")
        settings = llama_cpp.llama_context_default_params()
        settings.n_ctx, settings.n_batch, settings.n_ubatch = context, batch, batch
        settings.n_threads = settings.n_threads_batch = threads
        self.context = llama_cpp.llama_init_from_model(self.model, settings)
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.step_bytes, self.tensor_types = gguf_step_bytes(path, source)

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        api = self.api
        api.llama_memory_clear(api.llama_get_memory(self.context), True)
        tokens, out = prompt, []
        for _ in range(new_tokens):
            ids = (api.llama_token * len(tokens))(*tokens)
            if api.llama_decode(self.context, api.llama_batch_get_one(ids, len(tokens))) != 0:
                sys.exit("error: llama_decode failed")
            logits = api.llama_get_logits_ith(self.context, -1)  # a float pointer
            out.append(int(numpy.ctypeslib.as_array(logits, shape=(self.vocab,)).argmax()))
            tokens = out[-1:]
        return out

    def close(self) -> None:
        self.api.llama_free(self.context)
        self.api.llama_model_free(self.model)


def llama_cpp_missing(source: Path) -> str | None:
    """Why llama.cpp's rows cannot run here, or None when they can."""
    try:
        import llama_cpp
    except ImportError:
        return "llama-cpp-python is not installed (make bench-setup builds it)"
    if llama_cpp.__version__ != LLAMA_CPP_VERSION:
        print(f"note: llama-cpp-python {llama_cpp.__version__}, the bench pins "
              f"{LLAMA_CPP_VERSION}", file=sys.stderr)
    if not (source / "convert_hf_to_gguf.py").is_file():
        return f"no llama.cpp converter at {source} (make bench-setup unpacks it; " \
               "or give --llama-cpp-source)"
    # llama.cpp's log, off: llama-cpp-python 0.3.36 maps ggml's log levels one step up (a
    # warning arrives as an error), so nothing less than CRITICAL silences its load messages.
    # Failures still stop the bench: every call's result is checked.
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
    return None


def use_extra_bufts(choice: str) -> bool:
    """llama.cpp's extra buffer types: off where the CPU has AMX (its Q8_0 crashed there)."""
    if choice != "auto":
        return choice == "on"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "amx_tile" not in flags


# --- timing ----------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds of each round, and the greedy ids of the warm-up."""

    decode: list[float]
    prefill: list[float]
    ids: list[int]
    products: list[float] = field(default_factory=list)  # ours only


def measure(runners: dict[str, Ours | LlamaCpp], new_tokens: int, rounds: int
            ) -> dict[str, Timings]:
    """Interleaved rounds: every runner decodes, then prefills, once per round.

    Each round has prompts of its own: the engine caches the blocks of a prompt it has
    seen (prefix caching), so a prompt repeated would be no prefill at all.
    """
    gen = torch.Generator().manual_seed(1)
    prompts = [(torch.randint(0, 50257, (16,), generator=gen).tolist(),
                torch.randint(0, 50257, (512,), generator=gen).tolist())
               for _ in range(rounds + 1)]
    timings = {name: Timings([], [], run.greedy(prompts[0][0], new_tokens))  # the warm-up
               for name, run in runners.items()}
    for short, long in prompts[1:]:
        for name, run in runners.items():
            started = time.perf_counter()
            run.greedy(short, new_tokens)
            timings[name].decode.append(time.perf_counter() - started)
            started = time.perf_counter()
            run.greedy(long, 1)
            timings[name].prefill.append(time.perf_counter() - started)
            if isinstance(run, Ours):
                started = time.perf_counter()
                run.products(new_tokens)
                timings[name].products.append(time.perf_counter() - started)
    return timings


def rows(timings: dict[str, Timings], runners: dict, new_tokens: int, bandwidth: float
         ) -> list[dict]:
    """One row per pair: both sides' rates, the ratio, the bandwidth limit, same ids."""
    out = []
    for ours, theirs in PAIRS:
        row = {"ours": ours, "llama_cpp": theirs}
        for side, name in (("ours", ours), ("llama_cpp", theirs)):
            t = timings.get(name)
            rate = new_tokens / statistics.median(t.decode) if t else None
            row[f"{side}_decode_tokens_per_s"] = rate
            row[f"{side}_prefill_512_ms"] = 1000 * statistics.median(t.prefill) if t else None
            row[f"{side}_step_weight_mb"] = runners[name].step_bytes / 1e6 if t else None
            row[f"{side}_of_bandwidth_limit"] = \
                rate * runners[name].step_bytes / bandwidth if t else None
        row["ours_products_alone_tokens_per_s"] = \
            new_tokens / statistics.median(timings[ours].products)
        if theirs in timings:
            row["decode_ratio"] = row["ours_decode_tokens_per_s"] \
                / row["llama_cpp_decode_tokens_per_s"]
            row["prefill_speedup"] = row["llama_cpp_prefill_512_ms"] / row["ours_prefill_512_ms"]
            row["same_greedy_ids"] = common_prefix(timings[ours].ids, timings[theirs].ids)
            row["llama_cpp_tensor_types"] = runners[theirs].tensor_types
        out.append(row)
    return out


# --- the table -------------------------------------------------------------------------


def number(value, spec: str, unit: str = "") -> str:
    """A figure, or "-" where the side did not run, right-aligned to the spec's width."""
    width = int(re.match(r"\d*", spec).group() or 0)
    return "-".rjust(width + len(unit)) if value is None else format(value, spec) + unit


def print_table(figures: dict) -> None:
    print(f"{figures['machine']}, torch {figures['torch']}, {figures['threads']} threads each, "
          f"copy bandwidth {figures['copy_gb_per_s']:.1f} GB/s; {figures['weights']}")
    print(f"llama.cpp: {figures['llama_cpp']}")
    print("decode tok/s: ours, llama.cpp, the ratio, and our step's matrix products alone; "
          "of the bandwidth limit and MB read per step: ours, llama.cpp; prefill: ours, "
          "llama.cpp, and how many times faster ours is")
    print(f"{'ours':<5} {'llama.cpp':<9} {'decode tok/s':>17} {'ratio':>6} {'products':>8} "
          f"{'of bandwidth limit':>19} {'MB/step':>13} {'prefill 512 ms':>15} {'ours x':>7} "
          f"{'same ids':>9}")
    for r in figures["rows"]:
        print(" ".join([
            f"{r['ours']:<5} {r['llama_cpp']:<9}",
            f"{r['ours_decode_tokens_per_s']:8.1f}",
            number(r["llama_cpp_decode_tokens_per_s"], "8.1f"),
            number(r.get("decode_ratio"), "5.2f", "x"),
            f"{r['ours_products_alone_tokens_per_s']:8.1f}",
            f"{r['ours_of_bandwidth_limit']:9.0%}",
            number(r["llama_cpp_of_bandwidth_limit"], "9.0%"),
            f"{r['ours_step_weight_mb']:6.0f}", number(r["llama_cpp_step_weight_mb"], "6.0f"),
            f"{r['ours_prefill_512_ms']:7.0f}", number(r["llama_cpp_prefill_512_ms"], "7.0f"),
            number(r.get("prefill_speedup"), "6.2f", "x"),
            f"{number(r.get('same_greedy_ids'), '5d')}/{figures['new_tokens']}"]))


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_llama_cpp(missing: str | None, extra_bufts: bool) -> str:
    """The peer as it ran: its version, the CPU features its build uses, extra buffers."""
    if missing:
        return f"skipped: {missing}"
    import llama_cpp

    features = llama_cpp.llama_print_system_info().decode().strip()
    defaults = llama_cpp.llama_context_default_params()
    cache = "f16" if defaults.type_k == llama_cpp.GGML_TYPE_F16 else f"ggml type {defaults.type_k}"
    attention = llama_cpp.llama_flash_attn_type_name(defaults.flash_attn_type).decode()
    return f"llama-cpp-python {llama_cpp.__version__}, extra buffer types " \
           f"{'on' if extra_bufts else 'off'} (use_extra_bufts), KV cache {cache}, flash " \
           f"attention {attention} (its defaults), {features}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", type=Path,
                        help="a GPT-2 transformers folder (default: GPT-2 124M, random weights)")
    parser.add_argument("--llama-cpp-source", type=Path, default=default_source(),
                        help="llama.cpp's source tree, holding convert_hf_to_gguf.py and "
                             "gguf-py (default: where make bench-setup unpacks it)")
    parser.add_argument("--new-tokens", type=int, default=128, help="decode: tokens per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of each side")
    parser.add_argument("--extra-bufts", choices=["auto", "on", "off"], default="auto",
                        help="llama.cpp's extra buffer types (auto: off on a CPU with AMX)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.hf is not None and not (args.hf / "config.json").is_file():
        parser.error(f"--hf {args.hf}: no config.json there")
    torch.set_num_threads(args.threads)
    missing = llama_cpp_missing(args.llama_cpp_source)
    extra_bufts = use_extra_bufts(args.extra_bufts)
    with tempfile.TemporaryDirectory(prefix="llamacpp-bench-") as tmp:
        folder = args.hf or write_random_gpt2(Path(tmp) / "hf")
        runners: dict[str, Ours | LlamaCpp] = {
            name: Ours(model) for name, model in our_models(folder).items()}
        if missing is None:
            view = converter_view(folder, Path(tmp) / "view")
            for name, path in convert_to_gguf(view, args.llama_cpp_source, Path(tmp),
                                              args.threads).items():
                runners[name] = LlamaCpp(path, args.llama_cpp_source, args.threads, extra_bufts)
        bandwidth = copy_bandwidth()
        timings = measure(runners, args.new_tokens, args.rounds)
        for runner in runners.values():
            if isinstance(runner, LlamaCpp):
                runner.close()
    figures = {"machine": cpu_name(), "torch": torch.__version__,
               "threads": args.threads, "copy_gb_per_s": bandwidth / 1e9,
               "weights": str(args.hf) if args.hf else "GPT-2 124M shapes, random weights",
               "llama_cpp": describe_llama_cpp(missing, extra_bufts),
               "new_tokens": args.new_tokens, "rounds": args.rounds,
               "rows": rows(timings, runners, args.new_tokens, bandwidth)}
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print_table(figures)


if __name__ == "__main__":
    main()
