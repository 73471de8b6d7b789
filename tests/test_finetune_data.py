"""Fine-tuning data: synthetic checkable tasks, the genre task, and readers of the user's files."""

import json
import random
import re

import numpy as np
import pytest

from llmscratch.data.genres import GENRES, PASSAGE_LINES, genre_plays, genre_splits
from llmscratch.data.instruction_files import (
    alpaca_prompt,
    format_alpaca_prompt,
    read_instructions,
)
from llmscratch.data.labeled_files import (
    LabeledTexts,
    balance_classes,
    check_labels,
    is_sms_spam,
    read_labeled,
    read_sms_spam,
    sms_spam_splits,
    split_three_ways,
)
from llmscratch.data.synthetic_tasks import (
    KINDS,
    PreferencePair,
    is_correct,
    is_heldout,
    make_tasks,
    preference_pairs,
    reward,
    write_jsonl,
)
from llmscratch.errors import LLMScratchError


def at_line(path, line) -> str:
    """The start of an error message about `line` of `path`."""
    return re.escape(f"{path}:{line}:")


# ---- synthetic tasks ----------------------------------------------------------------------------

def test_tasks_are_deterministic_per_seed_and_take_turns_by_kind():
    assert make_tasks(70, seed=1) == make_tasks(70, seed=1)
    assert make_tasks(70, seed=1) != make_tasks(70, seed=2)
    assert make_tasks(70, 1, "heldout") == make_tasks(70, 1, "heldout")
    examples = make_tasks(71, seed=1)
    assert [e.task for e in examples[:7]] == list(KINDS)
    assert sum(e.task == "arithmetic" for e in examples) == 11  # the 71st is arithmetic
    # Each kind draws from its own generator: asking for one kind gives the same examples.
    assert make_tasks(10, 1, kinds=["sort"]) == [e for e in examples if e.task == "sort"][:10]


def test_heldout_never_equals_a_training_example_of_any_seed():
    train = [e for seed in range(3) for e in make_tasks(1400, seed)]
    heldout = [e for seed in range(2) for e in make_tasks(700, seed, "heldout")]
    key = lambda e: (e.task, e.instruction, e.input)  # noqa: E731
    assert not {key(e) for e in train} & {key(e) for e in heldout}
    assert all(is_heldout(*key(e)) for e in heldout) and not any(is_heldout(*key(e))
                                                                 for e in train)
    one_call = make_tasks(1400, 0)
    assert len({key(e) for e in one_call}) == len(one_call)  # no repeats within a call


def answer_by_hand(example) -> str:
    """Each task's answer, worked out again from its input."""
    task, text = example.task, example.input
    if task == "arithmetic":
        a, op, b = text.split()
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if task == "reverse":
        return " ".join(text.split()[::-1])
    if task == "sort":
        return " ".join(sorted(text.split()))
    if task == "count":
        letter, word = re.fullmatch(r"letter: (\w), word: (\w+)", text).groups()
        return str(word.count(letter))
    if task == "upper":
        return text.upper()
    if task == "format":
        record = json.loads(text)
        return f"name={record['name']}; age={record['age']}"
    passage, question = text.split("\nQuestion: ")
    assert example.output in re.findall(r"\w+", passage) and len(passage.split(". ")) == 2
    return example.output


def test_every_answer_is_right_and_checked_exactly():
    for example in make_tasks(140, seed=5) + make_tasks(70, 5, "heldout"):
        assert example.output == answer_by_hand(example), example
        assert "\n" not in example.instruction and example.output.strip() == example.output
        assert is_correct(example, f"  {example.output}\n") and reward(example, example.output) == 1
        assert not is_correct(example, example.output + " " + example.output)


