"""The cluster map in a real headless Chromium, against a live pool of the default model.

Chromium comes from the system (Debian's ``chromium``; ``scripts/system-deps/chromium.sh``
installs it) and is driven with Playwright's Python package; nothing is downloaded here.
Screenshots land in ``artifacts/`` (desktop and phone width, light and dark).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from cli.main import main as butterfly
from tests.conftest import ROOT, LivePool, live_pool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: run `sudo bash scripts/system-deps/chromium.sh` (CI installs it)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run `bash scripts/setup.sh --dev`")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(default_model, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LivePool]:  # noqa: ANN001
    # A calm pool: on two shared cores the browser slows the volunteers, and the map should be
    # checked against one plan, not against rebalancing (tested on its own elsewhere).
    async with live_pool(default_model, tmp_path_factory.mktemp("map-pool"), volunteers=2) as live:
        await live.wait_ready()
        yield live


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, pool: LivePool) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport=DESKTOP)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    await tab.goto(pool.coordinator.url + "/")  # type: ignore[attr-defined]
    await tab.wait_for_selector("#conn.pill-on", timeout=5000)
    yield tab
    await context.close()
    assert not errors, f"the page raised: {errors}"


def plan_of(pool: LivePool) -> list[list[tuple[str, int, int]]]:
    return [[(s.link.node_id, s.start, s.end) for s in p.stages] for p in pool.coordinator.pool.pipelines]  # type: ignore[attr-defined]


async def band_of(page: Any) -> list[list[tuple[str, int, int]]]:
    rows = await page.eval_on_selector_all(
        ".band-row",
        """rows => rows.map(row => [...row.querySelectorAll('.segment')].map(
            s => [s.dataset.nodeId, Number(s.dataset.start), Number(s.dataset.end)]))""",
    )
    return [[(s[0], s[1], s[2]) for s in row] for row in rows if row]


async def eventually(check, *, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def settle(pool: LivePool, *, quiet_s: float = 2.0, timeout: float = 60.0) -> None:
    """Wait until the pool serves and its plan has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    last, since = plan_of(pool), time.monotonic()
    while not (last and time.monotonic() - since >= quiet_s):
        if time.monotonic() > deadline:
            raise AssertionError(f"the pool did not settle within {timeout} s: {plan_of(pool)}")
        await asyncio.sleep(0.1)
        now = plan_of(pool)
        if now != last:
            last, since = now, time.monotonic()


async def test_the_band_matches_the_plan_and_nodes_show_their_machines(pool: LivePool, page: Any) -> None:
    async def same() -> bool:
        return await band_of(page) == plan_of(pool) and bool(plan_of(pool))

    await eventually(same, timeout=5, what=f"band {await band_of(page)} == plan {plan_of(pool)}")
    layers = pool.coordinator.model.config.num_layers  # type: ignore[attr-defined]
    for row in await band_of(page):
        assert row[0][1] == 0 and row[-1][2] == layers
    cards = await page.eval_on_selector_all(".node", "cards => cards.map(c => [c.dataset.nodeId, c.querySelector('.node-name').textContent])")
    links = pool.coordinator.pool.links  # type: ignore[attr-defined]
    assert sorted(map(tuple, cards)) == sorted((node_id, link.name) for node_id, link in links.items())
    assert await page.text_content("#stat-volunteers") == "2"
    assert await page.text_content("#model-name") == f"{pool.coordinator.model.manifest.name} · {layers} layers"  # type: ignore[attr-defined]
    assert "cpu" in (await page.text_content(".node .node-sub") or "")
    handoffs = await page.eval_on_selector_all("[data-k='handoff']", "dds => dds.map(d => d.textContent)")
    assert len(handoffs) == 2 and "to pool" in handoffs  # the last stage answers the coordinator itself
    assert await page.locator("#events li[data-kind='join']").count() == 2


async def test_a_node_appears_within_2_s_of_joining_and_goes_when_it_leaves(pool: LivePool, page: Any) -> None:
    coordinator = pool.coordinator
    before = set(coordinator.pool.links)  # type: ignore[attr-defined]
    proc = pool.spawn_volunteer("v3", invite=coordinator.invite(ttl_s=600))  # type: ignore[attr-defined]

    async def joined() -> bool:
        return bool(set(coordinator.pool.links) - before)  # type: ignore[attr-defined]

    await eventually(joined, timeout=90, what="v3 joins the pool")
    node_id = next(iter(set(coordinator.pool.links) - before))  # type: ignore[attr-defined]
    selector = f".node[data-node-id='{node_id}']"
    started = time.monotonic()
    await page.wait_for_selector(selector, timeout=2000)
    assert time.monotonic() - started < 2.0
    assert await page.text_content(f"{selector} .node-name") == "v3"

    proc.send_signal(signal.SIGINT)  # Ctrl-C: the volunteer drains and leaves
    await page.wait_for_selector(selector, state="detached", timeout=60000)
    assert node_id not in coordinator.pool.links  # type: ignore[attr-defined]
    assert proc.wait(timeout=30) == 0
    assert await page.locator("#events li[data-kind='leave']").count() >= 1


