"""Captioning every row of a features file (a user's own images, a test split), streamed
in chunks so that memory stays flat however many rows there are, into JSON lines or the
results list the COCO caption evaluation tools read."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioning import checks
from captioning.atomic import atomic_path
from captioning.data.features import FeatureFile
from captioning.data.vocab import decode_captions
from captioning.decoding import beam_decode
from captioning.metrics import strip_special

FORMATS = ("jsonl", "coco")
CHUNK_ROWS = 2048


def caption_feature_file(model: Any, features: str | os.PathLike, out: str | os.PathLike,
                         beam: int = 1, max_length: int = 16, output_format: str = "jsonl",
                         chunk_rows: int = CHUNK_ROWS, progress: bool = False) -> int:
    """Caption each row of ``features`` (see ``FeatureFile``; rows are numbered when the
    file names no image ids) with beam search of width ``beam`` and write them, in input
    order, to ``out``: JSON lines ``{"image_id", "caption", "logp"}`` or, with
    output_format 'coco', the list ``[{"image_id", "caption"}]``. Written to a temporary
    name and renamed, so ``out`` is whole or untouched. Returns the number of rows.

    Beam 1 is greedy decoding except that a caption not ended by ``max_length`` words
    ends with <END>, so every caption's log-probability is that of a finished caption.
    """
    if output_format not in FORMATS:
        raise ValueError(f"unknown format {output_format!r}; expected one of {FORMATS}")
    chunk_rows = checks.integer("chunk_rows", chunk_rows)
    words = [model.idx_to_word[i] for i in range(model.vocab_size)]
    with FeatureFile(features, require_ids=False) as source, atomic_path(out) as tmp, \
            open(tmp, "w", encoding="utf-8") as f:
        if source.dim != model.input_dim:
            raise ValueError(f"{source.path} holds {source.dim}-d features, but the model "
                             f"reads {model.input_dim}-d ones (the full or the PCA "
                             "features it was trained on?)")
        separator = "[\n"  # the COCO list's opening, then a comma between entries
        for start in tqdm(range(0, len(source), chunk_rows), desc="captioning", unit="chunk",
                          disable=not progress, leave=False, file=sys.stderr):
            stop = min(start + chunk_rows, len(source))
            captions, logp = beam_decode(model, source.rows(start, stop), beam, max_length)
            texts = decode_captions(captions, words)
            for image_id, text, value in zip(source.ids[start:stop].tolist(), texts,
                                             logp.tolist()):
                record = {"image_id": image_id, "caption": strip_special(text)}
                if output_format == "coco":
                    f.write(separator + json.dumps(record))
                    separator = ",\n"
                else:
                    logp_value = round(value, 6) if math.isfinite(value) else None
                    f.write(json.dumps({**record, "logp": logp_value}) + "\n")
        if output_format == "coco":
            f.write("[]\n" if separator == "[\n" else "\n]\n")
    return len(source)


def default_output(output_format: str) -> Path:
    return Path("captions.json" if output_format == "coco" else "captions.jsonl")
