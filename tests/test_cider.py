"""The vectorised CIDEr-D against pycocoevalcap's, which defines it."""

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from captioning.cider import CiderD

WORDS = "a the red blue circle square on left right big small of and cat dog".split()


def _sentence(rng, length):
    return " ".join(rng.choice(WORDS, length))


def _reference_scores(refs, candidates):
    return Cider().compute_score({i: r for i, r in enumerate(refs)},
                                 {i: [c] for i, c in enumerate(candidates)})[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocoevalcap(seed):
    rng = np.random.default_rng(seed)
    refs = [[_sentence(rng, rng.integers(1, 12)) for _ in range(rng.integers(1, 6))]
            for _ in range(200)]
    candidates = [_sentence(rng, rng.integers(0, 12)) for _ in range(200)]
    candidates[:5] = ["", "a a a a a a", refs[2][0], "zebra unicorn zebra", "red"]
    refs[6] = ["the the the the", "the the"]  # repeated n-grams in references
    ours = CiderD(refs).scores(candidates)
    np.testing.assert_allclose(ours, _reference_scores(refs, candidates), rtol=0, atol=1e-6)
    assert ours[0] == 0 and ours[2] > ours[1]


def test_candidates_for_some_images_score_as_in_the_full_set():
    rng = np.random.default_rng(3)
    refs = [[_sentence(rng, 6) for _ in range(3)] for _ in range(20)]
    candidates = [_sentence(rng, 5) for _ in range(20)]
    scorer = CiderD(refs)
    full = scorer.scores(candidates)
    some = scorer.scores([candidates[7], candidates[2], candidates[7]], images=[7, 2, 7])
    np.testing.assert_allclose(some, full[[7, 2, 7]], rtol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty list"):
        CiderD([])
    with pytest.raises(ValueError, match="non-empty list"):
        CiderD([["a cat"], []])
    with pytest.raises(ValueError, match="2 candidates but 1 images"):
        CiderD([["a cat"], ["a dog"]]).scores(["a", "b"], images=[0])
