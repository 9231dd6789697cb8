"""`foa ui` in a real browser: Debian's chromium driven by Playwright (pointed at the system
browser; Playwright's own download cannot work offline), against a real federation (mosquitto,
router, orchestrator, scripted agents: ScriptedLLM, for orchestration logic only).

Screenshots go to the test's tmp dir; set FOA_UI_SCREENSHOTS=DIR to keep them (docs/console-job.png
is the job page taken here).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import pytest

from fabric import topics
from fabric.broker import Mosquitto
from fabric.bus import Bus, Incoming
from fabric.envelope import make
from fabric.messages import JobCancel, JobResult
from tests.scripted_federation import SPECS
from tests.test_ui import fed_settings, federation_and_console, running_console

pytest.importorskip("fastapi", reason="the console needs the ui extra: pip install -e '.[ui]'")
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is installed by scripts/test.sh")

CHROMIUM = next((p for p in (os.environ.get("FOA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium: scripts/test.sh installs Debian's `chromium` (apt)")

LIVE_TIMEOUT_MS = 30_000


def shots_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("FOA_UI_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_console_in_chromium(mosquitto, tmp_path, embedder) -> None:
    # a low floor (0.3 · the best α): the scripted agents' near-zero fillers are left out, while
    # the clinical nodes keep two agents and so show channel rounds
    settings = fed_settings(mosquitto.url, tmp_path, assign_floor=0.3)
    shots = shots_dir(tmp_path)

    async def main() -> None:
        async with federation_and_console(settings, embedder, allow_submit=True, latency_s=0.4) as (fed, base), \
                playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            try:
                # agents appear; one going offline turns offline on the page without a reload
                await page.goto(f"{base}/#/agents")
                rows = page.locator("#agents tbody tr[data-agent]")
                await playwright_api.expect(rows).to_have_count(len(SPECS), timeout=LIVE_TIMEOUT_MS)
                gp_status = page.locator('tr[data-agent="gp"] [data-testid=status]')
                await playwright_api.expect(gp_status).to_have_text("online")
                await playwright_api.expect(page.locator("#health")).to_contain_text("connected")
                await page.fill("#filter", "cardio")
                await playwright_api.expect(rows).to_have_count(1)
                await page.fill("#filter", "")
                loads = await page.evaluate("performance.getEntriesByType('navigation').length")
                gp = next(a for a in fed.agents if a.agent_id == "gp")
                await gp.stop()
                await playwright_api.expect(gp_status).to_have_text("offline", timeout=LIVE_TIMEOUT_MS)
                assert await page.evaluate("performance.getEntriesByType('navigation').length") == loads
                await page.screenshot(path=str(shots / "console-agents.png"), full_page=True)
                await page.click('tr[data-agent="cardio"]')
                await playwright_api.expect(page.locator("#detail")).to_contain_text("cardiology")
                await playwright_api.expect(page.locator("#detail")).to_contain_text("max_concurrency")

                # a route query shows each factor as a bar, and the gated agents and why
                await page.goto(f"{base}/#/route")
                await page.fill("textarea[name=text]", "chest pain: when should we call an ambulance?")
                await page.fill("input[name=policies]", "hipaa")
                await page.click("#routeform button[type=submit]")
                first = page.locator("#matches tbody tr").first
                sim_bar = first.locator("[data-factor=sim] .bar")
                await playwright_api.expect(sim_bar).to_be_visible(timeout=LIVE_TIMEOUT_MS)
                for factor in ("lexical", "resources", "spec", "reputation", "policy"):
                    await playwright_api.expect(first.locator(f"[data-factor={factor}]")).to_be_visible()
                await playwright_api.expect(page.locator("#gated")).to_contain_text("policy: lacks hipaa")
                await page.screenshot(path=str(shots / "console-route.png"), full_page=True)
                # an off-topic task: the abstention and its threshold (once the router has calibrated itself)
                await page.fill("textarea[name=text]", "tune the carburettor of a 1970s motorbike")
                await page.fill("input[name=policies]", "")
                abstained = page.locator("[data-testid=abstained]")
                for _ in range(30):
                    await page.click("#routeform button[type=submit]")
                    await page.wait_for_function(
                        "!document.querySelector('#routeout').textContent.includes('asking the router')")
                    if await abstained.count():
                        break
                    await asyncio.sleep(1)
                await playwright_api.expect(abstained).to_contain_text("below the calibrated abstention threshold 0.")
                await page.fill("textarea[name=text]", "  ")
                await page.click("#routeform button[type=submit]")
                await playwright_api.expect(page.locator("[data-testid=error]")).to_contain_text("the task is empty")

                # the capability map rings the agents routed for a query
                await page.goto(f"{base}/#/map")
                points = page.locator("#map g.pt")
                await playwright_api.expect(points).to_have_count(len(SPECS), timeout=LIVE_TIMEOUT_MS)
                await page.fill("#mapquery", "chest pain: when should we call an ambulance?")
                await page.click("#maproute")
                ring = '#map g.pt[data-agent="{}"] circle.routed'
                await playwright_api.expect(page.locator(ring.format("er-doc"))).to_be_visible()
                await playwright_api.expect(page.locator(ring.format("gp"))).to_have_count(0)  # offline: not routed
                await page.hover('#map g.pt[data-agent="writer"] circle >> nth=-1')
                await playwright_api.expect(page.locator("#tooltip")).to_contain_text("writer")
                await page.screenshot(path=str(shots / "console-map.png"), full_page=True)

                # a submitted job: its DAG and rounds render and update live
                await page.goto(f"{base}/#/jobs")
                await page.fill("textarea[name=question]", "My father has sudden chest pain. What should we do?")
                await page.click("#submitform button[type=submit]")
                await page.wait_for_url("**/#/jobs/job-*", timeout=LIVE_TIMEOUT_MS)
                state = page.locator("[data-testid=jobstate]")
                await playwright_api.expect(page.locator("#dag g.node").first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
                seen_running = await state.text_content()
                await page.screenshot(path=str(shots / "console-job-running.png"), full_page=True)
                await playwright_api.expect(page.locator(".roundbox").first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
                await playwright_api.expect(state).to_have_text("completed", timeout=120_000)
                assert seen_running in ("submitted", "running")
                # gp is offline: once the router has calibrated its abstention threshold, the plan's
                # family summary fits no agent left above it, leaves the plan, and the page says why
                async with httpx.AsyncClient(base_url=base) as http:
                    detail = (await http.get(f"/api/jobs/{page.url.rsplit('/', 1)[-1]}")).json()
                nodes = len(detail["nodes"])
                assert nodes in (3, 4), detail["nodes"]
                await playwright_api.expect(page.locator("#dag g.node.done")).to_have_count(nodes)
                if nodes == 3:
                    await playwright_api.expect(page.locator("[data-testid=plan-note]")).to_contain_text(
                        "no agent fits")
                await playwright_api.expect(page.locator("[data-testid=answer]")).to_contain_text("(revised)")
                await playwright_api.expect(page.locator(".roundbox table").first).to_contain_text("✔ done")
                await playwright_api.expect(page.locator("#timeline")).to_be_visible()
                await page.screenshot(path=str(shots / "console-job-full.png"), full_page=True)
                await page.screenshot(path=str(shots / "console-job.png"))  # the first screen, for the README
                job_url = page.url

                # a follow-up from the job's page continues its conversation: the new job shows the thread
                await page.fill("#followup textarea[name=question]", "and what if it comes back tomorrow?")
                await page.click("#followup button[type=submit]")
                await page.wait_for_function(f"location.href !== {job_url!r}", timeout=LIVE_TIMEOUT_MS)
                await playwright_api.expect(state).to_have_text("completed", timeout=120_000)
                thread = page.locator("[data-testid=thread] li")
                await playwright_api.expect(thread).to_have_count(2)
                await playwright_api.expect(thread.first).to_contain_text("sudden chest pain")
                await playwright_api.expect(thread.nth(1)).to_have_class("here")

                # the job list shows it; an unknown job id shows its message
                await page.goto(f"{base}/#/jobs")
                await playwright_api.expect(page.locator("#jobs tbody tr[data-job]").first).to_contain_text("completed")
                await page.goto(f"{base}/#/jobs/job-that-never-was")
                await playwright_api.expect(page.locator("[data-testid=error]")).to_contain_text(
                    "no job 'job-that-never-was'", timeout=LIVE_TIMEOUT_MS)
                await page.goto(job_url)
                await playwright_api.expect(state).to_have_text("completed")
                assert not errors, errors
            finally:
                await browser.close()

    asyncio.run(main())
    assert (shots / "console-job.png").stat().st_size > 10_000


def test_cancel_and_a_lost_broker_on_the_page(tmp_path) -> None:
    """No orchestrator here: a submitted job waits, its Cancel publishes the cancel request, and the
    canceled result (published as the owning orchestrator would) turns the page without a reload.
    Then the broker goes away: the page says so, and recovers when it is back."""
    broker = Mosquitto(data_dir=tmp_path / "broker").start()
    settings = fed_settings(broker.url, tmp_path)
    shots = shots_dir(tmp_path)

    async def main() -> list[JobCancel]:
        cancels: list[JobCancel] = []

        def on_cancel(msg: Incoming) -> None:
            assert msg.envelope is not None
            cancels.append(msg.envelope.body)

        async with running_console(settings, allow_submit=True) as base, playwright_api.async_playwright() as pw, \
                Bus(settings, "orchestrator-test", persistent=False) as bus:
            await bus.subscribe(topics.JOBS_CANCEL_WILDCARD, on_cancel, body_types=JobCancel)
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            try:
                await page.goto(f"{base}/#/jobs")
                await page.click("#submitform button[type=submit]")  # empty question
                error = page.locator("[data-testid=error]")
                await playwright_api.expect(error).to_contain_text("the question is empty")
                await page.fill("textarea[name=question]", "Is anyone there?")
                await page.click("#submitform button[type=submit]")
                await page.wait_for_url("**/#/jobs/job-*", timeout=LIVE_TIMEOUT_MS)
                job_id = page.url.rsplit("/", 1)[1]
                state = page.locator("[data-testid=jobstate]")
                await playwright_api.expect(state).to_have_text("submitted")
                await page.click("#cancel")
                await playwright_api.expect(page.locator("#cancel")).to_have_text("Cancel sent")
                for _ in range(50):
                    if cancels:
                        break
                    await asyncio.sleep(0.1)
                result = JobResult(job_id=job_id, status="canceled", failure_reason="canceled from the console")
                await bus.publish(topics.job_result(job_id), make(result, job_id=job_id, sender=bus.client_id))
                await playwright_api.expect(state).to_have_text("canceled", timeout=LIVE_TIMEOUT_MS)
                await playwright_api.expect(page.locator("#cancel")).to_have_count(0)

                banner = page.locator("#banner")
                await playwright_api.expect(banner).to_be_hidden()
                broker.stop()
                await playwright_api.expect(banner).to_contain_text("lost the broker", timeout=LIVE_TIMEOUT_MS)
                await playwright_api.expect(page.locator("#health")).to_have_text("broker disconnected")
                await page.screenshot(path=str(shots / "console-broker-lost.png"))
                broker.start()
                await playwright_api.expect(banner).to_be_hidden(timeout=LIVE_TIMEOUT_MS)
            finally:
                await browser.close()
        return cancels

    try:
        cancels = asyncio.run(main())
    finally:
        broker.stop()
    assert [c.reason for c in cancels] == ["canceled from the console"]
