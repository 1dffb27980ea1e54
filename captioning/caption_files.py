"""Captioning every row of a features file (a user's own images, a test split), streamed
in chunks so that memory stays flat however many rows there are, into JSON lines or the
results list the COCO caption evaluation tools read."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioning import checks
from captioning.atomic import atomic_path
from captioning.data.features import FeatureFile
from captioning.data.vocab import decode_captions
from captioning.decoding import beam_decode
from captioning.metrics import strip_special
from captioning.training.data_parallel import MpiDataParallel

FORMATS = ("jsonl", "coco")
CHUNK_ROWS = 2048


def caption_feature_file(model: Any, features: str | os.PathLike, out: str | os.PathLike,
                         beam: int = 1, max_length: int = 16, output_format: str = "jsonl",
                         chunk_rows: int = CHUNK_ROWS, progress: bool = False,
                         parallel: MpiDataParallel | None = None) -> int:
    """Caption each row of ``features`` (see ``FeatureFile``; rows are numbered when the
    file names no image ids) with beam search of width ``beam`` and write them, in input
    order, to ``out``: JSON lines ``{"image_id", "caption", "logp"}`` or, with
    output_format 'coco', the list ``[{"image_id", "caption"}]``. Written to a temporary
    name and renamed, so ``out`` is whole or untouched. Returns the number of rows.
    With ``parallel`` (under mpiexec) each rank decodes its contiguous part of every
    chunk and rank 0 writes them in order: the same file as one process writes.

    Beam 1 is greedy decoding except that a caption not ended by ``max_length`` words
    ends with <END>, so every caption's log-probability is that of a finished caption.
    """
    if output_format not in FORMATS:
        raise ValueError(f"unknown format {output_format!r}; expected one of {FORMATS}")
    chunk_rows = checks.integer("chunk_rows", chunk_rows)
    with FeatureFile(features, require_ids=False) as source:
        if source.dim != model.input_dim:
            raise ValueError(f"{source.path} holds {source.dim}-d features, but the model "
                             f"reads {model.input_dim}-d ones (the full or the PCA "
                             "features it was trained on?)")
        rows = _captions(model, source, beam, max_length, chunk_rows, progress, parallel)
        if parallel is not None and not parallel.is_root:
            for _ in rows:  # decode this rank's parts; rank 0 writes
                pass
            return len(source)
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            if output_format == "coco":
                f.write("[")
                for k, (image_id, text, _) in enumerate(rows):
                    f.write(("\n" if k == 0 else ",\n")
                            + json.dumps({"image_id": image_id, "caption": text}))
                f.write("\n]\n")
            else:
                for image_id, text, value in rows:
                    logp = round(value, 6) if math.isfinite(value) else None
                    f.write(json.dumps({"image_id": image_id, "caption": text,
                                        "logp": logp}) + "\n")
    return len(source)


def _captions(model: Any, source: FeatureFile, beam: int, max_length: int, chunk_rows: int,
              progress: bool, parallel: MpiDataParallel | None
              ) -> Iterator[tuple[int, str, float]]:
    """(image id, caption text, log-probability) of every row, in order, one chunk at a
    time; under ``parallel``, rank 0 yields them all and the other ranks yield nothing."""
    words = [model.idx_to_word[i] for i in range(model.vocab_size)]
    for start in tqdm(range(0, len(source), chunk_rows), desc="captioning", unit="chunk",
                      disable=not progress, leave=False, file=sys.stderr):
        stop = min(start + chunk_rows, len(source))
        part = slice(start, stop)
        if parallel is not None:
            mine = parallel.my_part(stop - start)
            part = slice(start + mine.start, start + mine.stop)
        texts: list[str] = []
        logps: list[float] = []
        if part.stop > part.start:
            captions, logp = beam_decode(model, source.rows(part.start, part.stop), beam,
                                         max_length)
            texts = [strip_special(t) for t in decode_captions(captions, words)]
            logps = logp.tolist()
        if parallel is not None:
            parts = parallel.gather((texts, logps))
            if parts is None:
                continue
            texts = [t for p in parts for t in p[0]]
            logps = [v for p in parts for v in p[1]]
        yield from zip(source.ids[start:stop].tolist(), texts, logps)


def default_output(output_format: str) -> Path:
    return Path("captions.json" if output_format == "coco" else "captions.jsonl")
