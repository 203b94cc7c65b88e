"""The UI as a person sees it: Chromium (Debian's, driven by Playwright) on a real `prefect server`.

Playwright's own browser download cannot run here, so the test drives /usr/bin/chromium through
``executable_path``. Without Chromium the test fails, naming the install command: it never skips.
"""

from __future__ import annotations

import shutil
import struct
import urllib.parse

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

from rlcadence.config import RLConfig
from rlcadence.flows.rl import rl
from tests.integration.helpers import small_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: install it with `apt-get install -y chromium` (scripts/setup.sh does)")
    return path


def _png_width(data_uri: str) -> int:
    import base64

    png = base64.b64decode(data_uri.split(",", 1)[1].split(")", 1)[0])
    return struct.unpack(">I", png[16:20])[0]  # IHDR width


def test_flow_run_page_shows_summary_progress_and_a_rendered_plot(prefect_server, seed_model, store, chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    cfg = RLConfig.model_validate(small_config(seed_model, store, run_id="ui-browser", steps=2, eval_every=1))
    rl(cfg)
    with get_client(sync_client=True) as client:
        fr = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["grpo s=1 · ui-browser"])))[0]
        plots = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ui-browser-plots"])))[0]
    base = prefect_server.removesuffix("/api")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/runs/flow-run/{fr.id}", wait_until="networkidle")
        expect(page.get_by_text("grpo s=1 · ui-browser").first).to_be_visible(timeout=30_000)
        page.get_by_text("Artifacts", exact=True).first.click()
        for key in ("ui-browser-summary", "ui-browser-progress", "ui-browser-plots", "ui-browser-metrics"):
            expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "flow-run-artifacts.png"), full_page=True)

        page.get_by_text("ui-browser-summary", exact=True).first.click()
        expect(page.get_by_role("heading", name="grpo s=1 · ui-browser")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Wall time per stage")).to_be_visible()
        page.screenshot(path=str(shots / "summary.png"), full_page=True)

        page.goto(f"{base}/runs/flow-run/{fr.id}", wait_until="networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("ui-browser-progress", exact=True).first.click()
        expect(page.get_by_text("step 2/2 · reward").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "progress.png"), full_page=True)

        page.goto(f"{base}/runs/flow-run/{fr.id}", wait_until="networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("ui-browser-plots", exact=True).first.click()
        img = page.locator("img[alt='ui-browser curves']")
        expect(img).to_be_visible(timeout=30_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
        natural = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        page.screenshot(path=str(shots / "plots.png"), full_page=True)
        browser.close()
    assert natural[0] == _png_width(plots.data) and natural[0] > 400 and natural[1] > 200, natural
    assert sorted(f.name for f in shots.iterdir()) == ["flow-run-artifacts.png", "plots.png", "progress.png", "summary.png"]
    print("screenshots:", urllib.parse.quote(str(shots)))
