"""Pretraining, end to end: text -> tokenizer -> tokens -> trained model -> report.

`pretrain(config, out_dir)` is what `llmscratch pretrain` and the demo run:

1. read the text (the user's files, or the embedded corpus) and split off
   the final `data.val_fraction` of its bytes for validation;
2. load the tokenizer named by `data.tokenizer`, or train one on the
   training text only (the validation text stays unseen);
3. encode both halves and build the model from `config.model`;
4. run the training loop with the next-token objective, validating,
   sampling and checkpointing on schedule;
5. score the whole validation text, write samples, the loss plot and report.md.

`resume(run_dir)` rebuilds steps 1-3 from the saved config and tokenizer,
loads the newest checkpoint and continues to `train.max_steps`.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmscratch.config import RunConfig, load_config, save_config
from llmscratch.data.batches import TokenBatches
from llmscratch.data.corpus import load_texts, split_train_val
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.perplexity import EvalResult, evaluate_text, score_windows
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import GPT
from llmscratch.tokenizer import Tokenizer, train_bpe
from llmscratch.training.checkpoint import TrainState, latest_checkpoint, load_checkpoint
from llmscratch.training.loop import Hooks, Trainer, autocast_dtype
from llmscratch.training.metrics import MetricsLog, plot_losses
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import build_optimizer
from llmscratch.training.report import write_report, write_samples


@dataclass
class PretrainResult:
    run_dir: Path
    final: EvalResult  # on the whole validation text
    train_seconds: float
    tokens_per_second: float
    samples: list[tuple[str, str]]  # (prompt, completion)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train_ids: np.ndarray  # (N,) token ids of the training text
    val_text: str
    val_ids: torch.Tensor  # (M,) token ids of the validation text


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LLMScratchError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
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


def prepare_data(config: RunConfig, run_dir: Path, train_tokenizer: bool) -> PreparedData:
    """Read and split the text, get the tokenizer, encode both halves."""
    data = config.data
    text = "\n".join(load_texts(data.files))
    train_text, val_text = split_train_val(text, data.val_fraction)
    tok_dir = run_dir / "tokenizer"
    if not train_tokenizer:
        tokenizer = Tokenizer.load(tok_dir)
    elif data.tokenizer:
        tokenizer = Tokenizer.gpt2() if data.tokenizer == "gpt2" else Tokenizer.load(data.tokenizer)
        tokenizer.save(tok_dir)
    else:
        started = time.perf_counter()
        tokenizer = train_bpe([train_text], vocab_size=data.vocab_size, pattern=data.pattern)
        print(f"trained a {tokenizer.vocab_size}-token BPE tokenizer on "
              f"{len(train_text.encode()) / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
        tokenizer.save(tok_dir)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise LLMScratchError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; set model.vocab_size >= {tokenizer.vocab_size}"
        )
    started = time.perf_counter()
    train_ids = np.array(tokenizer.encode_batch([train_text])[0], dtype=np.int32)
    val_ids = torch.tensor(tokenizer.encode_batch([val_text])[0], dtype=torch.int64)
    print(f"encoded {len(train_ids):,} training and {len(val_ids):,} validation tokens "
          f"({len(text.encode()) / max(len(train_ids) + len(val_ids), 1):.2f} bytes/token) "
          f"in {time.perf_counter() - started:.1f} s")
    return PreparedData(tokenizer, train_ids, val_text, val_ids)


def pretrain(config: RunConfig, out_dir: Path, overwrite: bool = False) -> PretrainResult:
    """Start a new run in `out_dir` (see the module docstring)."""
    out_dir = Path(out_dir)
    prepare_run_dir(out_dir, overwrite)
    save_config(config, out_dir / "config.yaml")
    data = prepare_data(config, out_dir, train_tokenizer=True)
    return _run(config, out_dir, data, state=None)


def resume(run_dir: Path, overrides: list[str] | tuple = ()) -> PretrainResult:
    """Continue the run in `run_dir` from its newest checkpoint to train.max_steps."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    config = load_config(run_dir / "config.yaml", overrides)
    if overrides:
        save_config(config, run_dir / "config.yaml")
    data = prepare_data(config, run_dir, train_tokenizer=False)
    return _run(config, run_dir, data, state=ckpt)


def _run(config: RunConfig, run_dir: Path, data: PreparedData, state: Path | None):
    cfg = config.train
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = GPT(config.model).to(device)
    optimizer = build_optimizer(model, cfg)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    train_state = TrainState()
    if state is not None:
        train_state = load_checkpoint(state, model, optimizer)
        metrics.truncate_after(train_state.step)
        print(f"resuming from {state.name} (step {train_state.step} of {cfg.max_steps})")
    seq_len = cfg.seq_len or config.model.context_length
    if seq_len > config.model.context_length:
        raise LLMScratchError(
            f"train.seq_len={seq_len} is longer than model.context_length="
            f"{config.model.context_length}; lower train.seq_len"
        )
    batches = TokenBatches(data.train_ids, seq_len, cfg.batch_size, cfg.seed)
    amp = autocast_dtype(cfg)
    n_params = model.num_params()
    print(f"model: {n_params / 1e6:.2f}M parameters; {cfg.max_steps} steps of "
          f"{cfg.batch_size * cfg.grad_accum * seq_len:,} tokens "
          f"({batches.epochs(cfg.max_steps * cfg.grad_accum):.2f} epochs) on {device}")

    bytes_per_token = len(data.val_text.encode()) / max(len(data.val_ids) - 1, 1)

    def evaluate(m: torch.nn.Module) -> dict:
        nats, n = score_windows(m, data.val_ids, config.model.context_length,
                                autocast_dtype=amp, max_windows=cfg.eval_batches * 8)
        loss = nats / max(n, 1)
        return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token}

    prompts = [p for p in cfg.prompts if p]
    sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=50,
                              seed=cfg.seed)

    def sample(m: torch.nn.Module, step: int) -> list[tuple[str, str]]:
        outs = []
        for prompt in prompts:
            ids = generate(m, data.tokenizer.encode(prompt), sampling, data.tokenizer.eot_id)
            outs.append((prompt, data.tokenizer.decode(ids)))
        write_samples(run_dir / "samples.md", step, outs)
        return outs

    trainer = Trainer(model, NextTokenPrediction(device), batches.batch, optimizer, cfg,
                      run_dir, device, Hooks(evaluate=evaluate, sample=sample))
    started = time.perf_counter()
    tokens_before = train_state.tokens_seen
    train_state = trainer.fit(train_state)
    train_seconds = time.perf_counter() - started
    tok_per_s = (train_state.tokens_seen - tokens_before) / max(train_seconds, 1e-9)

    final = evaluate_text(model, data.tokenizer, data.val_text, autocast_dtype=amp)
    record = {"step": train_state.step, "tokens": train_state.tokens_seen, "final_val_loss":
              final.loss, "final_val_bpb": final.bpb, "final_val_perplexity": final.perplexity}
    metrics.write(record)
    samples = sample(model, train_state.step)
    plot_losses(metrics.read(), run_dir / "loss.png", title=f"{run_dir.name}: loss")
    result = PretrainResult(run_dir, final, train_seconds, tok_per_s, samples)
    write_report(run_dir, config, result, n_params)
    return result
