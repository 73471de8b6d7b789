"""Pretraining, end to end: text -> tokenizer -> tokens -> trained model -> report.

`pretrain(config, out_dir)` is what `llmscratch pretrain` and the demo run:

1. read the text (the user's files, or the embedded corpus) and split off
   the final `data.val_fraction` of its bytes for validation;
2. load the tokenizer named by `data.tokenizer`, or train one on the
   training text only (the validation text stays unseen);
3. encode both halves and build the model from `config.model`;
   (with `data.prepared: DIR`, steps 1-3 instead open the token shards that
   `llmscratch data prepare` wrote, and their tokenizer;)
4. run the training loop with the next-token objective, validating,
   sampling and checkpointing on schedule;
5. score the whole validation text, write samples, the loss plot and report.md.

`resume(run_dir)` rebuilds steps 1-3 from the saved config and tokenizer,
loads the newest checkpoint and continues to `train.max_steps`.

Both run unchanged under `torchrun --nproc-per-node N`: each process joins
the group, rank 0 prepares the run directory and the tokenizer, and every
rank trains on its share of each batch (training/parallel.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmscratch.config import RunConfig, load_config, save_config
from llmscratch.data.corpus import load_texts, split_train_val
from llmscratch.data.loader import TokenWindows
from llmscratch.data.manifest import read_manifest, tokenizer_hash
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.perplexity import EvalResult, score_windows
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import GPT
from llmscratch.tokenizer import Tokenizer, train_bpe
from llmscratch.training.checkpoint import TrainState, latest_checkpoint, load_checkpoint
from llmscratch.training.loop import Hooks, Trainer
from llmscratch.training.metrics import MetricsLog, plot_losses, plot_training
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import build_optimizer
from llmscratch.training.parallel import (
    DistInfo,
    all_reduce_mean,
    barrier,
    check_global_batch,
    close_distributed,
    init_distributed,
    parallelize,
)
from llmscratch.training.precision import autocast_dtype, resolve_dtype
from llmscratch.training.report import write_report, write_samples


@dataclass
class PretrainResult:
    run_dir: Path
    final: EvalResult  # on the whole validation text
    train_seconds: float
    tokens_per_second: float
    samples: list[tuple[str, str]]  # (prompt, completion)
    rank: int = 0  # under torchrun, only rank 0 reports
    steps: int = 0  # optimizer steps done in all (train.max_steps unless stopped early)


@dataclass
class RunData:
    """The tokens a run trains and validates on."""

    tokenizer: Tokenizer
    train_arrays: list[np.ndarray]  # 1-D token ids: one in-memory array, or memory-mapped shards
    val_ids: torch.Tensor  # (M,) int64 token ids of the validation text
    val_bytes: int  # UTF-8 bytes of the validation text (for bits per byte)


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LLMScratchError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    if name == "cuda" and info is not None:
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`, refusing to clobber an existing one unless asked."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise LLMScratchError(
                f"output directory {out_dir} already exists; use --resume {out_dir} to continue "
                "it, --overwrite to replace it, or choose another --out"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def check_vocab(tokenizer_vocab: int, config: RunConfig, what: str = "the tokenizer") -> None:
    if tokenizer_vocab > config.model.vocab_size:
        raise LLMScratchError(
            f"{what} has {tokenizer_vocab} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; set model.vocab_size >= {tokenizer_vocab}"
        )


def load_text_data(config: RunConfig, run_dir: Path, train_tokenizer: bool, info: DistInfo
                   ) -> RunData:
    """Read and split the text, get the tokenizer (rank 0 trains it), encode both halves."""
    data = config.data
    text = "\n".join(load_texts(data.files))
    train_text, val_text = split_train_val(text, data.val_fraction)
    tok_dir = run_dir / "tokenizer"
    if train_tokenizer and info.is_main:
        if data.tokenizer:
            tokenizer = (Tokenizer.gpt2() if data.tokenizer == "gpt2"
                         else Tokenizer.load(data.tokenizer))
        else:
            started = time.perf_counter()
            tokenizer = train_bpe([train_text], vocab_size=data.vocab_size, pattern=data.pattern)
            print(f"trained a {tokenizer.vocab_size}-token BPE tokenizer on "
                  f"{len(train_text.encode()) / 1e6:.1f} MB in "
                  f"{time.perf_counter() - started:.1f} s")
        tokenizer.save(tok_dir)
    barrier(info)
    tokenizer = Tokenizer.load(tok_dir)
    check_vocab(tokenizer.vocab_size, config)
    started = time.perf_counter()
    train_ids = np.array(tokenizer.encode_batch([train_text])[0], dtype=np.int32)
    val_ids = torch.tensor(tokenizer.encode_batch([val_text])[0], dtype=torch.int64)
    if info.is_main:
        print(f"encoded {len(train_ids):,} training and {len(val_ids):,} validation tokens "
              f"({len(text.encode()) / max(len(train_ids) + len(val_ids), 1):.2f} bytes/token) "
              f"in {time.perf_counter() - started:.1f} s")
    return RunData(tokenizer, [train_ids], val_ids, len(val_text.encode("utf-8")))


def load_prepared_data(config: RunConfig, run_dir: Path, first_time: bool, info: DistInfo
                       ) -> RunData:
    """Open `data.prepared`: memory-map its shards, check tokenizer and vocabulary."""
    manifest = read_manifest(config.data.prepared)
    tok_dir = run_dir / "tokenizer"
    if first_time:
        tokenizer = manifest.tokenizer()
        if config.data.tokenizer:
            named = (Tokenizer.gpt2() if config.data.tokenizer == "gpt2"
                     else Tokenizer.load(config.data.tokenizer))
            if tokenizer_hash(named) != manifest.tokenizer_sha256:
                raise LLMScratchError(
                    f"data.tokenizer {config.data.tokenizer} is not the tokenizer "
                    f"{config.data.prepared} was prepared with (hash mismatch); drop "
                    "data.tokenizer or prepare the data again with it")
        if info.is_main:
            tokenizer.save(tok_dir)
    else:
        tokenizer = Tokenizer.load(tok_dir)
    if tokenizer_hash(tokenizer) != manifest.tokenizer_sha256:
        raise LLMScratchError(
            f"{config.data.prepared} was prepared with another tokenizer than this run's "
            f"(hash mismatch with {tok_dir}); resume with the data the run started with")
    check_vocab(manifest.vocab_size, config, f"the data in {config.data.prepared}")
    train = manifest.shards("train", verify=config.data.verify)
    val = manifest.shards("val", verify=config.data.verify)
    val_ids = torch.from_numpy(np.concatenate([v.astype(np.int64) for v in val])
                               if val else np.zeros(0, dtype=np.int64))
    if info.is_main:
        split = manifest.split("train")
        print(f"prepared data {config.data.prepared}: {split['tokens']:,} training tokens in "
              f"{len(split['shards'])} shard(s), {len(val_ids):,} validation tokens")
    return RunData(tokenizer, train, val_ids, manifest.split("val")["bytes"])


def load_data(config: RunConfig, run_dir: Path, first_time: bool, info: DistInfo) -> RunData:
    if config.data.prepared:
        return load_prepared_data(config, run_dir, first_time, info)
    return load_text_data(config, run_dir, first_time, info)


@contextlib.contextmanager
def _processes(config: RunConfig) -> Iterator[tuple[DistInfo, torch.device]]:
    """Join torchrun's process group (if launched by it) for the length of a run.

    Also settles `train.dtype=auto` (training/precision.py) to what this
    hardware computes fastest; every process must use the same, so bf16 is
    chosen only where all of them would choose it.
    """
    info = init_distributed(resolve_device(config.train.device))
    try:
        device = resolve_device(config.train.device, info)
        if config.train.dtype == "auto":
            bf16 = float(resolve_dtype("auto", device) == "bf16")
            config.train.dtype = "bf16" if all_reduce_mean(bf16, info) == 1.0 else "fp32"
            if info.is_main:
                print(f"train.dtype=auto: computing in {config.train.dtype} on {device.type}")
        yield info, device
    finally:
        close_distributed()


def pretrain(config: RunConfig, out_dir: Path, overwrite: bool = False) -> PretrainResult:
    """Start a new run in `out_dir` (see the module docstring)."""
    out_dir = Path(out_dir)
    with _processes(config) as (info, device):
        if info.is_main:
            prepare_run_dir(out_dir, overwrite)
            save_config(config, out_dir / "config.yaml")
        barrier(info)
        data = load_data(config, out_dir, first_time=True, info=info)
        return _run(config, out_dir, data, None, info, device)


def resume(run_dir: Path, overrides: list[str] | tuple = (), fallback: bool = False
           ) -> PretrainResult:
    """Continue the run in `run_dir` from its newest (good) checkpoint to train.max_steps."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir, fallback=fallback)
    config = load_config(run_dir / "config.yaml", overrides)
    with _processes(config) as (info, device):
        if overrides and info.is_main:
            save_config(config, run_dir / "config.yaml")
        data = load_data(config, run_dir, first_time=False, info=info)
        return _run(config, run_dir, data, ckpt, info, device)


