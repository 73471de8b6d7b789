"""The lm-evaluation-harness adapter, offline: lm_eval's command line scores a run on a tiny
local task file and gets the accuracy `llmscratch eval tasks` gets on the same file; the
rolling log-likelihood and greedy generation match the model's own numbers."""

import json
import os

import pytest
import torch

pytest.importorskip("lm_eval")

# No hub: the task's data is a local file, read by the `datasets` json builder.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402

from llmscratch.cli import main  # noqa: E402
from llmscratch.evaluation.lm_eval_adapter import LLMScratchLM  # noqa: E402
from llmscratch.generation.sampling import SamplingConfig, generate_tokens  # noqa: E402
from llmscratch.runs.load import load_for_inference  # noqa: E402
from tests.test_eval_tasks import QUESTIONS, reference_log_prob, write_mc_task  # noqa: E402

MORE = QUESTIONS + [
    ("OTHELLO: Put out the light, and then put out the", [" light", " fire", " sun"], 0),
    ("PUCK: Lord, what fools these", [" mortals be", " kings", " stars are"], 0),
    ("PORTIA: The quality of mercy is not", [" strain'd", " here", " mine"], 0),
    ("PROSPERO: We are such stuff as dreams are", [" made on", " not", " sold"], 0),
]


def lm_eval_task(folder, data) -> None:
    """The same file as an lm_eval task: the same prompt, choices and answer."""
    (folder / "lm_tasks").mkdir()
    (folder / "lm_tasks" / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {folder / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
""")


def test_lm_eval_through_the_adapter_gets_our_accuracy(tiny_run, tmp_path, capsys):
    spec = write_mc_task(tmp_path, MORE)
    assert main(["eval", "tasks", "--run", str(tiny_run), "--tasks", str(spec), "--json"]) == 0
    [ours] = json.loads(capsys.readouterr().out)
    lm_eval_task(tmp_path, tmp_path / "mc.jsonl")
    assert main(["eval", "harness", "--model", "llmscratch", "--model_args",
                 f"run={tiny_run}", "--tasks", "tiny_mc", "--include_path",
                 str(tmp_path / "lm_tasks"), "--device", "cpu", "--output_path",
                 str(tmp_path / "out")]) == 0
    [path] = list((tmp_path / "out").rglob("results*.json"))
    theirs = json.loads(path.read_text())["results"]["tiny_mc"]
    assert theirs["acc,none"] == pytest.approx(ours["metrics"]["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["metrics"]["acc_norm"])
    assert 0 < ours["metrics"]["acc"] < 1 or 0 < ours["metrics"]["acc_norm"] < 1


def test_rolling_log_likelihood_and_generation_are_the_model_s_own(tiny_run):
    lm = LLMScratchLM(run=str(tiny_run), device="cpu")
    model, tokenizer, settings = load_for_inference(tiny_run)
    text = "ROMEO: But soft, what light"
    [total] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = tokenizer.encode(text)
    assert total == pytest.approx(reference_log_prob(model, [tokenizer.eot_id], ids), abs=1e-3)
    [(log_prob, greedy)] = lm.loglikelihood([Instance("loglikelihood", {}, ("ROMEO:", " But"),
                                                      0)])
    assert log_prob == pytest.approx(
        reference_log_prob(model, tokenizer.encode("ROMEO:"), tokenizer.encode(" But")),
        abs=1e-3)
    [reply] = lm.generate_until([Instance("generate_until", {}, (
        "JULIET:", {"until": ["\n\n"], "max_gen_toks": 6}), 0)])
    with torch.no_grad():
        expected = tokenizer.decode(list(generate_tokens(
            model, tokenizer.encode("JULIET:"), SamplingConfig(max_new_tokens=6, temperature=0),
            settings.stop_token_ids, tokenizer.vocab_size))).split("\n\n")[0]
    assert reply == expected


def test_a_task_lm_eval_does_not_know_is_one_line(tiny_run, tmp_path, capsys):
    """lm_eval raises ValueError for a task it cannot find: one line, exit 2, nothing written."""
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["eval", "harness", "--model", "llmscratch", "--model_args", f"run={tiny_run}",
                 "--tasks", "no_such_task", "--output_path", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: eval harness: Tasks not found: no_such_task")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
