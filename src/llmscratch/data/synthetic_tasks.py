"""Synthetic instruction tasks whose answers a program can check.

Instruction tuning (the book's chapter 7) needs examples of instructions and
their answers; alignment (reward models, DPO, RL) needs to know whether an
answer is right. Here both come from small generated tasks, each in the book's
Alpaca fields, short enough for a few-million-parameter model to learn some of
them in minutes (one-line instructions, answers of a few tokens):

    task        input                                        output
    arithmetic  57 - 23                                      34
    reverse     crown moon sword                             sword moon crown
    sort        rose king moon                               king moon rose
    count       letter: r, word: mirror                      3
    upper       swan tower                                   SWAN TOWER
    format      {"name": "Ann", "age": 31}                   name=Ann; age=31
    passage     Ann lives in Verona. Ben lives in Rome.      Verona
                Question: Where does Ann live?

Each task has one instruction (INSTRUCTIONS: "Calculate the result.",
"Reverse the order of the words.", ...); the input is what changes. Numbers
are 0 to 99 (a difference is never negative), word lists 3 or 4 distinct
words of WORDS, upper-casing 1 or 2 words, ages 18 to 99, and a passage is
two sentences about two people from three templates. With the demo's
2,048-token tokenizer, answers are 1 to 14 tokens, 6 on average (the format
task reads JSON and writes key=value: JSON written out costs 20 tokens, a
token for every brace and quote).

How many distinct examples a split can give: about 750 held-out count and
1,000 held-out format examples (20% of their instances), 3,000 to 3,900
training ones; the other tasks far more. Asking for more is an error.

Splits. `make_tasks(n, seed, split)` draws instances from a random generator
seeded by (seed, split, task). Whether an instance is held out does not depend
on the seed: it is held out when the SHA-256 of its task, instruction and input
falls in the last HELDOUT_PERCENT of its range (`is_heldout`). So no held-out
example ever equals a training example, whatever the seeds of either. Within
one call, no example repeats.

Checking. `is_correct`: the response, stripped of surrounding whitespace,
equals the output exactly. `reward` adds partial credit for a right answer in
the wrong form (see its docstring). `preference_pairs` pairs each right answer
with a wrong one of two kinds, for reward models and DPO.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llmscratch.data.instruction_files import Conversation, from_alpaca
from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_text

KINDS = ("arithmetic", "reverse", "sort", "count", "upper", "format", "passage")
HELDOUT_PERCENT = 20
MAX_TRIES = 1000  # draws per example before giving up on finding a new one

WORDS = """anchor apple arrow badge banner barrel basket beard bell bird blood boat bone bread
bridge brook candle cannon castle cellar chain cherry cloak clock cloud coal coin copper crow crown
cup dagger daisy dawn deer desert diamond door dove dream drum eagle earth ember feather fern
field flag flower flute fool forest frost garden gate ghost glove grape grass hammer harp hazel
heart helmet hill honey hound house ink iron island ivory jewel kettle king knight lady lamp
lantern leaf lily lion lord lute maid marble mast meadow milk mirror moon mouse nest night oak
ocean orchard oyster page palace pearl pebble pen pig pine plum queen quill rain reed ring
river rose ruby saddle salt sand scroll seed shadow sheep shell shield ship silver skull sky
snow song spear spice spoon star stone storm sun sword table thorn thread throne tiger tower
tree tulip valley veil violet wagon water whale wheat wheel willow window wolf wood wren""".split()
NAMES = """Ann Ben Cleo Dan Eve Finn Grace Hal Jack Kate Leo Mia Ned Olga Paul Rosa Sam Tom Una
Viola Will Zoe Bianca Hero Juliet Romeo Portia Puck Lear Hamlet Ophelia Kent Iago Emilia Celia
Orlando Rosalind Miranda Ariel Oberon Adam Beatrice Cassio Duncan Edgar Feste Gonzalo Helena
Imogen Jaques Lorenzo Macbeth Nerissa Oliver Perdita Regan Silvia Titania Valentine""".split()
PLACES = """Verona Venice Padua Milan Athens Rome Vienna Paris London Windsor Dover Messina
Mantua Naples Sicily Elsinore Illyria Ephesus Tyre Troy""".split()
COLOURS = "red blue green white black grey brown golden".split()
ANIMALS = "cat dog horse hawk goat owl lamb fox swan raven".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

INSTRUCTIONS = {
    "arithmetic": "Calculate the result.",
    "reverse": "Reverse the order of the words.",
    "sort": "Sort the words alphabetically.",
    "count": "Count how many times the letter appears in the word.",
    "upper": "Write the words in capital letters.",
    "format": "Write the JSON record as key=value pairs.",
    "passage": "Answer the question with one word from the passage.",
}


@dataclass(frozen=True)
class TaskExample:
    """One task instance in the book's Alpaca fields, plus which task it is."""

    task: str
    instruction: str
    input: str
    output: str

    def to_dict(self) -> dict:
        return asdict(self)

    def conversation(self) -> Conversation:
        """The example as SFT reads it (data/instruction_files.py)."""
        return from_alpaca(self.instruction, self.input, self.output)


