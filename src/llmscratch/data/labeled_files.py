"""Texts with class labels, for classification fine-tuning (the book's chapter 6).

A classifier learns from pairs (text, label). Whatever file they come from,
they end up as one `LabeledTexts`: the texts, each label as an index into
`label_names` (what the model's output layer predicts), and, for messages,
the file and the line each text came from.

Files read here (the format is chosen by the extension):

- `.csv` / `.tsv`: a header line, then one row per example; the columns
  named by `text_field` and `label_field` hold the text and its label.
  A quoted field may span lines; a row's line is the line it ends on.
- `.jsonl`: one JSON object per line, with the same two fields (a label may
  be a string or an integer).
- the SMS Spam Collection the book uses (`read_sms_spam`): `label<TAB>text`,
  no header, labels `ham` and `spam`. Whatever its name, `is_sms_spam`
  knows it by its first line (`ham<TAB>Go until jurong point...`: a first
  field `ham` or `spam`, where a header would name a column).

Labels are numbered in sorted order (numerically when every label is an
integer, so "2" comes before "10"). A validation or test file must use only
labels seen in training: `check_labels` renumbers it by the training
labels, and names the file and line of the first label training never saw.

The book then balances and splits the SMS data with pandas:

    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    balanced_df = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    df = balanced_df.sample(frac=1, random_state=123)   # then 70% / 10% / 20%

`balance_classes` and `split_three_ways` do the same without pandas, and give
the same rows in the same order: pandas' `sample(n, random_state=123)` takes
the first n entries of `numpy.random.RandomState(123).permutation(len)`, and
that is what we take. Reading the file follows `pd.read_csv(sep="\\t")`'s
quoting: a message that begins with `"` runs to the closing quote, even over
a line break (which is why the book counts 5,572 messages, not the 5,574
lines of the file). One difference remains: pandas reads a message that is
exactly `NA`, `null` or the like as a missing value; we keep the text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmscratch.data.corpus import read_text_file
from llmscratch.errors import LLMScratchError
from llmscratch.io import read_json_records

SMS_LABELS = ("ham", "spam")  # the book maps ham -> 0, spam -> 1
BOOK_SEED = 123  # the book's random_state for balancing and shuffling


@dataclass(frozen=True)
class LabeledTexts:
    """Texts and their class labels: what a classifier is trained or tested on.

    texts[i] has label labels[i], an index into label_names. source and
    lines say where each text came from (a file and its line numbers), so
    that a later check can point at the line; generated data leaves them empty.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices) -> LabeledTexts:
        """The examples at `indices`, in that order (same label names)."""
        indices = [int(i) for i in indices]
        lines = [self.lines[i] for i in indices] if self.lines else []
        return LabeledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                            self.label_names, self.source, lines)

    def counts(self) -> dict[str, int]:
        """How many examples each label has, by label name."""
        found = {name: 0 for name in self.label_names}
        for label in self.labels:
            found[self.label_names[label]] += 1
        return found