async def test_chat_streams_an_answer_and_screenshots(pool: LivePool, page: Any, browser: Any) -> None:
    await settle(pool)
    await page.fill("#prompt", "In one sentence: what is volunteer computing?")
    await page.click("#send")
    await page.wait_for_selector(".msg.assistant.streaming")
    lengths: list[int] = []
    while await page.locator(".msg.assistant.streaming").count():
        lengths.append(len(await page.text_content(".msg.assistant") or ""))
        await asyncio.sleep(0.03)
    assert not await page.locator(".msg.error").count(), await page.text_content(".msg.error")
    answer = (await page.text_content(".msg.assistant") or "").strip()
    assert len(answer) > 20, answer
    partial = sorted({n for n in lengths if 0 < n < len(answer)})
    assert len(partial) >= 3, f"the answer arrived in one piece: {lengths}"
    assert "tokens/s" in (await page.text_content("#chat-meta") or "")

    await asyncio.sleep(1.0)  # let the throughput chart draw the answer
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "cluster-map-desktop.png"), full_page=True)
    await page.set_viewport_size(PHONE)
    await asyncio.sleep(0.3)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways at phone width ({width} px)"
    await page.screenshot(path=str(ARTIFACTS / "cluster-map-phone.png"), full_page=True)
    dark = await browser.new_context(viewport=DESKTOP, color_scheme="dark")
    tab = await dark.new_page()
    await tab.goto(pool.coordinator.url + "/")  # type: ignore[attr-defined]
    await tab.wait_for_selector(".segment")
    await asyncio.sleep(0.6)
    background = await tab.evaluate("getComputedStyle(document.body).backgroundColor")
    await tab.screenshot(path=str(ARTIFACTS / "cluster-map-dark.png"), full_page=True)
    await dark.close()
    assert background != await page.evaluate("getComputedStyle(document.body).backgroundColor")
    for name in ("desktop", "phone", "dark"):
        assert (ARTIFACTS / f"cluster-map-{name}.png").stat().st_size > 10_000


async def test_the_key_field_appears_when_keys_are_required(pool: LivePool, page: Any) -> None:
    keys = pool.coordinator.surface.keys  # type: ignore[attr-defined]
    assert await page.locator("#key-row").is_hidden()
    key, _ = keys.create("map", now=time.time())
    try:
        await page.wait_for_selector("#key-row", state="visible", timeout=3000)
    finally:
        keys.revoke(key.key_id, now=time.time())
    await page.wait_for_selector("#key-row", state="hidden", timeout=3000)


async def test_status_command_prints_the_same_pool(pool: LivePool, capsys: pytest.CaptureFixture[str]) -> None:
    url = pool.coordinator.url  # type: ignore[attr-defined]
    assert await asyncio.to_thread(butterfly, ["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "VOLUNTEER" in out and "PIPELINES" in out and "RECENT EVENTS" in out
    for link in pool.coordinator.pool.links.values():  # type: ignore[attr-defined]
        assert f"\n{link.name} " in out
    assert await asyncio.to_thread(butterfly, ["status", "--url", url, "--json"]) == 0
    assert '"pipelines"' in capsys.readouterr().out


async def test_a_lost_stage_counts_as_a_failure_on_the_map_and_in_metrics(pool: LivePool, page: Any) -> None:
    victim = pool.coordinator.pool.pipelines[0].stages[-1].link  # type: ignore[attr-defined]
    proc = next(p for p in pool.procs if p.poll() is None and _named(p, victim.name))
    proc.kill()
    await page.wait_for_function("Number(document.querySelector('#stat-failures').textContent) >= 1", timeout=15000)
    async with aiohttp.ClientSession() as http:
        async with http.get(pool.coordinator.url + "/metrics") as response:  # type: ignore[attr-defined]
            text = await response.text()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert values["butterfly_stage_failures_total"] >= 1
    await page.wait_for_selector(f".node[data-node-id='{victim.node_id}']", state="detached", timeout=15000)


def _named(proc: Any, name: str) -> bool:
    args = list(proc.args)
    return "--name" in args and args[args.index("--name") + 1] == name
