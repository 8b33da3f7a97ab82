"""`legaltune ui` in a real headless browser: Playwright driving Debian's chromium against a real UI process.

The UI serves a folder with two runs: a tiny evaluated run (metrics, a real eval.json) for the run
pages, and the embedded SmolLM2 with a small random adapter to chat with, tuned and base side by side.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.servers import CHROMIUM_FLAGS, http, make_embedded_run, running
from tests.test_report import write_metrics

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        "chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
CITING = 'Repeat this text exactly: "Điều 35 Bộ luật Lao động 2019"'

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, embedded_dir) -> Path:
    from legaltune.evaluate.run_eval import evaluate_run
    from tests.test_eval import make_tiny_run

    root = tmp_path_factory.mktemp("ui")
    evaluated = make_tiny_run(root / "tiny", tokenizer)
    write_metrics(evaluated, with_eval=True)
    evaluate_run(evaluated, limit=2, max_new_tokens=2, batch_size=2, show_progress=False)
    folder = root / "runs"
    folder.mkdir()
    evaluated.rename(folder / "evaluated")
    make_embedded_run(root / "legal", embedded_dir).rename(folder / "legal")
    return folder


@pytest.fixture(scope="module")
def ui(runs, tmp_path_factory):
    log = tmp_path_factory.mktemp("ui-log") / "ui.log"
    with running(["ui", "--runs", str(runs), "--run", str(runs / "legal"), "--threads", "1"], log=log) as url:
        yield url


@pytest.fixture(scope="module")
def page(ui):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(180_000)
        yield page
        browser.close()


def test_runs_page_lists_runs_with_their_numbers(ui, page):
    page.goto(ui + "/")
    rows = page.locator("#runs tr").all_inner_texts()
    evaluated = next(r for r in rows if r.startswith("evaluated"))
    assert "finished" not in evaluated and "1.300" in evaluated  # the last logged loss (2.5 - 0.2 × 6)
    assert any(r.startswith("legal") for r in rows)
    page.click("text=evaluated")
    assert page.url.endswith("/runs/evaluated")
    alts = page.locator("img").evaluate_all("imgs => imgs.map(i => [i.alt, i.naturalWidth])")
    assert any("loss" in alt.lower() and width > 100 for alt, width in alts), alts  # plots decoded
    assert page.locator("text=Evaluation: base vs tuned").count() == 1
    table = page.locator("section:has(h2:text('Evaluation: base vs tuned')) table").inner_text()
    assert "token F1" in table and "tuned" in table


def test_chat_round_trip_side_by_side_with_linked_citations(ui, page, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    page.goto(ui + "/chat")
    page.fill("#max-tokens", "40")
    page.fill("#question", CITING)
    page.click("#send")
    page.wait_for_selector('#side-tuned[data-state="done"]')
    page.wait_for_selector('#side-base[data-state="done"]')
    shown = {side: page.inner_text(f"#log-{side} .a") for side in ("tuned", "base")}
    # the page shows exactly what the API answers for the same question (greedy)
    for side, model in [("tuned", "legal"), ("base", "legal:base")]:
        body = {"model": model, "messages": [{"role": "user", "content": CITING}], "max_tokens": 40}
        status, answer = http("POST", ui + "/v1/chat/completions", body)
        assert status == 200 and shown[side] == answer["choices"][0]["message"]["content"]
    assert "Điều 35" in shown["tuned"]
    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= 900 and pixels.shape[1] == 1280
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank
    link = page.locator('#log-tuned a[href^="/articles/"]').first
    assert "Điều 35" in link.inner_text()
    link.click()
    page.wait_for_selector("#article-text")
    assert page.locator("h1").inner_text().startswith("Điều 35.")
    assert len(page.inner_text("#article-text")) > 100  # the article's real text from the corpus


def test_plan_preview_and_a_bad_config(ui, page):
    page.goto(ui + "/plan")
    page.fill("#config-path", str(Path(__file__).parents[1] / "configs" / "llama31-8b-recommended.yaml"))
    page.click("#plan-go")
    result = page.inner_text("#plan-result")
    assert "41,943,040" in result  # the trainable parameters of seed 003's config, as `legaltune plan` prints
    page.fill("#config-path", "")
    page.fill("#config-text", "lora:\n  r: 0\ntraining:\n  leaning_rate: 1e-4\n")
    page.click("#plan-go")
    error = page.inner_text("#plan-error")
    assert "lora.r" in error and "learning_rate" in error  # every problem named, with the fix
    assert json.loads(json.dumps(http("GET", ui + "/health")[1]))["status"] == "ok"