def test_preference_pairs_reject_a_wrong_answer_and_a_badly_formatted_one_for_every_kind():
    examples = make_tasks(280, seed=3)
    pairs = preference_pairs(examples, seed=0)
    assert len(pairs) == 2 * len(examples) and pairs == preference_pairs(examples, seed=0)
    seen = set()
    for pair in pairs:
        example = pair.example
        assert pair.chosen == example.output and pair.rejected.strip() != pair.chosen
        assert not is_correct(example, pair.rejected), pair
        if pair.kind == "wrong":
            assert reward(example, pair.rejected) == 0.0, pair
        else:
            assert pair.kind == "format" and reward(example, pair.rejected) in (0.5, 0.25), pair
        seen.add((example.task, pair.kind))
        if example.task in ("arithmetic", "count", "format") and pair.kind == "wrong":
            assert pair.how == "off by one"
    assert seen == {(task, kind) for task in KINDS for kind in ("wrong", "format")}
    hows = {p.how for p in pairs}
    assert {"off by one", "a word missing", "wrong order", "a letter missing", "the other entity",
            "chatter", "punctuation", "wrong case"} <= hows
    only_wrong = preference_pairs(examples[:5], seed=0, kinds=("wrong",))
    assert [p.kind for p in only_wrong] == ["wrong"] * 5


def test_reward_gives_partial_credit_only_for_the_right_answer():
    arithmetic = next(e for e in make_tasks(7, 0) if e.task == "arithmetic")
    answer = arithmetic.output
    assert reward(arithmetic, answer + ".") == 0.5  # format
    assert reward(arithmetic, f"Sure! {answer}") == 0.25  # chatter
    assert reward(arithmetic, f"-{answer}") == 0.0  # another number
    assert reward(arithmetic, " ".join(str(i) for i in range(200))) == 0.0  # every number
    assert reward(arithmetic, f"{arithmetic.input} = {answer}") == 0.0  # numbers beside it
    words = next(e for e in make_tasks(7, 0) if e.task == "reverse")
    assert reward(words, words.output.upper()) == 0.5
    assert reward(words, f"{words.input} {words.output}") == 0.0  # the input words around it


def test_bad_task_arguments_are_one_line_errors():
    with pytest.raises(LLMScratchError, match="split must be"):
        make_tasks(3, 0, split="test")
    with pytest.raises(LLMScratchError, match="unknown task 'poetry'"):
        make_tasks(3, 0, kinds=["poetry"])
    with pytest.raises(LLMScratchError, match="found only .* heldout examples of 'count'"):
        make_tasks(1000, 0, "heldout", kinds=["count"])
    with pytest.raises(LLMScratchError, match="unknown rejection kind"):
        preference_pairs(make_tasks(1, 0), 0, kinds=("rude",))


def test_written_tasks_read_back_as_alpaca_conversations(tmp_path):
    examples = make_tasks(14, seed=2)
    write_jsonl(examples, tmp_path / "tasks.jsonl")
    conversations = read_instructions(tmp_path / "tasks.jsonl")
    assert conversations == [e.conversation() for e in examples]
    first = conversations[0]
    assert first.response == examples[0].output and first.instruction == examples[0].instruction
    pairs = preference_pairs(examples, 0)
    write_jsonl(pairs, tmp_path / "pairs.jsonl")
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == pairs[0].to_dict() and isinstance(pairs[0], PreferencePair)
    assert set(json.loads(lines[0])) == {"task", "instruction", "input", "output", "chosen",
                                         "rejected", "kind", "how"}


# ---- the genre task -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def genre_data():
    return genre_splits()


def test_genre_split_is_by_play_with_every_genre_in_every_split(genre_data):
    plays = genre_plays()
    assert len(plays) == 29 and len({path.stem for path, _, _ in plays}) == 29
    for split in ("train", "validation", "test"):
        assert {genre for _, genre, s in plays if s == split} == set(GENRES)
    texts = {split: set(data.texts) for split, data in genre_data.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]


def test_genre_passages_are_balanced_fixed_and_headless(genre_data):
    sizes = {split: len(data) for split, data in genre_data.items()}
    assert sizes == {"train": 6432, "validation": 1167, "test": 2382}
    for data in genre_data.values():
        assert data.label_names == GENRES and len(set(data.counts().values())) == 1
    passage = genre_data["test"].texts[0]
    assert sum(bool(line.strip()) for line in passage.splitlines()) == PASSAGE_LINES
    for text in genre_data["train"].texts[:500]:
        assert not re.search(r"^(ACT [IVX]+|SCENE [IVX]+\.)", text, re.M), text
    assert genre_splits()["validation"] == genre_data["validation"]