# ---- one generator a task: (input, output) from a random generator --------------------------

def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"{a} + {b}", str(a + b)
    a, b = max(a, b), min(a, b)  # answers stay at or above zero
    return f"{a} - {b}", str(a - b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return " ".join(words), " ".join(reversed(words))


def _sort(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return " ".join(words), " ".join(sorted(words))


def _count(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    # Mostly a letter of the word; sometimes any letter, so that 0 is an answer too.
    letter = rng.choice(word) if rng.random() < 0.75 else rng.choice(string.ascii_lowercase)
    return f"letter: {letter}, word: {word}", str(word.count(letter))


def _upper(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(WORDS, rng.randint(1, 2)))
    return words, words.upper()


def _format(rng: random.Random) -> tuple[str, str]:
    name, age = rng.choice(NAMES), rng.randint(18, 99)
    return json.dumps({"name": name, "age": age}), f"name={name}; age={age}"


def _passage(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    p1, p2 = rng.sample(PLACES, 2)
    template = rng.randrange(3)
    if template == 0:
        passage = f"{a} lives in {p1}. {b} lives in {p2}."
        question, answer = rng.choice([(f"Where does {a} live?", p1), (f"Who lives in {p2}?", b)])
    elif template == 1:
        c1, c2 = rng.sample(COLOURS, 2)
        n1, n2 = rng.choice(ANIMALS), rng.choice(ANIMALS)
        passage = f"{a} has a {c1} {n1}. {b} has a {c2} {n2}."
        question, answer = rng.choice([(f"What colour is {a}'s {n1}?", c1),
                                       (f"Who has a {c2} {n2}?", b)])
    else:
        d1, d2 = rng.sample(DAYS, 2)
        passage = f"{a} sails to {p1} on {d1}. {b} sails to {p2} on {d2}."
        question, answer = rng.choice([(f"On which day does {b} sail?", d2),
                                       (f"Where does {a} sail to?", p1)])
    return f"{passage}\nQuestion: {question}", answer


GENERATORS = {"arithmetic": _arithmetic, "reverse": _reverse, "sort": _sort, "count": _count,
              "upper": _upper, "format": _format, "passage": _passage}


# ---- splits ----------------------------------------------------------------------------------

def is_heldout(task: str, instruction: str, input: str) -> bool:
    """Whether an instance belongs to the held-out split: by a hash of it, not by any seed."""
    digest = hashlib.sha256(f"{task}\n{instruction}\n{input}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 >= 100 - HELDOUT_PERCENT


def make_tasks(n: int, seed: int, split: str = "train",
               kinds: Sequence[str] | None = None) -> list[TaskExample]:
    """`n` distinct examples of the split, the kinds taking turns (see the module docstring).

    Each kind has its own random generator, so asking for fewer kinds does
    not change the examples of the others.
    """
    if split not in ("train", "heldout"):
        raise LLMScratchError(f"split must be 'train' or 'heldout', not {split!r}")
    if n < 0:
        raise LLMScratchError(f"the number of examples must be 0 or more, not {n}")
    kinds = list(dict.fromkeys(kinds or KINDS))  # each kind once, in the order given
    for kind in kinds:
        if kind not in GENERATORS:
            raise LLMScratchError(f"unknown task {kind!r}; tasks are {', '.join(KINDS)}")
    per_kind = [_draw(kind, n // len(kinds) + (i < n % len(kinds)), seed, split)
                for i, kind in enumerate(kinds)]
    return [examples[i] for i in range(len(per_kind[0])) for examples in per_kind
            if i < len(examples)]


def _draw(kind: str, count: int, seed: int, split: str) -> list[TaskExample]:
    rng = random.Random(f"{seed}:{split}:{kind}")  # a str seed is hashed the same in every run
    seen, examples = set(), []
    while len(examples) < count:
        for _ in range(MAX_TRIES):
            input, output = GENERATORS[kind](rng)
            if input not in seen and is_heldout(kind, INSTRUCTIONS[kind], input) == (
                    split == "heldout"):
                break
        else:
            raise LLMScratchError(f"found only {len(examples)} distinct {split} examples of "
                                  f"{kind!r}; ask for fewer")
        seen.add(input)
        examples.append(TaskExample(kind, INSTRUCTIONS[kind], input, output))
    return examples


# ---- checking answers --------------------------------------------------------------------------

FORMAT_CREDIT = 0.5  # the right answer in another case, punctuation or spacing
CHATTER_CREDIT = 0.25  # the right answer among words that are not another answer


def is_correct(example: TaskExample, response: str) -> bool:
    """Exact match of the response with the output, once whitespace around both is stripped."""
    return response.strip() == example.output.strip()


def _words(text: str) -> list[str]:
    """Lower-cased words and signed numbers, punctuation and spacing dropped."""
    return re.findall(r"-?[0-9]+|[^\W_]+", text.casefold())


def reward(example: TaskExample, response: str) -> float:
    """A verifiable reward in [0, 1] for one response.

    - 1.0 (`is_correct`): exactly the output.
    - FORMAT_CREDIT = 0.5: the same words and numbers in the same order, in
      another case, punctuation or spacing ("sword, moon", "verona",
      "name: Ann, age: 31").
    - CHATTER_CREDIT = 0.25: those words inside other words ("Sure! 34"),
      none of which is a number or a word of the input: listing many answers
      to contain the right one earns nothing.
    - 0.0 otherwise.
    """
    if is_correct(example, response):
        return 1.0
    answer, words = _words(example.output), _words(response)
    if words == answer:
        return FORMAT_CREDIT
    given = set(_words(example.input))
    for start in range(len(words) - len(answer) + 1):
        if words[start:start + len(answer)] == answer:
            rest = words[:start] + words[start + len(answer):]
            if not any(w in given or any(ch.isdigit() for ch in w) for w in rest):
                return CHATTER_CREDIT
    return 0.0


def task_rewards(prompts: Sequence, completions: Sequence[str], task: Sequence[str],
                 instruction: Sequence[str], input: Sequence[str], output: Sequence[str],
                 **columns) -> list[float]:
    """`reward` for a batch, in the form TRL's reward functions take (RL's default reward).

    Each argument but `completions` is a column of the prompts' records: the
    task's fields, one value a completion.
    """
    return [reward(TaskExample(*fields), completion) for *fields, completion in
            zip(task, instruction, input, output, completions, strict=True)]


# ---- preference pairs --------------------------------------------------------------------------

REJECTION_KINDS = ("wrong", "format")
# Words that no input holds, so that an answer wrapped in them earns CHATTER_CREDIT.
CHATTER = ("Answer: {}", "Sure! {}", "Here you go: {}", "{}. Hope that helps!")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (the example) with a preferred and a rejected response.

    kind: "wrong" (a plausible wrong answer: reward 0.0) or "format" (the
    right answer badly formatted: reward FORMAT_CREDIT or CHATTER_CREDIT).
    how: what was done to the answer ("off by one", "a word missing", ...).
    """

    example: TaskExample
    chosen: str
    rejected: str
    kind: str
    how: str

    def to_dict(self) -> dict:
        """Flat, as preference files usually are: the Alpaca prompt fields, then the pair."""
        return {**self.example.to_dict(), "chosen": self.chosen, "rejected": self.rejected,
                "kind": self.kind, "how": self.how}


def preference_pairs(examples: Iterable[TaskExample], seed: int,
                     kinds: Sequence[str] = REJECTION_KINDS) -> list[PreferencePair]:
    """For each example, one pair a kind in `kinds`: chosen is the output, rejected is not."""
    for kind in kinds:
        if kind not in REJECTION_KINDS:
            raise LLMScratchError(f"unknown rejection kind {kind!r}; kinds are "
                                  f"{', '.join(REJECTION_KINDS)}")
    rng = random.Random(f"{seed}:preferences")
    pairs = []
    for example in examples:
        for kind in kinds:
            rejected, how = (_wrong_answer if kind == "wrong" else _badly_formatted)(example, rng)
            pairs.append(PreferencePair(example, example.output, rejected, kind, how))
    return pairs


def _wrong_answer(example: TaskExample, rng: random.Random) -> tuple[str, str]:
    """A plausible wrong answer: what a model that nearly learned the task would write."""
    task, output = example.task, example.output
    if task in ("arithmetic", "count"):
        value = int(output)
        return str(value + 1 if value == 0 or rng.random() < 0.5 else value - 1), "off by one"
    if task == "format":
        record = json.loads(example.input)
        return f"name={record['name']}; age={record['age'] + 1}", "off by one"
    if task == "passage":
        # The word of the same sort (name, place, colour, day) from the other sentence.
        group = next(g for g in (NAMES, PLACES, COLOURS, DAYS) if output in g)
        passage = example.input.split("\n")[0]
        other = next(w for w in re.findall(r"\w+", passage) if w in group and w != output)
        return other, "the other entity"
    words = output.split()
    if task == "upper":
        i = rng.randrange(len(words))
        cut = rng.randrange(len(words[i]))
        words[i] = words[i][:cut] + words[i][cut + 1:]
        return " ".join(words), "a letter missing"
    if rng.random() < 0.5:
        del words[rng.randrange(len(words))]
        return " ".join(words), "a word missing"
    if task == "reverse":
        return example.input, "wrong order"
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words), "wrong order"


def _badly_formatted(example: TaskExample, rng: random.Random) -> tuple[str, str]:
    """The right answer in a form that is not the asked one: chatter, case, punctuation."""
    output = example.output
    if rng.random() < 0.5:
        return rng.choice(CHATTER).format(output), "chatter"
    if example.task == "format":
        return output.replace("=", ": ").replace(";", ","), "punctuation"  # name: Ann, age: 31
    if example.task in ("arithmetic", "count"):
        return output + ".", "punctuation"
    if example.task in ("reverse", "sort"):
        return ", ".join(output.split()), "punctuation"
    return (output.title() if example.task == "upper" else output.upper()), "wrong case"


# ---- files ---------------------------------------------------------------------------------------

def write_jsonl(records: Iterable[TaskExample | PreferencePair], path: str | Path) -> None:
    """Examples (Alpaca fields and task) or preference pairs, one JSON object a line.

    A file of examples is what `read_instructions` reads for SFT.
    """
    lines = [json.dumps(record.to_dict(), ensure_ascii=False) + "\n" for record in records]
    atomic_write_text(path, "".join(lines))
