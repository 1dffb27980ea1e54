"""Caption text <-> the COCO layout's word indices: tokeniser, vocabulary, encoder, and
the exercise's ``decode_captions`` back to text.

The built-in dataset and ``captioning data build`` both go through the first three
functions, so every folder this project writes has the same special tokens and padding.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from captioning.data.layout import SPECIAL_TOKENS

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def tokenize(text: str) -> list[str]:
    """Lower-case, punctuation stripped (apostrophes dropped), split on whitespace."""
    return _NOT_WORD.sub(" ", text.lower()).replace("'", "").split()


def build_vocab(captions: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """idx_to_word: <NULL> 0, <START> 1, <END> 2, <UNK> 3, then every word seen at least
    ``min_count`` times, most frequent first (ties alphabetical, so the order is stable)."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    counts = Counter(word for caption in captions for word in caption)
    for token in SPECIAL_TOKENS:
        counts.pop(token, None)
    words = sorted((w for w, c in counts.items() if c >= min_count),
                   key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + words


@dataclass
class EncodeStats:
    """What ``encode_captions`` changed: captions cut to the length limit, words that
    became <UNK>, out of how many captions and words."""

    captions: int = 0
    truncated: int = 0
    words: int = 0
    unknown: int = 0

    @property
    def unk_rate(self) -> float:
        return self.unknown / self.words if self.words else 0.0

    def __str__(self) -> str:
        return (f"{self.captions} captions, {self.truncated} cut to the length limit, "
                f"{self.unknown} of {self.words} words unknown ({100 * self.unk_rate:.2f}%)")


def encode_captions(captions: Sequence[Sequence[str]], word_to_idx: dict[str, int],
                    max_length: int = 15) -> tuple[np.ndarray, EncodeStats]:
    """Token lists -> (M, max_length + 2) int32 rows of <START> words <END> <NULL>...

    Words beyond ``max_length`` are cut; words not in the vocabulary become <UNK>.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    start, end, unk = (word_to_idx[t] for t in ("<START>", "<END>", "<UNK>"))
    rows = np.full((len(captions), max_length + 2), word_to_idx["<NULL>"], dtype=np.int32)
    stats = EncodeStats(captions=len(captions))
    for row, caption in zip(rows, captions):
        if len(caption) > max_length:
            stats.truncated += 1
            caption = caption[:max_length]
        indices = [word_to_idx.get(w, unk) for w in caption]
        stats.words += len(indices)
        stats.unknown += indices.count(unk)
        row[0] = start
        row[1 : len(indices) + 1] = indices
        row[len(indices) + 1] = end
    return rows, stats


def decode_captions(captions, idx_to_word) -> str | list[str]:
    """Word indices -> text. (T,) gives one string, (N, T) a list of N strings.

    Words are joined by spaces, <NULL> is skipped, and decoding stops after <END>
    (which is kept, as is a leading <START>).
    """
    captions = np.asarray(captions)
    if captions.ndim not in (1, 2):
        raise ValueError(f"captions must be (T,) or (N, T), got shape {captions.shape}")
    rows = captions[None] if captions.ndim == 1 else captions
    decoded = []
    for row in rows:
        words = []
        for idx in row:
            word = idx_to_word[int(idx)]
            if word != "<NULL>":
                words.append(word)
            if word == "<END>":
                break
        decoded.append(" ".join(words))
    return decoded[0] if captions.ndim == 1 else decoded
