"""Benchmark tasks as data: a small declarative spec, checked before anything runs.

A task is a YAML (or JSON) file, so that a user adds one without code:

    name: my-arc                        # results go to RUN/eval/my-arc.json
    kind: multiple_choice               # multiple_choice | generation | perplexity
    format: jsonl                       # jsonl | csv | hellaswag | arc | mmlu | gsm8k | text
    data: arc_sample.jsonl              # a path (relative to this file) or an https:// URL
    prompt: "Question: {{question}}\\nAnswer:"   # Jinja, over one record's fields
    choices: options                    # a field holding the list of choices
    answer: "{{label}}"                 # the right choice: an index, a letter, or its text

Generation tasks give `answer` as the reference text and, optionally, an
`extract` regular expression whose first group is the answer in the reply
(or "gsm8k": `#### 72`); `until` lists strings that end a reply. A
perplexity task is a text file (`format: text`). The public benchmarks'
formats (HellaSwag, ARC, MMLU, GSM8K) need no templates: their readers know
the fields and write the prompts as lm-evaluation-harness does
(evaluation/task_formats.py).

Every task becomes a list of `Doc`s, the one shape the scorers read. Names
that are not files are looked up in CATALOG: the offline tasks shipped with
the project (evaluation/offline_tasks.py) and the public benchmarks, which
are downloaded once, with a network, into the cache (task_formats.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from llmscratch.config import check_seed, from_dict
from llmscratch.errors import LLMScratchError
from llmscratch.io import parse_json, parse_yaml, read_text

KINDS = ("multiple_choice", "generation", "perplexity")
FORMATS = ("jsonl", "csv", "hellaswag", "arc", "mmlu", "gsm8k", "text", "builtin")
PROMPT_FORMATS = ("text", "chat", "alpaca")
GSM8K_EXTRACT = r"#### (-?[0-9.,]+)"  # lm-evaluation-harness's "strict-match"


@dataclass
class TaskSpec:
    """One task (see the module docstring for the file that holds it).

    name: what the results are called (RUN/eval/NAME.json).
    kind: multiple_choice (log-likelihood of each choice), generation (greedy
        reply, exact match after extraction) or perplexity (loss and bits per byte).
    format: how `data` is read; "builtin" is one of the offline tasks.
    data: a file, relative to the spec's folder, or an https:// URL (cached).
    prompt: Jinja template of the question, over one record's fields.
    choices: multiple choice: the field holding the choices, or a list of templates.
    answer: template of the answer: the right choice's index, letter or text
        (multiple choice), the reference text (generation).
    target_delimiter: what separates the prompt from a choice or an answer (" ").
    fewshot_delimiter: what separates solved examples from each other and the question.
    description: text put once before the few-shot examples.
    extract: generation: a regular expression whose first group is the answer
        (whole match when it has no group), or "gsm8k"; empty: the whole reply.
    until: generation: the reply ends before the first of these strings.
    max_new_tokens: generation: at most this many tokens a reply.
    prompt_format: generation: "text" (the prompt as it is), "chat" (a user message
        in the run's chat template) or "alpaca" (the book's instruction format).
    random_baseline: the accuracy of guessing, for the centred score (aggregate.py);
        None: 1 / choices for multiple choice, 0 for generation.
    seed: draws the few-shot examples (and an offline task's examples).
    size: a builtin task's number of examples.
    """

    name: str
    kind: str
    format: str = "jsonl"
    data: str = ""
    prompt: str = ""
    choices: str | list[str] = ""
    answer: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    extract: str = ""
    until: list[str] = field(default_factory=lambda: ["\n\n"])
    max_new_tokens: int = 64
    prompt_format: str = "text"
    random_baseline: float | None = None
    seed: int = 1234
    size: int = 0

    def __post_init__(self) -> None:
        where = f"task {self.name or '?'}"
        if not self.name or not isinstance(self.name, str) or "/" in self.name:
            raise LLMScratchError(f"{where}: `name` must be a non-empty string without '/'")
        if self.kind not in KINDS:
            raise LLMScratchError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.format not in FORMATS:
            raise LLMScratchError(f"{where}: format {self.format!r} is not one of "
                                  f"{', '.join(FORMATS)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise LLMScratchError(f"{where}: prompt_format {self.prompt_format!r} is not one "
                                  f"of {', '.join(PROMPT_FORMATS)}")
        if self.format != "builtin" and not self.data:
            raise LLMScratchError(f"{where}: `data` is missing: give the file (or URL) to read")
        if self.format in ("jsonl", "csv") and self.kind != "perplexity":
            missing = [name for name in ("prompt", "answer") if not getattr(self, name)]
            if self.kind == "multiple_choice" and not self.choices:
                missing.append("choices")
            if missing:
                raise LLMScratchError(f"{where}: field(s) {', '.join(missing)} missing: a "
                                      f"{self.format} task names its prompt, choices and answer")
        if self.kind == "perplexity" and self.format not in ("text", "builtin"):
            raise LLMScratchError(f"{where}: a perplexity task reads a text file (format: text)")
        if self.max_new_tokens < 1:
            raise LLMScratchError(f"{where}: max_new_tokens must be at least 1, "
                                  f"got {self.max_new_tokens}")
        if self.extract == "gsm8k":
            self.extract = GSM8K_EXTRACT
        try:
            re.compile(self.extract)
        except re.error as err:
            raise LLMScratchError(f"{where}: extract {self.extract!r} is not a regular "
                                  f"expression ({err})") from None
        check_seed(self.seed, f"{where}: seed")
        if isinstance(self.until, str):
            self.until = [self.until]


@dataclass
class Doc:
    """One example, in the shape every scorer reads.

    query: the question as the model sees it (before the target delimiter).
    choices: multiple choice: the continuations scored; gold: the right one's index.
    reference: generation: the answer to match (after extraction);
    target: the solved answer shown when this example is a few-shot example.
    text: perplexity: the text to score.
    input: an instruction's input (prompt_format chat or alpaca: `query` is the instruction).
    where: the file and line it came from, for messages.
    task: an offline generation task's sub-task (arithmetic, reverse, ...), or "".
    """

    query: str = ""
    choices: list[str] = field(default_factory=list)
    gold: int = -1
    reference: str = ""
    target: str = ""
    text: str = ""
    input: str = ""
    where: str = ""
    task: str = ""


def load_spec(path: str | Path) -> TaskSpec:
    """A task spec from a .yaml/.yml/.json file; `data` is made relative to the file."""
    path = Path(path)
    raw = read_text(path, "task file")
    document = (parse_json(raw, str(path)) if path.suffix == ".json"
                else parse_yaml(raw, f"task file {path}"))
    if not isinstance(document, dict):
        raise LLMScratchError(f"task file {path} must hold a mapping of fields")
    known = {f.name for f in fields(TaskSpec)}
    unknown = sorted(set(document) - known)
    if unknown:
        raise LLMScratchError(f"task file {path}: unknown field(s) {', '.join(unknown)}; "
                              f"fields are {', '.join(sorted(known))}")
    for name in ("name", "kind"):
        if name not in document:
            raise LLMScratchError(f"task file {path}: field `{name}` is missing")
    data = str(document.get("data") or "")
    if data and "://" not in data and not Path(data).is_absolute():
        document["data"] = str(path.parent / data)
    return from_dict(TaskSpec, document, prefix=f"task file {path}: ")


def resolve_task(name: str) -> TaskSpec:
    """A task by name: a spec file's path, a .txt file (perplexity), or a name in CATALOG."""
    if name in CATALOG:
        return CATALOG[name]
    if name.endswith(".txt"):  # a text file: its loss, perplexity and bits per byte
        return TaskSpec(Path(name).stem, "perplexity", format="text", data=name)
    if name.endswith((".yaml", ".yml", ".json")) or Path(name).is_file():
        if not Path(name).is_file():
            raise LLMScratchError(f"task file {name} not found")
        return load_spec(name)
    raise LLMScratchError(f"unknown task {name!r}: give a task file (.yaml or .json) or one "
                          f"of {', '.join(CATALOG)}")


HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/master/"
             "grade_school_math/data/test.jsonl")
