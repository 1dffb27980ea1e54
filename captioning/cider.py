"""CIDEr-D, vectorised: the score pycocoevalcap's ``Cider`` computes (n-grams 1-4, tf-idf
with document frequencies from the references, clipping, the Gaussian length penalty
with sigma 6, x10), with the references' vectors made once, so that scoring many
candidates (self-critical training's rewards) costs NumPy passes, not Python loops.

N-grams become integers: each word an id below B = 2**15, an n-gram
``n * B**4 + sum(id_k * B**k)`` (its order is part of its key; the largest fits in an
int64), so references and candidates may use 32,767 distinct words between them.
As in pycocoevalcap, an n-gram's document frequency counts the images (not the
references) whose references hold it, and a sentence's "length" in the penalty is its
number of bigrams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ORDERS = 4
BASE = 2**15


class CiderD:
    """CIDEr-D against ``references`` (for each image, its reference captions as
    whitespace-separated words); ``scores(candidates, images)`` gives one score per
    candidate, against the references of ``images[i]``."""

    def __init__(self, references: Sequence[Sequence[str]], sigma: float = 6.0) -> None:
        if not references or any(isinstance(r, str) or not r for r in references):
            raise ValueError("references must be a non-empty list with a non-empty list of "
                             "strings for each image")
        self.sigma = sigma
        self._words: dict[str, int] = {}
        flat = [ref for refs in references for ref in refs]
        self.ref_image = np.repeat(np.arange(len(references)), [len(r) for r in references])
        self.refs_of_image = np.concatenate([[0], np.cumsum([len(r) for r in references])])
        sentence, key, tf, length = self._ngrams([self._encode(r, self._words) for r in flat])
        # Document frequency: images whose references hold the n-gram.
        _, image_keys, _ = _unique_pairs(self.ref_image[sentence], key)
        self.keys, df = np.unique(image_keys, return_counts=True)
        self.ref_len = np.log(float(len(references)))
        self.idf = self.ref_len - np.log(np.maximum(df, 1.0))
        where = np.searchsorted(self.keys, key)
        value = tf * self.idf[where]
        self.ref_norm = self._norms(sentence, key, value, len(flat))
        self.ref_length = length
        # The references' values, found by (reference, n-gram index) in one sorted table.
        self._table = sentence * len(self.keys) + where
        order = np.argsort(self._table)
        self._table, self._table_value = self._table[order], value[order]

    def scores(self, candidates: Sequence[str], images: Sequence[int] | None = None
               ) -> np.ndarray:
        """CIDEr-D of each candidate (float64, as pycocoevalcap's per-image scores)."""
        unseen = dict(self._words)  # words the references never use get ids of their own
        sentences = [self._encode(c, unseen) for c in candidates]
        lengths = np.array([len(ids) for ids in sentences], dtype=np.int64)
        words = np.array([w for ids in sentences for w in ids], dtype=np.int64)
        return self.scores_of_words(words, lengths, images)

    def word_ids(self, vocabulary: Sequence[str]) -> np.ndarray:
        """Each word's id for ``scores_of_words`` (int64): the references' own ids, and
        distinct new ones for words they never use."""
        words = dict(self._words)
        for word in vocabulary:
            self._encode(word, words)
        return np.array([words[w] for w in vocabulary], dtype=np.int64)

    def scores_of_words(self, words: np.ndarray, lengths: np.ndarray,
                        images: Sequence[int] | None = None) -> np.ndarray:
        """``scores`` of candidates given as word ids (from ``word_ids``), all of them
        one after the other in ``words``, candidate i ``lengths[i]`` long: no text to
        split and look up, for rewards scored every step."""
        lengths = np.asarray(lengths, dtype=np.int64)
        images = np.arange(len(lengths)) if images is None else np.asarray(images)
        if len(images) != len(lengths):
            raise ValueError(f"{len(lengths)} candidates but {len(images)} images")
        count = len(lengths)
        n_refs = np.diff(self.refs_of_image)[images]
        sentence, key, tf, length = self._ngrams_of(np.asarray(words, dtype=np.int64),
                                                    lengths)
        known = np.searchsorted(self.keys, key)
        known = np.minimum(known, len(self.keys) - 1)
        found = self.keys[known] == key
        idf = np.where(found, self.idf[known], self.ref_len)  # unseen: document freq. 0
        value = tf * idf
        norm = self._norms(sentence, key, value, count)
        # Every (candidate, reference of its image) pair, and each shared n-gram's part.
        pair_candidate = np.repeat(np.arange(count), n_refs)
        first_pair = np.concatenate([[0], np.cumsum(n_refs)])
        pair_ref = (np.arange(len(pair_candidate)) - first_pair[pair_candidate]
                    + self.refs_of_image[images][pair_candidate])
        entries = np.flatnonzero(found)
        per_entry = n_refs[sentence[entries]]
        entry = np.repeat(entries, per_entry)
        pair = (np.repeat(first_pair[sentence[entries]], per_entry)
                + _ranges(per_entry))
        lookup = pair_ref[pair] * len(self.keys) + known[entry]
        at = np.minimum(np.searchsorted(self._table, lookup), len(self._table) - 1)
        hit = self._table[at] == lookup
        ref_value = np.where(hit, self._table_value[at], 0.0)
        order_n = key[entry] // BASE**ORDERS - 1
        overlap = np.bincount(pair * ORDERS + order_n,
                              weights=np.minimum(value[entry], ref_value) * ref_value,
                              minlength=len(pair_candidate) * ORDERS
                              ).reshape(-1, ORDERS)
        both = norm[pair_candidate] * self.ref_norm[pair_ref]
        overlap = np.where(both != 0, overlap / np.where(both != 0, both, 1.0), overlap)
        delta = length[pair_candidate] - self.ref_length[pair_ref]
        overlap *= np.exp(-(delta.astype(np.float64) ** 2) / (2 * self.sigma**2))[:, None]
        per_candidate = np.bincount(pair_candidate, weights=overlap.mean(axis=1),
                                    minlength=count)
        return per_candidate / n_refs * 10.0

    # ------------------------------------------------------------------ n-grams
    @staticmethod
    def _encode(sentence: str, words: dict[str, int]) -> list[int]:
        """Word ids from 1, new words added to ``words``."""
        ids = [words.setdefault(w, len(words) + 1) for w in sentence.split()]
        if len(words) >= BASE:
            raise ValueError(f"more than {BASE - 1} distinct words among the references and "
                             "candidates; CIDEr-D's integer n-gram keys hold no more")
        return ids

    def _ngrams(self, sentences: list[list[int]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sentence, n-gram key, term frequency) of every distinct n-gram of every
        sentence, and each sentence's bigram count."""
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        words = np.array([w for s in sentences for w in s], dtype=np.int64)
        return self._ngrams_of(words, lengths)

    def _ngrams_of(self, words: np.ndarray, lengths: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``_ngrams`` of sentences given as their words one after the other."""
        owner = np.repeat(np.arange(len(lengths)), lengths)
        position = _ranges(lengths)
        base = BASE
        keys, owners = [], []
        for n in range(1, ORDERS + 1):
            fits = position + n <= lengths[owner]
            start = np.flatnonzero(fits)
            key = np.full(len(start), n * base**ORDERS, dtype=np.int64)
            for k in range(n):
                key += words[start + k] * base**k
            keys.append(key)
            owners.append(owner[start])
        owner, key, tf = _unique_pairs(np.concatenate(owners), np.concatenate(keys))
        return owner, key, tf.astype(np.float64), np.maximum(lengths - 1, 0)

    def _norms(self, sentence: np.ndarray, key: np.ndarray, value: np.ndarray,
               count: int) -> np.ndarray:
        """(count, ORDERS): each sentence's vector length for each n-gram order."""
        flat = np.bincount(sentence * ORDERS + key // BASE**ORDERS - 1,
                           weights=value * value, minlength=count * ORDERS)
        return np.sqrt(flat).reshape(count, ORDERS)


def _unique_pairs(first: np.ndarray, second: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (first, second) pairs, sorted, and how often each occurs (a lexsort:
    much faster than np.unique over the stacked rows)."""
    order = np.lexsort((second, first))
    first, second = first[order], second[order]
    new = np.ones(len(first), dtype=bool)
    new[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(first)))
    return first[starts], second[starts], counts


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n of ``lengths``, concatenated."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - starts