# ---- labeled files ------------------------------------------------------------------------------

def test_csv_tsv_and_jsonl_give_the_same_labeled_texts(tmp_path):
    rows = [("a good day", "pos"), ('said "no",\nthen left', "neg"), ("fine", "pos")]
    csv_path, tsv_path, jsonl_path = (tmp_path / f"d.{ext}" for ext in ("csv", "tsv", "jsonl"))
    csv_path.write_text('id,body,mood\n1,a good day,pos\n2,"said ""no"",\nthen left",neg\n'
                        "3,fine,pos\n")
    tsv_path.write_text("body\tmood\na good day\tpos\n\"said \"\"no\"\",\nthen left\"\tneg\n"
                        "\nfine\tpos\n")
    jsonl_path.write_text("".join(json.dumps({"body": t, "mood": m}) + "\n" for t, m in rows))
    for path in (csv_path, tsv_path, jsonl_path):
        data = read_labeled(path, text_field="body", label_field="mood")
        assert data.texts == [t for t, _ in rows] and data.label_names == ["neg", "pos"]
        assert data.labels == [1, 0, 1] and data.source == str(path)
    assert read_labeled(csv_path, "body", "mood").lines == [2, 4, 5]  # a row's last line


def test_integer_labels_are_numbered_by_value(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n"
                            for i, label in enumerate([10, 2, "2", 0])))
    data = read_labeled(path)
    assert data.label_names == ["0", "2", "10"] and data.labels == [2, 1, 1, 0]


@pytest.mark.parametrize("name, content, line, message", [
    ("d.csv", "text,label\nhi,a\n", 1, "no column 'body'"),
    ("d.csv", "body,label\nhi,a\n,b\n", 3, "field 'body' is empty"),
    ("d.tsv", "body\tlabel\nhi\ta\nhi\ta\tx\n", 3, "3 fields, but the header has 2"),
    ("d.jsonl", '{"body": "hi", "label": "a"}\n{"body": "hi", "label": \n', 2, "not valid JSON"),
    ("d.jsonl", '\n{"body": "hi"}\n', 2, "no 'label' field"),
    ("d.jsonl", '{"body": "hi", "label": true}\n', 1, "the label a string or an integer"),
    ("d.jsonl", '{"body": "hi", "label": " "}\n', 1, "field 'label' is empty"),
    ("d.jsonl", '["hi", "a"]\n', 1, "expected a JSON object"),
])
def test_labeled_file_mistakes_name_the_file_and_line(tmp_path, name, content, line, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LLMScratchError, match=at_line(path, line) + ".*" + re.escape(message)):
        read_labeled(path, text_field="body")


