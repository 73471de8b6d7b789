"""`llmscratch eval tasks`: multiple choice and generation scored against the model itself,
the public formats' readers on tiny files made here, few-shot draws, the centred score,
results in the run, and one line for each bad input."""

import json
import math
from pathlib import Path

import pytest
import torch

from llmscratch.cli import main
from llmscratch.evaluation.aggregate import centred, centred_mean
from llmscratch.evaluation.generation_tasks import extract_answer, normalize, score_reply
from llmscratch.evaluation.multiple_choice import choose, encode_pair, score_requests
from llmscratch.evaluation.task_formats import fewshot_query, read_docs
from llmscratch.evaluation.tasks import GSM8K_EXTRACT, TaskSpec, load_spec
from llmscratch.generation.sampling import SamplingConfig, generate_tokens
from llmscratch.model import GPT, get_preset
from llmscratch.runs.load import load_for_inference
from llmscratch.runs.run import Run
from llmscratch.tokenizer import train_bpe

QUESTIONS = [
    ("ROMEO: What light through yonder", [" window breaks", " sword", " crown of gold"], 0),
    ("JULIET: O Romeo, Romeo, wherefore art", [" thou Romeo", " the king", " we"], 0),
    ("HAMLET: To be, or not to", [" sleep", " be", " the question of all"], 1),
    ("KING: Now is the winter of our", [" discontent", " sun", " night and day"], 0),
    ("MACBETH: Is this a dagger which I see", [" before me", " here", " not"], 0),
    ("LEAR: Blow, winds, and crack your", [" cheeks", " bones and bread", " heart"], 0),
]


def write_mc_task(folder: Path, rows=QUESTIONS, **extra) -> Path:
    """A JSONL file and its task spec: question, choices, answer index."""
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "options": c, "label": a}) + "\n"
                            for q, c, a in rows))
    spec = {"name": "mc", "kind": "multiple_choice", "data": "mc.jsonl",
            "prompt": "{{question}}", "choices": "options", "answer": "{{label}}",
            "target_delimiter": "", **extra}
    path = folder / "mc.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@torch.no_grad()
def reference_log_prob(model, context_ids, choice_ids) -> float:
    """log p(choice | context) the plain way: one forward over the whole sequence."""
    ids = torch.tensor([context_ids + choice_ids[:-1]])
    log_probs = torch.log_softmax(model.logits(model(ids))[0, -len(choice_ids):].float(), -1)
    return float(log_probs.gather(1, torch.tensor(choice_ids)[:, None]).sum())


# --- scoring against the model's own log-probabilities ----------------------------------


@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen3-next-tiny"])  # caches: keys, states
def test_shared_context_batches_give_each_request_its_own_log_prob(preset):
    """Contexts run once for all their choices, left-padded in batches, caches copied per
    choice: the same numbers as one plain forward per request (fp32, 1e-4)."""
    torch.manual_seed(0)
    tokenizer = train_bpe(["the cat sat on the mat and the dog ran to the park " * 20], 300)
    model = GPT(get_preset(preset)).eval()
    requests = [encode_pair(tokenizer, ctx, choice)
                for ctx, choices, _ in QUESTIONS for choice in choices]
    requests.append(encode_pair(tokenizer, "a", " b"))  # a one-token choice, alone in a batch
    window = model.config.context_length
    requests.append(([7] * (window + 10), [9, 10, 11]))  # too long: the context is cut
    for batch_tokens in (1, 40, 4096):
        scored = score_requests(model, requests, batch_tokens)
        for (context, choice), s in zip(requests, scored, strict=True):
            kept = context[-(window + 1 - len(choice)):]
            assert s.log_prob == pytest.approx(reference_log_prob(model, kept, choice),
                                               abs=1e-4)
            assert s.tokens == len(choice)


def test_encode_pair_moves_the_context_s_spaces_to_the_choice():
    tokenizer = train_bpe(["a few words to learn a few merges from, a few times"] * 5, 280)
    context, choice = encode_pair(tokenizer, "a few ", "words")
    assert context == tokenizer.encode("a few")
    assert context + choice == tokenizer.encode("a few words")
    assert encode_pair(tokenizer, "", "words")[0] == [tokenizer.eot_id]


