"""The exercise's image helper: ``image_from_url`` gives a dataset image as an array, so
that a notebook can show it beside its captions."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from captioning.data.default import default_data_dir

FETCH_TIMEOUT_S = 10


def image_from_url(url: str, base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The image at ``url`` as an (H, W, 3) uint8 RGB array.

    A web URL (http, https) is fetched (ConnectionError naming it when that fails, as
    offline); anything else is a file, a relative path being taken inside ``base_dir``
    (default: the folder ``load_coco_data()`` reads), so the built-in dataset's URLs,
    which are paths inside its folder, work as they are.
    """
    url = str(url)
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
                content = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"cannot fetch the image {url} ({exc}); this needs the "
                                  "network (the built-in dataset's images are local files)"
                                  ) from exc
        return _decode(io.BytesIO(content), url)
    path = Path(url)
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else default_data_dir()) / path
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (URL {url!r}; relative URLs "
                                "are taken inside the dataset folder, or base_dir)")
    return _decode(path, url)


def _decode(source, url: str) -> np.ndarray:
    try:
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise ValueError(f"{url}: not an image file PIL can read") from exc
