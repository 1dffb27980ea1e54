"""The report as a person sees it: index.html rendered by headless Chromium, measured
from inside the page (a probe script added to a copy of it, so the report stays as
written). Skipped, with the reason, where no Chromium is installed (.ci/run installs
Debian's ``chromium``)."""

import html
import json
import re
import shutil
import subprocess

import pytest

from captioning.report import Curves, Sample, write_report

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium here (apt-get install "
                                "chromium; .ci/run does)")

PROBE = """<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName + " " + (e.getAttribute("src") || ""));
  const images = [...document.images].map(i => ({
    src: i.getAttribute("src"), loaded: i.complete && i.naturalWidth > 0,
    rendering: getComputedStyle(i).imageRendering, width: i.getBoundingClientRect().width}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    width, wide, images, scrollWidth: document.documentElement.scrollWidth,
    scripts: document.scripts.length,
    captions: [...document.querySelectorAll("figcaption")].map(f => f.textContent)});
  document.body.appendChild(out);
});
</script>"""


def _render(index, width: int) -> dict:
    """What the probe measured in ``index`` at a window ``width`` pixels wide."""
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},900", "--virtual-time-budget=10000",
         "--allow-file-access-from-files", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no probe result; chromium said: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def report(small_shapes, tmp_path_factory):
    samples = [Sample(f"images/val/{i:05d}.png", f"a red circle <script>alert({i})</script>",
                      "a red circle & a <b>blue</b> square", i) for i in range(12)]
    metrics = {"greedy": {"BLEU-4": 0.5, "CIDEr-D": 2.9, "METEOR": "skipped: no java"},
               "beam 3": {"BLEU-4": 0.6, "CIDEr-D": 3.0, "METEOR": "skipped: no java"}}
    return write_report(tmp_path_factory.mktemp("report") / "report", samples, small_shapes,
                        metrics, Curves([3.0 - 0.01 * k for k in range(200)], [2.2, 1.9, 1.8],
                                        50))


@pytest.mark.parametrize("width", [1280, 640])
def test_nothing_is_wider_than_the_window_and_every_image_loads(report, width):
    page = _render(report, width)
    assert page["wide"] == [] and page["scrollWidth"] <= page["width"], page["wide"]
    assert len(page["images"]) == 13  # the loss plot and 12 samples, each shown once
    assert [i["src"] for i in page["images"] if not i["loaded"]] == []
    assert all(i["width"] <= page["width"] for i in page["images"])


def test_plots_render_smoothly_and_small_images_pixelated(report):
    images = {i["src"]: i for i in _render(report, 1280)["images"]}
    assert images.pop("loss.png")["rendering"] == "auto"
    assert {i["rendering"] for i in images.values()} == {"pixelated"}
    assert {i["width"] for i in images.values()} == {160}  # 64 px scenes, enlarged


def test_words_that_look_like_markup_show_as_text(report):
    page = _render(report, 1280)
    assert page["scripts"] == 1  # the probe's own; no caption became a script
    assert "a red circle <script>alert(3)</script>" in page["captions"][3]
    assert "a red circle & a <b>blue</b> square" in page["captions"][3]
