"""The COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D, and METEOR where Java runs),
computed by ``pycocoevalcap``, the evaluation code papers report.

Captions are compared as the lower-case, space-separated words the layout already holds;
special tokens are removed first. Every candidate is scored against all the reference
captions of its image.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from captioning.data.layout import SPECIAL_TOKENS

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR")


def strip_special(caption: str) -> str:
    """'<START> a red circle <END>' -> 'a red circle'."""
    return " ".join(w for w in caption.split() if w not in SPECIAL_TOKENS)


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]],
                    meteor: bool = True) -> dict[str, float | str]:
    """Corpus scores of ``candidates[i]`` against ``references[i]`` (one or more strings).

    Returns {metric: score}; when METEOR cannot run (no ``java`` on the PATH, or it
    failed) its entry is a string saying why, and ``meteor=False`` skips it.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference "
                         "lists: expected one list of references per candidate")
    if not candidates:
        raise ValueError("no candidates to score")
    res = {i: [strip_special(c)] for i, c in enumerate(candidates)}
    gts = {}
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, "
                             f"got {refs!r}")
        gts[i] = [strip_special(r) for r in refs]
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: dict[str, float | str] = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    if meteor:
        scores["METEOR"] = _meteor(gts, res)
    else:
        scores["METEOR"] = "skipped (not asked for)"
    return scores


def _meteor(gts: dict, res: dict) -> float | str:
    if shutil.which("java") is None:
        return "skipped: no java on the PATH (METEOR runs a Java program)"
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        # METEOR's tokeniser reads each line whole; a newline would desynchronise it.
        clean = {i: [c.replace("\n", " ") or "." for c in caps] for i, caps in res.items()}
        return float(Meteor().compute_score(gts, clean)[0])
    except Exception as exc:  # the Java process died, or printed something unexpected
        return f"skipped: METEOR failed ({type(exc).__name__}: {exc})"


def format_metrics(rows: dict[str, dict[str, float | str]]) -> str:
    """A text table: one row per decoding method, one column per metric."""
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(f"{m:>9}" for m in METRIC_NAMES)]
    for name, scores in rows.items():
        cells = (f"{v:9.4f}" if isinstance(v := scores.get(m), float) else f"{'-':>9}"
                 for m in METRIC_NAMES)
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)
