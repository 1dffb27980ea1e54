"""A run's report folder: loss.png, samples.png, metrics.json and index.html.

Images of the built-in dataset are local files (their URLs are paths relative to the
data folder) and are copied into the report, so it stays whole when moved; only files
inside the data folder are copied (a URL that is absolute or leads out with ``..`` is
named, not copied). Images of the COCO folder are web URLs: the page shows them from
there and the PNG grid, which would need them on disk, is skipped with a note. The page
shows each sample once, as a figure with its captions as text; samples.png, the same
grid as one picture, is linked.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioning.atomic import atomic_path
from captioning.metrics import METRIC_NAMES, strip_special


@dataclass
class Sample:
    """One image shown in the report: where it is, what the model wrote, a reference,
    and (when known) its row in the split's features."""

    url: str
    generated: str
    reference: str
    image: int | None = None


def is_web_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Curves:
    """The report's curve: a figure per training iteration and one per epoch on the
    validation set, with what they are. A cross-entropy run shows its losses; a
    self-critical run its mean sampled reward and validation greedy CIDEr-D."""

    train: Sequence[float]
    val: Sequence[float]
    iterations_per_epoch: int
    train_label: str = "training loss"
    val_label: str = "validation loss"
    unit: str = "loss per caption"
    heading: str = "Loss"


def plot_curves(path: Path, curves: Curves) -> None:
    """The training figure per iteration (faint) and smoothed, the validation figure per
    epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = np.asarray(curves.train, dtype=float)
    if len(values):
        steps = np.arange(1, len(values) + 1)
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8,
                label=curves.train_label)
        window = max(1, min(len(values) // 20, 200))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue",
                label=f"{curves.train_label}, mean of {window}")
    if len(curves.val):
        epochs = np.arange(1, len(curves.val) + 1) * curves.iterations_per_epoch
        ax.plot(epochs, curves.val, "o-", color="tab:orange", label=curves.val_label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(curves.unit)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_samples(path: Path, images: Sequence[Path], samples: Sequence[Sample],
                 columns: int = 4) -> None:
    """A grid of images, each titled with the generated caption and one reference."""
    plt = _pyplot()
    rows = -(-len(samples) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 4.4 * rows), squeeze=False,
                             layout="constrained")  # room for each title above its image
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, sample in zip(axes.ravel(), images, samples):
        ax.imshow(plt.imread(image), interpolation="nearest")
        title = (textwrap.fill(f"model: {sample.generated}", 34) + "\n"
                 + textwrap.fill(f"reference: {sample.reference}", 34))
        ax.set_title(title, fontsize=8, loc="left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(out: str | os.PathLike, samples: Sequence[Sample], data_dir: Path,
                 metrics: dict[str, dict[str, float | str]], curves: Curves,
                 title: str = "Captioning run") -> Path:
    """Write the report folder ``out`` and return the path of its index.html."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    plot_curves(out / "loss.png", curves)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2), encoding="utf-8")

    sources: list[str | None] = []  # what each figure shows: a web URL, a copy, or nothing
    local: list[Path] = []
    outside: list[str] = []
    for i, sample in enumerate(samples):
        if is_web_url(sample.url):
            sources.append(sample.url)
            continue
        source = image_inside(data_dir, sample.url)
        if source is None:  # a crafted URLs file must not copy other files into a report
            outside.append(sample.url)
            sources.append(None)
            continue
        if not source.is_file():
            raise FileNotFoundError(f"image {source} of the report is missing (URL "
                                    f"{sample.url!r} relative to {data_dir})")
        copy = out / "images" / f"{i:03d}{source.suffix}"
        shutil.copyfile(source, copy)
        local.append(copy)
        sources.append(f"images/{copy.name}")
    if samples and len(local) == len(samples):
        plot_samples(out / "samples.png", local, samples)
        grid = ('<p>The same samples as one picture: <a href="samples.png">samples.png</a>'
                "</p>")
    else:
        grid = ("<p>No samples.png: not every image is a file of the dataset folder; the "
                "figures show them from their URLs where they are on the web.</p>")
    if outside:
        grid += (f"<p>Not shown: {len(outside)} image(s) whose path lies outside the dataset "
                 f"folder {html.escape(str(data_dir))} (only files inside it are copied): "
                 + ", ".join(f"<code>{html.escape(u)}</code>" for u in outside) + "</p>")

    def cell(value: float | str | None) -> str:
        return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value or "-"))

    def figure(i: int, src: str | None, s: Sample) -> str:
        picture = (f'<img src="{html.escape(src)}" alt="image {i}">' if src is not None else
                   f'<p class="missing">{html.escape(s.url)} (outside the dataset folder)</p>')
        return (f"<figure>{picture}<figcaption><b>model:</b> "
                f"{html.escape(strip_special(s.generated))}<br><b>reference:</b> "
                f"{html.escape(strip_special(s.reference))}</figcaption></figure>")

    head = "".join(f"<th>{m}</th>" for m in METRIC_NAMES)
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{cell(scores.get(m))}</td>" for m in METRIC_NAMES) + "</tr>"
        for name, scores in metrics.items()
    )
    cards = "".join(figure(i, src, s) for i, (src, s) in enumerate(zip(sources, samples)))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 8px}}
img{{max-width:100%;height:auto}}
.table{{overflow-x:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;width:180px;margin:8px;vertical-align:top;font-size:12px;
overflow-wrap:anywhere}}
figure img{{width:160px;image-rendering:pixelated}}
.missing{{width:160px;color:#a00}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Metrics</h2><div class="table"><table><tr><th></th>{head}</tr>{body}</table></div>
<p>Raw numbers: <a href="metrics.json">metrics.json</a></p>
<h2>{html.escape(curves.heading)}</h2><img src="loss.png" alt="{html.escape(
    curves.train_label)} and {html.escape(curves.val_label)}">
<h2>Samples</h2>
<div class="samples">{cards}</div>
{grid}
</body></html>
"""
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out / "index.html"


def image_inside(data_dir: Path, url: str) -> Path | None:
    """The file ``url`` names relative to ``data_dir``, if it lies inside that folder
    (no absolute path, no ``..`` or link leading out); else None."""
    folder = Path(data_dir).resolve()
    source = (folder / url).resolve()
    return source if source.is_relative_to(folder) and source != folder else None