def _run(config: RunConfig, run_dir: Path, data: RunData, ckpt: Path | None, info: DistInfo,
         device: torch.device) -> PretrainResult:
    cfg = config.train
    say = print if info.is_main else (lambda *args, **kwargs: None)
    torch.manual_seed(cfg.seed)
    raw_model = GPT(config.model).to(device)
    n_params = raw_model.num_params()
    seq_len = cfg.seq_len or config.model.context_length
    if seq_len > config.model.context_length:
        raise LLMScratchError(
            f"train.seq_len={seq_len} is longer than model.context_length="
            f"{config.model.context_length}; lower train.seq_len"
        )
    flops_per_token = raw_model.flops_per_token(seq_len)
    model = parallelize(raw_model, cfg, info, device)
    optimizer = build_optimizer(model, cfg)
    grad_accum = check_global_batch(cfg, info)
    batches = TokenWindows(data.train_arrays, seq_len, cfg.batch_size, cfg.seed,
                           info.rank, info.world_size)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    train_state = TrainState()
    if ckpt is not None:
        train_state = load_checkpoint(ckpt, model, optimizer, info)
        # Checkpoints from before loaders kept state: the position was the step count.
        batches.position = train_state.step * grad_accum
        batches.load_state_dict(train_state.data)
        if info.is_main:
            metrics.truncate_after(train_state.step)
        say(f"resuming from {ckpt.name} (step {train_state.step} of {cfg.max_steps})")
    amp = autocast_dtype(cfg.dtype)
    step_tokens = batches.global_batch * grad_accum * seq_len
    say(f"model: {n_params / 1e6:.2f}M parameters; {cfg.max_steps} steps of "
        f"{step_tokens:,} tokens ({batches.epochs(cfg.max_steps * grad_accum):.2f} epochs) on "
        f"{info.world_size} x {device}" + (f" ({cfg.parallel})" if info.distributed else ""))

    bytes_per_token = data.val_bytes / max(len(data.val_ids) - 1, 1)

    # Evaluation and sampling use the model itself: a DDP wrapper only adds gradient sync.
    def evaluate(m: torch.nn.Module) -> dict:
        nats, n = score_windows(raw_model, data.val_ids, config.model.context_length,
                                autocast_dtype=amp, max_windows=cfg.eval_batches * 8)
        loss = nats / max(n, 1)
        return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token}

    prompts = [p for p in cfg.prompts if p]
    sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50,
                              seed=cfg.seed)

    def sample(m: torch.nn.Module, step: int) -> list[tuple[str, str]]:
        outs = []
        for prompt in prompts:  # every rank generates (FSDP needs all), rank 0 writes
            ids = generate(raw_model, data.tokenizer.encode(prompt), sampling,
                           data.tokenizer.eot_id, data.tokenizer.vocab_size)
            outs.append((prompt, data.tokenizer.decode(ids)))
        if info.is_main:
            write_samples(run_dir / "samples.md", step, outs)
        return outs

    def planned(max_steps: int) -> None:  # train.budget_seconds chose the run's length
        if info.is_main:  # saved without the budget: a resume keeps the length planned last
            saved = copy.deepcopy(config)
            saved.train.budget_seconds = 0.0
            save_config(saved, run_dir / "config.yaml")

    trainer = Trainer(model, NextTokenPrediction(device), batches, optimizer, cfg, run_dir,
                      device, Hooks(evaluate=evaluate, sample=sample, planned=planned), info,
                      grad_accum, flops_per_token)
    started = time.perf_counter()
    tokens_before = train_state.tokens_seen
    train_state = trainer.fit(train_state)
    train_seconds = time.perf_counter() - started
    tok_per_s = (train_state.tokens_seen - tokens_before) / max(train_seconds, 1e-9)

    nats, n_tokens = score_windows(raw_model, data.val_ids, config.model.context_length,
                                   autocast_dtype=amp)
    loss = nats / max(n_tokens, 1)
    final = EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                       bpb=nats / math.log(2) / max(data.val_bytes, 1), tokens=n_tokens,
                       bytes=data.val_bytes)
    samples = sample(model, train_state.step)
    if info.is_main:
        metrics.write({"step": train_state.step, "tokens": train_state.tokens_seen,
                       "final_val_loss": final.loss, "final_val_bpb": final.bpb,
                       "final_val_perplexity": final.perplexity})
        plot_losses(metrics.read(), run_dir / "loss.png", title=f"{run_dir.name}: loss")
        plot_training(metrics.read(), run_dir / "training.png", title=run_dir.name)
    result = PretrainResult(run_dir, final, train_seconds, tok_per_s, samples, info.rank,
                            train_state.step)
    if info.is_main:
        write_report(run_dir, config, result, n_params)
    return result