def test_acc_and_acc_norm_by_hand():
    # log-probs -6, -4, -9 over choices of 2, 8 and 3 characters: per character -3, -0.5, -3
    scores = choose([-6.0, -4.0, -9.0], ["ab", "abcdefgh", "abc"], gold=0)
    assert (scores.pred, scores.pred_norm) == (1, 1)
    scores = choose([-2.0, -4.0], ["a", "abcdefgh"], gold=0)
    assert (scores.pred, scores.pred_norm) == (0, 1)  # -2 > -4, but -0.5 per char beats -2


def test_eval_tasks_accuracy_is_the_model_s_own_choice(tiny_run, tmp_path, capsys):
    """acc and acc_norm from `eval tasks` equal those computed here from the model's
    log-probabilities, and every example's scores are in eval/mc.examples.jsonl."""
    spec = write_mc_task(tmp_path)
    code, out, err = run_cli(["eval", "tasks", "--run", tiny_run, "--tasks", spec, "--json"],
                             capsys)
    assert code == 0, err
    [result] = json.loads(out)
    model, tokenizer, _ = load_for_inference(tiny_run)
    right = right_norm = 0
    records = [json.loads(line) for line in
               Run(tiny_run).eval_examples_path("mc").read_text().splitlines()]
    for (question, choices, gold), record in zip(QUESTIONS, records, strict=True):
        log_probs = [reference_log_prob(model, *encode_pair(tokenizer, question, c))
                     for c in choices]
        assert record["log_probs"] == pytest.approx(log_probs, abs=1e-3)
        best = max(range(len(choices)), key=lambda i: log_probs[i])
        best_norm = max(range(len(choices)), key=lambda i: log_probs[i] / len(choices[i]))
        right += best == gold
        right_norm += best_norm == gold
    assert result["metrics"]["acc"] == right / len(QUESTIONS)
    assert result["metrics"]["acc_norm"] == right_norm / len(QUESTIONS)
    assert result["random_baseline"] == pytest.approx(1 / 3)
    assert result["centred"] == pytest.approx((right_norm / 6 - 1 / 3) / (2 / 3))
    saved = json.loads(Run(tiny_run).eval_result_path("mc").read_text())
    assert saved["complete"] and saved["metrics"] == result["metrics"]


def test_generation_task_replies_are_the_greedy_continuations(tiny_run, tmp_path, capsys):
    """Each reply is what greedy decoding writes (cut at `until`); exact match after the
    extractor; replies it matches nothing in are counted."""
    rows = [{"q": "ROMEO:", "a": "x"}, {"q": "JULIET:", "a": "y"}, {"q": "To be", "a": "z"}]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "gen.yaml").write_text(
        "name: gen\nkind: generation\ndata: gen.jsonl\nprompt: '{{q}}'\nanswer: '{{a}}'\n"
        "extract: 'ZZZ(\\d+)'\nmax_new_tokens: 8\nuntil: [\"\\n\"]\n")
    code, out, err = run_cli(["eval", "tasks", "--run", tiny_run, "--tasks",
                              tmp_path / "gen.yaml"], capsys)
    assert code == 0, err
    assert "extractor matched nothing in 3" in out
    model, tokenizer, settings = load_for_inference(tiny_run)
    records = [json.loads(line) for line in
               Run(tiny_run).eval_examples_path("gen").read_text().splitlines()]
    for row, record in zip(rows, records, strict=True):
        ids = list(generate_tokens(model, tokenizer.encode(row["q"]),
                                   SamplingConfig(max_new_tokens=8, temperature=0),
                                   settings.stop_token_ids, tokenizer.vocab_size))
        assert record["reply"] == tokenizer.decode(ids).split("\n")[0]
        assert record["extracted"] is None and not record["right"]
    result = json.loads(Run(tiny_run).eval_result_path("gen").read_text())
    assert result["metrics"]["unmatched"] == 3 and result["metrics"]["exact_match"] == 0


def test_extraction_and_normalisation():
    assert extract_answer("so 3 + 4 = 7\n#### 1,007.", GSM8K_EXTRACT) == "1,007."
    assert score_reply("#### 1,007.", "1007", GSM8K_EXTRACT).right
    assert normalize(" $12 ") == "12" and normalize("Verona.") == "Verona."
    assert extract_answer("no number here", GSM8K_EXTRACT) is None
    assert extract_answer("answer: B", r"answer: [A-D]") == "answer: B"  # no group: the match
    assert not score_reply("nothing", "7", r"(\d+)").right


