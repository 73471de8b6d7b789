"""Applying byte-pair merges to one pre-tokenized piece of text.

Encoding a piece (one word from the pre-tokenizer, as UTF-8 bytes) starts
from its single bytes and repeatedly merges the adjacent pair that the
vocabulary ranks best, until no adjacent pair can merge:

    b"lower"  ->  l o w e r  ->  lo w e r  ->  low e r  ->  low er  ->  lower

Two rules decide which pair merges next; both are found in real tokenizers.

- **By rank** (tiktoken, and every tokenizer llmscratch trains). A pair may
  merge when its concatenation is a token; the pair whose concatenation has
  the lowest rank (id) goes first, the leftmost one on a tie. A piece that is
  itself a token is returned at once.
- **By merge list** (Hugging Face ``tokenizers``). Only the pairs listed in the
  merges file may merge; the one listed first goes first, leftmost on a tie.

With a trained vocabulary the two rules agree almost always (a token's id
follows the order in which it was merged), but the corner cases differ, so a
tokenizer keeps the rule of the files it came from.

The textbook loop rescans all pairs after every merge, which is quadratic in
the piece length. Here the candidate pairs sit in a heap keyed by (rank,
start offset), and the current tokens are slices ``piece[start:end[start]]``
chained by their start offsets, so a merge touches only its two neighbours:
O(n log n), which matters for pieces such as a 100 kB line of base64.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

# rank_of(piece, start, middle, end) -> rank of merging piece[start:middle] with
# piece[middle:end], or None when those two tokens may not merge.
RankOf = Callable[[bytes, int, int, int], "int | None"]


def rank_by_token(ranks: dict[bytes, int]) -> RankOf:
    """The tiktoken rule: a pair's rank is the rank of the token it makes."""
    get = ranks.get

    def rank_of(piece: bytes, start: int, middle: int, end: int) -> int | None:
        return get(piece[start:end])

    return rank_of


def rank_by_merge_list(merge_ranks: dict[tuple[bytes, bytes], int]) -> RankOf:
    """The merges-file rule: a pair's rank is its position in the merge list."""
    get = merge_ranks.get

    def rank_of(piece: bytes, start: int, middle: int, end: int) -> int | None:
        return get((piece[start:middle], piece[middle:end]))

    return rank_of


def split_piece(piece: bytes, rank_of: RankOf) -> list[bytes]:
    """Merge the bytes of `piece` by the rule `rank_of`; return the final tokens.

    Heap entries are (rank, start, middle, end): "merge the token at `start`,
    which ends at `middle`, with the token at `middle`, which ends at `end`".
    An entry goes stale when either token has merged since it was pushed;
    it is then skipped, which is cheaper than deleting it from the heap.
    """
    n = len(piece)
    # end_of[s]: where the token starting at byte s ends; 0 once s is inside a
    # longer token. prev_of[s]: start of the token before the one at s.
    end_of = list(range(1, n + 1))
    prev_of = list(range(-1, n - 1))
    heap = []
    for start in range(n - 1):
        rank = rank_of(piece, start, start + 1, start + 2)
        if rank is not None:
            heap.append((rank, start, start + 1, start + 2))
    heapq.heapify(heap)

    while heap:
        _, start, middle, end = heapq.heappop(heap)
        if end_of[start] != middle or end_of[middle] != end:
            continue  # stale: one of the two tokens has merged already
        end_of[start] = end
        end_of[middle] = 0
        if end < n:
            prev_of[end] = start
            right_end = end_of[end]
            rank = rank_of(piece, start, end, right_end)
            if rank is not None:
                heapq.heappush(heap, (rank, start, end, right_end))
        left = prev_of[start]
        if left >= 0:
            rank = rank_of(piece, left, start, end)
            if rank is not None:
                heapq.heappush(heap, (rank, left, start, end))

    tokens = []
    start = 0
    while start < n:
        tokens.append(piece[start : end_of[start]])
        start = end_of[start]
    return tokens


def simple_split_piece(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """The rank rule written as the textbook loop (for reading and for tests).

    Quadratic in the piece length; `split_piece(piece, rank_by_token(ranks))`
    returns the same tokens quickly.
    """
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_index = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_index = rank, i
        if best_rank is None:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts
