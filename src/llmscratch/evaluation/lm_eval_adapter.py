"""A run as an lm-evaluation-harness model: `--model llmscratch --model_args run=DIR`.

lm-evaluation-harness (`pip install 'llmscratch[eval]'`) runs hundreds of
public tasks against any class that answers three questions, its `LM`
interface:

    loglikelihood(requests)          (context, continuation) -> (log p, is it greedy?)
    loglikelihood_rolling(requests)  text -> log p(text), in windows of the context
    generate_until(requests)         (context, {until, max_gen_toks}) -> greedy text

Here each is one call into the scorers `llmscratch eval tasks` uses
(evaluation/multiple_choice.py, evaluation/generation_tasks.py), so a
task gives the same accuracy through either (tests/test_lm_eval_adapter.py).

lm_eval finds models in a registry filled by importing the modules that
register them; its command line has no hook for a package outside it. So
`llmscratch eval harness ARGS` is lm_eval's own command line with this module
imported first (`lm_eval` arguments unchanged), and from Python:

    import llmscratch.evaluation.lm_eval_adapter  # registers "llmscratch"
    lm_eval.simple_evaluate(model="llmscratch", model_args="run=runs/demo", tasks=[...])
"""

from __future__ import annotations

import os
import sys
import traceback

import lm_eval.models  # noqa: F401  lm_eval's own models, registered before ours (see below)
import torch
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from llmscratch.distributed import resolve_device
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.generation_tasks import generate_replies
from llmscratch.evaluation.multiple_choice import encode_pair, score_requests
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.quantize import quantize_linear_weights
from llmscratch.runs.load import load_for_inference
from llmscratch.training.allocator import keep_freed_memory

# lm_eval fills its registry with its own models only when the registry is empty, so they
# are imported above: registering ours first would hide "hf" and the rest.


@register_model("llmscratch")
class LLMScratchLM(LM):
    """A run's newest checkpoint, scored in batches (module docstring).

    model_args: run (the run directory), device (auto, cpu, cuda), dtype (fp32, bf16;
    default the checkpoint's), quantize (int8, int4: generation/quantize.py), batch_tokens
    (tokens of one scoring batch; default by device, evaluation/multiple_choice.py),
    max_gen_toks (a reply's default limit). lm_eval's own batch_size is ignored:
    batches are sized in tokens.
    """

    def __init__(self, run: str, device: str | None = "auto", dtype: str | None = None,
                 batch_tokens: int | str | None = None, max_gen_toks: int | str = 256,
                 quantize: str | None = None, **lm_eval_options) -> None:
        super().__init__()
        self.model, self.tokenizer, self.settings = load_for_inference(
            run, _device(device), dtype)
        quantize_linear_weights(self.model, quantize or None)
        pack_linear_weights(self.model)  # on the CPU: oneDNN's kernels (inference only)
        if self.model.tok_emb.weight.device.type == "cpu":
            keep_freed_memory()  # as the training loop does (training/allocator.py)
        self.batch_tokens = int(batch_tokens) if batch_tokens else None
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *request.args) for request in requests]
        return [(s.log_prob, s.greedy)
                for s in score_requests(self.model, pairs, self.batch_tokens)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-probability, every token predicted once: windows of the
        model's context, each after an end-of-text token or the window before it."""
        pairs, owner = [], []
        for i, request in enumerate(requests):
            ids = self.tokenizer.encode(request.args[0], disallowed_special="none")
            windows = get_rolling_token_windows(ids, self.tokenizer.eot_id,
                                                self.model.config.context_length, 1)
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, score_requests(self.model, pairs, self.batch_tokens),
                        strict=True):
            totals[i] += s.log_prob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy replies, grouped by their stop strings and length limit."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            options = request.args[1] or {}
            until = options.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            limit = int(options.get("max_gen_toks", self.max_gen_toks))
            groups.setdefault((until, limit), []).append(i)
        replies = [""] * len(requests)
        for (until, limit), members in groups.items():
            prompts = [self.tokenizer.encode(requests[i].args[0], disallowed_special="none")
                       or [self.tokenizer.eot_id] for i in members]
            texts = [t for chunk in generate_replies(self.model, self.tokenizer, prompts, limit,
                                                     self.settings.stop_token_ids, until)
                     for t in chunk]
            for i, text in zip(members, texts, strict=True):
                replies[i] = text
        return replies


def _device(name: str | None) -> torch.device:
    """lm_eval's --device (default "cuda:0", even on a machine without one) as ours: a GPU
    named by number where there is one, else what `resolve_device` makes of the name."""
    name = name or "auto"
    if name.startswith("cuda"):
        return torch.device(name) if torch.cuda.is_available() else torch.device("cpu")
    return resolve_device(name)


def main(argv: list[str]) -> None:
    """lm_eval's command line, with "llmscratch" registered (`llmscratch eval harness`).

    lm_eval reports a mistake in its arguments (a task it does not know, a
    malformed --model_args) as a ValueError raised by its configuration code;
    that becomes our one-line error. A ValueError from anywhere else is a bug
    and keeps its traceback.
    """
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except ValueError as err:
        if not raised_in(err, LM_EVAL_ARGUMENT_CODE):
            raise
        raise LLMScratchError(f"eval harness: {' '.join(str(err).split())}") from None


# Where lm_eval checks its command line and builds its configuration from it (0.4.13:
# lm_eval/_cli and lm_eval/config; older versions: lm_eval/__main__.py).
LM_EVAL_ARGUMENT_CODE = (f"lm_eval{os.sep}_cli{os.sep}", f"lm_eval{os.sep}config{os.sep}",
                         f"lm_eval{os.sep}__main__.py")


def raised_in(err: BaseException, places: tuple[str, ...]) -> bool:
    """Whether the line that raised `err` is in a file whose path contains one of `places`."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and any(place in frames[-1].filename for place in places)
