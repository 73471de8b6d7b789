"""Reading a task's examples: the public benchmarks' formats, templates, few-shot prompts.

Each reader turns a file into `Doc`s (evaluation/tasks.py), writing prompts
the way lm-evaluation-harness's task configs do, so that numbers compare:

    hellaswag  JSONL {activity_label, ctx_a, ctx_b, endings, label}
               prompt "{activity_label}: {ctx_a} {ctx_b capitalised}" (with the dataset's
               "[title]"-style artefacts removed), choices the endings after " "
    arc        JSONL, AI2's {question: {stem, choices: [{text, label}]}, answerKey} or the
               Hugging Face copy's {question, choices: {text, label}, answerKey}
               prompt "Question: {question}\\nAnswer:", choices the answers' texts
    mmlu       CSV without a header: question, A, B, C, D, answer letter (one file a subject)
               prompt "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", choices " A" .. " D"
    gsm8k      JSONL {question, answer}, the answer's last line "#### 72"
               prompt "Question: {question}\\nAnswer:", reference the number after ####
    jsonl/csv  any fields, through the spec's Jinja templates (a CSV's first row names them)
    text       a UTF-8 text file (perplexity)

A `data` that is an https:// URL is downloaded once into the cache folder
($LLMSCRATCH_CACHE, default ~/.cache/llmscratch/eval); `URL#member` reads one
member of a .zip or .tar archive (a folder member: every .csv under it).

Few-shot prompts: K other examples of the same file, drawn with a random
generator seeded by (task seed, example index), each written as its query,
the target delimiter and its answer, then the fewshot delimiter, then the
question.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmscratch.data.corpus import read_text_file
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.tasks import Doc, TaskSpec
from llmscratch.io import atomic_write_bytes, read_json_records

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
LETTERS = "ABCDEFGHIJ"


# ---- files: local, or downloaded once ---------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("LLMSCRATCH_CACHE") or Path.home() / ".cache" / "llmscratch"
                ) / "eval"


def local_path(data: str) -> Path:
    """The file (or archive folder member) `data` names, downloading a URL once."""
    if "://" not in data:
        path = Path(data)
        if not path.exists():
            raise LLMScratchError(f"task data {path} not found")
        return path
    url, _, member = data.partition("#")
    folder = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]
    archive = folder / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (https)
                atomic_write_bytes(archive, response.read())
        except OSError as err:
            raise LLMScratchError(f"cannot download {url} ({err}); on a machine without a "
                                  f"network, give the file's local path as `data`") from None
    if not member:
        return archive
    target = folder / "extracted" / member
    if not target.exists():
        _extract(archive, member, folder / "extracted")
    if not target.exists():
        raise LLMScratchError(f"{url} has no member {member}")
    return target


def _extract(archive: Path, member: str, into: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.startswith(member):
                    z.extract(name, into)
        return
    with tarfile.open(archive) as t:
        chosen = [m for m in t.getmembers() if m.name.startswith(member)]
        t.extractall(into, members=chosen, filter="data")


def _jsonl(path: Path) -> list[tuple[dict, str]]:
    return [(record, f"{path}:{line}") for line, record in read_json_records(path, "task data")]


def _csv(path: Path, header: bool) -> list[tuple[dict | list, str]]:
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    rows = []
    for file in files:
        reader = csv.reader(io.StringIO(read_text_file(file)))
        names = next(reader, None) if header else None
        for number, row in enumerate(reader, 2 if header else 1):
            if names is not None:
                row = dict(zip(names, row, strict=False))
            rows.append((row, f"{file}:{number}", file.stem))
    return rows


# ---- templates ---------------------------------------------------------------------------------

def render(template: str, record: dict, where: str, what: str) -> str:
    """A Jinja template over one record; a field it lacks is one line naming it."""
    try:
        return _ENV.from_string(template).render(**record)
    except jinja2.exceptions.UndefinedError as err:
        raise LLMScratchError(f"{where}: the {what} template needs a field the record lacks "
                              f"({err.message})") from None
    except jinja2.exceptions.TemplateError as err:
        raise LLMScratchError(f"{where}: the {what} template failed ({err})") from None


def answer_index(answer: str, choices: list[str], where: str) -> int:
    """The right choice from an answer: its index, its letter (A, B, ...) or its text."""
    answer = answer.strip()
    if answer.lstrip("-").isdigit():
        index = int(answer)
    elif len(answer) == 1 and answer in LETTERS:
        index = LETTERS.index(answer)
    elif answer in choices:
        index = choices.index(answer)
    else:
        raise LLMScratchError(f"{where}: answer {answer!r} is neither a choice's index, its "
                              "letter nor its text")
    if not 0 <= index < len(choices):
        raise LLMScratchError(f"{where}: answer {index} is out of range for "
                              f"{len(choices)} choices (0 to {len(choices) - 1})")
    return index


def _field(record: dict, name: str, where: str):
    if name not in record:
        raise LLMScratchError(f"{where}: field {name!r} is missing")
    return record[name]


# ---- one reader a format -------------------------------------------------------------------------

def _generic(spec: TaskSpec, record: dict, where: str) -> Doc:
    query = render(spec.prompt, record, where, "prompt")
    answer = render(spec.answer, record, where, "answer")
    if spec.kind == "generation":
        return Doc(query=query, reference=extract_reference(spec, answer), target=answer,
                   where=where)
    if isinstance(spec.choices, list):
        choices = [render(c, record, where, "choice") for c in spec.choices]
    else:
        choices = _field(record, spec.choices, where)
        if isinstance(choices, dict) and "text" in choices:  # Hugging Face's ARC layout
            choices = choices["text"]
        if not (isinstance(choices, list) and choices and all(isinstance(c, str)
                                                              for c in choices)):
            raise LLMScratchError(f"{where}: field {spec.choices!r} must be a non-empty list "
                                  "of strings")
    gold = answer_index(answer, choices, where)
    return Doc(query=query, choices=choices, gold=gold, target=choices[gold], where=where)


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(spec: TaskSpec, record: dict, where: str) -> Doc:
    ctx_b = str(_field(record, "ctx_b", where))
    context = f"{_field(record, 'ctx_a', where)} {ctx_b[:1].upper() + ctx_b[1:]}"
    query = _hellaswag_clean(f"{record.get('activity_label', '')}: {context}")
    choices = [_hellaswag_clean(e) for e in _field(record, "endings", where)]
    gold = answer_index(str(_field(record, "label", where)), choices, where)
    return Doc(query=query, choices=choices, gold=gold, target=choices[gold], where=where)


def _arc(spec: TaskSpec, record: dict, where: str) -> Doc:
    question = _field(record, "question", where)
    if isinstance(question, dict):  # AI2's own layout
        stem = _field(question, "stem", where)
        texts = [c["text"] for c in question["choices"]]
        labels = [c["label"] for c in question["choices"]]
    else:
        stem, options = question, _field(record, "choices", where)
        texts, labels = options["text"], options["label"]
    key = str(_field(record, "answerKey", where))
    if key not in labels:
        raise LLMScratchError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    gold = labels.index(key)
    return Doc(query=f"Question: {stem}\nAnswer:", choices=texts, gold=gold,
               target=texts[gold], where=where)


def _mmlu(spec: TaskSpec, row: list, where: str) -> Doc:
    if len(row) != 6:
        raise LLMScratchError(f"{where}: an MMLU row has 6 columns (question, A, B, C, D, "
                              f"answer), this one {len(row)}")
    question, *options, letter = row
    lines = [question.strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    choices = list(LETTERS[:4])
    gold = answer_index(letter, choices, where)
    return Doc(query="\n".join(lines) + "\nAnswer:", choices=choices, gold=gold,
               target=choices[gold], where=where)


def _gsm8k(spec: TaskSpec, record: dict, where: str) -> Doc:
    answer = str(_field(record, "answer", where))
    return Doc(query=f"Question: {_field(record, 'question', where)}\nAnswer:",
               reference=extract_reference(spec, answer), target=answer, where=where)


def extract_reference(spec: TaskSpec, answer: str) -> str:
    """The reference to compare with: what `extract` finds in the answer, if it finds one."""
    if spec.extract:
        match = re.search(spec.extract, answer)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return answer.strip()


READERS = {"jsonl": _generic, "csv": _generic, "hellaswag": _hellaswag, "arc": _arc,
           "mmlu": _mmlu, "gsm8k": _gsm8k}


def read_docs(spec: TaskSpec) -> list[Doc]:
    """Every example of a file-based task (builtin tasks: evaluation/offline_tasks.py)."""
    path = local_path(spec.data)
    if spec.format == "text":
        return [Doc(text=read_text_file(path), where=str(path))]
    if spec.format in ("csv", "mmlu"):
        rows = _csv(path, header=spec.format == "csv")
        docs = [READERS[spec.format](spec, row, where) for row, where, _ in rows]
        if spec.format == "mmlu":  # a description naming each subject, as lm-eval writes it
            for doc, (_, _, stem) in zip(docs, rows, strict=True):
                subject = stem.removesuffix("_test").removesuffix("_dev").replace("_", " ")
                doc.task = subject
    else:
        docs = [READERS[spec.format](spec, record, where) for record, where in _jsonl(path)]
    if not docs:
        raise LLMScratchError(f"task {spec.name}: {path} holds no examples")
    return docs


# ---- few-shot prompts ---------------------------------------------------------------------------

def fewshot_query(spec: TaskSpec, docs: list[Doc], index: int, shots: int) -> str:
    """Example `index`'s query after `shots` solved examples of the same task."""
    if shots < 0:
        raise LLMScratchError(f"--shots must be 0 or more, got {shots}")
    doc = docs[index]
    description = spec.description
    if spec.format == "mmlu" and doc.task:
        description = (f"The following are multiple choice questions (with answers) about "
                       f"{doc.task}.\n\n")
    if shots == 0:
        return description + doc.query
    if shots >= len(docs):
        raise LLMScratchError(f"task {spec.name}: {shots} shots need more than the "
                              f"{len(docs)} examples the task has")
    solved = [docs[i].query + spec.target_delimiter + docs[i].target
              for i in shot_indices(spec, len(docs), index, shots)]
    return description + spec.fewshot_delimiter.join(solved + [doc.query])


def shot_indices(spec: TaskSpec, n_docs: int, index: int, shots: int) -> list[int]:
    """The `shots` examples solved before example `index`: any others, drawn with the
    task's seed and the index (so each example has its own, and the same every time)."""
    rng = random.Random(f"{spec.seed}:{index}")
    return [i + (i >= index) for i in rng.sample(range(n_docs - 1), shots)]  # skip `index`
