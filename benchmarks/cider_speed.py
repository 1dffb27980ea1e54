"""CIDEr-D of 10,000 captions (5 references each): the vectorised scorer against
pycocoevalcap's, on the same input, with the same result.

    python -m benchmarks.cider_speed
"""

from __future__ import annotations

import time

import numpy as np
from pycocoevalcap.cider.cider import Cider

from captioning.cider import CiderD


def main() -> None:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(60)]

    def sentence(length: int) -> str:
        return " ".join(rng.choice(words, length))

    refs = [[sentence(rng.integers(6, 14)) for _ in range(5)] for _ in range(10_000)]
    candidates = [sentence(rng.integers(5, 14)) for _ in range(10_000)]
    start = time.perf_counter()
    scorer = CiderD(refs)
    setup = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        ours = scorer.scores(candidates)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    theirs = Cider().compute_score({i: r for i, r in enumerate(refs)},
                                   {i: [c] for i, c in enumerate(candidates)})[1]
    reference = time.perf_counter() - start
    best = min(times)
    print(f"10,000 captions: CiderD {best:.3f} s (best of 3; references prepared once in "
          f"{setup:.2f} s), pycocoevalcap {reference:.2f} s: {reference / best:.1f}x; "
          f"largest difference {np.abs(ours - theirs).max():.1e}")


if __name__ == "__main__":
    main()