def test_centred_score_by_hand():
    assert centred(0.25, 0.25) == 0 and centred(1.0, 0.25) == 1
    assert centred(0.5, 0.25) == pytest.approx(1 / 3)
    results = [{"metrics": {"acc": 0.9, "acc_norm": 0.5}, "random_baseline": 0.25},
               {"metrics": {"exact_match": 0.2}, "random_baseline": 0.0},
               {"metrics": {"bpb": 2.0}, "random_baseline": None}]
    assert centred_mean(results) == pytest.approx((1 / 3 + 0.2) / 2)


# --- the public formats, on tiny files made here ----------------------------------------


def test_public_formats_read_as_lm_evaluation_harness_writes_them(tmp_path):
    hellaswag = tmp_path / "hs.jsonl"
    hellaswag.write_text(json.dumps({
        "activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "he [title] bakes",
        "endings": ["bread.", "a car.", "the sea.", "songs."], "label": 0}) + "\n")
    [doc] = read_docs(TaskSpec("hs", "multiple_choice", format="hellaswag", data=str(hellaswag)))
    assert doc.query == "Baking: A man mixes flour. He. bakes"
    assert doc.choices[0] == "bread." and doc.gold == 0

    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"question": {"stem": "Which is a metal?", "choices": [
        {"text": "iron", "label": "A"}, {"text": "wood", "label": "B"}]}, "answerKey": "A"})
        + "\n" + json.dumps({"question": "Which is wet?", "choices": {
            "text": ["sand", "rain"], "label": ["1", "2"]}, "answerKey": "2"}) + "\n")
    docs = read_docs(TaskSpec("arc", "multiple_choice", format="arc", data=str(arc)))
    assert docs[0].query == "Question: Which is a metal?\nAnswer:" and docs[0].gold == 0
    assert docs[1].choices == ["sand", "rain"] and docs[1].gold == 1

    mmlu = tmp_path / "astronomy_test.csv"
    mmlu.write_text('"What orbits the Earth?",Moon,Sun,Mars,Venus,A\n')
    [doc] = read_docs(TaskSpec("mmlu", "multiple_choice", format="mmlu", data=str(mmlu)))
    assert doc.query == "What orbits the Earth?\nA. Moon\nB. Sun\nC. Mars\nD. Venus\nAnswer:"
    assert doc.choices == ["A", "B", "C", "D"] and doc.gold == 0 and doc.task == "astronomy"

    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    spec = TaskSpec("g", "generation", format="gsm8k", data=str(gsm8k), extract="gsm8k")
    [doc] = read_docs(spec)
    assert (doc.query, doc.reference, doc.target) == ("Question: 2 + 3?\nAnswer:", "5",
                                                     "2 + 3 = 5\n#### 5")


def test_few_shot_examples_are_other_examples_drawn_with_the_seed(tmp_path):
    spec = load_spec(write_mc_task(tmp_path))
    docs = read_docs(spec)
    first = fewshot_query(spec, docs, 2, shots=3)
    assert first == fewshot_query(spec, docs, 2, shots=3)  # the same every time
    parts = first.split("\n\n")
    assert len(parts) == 4 and parts[-1] == docs[2].query
    solved = {d.query + d.target for d in docs}
    assert all(p in solved for p in parts[:-1]) and docs[2].query + docs[2].target not in parts
    assert fewshot_query(spec, docs, 2, shots=0) == docs[2].query


# --- results in the run, the report and the comparison ----------------------------------


def test_compare_and_report_show_the_results(tiny_run, tmp_path, capsys):
    spec = write_mc_task(tmp_path)
    assert run_cli(["eval", "tasks", "--run", tiny_run, "--tasks", spec], capsys)[0] == 0
    code, out, _ = run_cli(["eval", "compare", tiny_run, tiny_run, "--json"], capsys)
    table = json.loads(out)
    assert code == 0 and table["tasks"]["mc"][0] == table["tasks"]["mc"][1]
    code, out, _ = run_cli(["report", tiny_run], capsys)
    assert code == 0 and "## Evaluation" in out and "| mc |" in out
    assert "## Evaluation" in Run(tiny_run).report_path.read_text()


def test_offline_tasks_run_on_a_cpu(tiny_run, capsys):
    code, out, err = run_cli(["eval", "tasks", "--run", tiny_run, "--tasks",
                              "next-line,synthetic", "--limit", "8", "--json"], capsys)
    assert code == 0, err
    mc, gen = json.loads(out)
    assert mc["examples"] == 8 and mc["random_baseline"] == 0.25
    assert 0 <= mc["metrics"]["acc"] <= 1 and gen["examples"] == 8
    assert not math.isnan(gen["centred"])


