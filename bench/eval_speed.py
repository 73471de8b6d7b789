"""Multiple-choice scoring: our scorer against lm-evaluation-harness's own `hf` model.

    .venv/bin/python bench/eval_speed.py                   # GPT-2 124M, fp32, 64 examples
    .venv/bin/python bench/eval_speed.py --examples 16 --rounds 1 --json

The work (the same for both, in one process): lm-evaluation-harness's
`simple_evaluate` on one multiple-choice task file made here, 4 choices an
example, scored by log-likelihood (acc and acc_norm). The examples come from
the plays' held-out text and are shaped like HellaSwag's: a context of 4
lines (about 35 GPT-2 tokens), 4 endings of 2 lines each (about 16 tokens;
the script prints both means), the true next two lines or two from elsewhere
in the same play.

The model: GPT-2 124M's architecture with random weights (no download), made
as our run and exported with `convert to-hf`, so both read the same weights
and the same tokenizer; the accuracies must then agree, and the script stops
if they do not.

- ours: lm_eval's model `llmscratch` (evaluation/lm_eval_adapter.py): each
  example's context runs once for its 4 endings, the output layer runs only
  where an ending's token is predicted, the linear layers packed for oneDNN;
- peer: lm_eval's `hf` model (`AutoModelForCausalLM`), each (context, ending)
  a row of a padded batch, at each of `--peer-batch` sizes (its fastest counts).

Examples/s over the timed `simple_evaluate` call (the models are loaded
before, and a first, untimed call with 4 examples warms both up); the best of
`--rounds` rounds, which alternate ours and the peer's (these shared machines
vary by 10% or more from minute to minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task is a local file
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
import torch  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from llmscratch.evaluation.lm_eval_adapter import LLMScratchLM  # noqa: E402
from llmscratch.evaluation.offline_tasks import heldout_lines_by_play  # noqa: E402
from llmscratch.model import GPT, get_preset  # noqa: E402
from llmscratch.model.config import torch_dtype  # noqa: E402
from llmscratch.runs.checkpoint import save_weights  # noqa: E402
from llmscratch.runs.config import RunConfig  # noqa: E402
from llmscratch.runs.hf_export import convert_to_hf  # noqa: E402
from llmscratch.runs.run import GenerationSettings, Run, RunInfo  # noqa: E402
from llmscratch.tokenizer import Tokenizer  # noqa: E402

TASK = "plays_mc"


def write_task(folder: Path, n: int, seed: int = 0) -> None:
    """A HellaSwag-shaped JSONL file from the held-out plays, and its lm_eval task YAML."""
    rng = random.Random(seed)
    plays = [lines for lines in heldout_lines_by_play() if len(lines) > 100]
    rows = []
    while len(rows) < n:
        lines = rng.choice(plays)
        i = rng.randrange(4, len(lines) - 2)
        true = " ".join(lines[i:i + 2])
        others = set()
        while len(others) < 3:
            j = rng.randrange(0, len(lines) - 2)
            if abs(j - i) > 2:
                others.add(" ".join(lines[j:j + 2]))
        endings = [true, *sorted(others)]
        rng.shuffle(endings)
        rows.append({"ctx": " ".join(lines[i - 4:i]), "endings": endings,
                     "label": endings.index(true)})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "data.jsonl"}
  cache_dir: {folder / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")


def mean_tokens(folder: Path) -> tuple[float, float]:
    """Mean GPT-2 tokens of a context and of an ending (with its leading space)."""
    tokenizer = Tokenizer.gpt2()
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    contexts = [len(tokenizer.encode(r["ctx"])) for r in rows]
    endings = [len(tokenizer.encode(" " + e)) for r in rows for e in r["endings"]]
    return sum(contexts) / len(contexts), sum(endings) / len(endings)


def make_model(folder: Path, precision: str) -> tuple[Path, Path]:
    """GPT-2 124M with random weights as our run, and exported as a Hugging Face folder."""
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2"))  # random initialisation (GPT.init_weights)
    tokenizer = Tokenizer.gpt2()
    ends = GenerationSettings([tokenizer.eot_id], eos_token="<|endoftext|>")  # lm_eval's prefix
    run = Run.create(folder / "run", RunConfig(model=model.config),
                     RunInfo(kind="import", generation=ends), tokenizer,
                     fill=lambda r: save_weights(r, model))
    hf = convert_to_hf(run.path, folder / "hf", dtype=precision)
    return run.path, hf


def evaluate(lm, manager: TaskManager, limit: int) -> tuple[float, dict]:
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, limit=limit,
                                  verbosity="ERROR")
    return time.perf_counter() - started, out["results"][TASK]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=64, help="examples timed")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--peer-batch", default="8,32", help="lm_eval hf batch sizes to try")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_task(folder, args.examples)
        context_tokens, ending_tokens = mean_tokens(folder)
        run, hf = make_model(folder, args.precision)
        manager = TaskManager(include_path=str(folder))
        ours_lm = LLMScratchLM(run=str(run), device="cpu")
        peers = {b: HFLM(pretrained=str(hf), device="cpu", batch_size=int(b),
                         dtype=str(torch_dtype(args.precision)).removeprefix("torch."))
                 for b in args.peer_batch.split(",")}
        models = {"llmscratch": ours_lm, **{f"hf, batch {b}": lm for b, lm in peers.items()}}
        for lm in models.values():  # warm-up
            evaluate(lm, manager, 4)
        seconds: dict[str, list[float]] = {name: [] for name in models}
        results = {}
        for _ in range(args.rounds):
            for name, lm in models.items():
                elapsed, results[name] = evaluate(lm, manager, args.examples)
                seconds[name].append(elapsed)
    accuracies = {name: (r["acc,none"], r["acc_norm,none"]) for name, r in results.items()}
    if len(set(accuracies.values())) != 1:
        raise SystemExit(f"the accuracies differ, so the work does: {accuracies}")
    rates = {name: args.examples / min(s) for name, s in seconds.items()}
    best_peer = max((n for n in rates if n != "llmscratch"), key=rates.get)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "lm_eval": lm_eval.__version__},
        "model": "gpt2-124m (random weights)", "precision": args.precision,
        "examples": args.examples, "choices": 4, "context_tokens": round(context_tokens, 1),
        "ending_tokens": round(ending_tokens, 1), "examples_per_s": rates,
        "ratio": rates["llmscratch"] / rates[best_peer], "best_peer": best_peer,
        "acc": accuracies["llmscratch"],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"multiple-choice scoring, GPT-2 124M, {args.precision}, {args.examples} examples of "
          f"4 choices ({context_tokens:.0f}-token contexts, {ending_tokens:.0f}-token endings), "
          f"{report['machine']['threads']} threads, lm_eval "
          f"{report['machine']['lm_eval']}, torch {report['machine']['torch']}")
    print(f"{'model':<16} {'examples/s':>10} {'ratio':>7}")
    for name, rate in rates.items():
        print(f"{name:<16} {rate:>10.2f} {rates['llmscratch'] / rate:>6.2f}x")
    print(f"(acc, acc_norm) {report['acc']} in every row")


if __name__ == "__main__":
    main()