def test_empty_or_odd_labeled_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(LLMScratchError, match="empty.csv is empty"):
        read_labeled(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(LLMScratchError, match="header.csv has no examples"):
        read_labeled(tmp_path / "header.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(LLMScratchError, match="not .csv, .tsv or .jsonl"):
        read_labeled(tmp_path / "d.xlsx")
    with pytest.raises(LLMScratchError, match="not found"):
        read_labeled(tmp_path / "missing.csv")


def test_validation_labels_are_renumbered_by_training_and_unseen_ones_refused(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,cat\nb,dog\nc,emu\n")
    (tmp_path / "val.csv").write_text("text,label\nx,emu\ny,cat\n")
    (tmp_path / "bad.csv").write_text("text,label\nx,emu\n\ny,owl\n")
    train = read_labeled(tmp_path / "train.csv")
    val = check_labels(read_labeled(tmp_path / "val.csv"), train)
    assert val.label_names == ["cat", "dog", "emu"] and val.labels == [2, 0]
    with pytest.raises(LLMScratchError, match=at_line(tmp_path / "bad.csv", 4) +
                       ".*'owl' never occurs in the training data"):
        check_labels(read_labeled(tmp_path / "bad.csv"), train)


def write_sms(path, n_ham: int, n_spam: int) -> list[str]:
    """A file in the SMS Spam Collection's layout (label, tab, text), the labels mixed."""
    labels = ["ham"] * n_ham + ["spam"] * n_spam
    random.Random(0).shuffle(labels)
    path.write_text("".join(f"{label}\tmessage {i}\n" for i, label in enumerate(labels)))
    return labels


def test_sms_spam_is_balanced_and_split_as_in_the_book(tmp_path):
    path = tmp_path / "SMSSpamCollection.tsv"
    labels = write_sms(path, n_ham=4825, n_spam=747)  # the book's counts
    data = read_sms_spam(path)
    assert data.label_names == ["ham", "spam"]
    assert data.labels == [("ham", "spam").index(label) for label in labels]
    balanced = balance_classes(data)
    assert balanced.counts() == {"ham": 747, "spam": 747}
    # pandas' df[ham].sample(747, random_state=123) is the first 747 of this permutation.
    ham_rows = [i for i, x in enumerate(labels) if x == "ham"]
    picked = np.random.RandomState(123).permutation(len(ham_rows))[:747]
    assert balanced.texts[:747] == [f"message {ham_rows[i]}" for i in picked]
    assert balanced.texts[747:] == [f"message {i}" for i, x in enumerate(labels) if x == "spam"]
    splits = sms_spam_splits(path)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [1045, 149, 300]
    train, validation, test = split_three_ways(balanced)
    assert splits["test"] == test and set(train.texts) | set(validation.texts) | set(
        test.texts) == set(balanced.texts)


def test_sms_reading_follows_pandas_quoting_and_refuses_other_files(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text('ham\tok\nham\t"a quote\nthat spans lines"\nspam\tWIN now\n')
    data = read_sms_spam(path)
    assert data.texts == ["ok", "a quote\nthat spans lines", "WIN now"] and data.lines == [1, 3, 4]
    path.write_text("ham\tok\nlabel\ttext\n")
    with pytest.raises(LLMScratchError, match=at_line(path, 2) + ".*neither 'ham' nor 'spam'"):
        read_sms_spam(path)
    path.write_text("ham\tok\nham no tab\n")
    with pytest.raises(LLMScratchError, match=at_line(path, 2) + r".*\(2 fields\), found 1"):
        read_sms_spam(path)


def test_the_sms_file_is_known_by_its_first_line_under_any_name(tmp_path):
    for name in ("SMSSpamCollection", "SMSSpamCollection.tsv", "sms.txt", "spam.csv"):
        write_sms(tmp_path / name, n_ham=3, n_spam=2)
        assert is_sms_spam(tmp_path / name), name
    (tmp_path / "book.tsv").write_text("ham\tGo until jurong point, crazy..\nspam\tWIN\n")
    assert is_sms_spam(tmp_path / "book.tsv")
    (tmp_path / "header.tsv").write_text("label\ttext\nham\tok\n")  # a header: not it
    (tmp_path / "header.csv").write_text("text,label\nham,spam\n")
    (tmp_path / "hamlet.txt").write_text("hamlet\tprince\n")
    for name in ("header.tsv", "header.csv", "hamlet.txt", "missing.tsv"):
        assert not is_sms_spam(tmp_path / name), name


def test_labeled_texts_take_keeps_lines_with_texts():
    data = LabeledTexts(["a", "b", "c"], [0, 1, 0], ["x", "y"], "f", [1, 2, 3])
    assert data.take([2, 0]) == LabeledTexts(["c", "a"], [0, 0], ["x", "y"], "f", [3, 1])


# ---- instruction files --------------------------------------------------------------------------

BOOK_PROMPT = ("Below is an instruction that describes a task. Write a response that "
               "appropriately completes the request.\n\n### Instruction:\nRewrite the sentence."
               "\n\n### Input:\nThe cat sat.\n\n### Response:\n")


def test_alpaca_json_and_chat_jsonl_become_one_kind_of_conversation(tmp_path):
    records = [{"instruction": "Rewrite the sentence.", "input": "The cat sat.",
                "output": "The cat was sitting."},
               {"instruction": "Name a colour.", "output": "Red.", "id": 7}]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=4))
    first, second = read_instructions(tmp_path / "a.json")
    assert alpaca_prompt(first) == BOOK_PROMPT and first.response == "The cat was sitting."
    assert first.prompt == [{"role": "user", "content": "Rewrite the sentence.\n\nThe cat sat."}]
    assert alpaca_prompt(second) == format_alpaca_prompt("Name a colour.")
    assert "### Input" not in alpaca_prompt(second)
    assert (first.source, second.source) == (f"{tmp_path / 'a.json'}:2", f"{tmp_path / 'a.json'}:7")

    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(chat) + "\n\n" + json.dumps(records[1]) + "\n")
    talk, alpaca = read_instructions(tmp_path / "c.jsonl")
    assert talk.prompt == chat["messages"][:2] and talk.response == "Hello."
    assert talk.messages == chat["messages"] and talk.instruction is None
    assert alpaca.source.endswith("c.jsonl:3") and alpaca.response == "Red."
    with pytest.raises(LLMScratchError, match="no Alpaca form"):
        alpaca_prompt(talk)
    one_turn = {"messages": chat["messages"][1:]}
    (tmp_path / "one.jsonl").write_text(json.dumps(one_turn) + "\n")
    assert alpaca_prompt(read_instructions(tmp_path / "one.jsonl")[0]) == format_alpaca_prompt("Hi")


def message(role, content="text"):
    return {"role": role, "content": content}


@pytest.mark.parametrize("record, message_part", [
    ({"input": "x", "output": "y"}, "field 'instruction' is missing"),
    ({"instruction": "x", "output": " "}, "field 'output' is empty"),
    ({"instruction": "x", "input": 3, "output": "y"}, "field 'input' must be a string"),
    ({"messages": [message("user"), message("robot")]}, "unknown role 'robot'"),
    ({"messages": [message("user"), message("assistant"), message("user")]},
     "ends with a user message"),
    ({"messages": [message("system"), message("assistant")]}, "has no user message"),
    ({"messages": [message("user"), message("assistant", "")]}, "message 1 (assistant) has no"),
    ({"messages": [{"role": "user"}]}, "needs a 'role' and a 'content'"),
    ({"messages": []}, "non-empty list"),
])
def test_instruction_mistakes_name_the_file_and_line(tmp_path, record, message_part):
    good = {"instruction": "Say hi.", "output": "Hi."}
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(LLMScratchError, match=at_line(jsonl, 3) + ".*" + re.escape(message_part)):
        read_instructions(jsonl)
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps([good, record], indent=2))
    line = 1 + json.dumps([good, record], indent=2).split("\n").index("  {", 2)
    with pytest.raises(LLMScratchError, match=at_line(as_json, line) + ".*" +
                       re.escape(message_part)):
        read_instructions(as_json)


def test_malformed_or_empty_instruction_files_are_one_line_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a",,}\n]')
    with pytest.raises(LLMScratchError, match=at_line(path, 3) + ".*not valid JSON"):
        read_instructions(path)
    path.write_text('{"instruction": "a", "output": "b"}')
    with pytest.raises(LLMScratchError, match="must hold a JSON list"):
        read_instructions(path)
    path.write_text("[]")
    with pytest.raises(LLMScratchError, match="has no records"):
        read_instructions(path)
    path.write_text('[{"instruction": "a", "output": "b"}, "c"]')
    with pytest.raises(LLMScratchError, match=at_line(path, 1) + ".*expected a JSON object"):
        read_instructions(path)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"\n')
    with pytest.raises(LLMScratchError, match=at_line(jsonl, 2) + ".*not valid JSON"):
        read_instructions(jsonl)
    jsonl.write_text("  \n\n")
    with pytest.raises(LLMScratchError, match="is empty"):
        read_instructions(jsonl)
    with pytest.raises(LLMScratchError, match="not .json or .jsonl"):
        read_instructions(tmp_path / "d.txt")