# --- bad input: one line, exit 2, nothing written ---------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("options"), "field 'options' is missing"),
    (lambda r: r.update(label=7), "answer 7 is out of range for 3 choices"),
    (lambda r: r.pop("question"), "the prompt template needs a field"),
    (lambda r: r.update(label="maybe"), "neither a choice's index"),
])
def test_a_bad_example_is_one_line_naming_its_line(tiny_run, tmp_path, capsys, edit, message):
    rows = [{"question": q, "options": c, "label": a} for q, c, a in QUESTIONS]
    edit(rows[3])
    spec = write_mc_task(tmp_path)
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = sorted(p.name for p in Run(tiny_run).eval_result_paths())
    code, out, err = run_cli(["eval", "tasks", "--run", tiny_run, "--tasks", spec], capsys)
    assert code == 2 and message in err and "mc.jsonl:4" in err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert sorted(p.name for p in Run(tiny_run).eval_result_paths()) == before


@pytest.mark.parametrize("args, message", [
    (["--tasks", "next-line", "--limit", "0"], "--limit must be at least 1"),
    (["--tasks", "next-line", "--shots", "-1"], "--shots must be 0 or more"),
    (["--tasks", "no-such-task"], "unknown task 'no-such-task'"),
    (["--tasks", ""], "names no task"),
    (["--tasks", "{spec}", "--shots", "6"], "6 shots need more than the 6 examples"),
    (["--tasks", "{bad_kind}"], "kind 'ranking' is not one of"),
    (["--tasks", "{missing}"], "field(s) choices missing"),
    (["--tasks", "{unknown}"], "unknown field(s) promt"),
    (["--tasks", "{yaml}"], "is not valid YAML"),
])
def test_bad_task_arguments_are_one_line(tiny_run, tmp_path, capsys, args, message):
    spec = write_mc_task(tmp_path)
    base = {"name": "t", "kind": "multiple_choice", "data": "mc.jsonl", "prompt": "{{q}}",
            "answer": "{{a}}", "choices": "c"}
    files = {"spec": spec, "yaml": tmp_path / "bad.yaml"}
    files["yaml"].write_text("name: [unclosed\n")
    for name, change in [("bad_kind", {"kind": "ranking"}), ("missing", {"choices": ""}),
                         ("unknown", {"promt": "x"})]:
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({**base, **change}))
    args = [a.format(**files) for a in args]
    code, out, err = run_cli(["eval", "tasks", "--run", tiny_run, *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_downloaded_file_is_read_from_the_cache(tmp_path, monkeypatch):
    """A URL's file, once in the cache, is read from there (no network here): a member of a
    .zip archive, and every .csv under a folder of a .tar one (MMLU's layout)."""
    import hashlib
    import tarfile
    import zipfile

    from llmscratch.evaluation.task_formats import cache_dir, local_path

    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    url = "https://example.invalid/ARC.zip"
    folder = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "ARC.zip", "w") as z:
        z.writestr("ARC/Easy/test.jsonl", json.dumps({"question": {"stem": "Wet?", "choices": [
            {"text": "rain", "label": "A"}, {"text": "sand", "label": "B"}]},
            "answerKey": "A"}) + "\n")
    [doc] = read_docs(TaskSpec("arc", "multiple_choice", format="arc",
                               data=url + "#ARC/Easy/test.jsonl"))
    assert doc.choices == ["rain", "sand"] and doc.gold == 0

    url = "https://example.invalid/data.tar"
    folder = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True)
    for subject in ("anatomy", "virology"):
        (tmp_path / f"{subject}_test.csv").write_text(f"{subject}?,a,b,c,d,B\n")
    with tarfile.open(folder / "data.tar", "w") as t:
        for subject in ("anatomy", "virology"):
            t.add(tmp_path / f"{subject}_test.csv", f"data/test/{subject}_test.csv")
    docs = read_docs(TaskSpec("mmlu", "multiple_choice", format="mmlu",
                              data=url + "#data/test/"))
    assert [(d.task, d.gold) for d in docs] == [("anatomy", 1), ("virology", 1)]
    assert local_path(url + "#data/test/").is_dir()


def test_list_and_a_bare_eval(capsys):
    code, out, _ = run_cli(["eval", "tasks", "--list"], capsys)
    assert code == 0 and "next-line" in out and "hellaswag" in out and "offline" in out
    code, _, err = run_cli(["eval"], capsys)
    assert code == 2 and "eval needs a command" in err