def sorted_labels(names) -> list[str]:
    """Label names in the order they are numbered: by value if all are integers, else by text."""
    names = set(names)
    if all(_is_integer(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit()


def from_named_labels(texts: list[str], names: list[str], source: str = "",
                      lines: list[int] | None = None) -> LabeledTexts:
    """LabeledTexts from a label name per text, numbered by `sorted_labels`."""
    label_names = sorted_labels(names)
    index = {name: i for i, name in enumerate(label_names)}
    return LabeledTexts(texts, [index[name] for name in names], label_names, source,
                        lines or [])


# ---- user files: CSV, TSV, JSONL ------------------------------------------------------------

def read_labeled(path: str | Path, text_field: str = "text",
                 label_field: str = "label") -> LabeledTexts:
    """The labeled texts of a .csv, .tsv or .jsonl file (see the module docstring)."""
    path = Path(path)
    if path.suffix not in (".csv", ".tsv", ".jsonl"):
        raise LLMScratchError(f"cannot read labeled texts from {path}: its extension is not "
                              ".csv, .tsv or .jsonl; rename or convert it")
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path, text_field, label_field)
    else:
        text = read_text_file(path).removeprefix("\ufeff")  # the byte-order mark Excel writes
        rows = _table_rows(path, text, "\t" if path.suffix == ".tsv" else ",",
                           text_field, label_field)
    if not rows:
        raise LLMScratchError(f"{path} has no examples; give at least one row")
    lines, texts, names = (list(column) for column in zip(*rows, strict=True))
    return from_named_labels(texts, names, str(path), lines)


def _table_rows(path: Path, text: str, delimiter: str, text_field: str,
                label_field: str) -> list[tuple[int, str, str]]:
    rows_in = _csv_rows(path, text, delimiter)
    header_line, header = next(rows_in)
    for name in (text_field, label_field):
        if name not in header:
            raise LLMScratchError(f"{path}:{header_line}: no column {name!r} in the header "
                                  f"(columns: {', '.join(header)}); name the right column")
    text_col, label_col = header.index(text_field), header.index(label_field)
    rows = []
    for line, row in rows_in:
        if len(row) != len(header):
            raise LLMScratchError(f"{path}:{line}: {len(row)} fields, but the header has "
                                  f"{len(header)}; quote a field that holds the delimiter")
        rows.append((line, _nonempty(path, line, text_field, row[text_col]),
                     _nonempty(path, line, label_field, row[label_col])))
    return rows


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each non-blank row; a row's line is the line it ends on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as err:
        raise LLMScratchError(f"{path}:{reader.line_num + 1}: cannot be read as a table "
                              f"({err})") from None


def _jsonl_rows(path: Path, text_field: str, label_field: str) -> list[tuple[int, str, str]]:
    rows = []
    for line, record in read_json_records(path):
        for name in (text_field, label_field):
            if name not in record:
                raise LLMScratchError(f"{path}:{line}: no {name!r} field; every line needs "
                                      f"{text_field!r} and {label_field!r}")
        label = record[label_field]
        if isinstance(label, int) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(record[text_field], str) or not isinstance(label, str):
            raise LLMScratchError(f"{path}:{line}: the text must be a string and the label a "
                                  "string or an integer")
        rows.append((line, _nonempty(path, line, text_field, record[text_field]),
                     _nonempty(path, line, label_field, label)))
    return rows


def _nonempty(path: Path, line: int, name: str, value: str) -> str:
    if not value.strip():
        raise LLMScratchError(f"{path}:{line}: field {name!r} is empty; give it a value or "
                              "remove the line")
    return value


def check_labels(split: LabeledTexts, train: LabeledTexts) -> LabeledTexts:
    """`split` (validation or test) renumbered by the training labels.

    A label that never occurs in training is an error naming its file and
    line: the classifier has no output for it.
    """
    index = {name: i for i, name in enumerate(train.label_names)}
    labels = []
    for i, label in enumerate(split.labels):
        name = split.label_names[label]
        if name not in index:
            where = f"{split.source}:{split.lines[i]}" if split.lines else split.source
            known = ", ".join(train.label_names[:10]) + (", ..." if len(index) > 10 else "")
            raise LLMScratchError(f"{where}: label {name!r} never occurs in the training data "
                                  f"{train.source} (its labels: {known})")
        labels.append(index[name])
    return LabeledTexts(split.texts, labels, train.label_names, split.source, split.lines)


# ---- the book's SMS Spam Collection ---------------------------------------------------------

def is_sms_spam(path: str | Path) -> bool:
    """Whether a file looks like the SMS Spam Collection: its first line is `ham<TAB>...` or
    `spam<TAB>...`, not a header. (A file that cannot be read is not: its reader says why.)"""
    try:
        with open(path, "rb") as file:
            first = file.readline(4096)
    except OSError:
        return False
    label, tab, _ = first.decode("utf-8", "replace").removeprefix("\ufeff").partition("\t")
    return bool(tab) and label in SMS_LABELS


def read_sms_spam(path: str | Path) -> LabeledTexts:
    """The SMS Spam Collection (`label<TAB>text`, no header), ham -> 0 and spam -> 1."""
    path = Path(path)
    texts, labels, lines = [], [], []
    for line, row in _csv_rows(path, read_text_file(path).removeprefix("\ufeff"), "\t"):
        if len(row) != 2:
            raise LLMScratchError(f"{path}:{line}: expected 'label<TAB>text' (2 fields), "
                                  f"found {len(row)}")
        if row[0] not in SMS_LABELS:
            raise LLMScratchError(f"{path}:{line}: label {row[0]!r} is neither 'ham' nor "
                                  "'spam'; is this the SMS Spam Collection?")
        texts.append(row[1])
        labels.append(SMS_LABELS.index(row[0]))
        lines.append(line)
    return LabeledTexts(texts, labels, list(SMS_LABELS), str(path), lines)


def balance_classes(data: LabeledTexts, seed: int = BOOK_SEED) -> LabeledTexts:
    """Every class cut down to the size of the smallest, as the book balances ham and spam.

    Class by class in label order, a larger class keeps the first n of
    `RandomState(seed).permutation(its size)` (pandas' `sample(n,
    random_state=seed)`), a class of the smallest size keeps its order.
    """
    members = [[i for i, label in enumerate(data.labels) if label == c]
               for c in range(len(data.label_names))]
    smallest = min(len(m) for m in members if m)
    kept = []
    for indices in members:
        if len(indices) > smallest:
            picked = np.random.RandomState(seed).permutation(len(indices))[:smallest]
            indices = [indices[i] for i in picked]
        kept.extend(indices)
    return data.take(kept)


def split_three_ways(data: LabeledTexts, train_frac: float = 0.7, validation_frac: float = 0.1,
                     seed: int = BOOK_SEED) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """Shuffle (pandas' `sample(frac=1, random_state=seed)`), then cut train, validation, test.

    The sizes are the book's: int(n * train_frac) for training,
    int(n * validation_frac) for validation, the rest for test. numpy's
    RandomState takes seeds below 2^32; a larger one (train.seed may be up to
    2^63 - 1) is taken modulo 2^32.
    """
    order = np.random.RandomState(seed % 2**32).permutation(len(data))
    train_end = int(len(data) * train_frac)
    validation_end = train_end + int(len(data) * validation_frac)
    return (data.take(order[:train_end]), data.take(order[train_end:validation_end]),
            data.take(order[validation_end:]))


def sms_spam_splits(path: str | Path) -> dict[str, LabeledTexts]:
    """The book's data for chapter 6: read, balance, then split 70/10/20 (train/validation/test)."""
    train, validation, test = split_three_ways(balance_classes(read_sms_spam(path)))
    return {"train": train, "validation": validation, "test": test}