ARC_URL = "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip"
MMLU_URL = "https://people.eecs.berkeley.edu/~hendrycks/data.tar"

# Offline tasks (no network: built from what the project ships) and public benchmarks
# (downloaded once into the cache; the archive member follows '#').
CATALOG = {spec.name: spec for spec in [
    TaskSpec("synthetic", "generation", format="builtin", prompt_format="chat",
             max_new_tokens=32, until=[], size=350, seed=1234),
    TaskSpec("next-line", "multiple_choice", format="builtin", size=500, seed=1234,
             target_delimiter=""),
    TaskSpec("plays-bpb", "perplexity", format="builtin"),
    TaskSpec("hellaswag", "multiple_choice", format="hellaswag", data=HELLASWAG_URL),
    TaskSpec("arc_easy", "multiple_choice", format="arc",
             data=ARC_URL + "#ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl"),
    TaskSpec("arc_challenge", "multiple_choice", format="arc",
             data=ARC_URL + "#ARC-V1-Feb2018-2/ARC-Challenge/ARC-Challenge-Test.jsonl"),
    TaskSpec("mmlu", "multiple_choice", format="mmlu", data=MMLU_URL + "#data/test/"),
    TaskSpec("gsm8k", "generation", format="gsm8k", data=GSM8K_URL, extract="gsm8k",
             until=["Question:", "\n\n"], max_new_tokens=256),
]}
