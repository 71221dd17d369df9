"""The dashboard page in a real browser (Debian's chromium driven by Playwright; nothing is
downloaded): a real worker, ledger and Redis behind a real `spendstream dashboard` process.
The page shows the ledger's numbers exactly, refreshes without a reload, and the kill
switch works with the token (the real Guard refuses the feature) and not without it; so do
a user's grant and unblock (the real Guard admits the cut-off user again)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from spendstream.contract.keys import cutoff_user
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import free_port
from spendstream.errors import BudgetExceeded, FeatureDisabled
from spendstream.producers.guard import Guard
from tests.dashboard_stack import BUDGETS, Running, money, running  # noqa: F401
from tests.fault.faultkit import message, usage
from tests.helpers import scrape, wait_until

pytestmark = [pytest.mark.integration]
CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token"
SHOTS = Path(os.environ.get("SPENDSTREAM_SCREENSHOTS", "")) if os.environ.get(
    "SPENDSTREAM_SCREENSHOTS") else None


class Dashboard:
    """``spendstream dashboard`` as a child process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spendstream", "dashboard", "--port", str(self.port)],
            env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT)
        wait_until(lambda: scrape(self.port, "/api/status")[0] == 200, 30,
                   "the dashboard answering", check=self.alive)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._out.close()


def _in_thread(fn: Any, *args: Any) -> None:
    """Run ``fn`` in another thread: Playwright's sync API holds this thread's event loop,
    so ``asyncio.run`` (the publisher) cannot run here while a browser is open."""
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args)
        except BaseException as e:  # re-raised below
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def browser(dashboards: tuple[Dashboard, Dashboard]) -> Iterator[Any]:
    """Chromium, started after the stack (whose set-up runs asyncio in this thread)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dashboards(running: Running, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
               ) -> Iterator[tuple[Dashboard, Dashboard]]:
    tmp = tmp_path_factory.mktemp("dashboards")
    env = running.env()
    env.pop("SPENDSTREAM_DASHBOARD_TOKEN", None)
    writable = Dashboard({**env, "SPENDSTREAM_DASHBOARD_TOKEN": TOKEN}, tmp / "w.log")
    read_only = Dashboard(env, tmp / "r.log")
    yield writable, read_only
    writable.stop()
    read_only.stop()


def _cell(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def _shot(page: Any, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_page_shows_the_ledger_numbers_and_refreshes_live(browser, dashboards,
                                                          running):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(dashboards[0].url)
    page.wait_for_selector('#features tr[data-feature="search"]')
    month = dict(running.sql("SELECT feature, SUM(cost_usd) FROM cost_logs WHERE ts >= "
                             "date_trunc('month', now()) GROUP BY 1"))
    for feature in ("chat", "search", "summarize"):
        row = f'#features tr[data-feature="{feature}"]'
        assert _cell(page, f'{row} td[data-col="month"]') == f"${money(month[feature])}"
    assert _cell(page, '#features tr[data-feature="search"] td[data-col="spent"]') == "$0.06"
    assert _cell(page, '#features tr[data-feature="search"] td[data-col="budget"]') == "$0.05"
    users = dict(running.sql("SELECT user_id, SUM(cost_usd) FROM cost_logs WHERE ts >= "
                             "date_trunc('day', now()) GROUP BY 1"))
    for user in ("acct-vip", "acct-heavy"):
        assert _cell(page, f'#users-today tr[data-user="{user}"] td[data-col="spent"]'
                     ) == f"${money(users[user])}"
    assert _cell(page, '#users-today tr[data-user="acct-vip"] td[data-col="left"]') == "$4.25"
    page.wait_for_selector('#flags tr[data-flag="cutoff:user:acct-heavy"]')
    assert "tier free" in _cell(page, '#flags tr[data-flag="cutoff:user:acct-heavy"]')
    page.wait_for_selector('#alerts tr[data-kind="unpriced"]', timeout=30_000)
    assert page.locator("#hourly svg polyline").count() >= 3

    # Live: new spend shows up without a reload.
    page.evaluate("window.__marker = 1")
    event = usage("acct-new", "chat", cost="1.5")
    _in_thread(running.stack.publish, [message(event)])
    page.wait_for_selector('#users-today tr[data-user="acct-new"]', timeout=30_000)
    assert _cell(page, '#users-today tr[data-user="acct-new"] td[data-col="spent"]') == "$1.5"
    assert page.evaluate("window.__marker") == 1  # the same document: fetched, not reloaded
    total = running.sql("SELECT SUM(cost_usd) FROM cost_logs WHERE feature = 'chat'")[0][0]
    page.wait_for_function(
        "t => document.querySelector('#features tr[data-feature=\"chat\"] "
        "td[data-col=\"month\"]').innerText.trim() === t", arg=f"${money(total)}")
    _shot(page, "dashboard")
    page.close()


def test_kill_switch_from_the_page_with_the_token(browser, dashboards, running):  # noqa: F811
    guard = Guard(running.stack.redis_url, parse_budgets(yaml.safe_load(BUDGETS)),
                  prefix=running.stack.prefix, cache_ttl=0)
    msgs = [{"role": "user", "content": "hi"}]
    guard.admit("acct-0", "search", msgs, model="gpt-4o")
    page = browser.new_page()
    page.goto(dashboards[0].url)
    button = '#features tr[data-feature="search"] button[data-action="disable"]'
    page.wait_for_selector(button)
    page.click(button)  # no token entered yet: refused
    page.wait_for_function("document.querySelector('#switch-result').innerText"
                           ".includes('refused (401)')")
    guard.admit("acct-0", "search", msgs, model="gpt-4o")  # still allowed
    page.fill("#token", TOKEN)
    page.click(button)
    try:
        page.wait_for_selector('#features tr[data-feature="search"] td.state-disabled')
        with pytest.raises(FeatureDisabled):
            guard.admit("acct-0", "search", msgs, model="gpt-4o")
        page.wait_for_selector('#flags tr[data-flag="cutoff:feature:search"]')
        _shot(page, "dashboard-disabled")
        page.click('#features tr[data-feature="search"] button[data-action="enable"]')
        page.wait_for_selector(button)  # enabled again (its state is "warned": over budget)
        assert _cell(page, '#features tr[data-feature="search"] td[data-col="state"]'
                     ).startswith("warned")
        wait_until(lambda: guard.admit("acct-0", "search", msgs, model="gpt-4o"), 5,
                   "search admitted again")
    finally:
        running.stack.redis().client.delete(f"{running.stack.prefix}cutoff:feature:search")
        guard.close()
        page.close()


def _spend(running: Running, user: str, n: int, cost: str) -> None:  # noqa: F811
    _in_thread(running.stack.publish, [message(usage(user, "chat", cost=cost))
                                       for _ in range(n)])


def _wait_text(page: Any, selector: str, text: str) -> None:
    """Poll until the element shows ``text`` (the page refreshes every 3 s)."""
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); "
        "return e !== null && e.innerText.trim() === t; }", arg=[selector, text],
        timeout=60_000)


def test_grant_and_unblock_from_the_page(browser, dashboards, running):  # noqa: F811
    user = "acct-granted"
    flag = f'#flags tr[data-flag="{cutoff_user(user)}"]'
    row = f'#users-today tr[data-user="{user}"]'
    keys = running.stack.redis()
    guard = Guard(running.stack.redis_url, parse_budgets(yaml.safe_load(BUDGETS)),
                  prefix=running.stack.prefix, cache_ttl=0)
    msgs = [{"role": "user", "content": "hi"}]

    def admitted() -> bool:
        try:
            guard.admit(user, "chat", msgs, model="gpt-4o")
        except BudgetExceeded:
            return False
        return True

    _spend(running, user, 4, "0.03")  # $0.12 of the free tier's $0.10: cut off
    wait_until(lambda: keys.get(cutoff_user(user)), 60, f"{user}'s cutoff")
    assert not admitted()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    asked: list[tuple[str, str]] = []

    def answer(dialog: Any) -> None:
        asked.append((dialog.message, dialog.default_value))
        dialog.accept("0.10")

    page.on("dialog", answer)
    try:
        page.goto(dashboards[0].url)
        page.wait_for_selector(f'{row} button[data-action="unblock"]')  # shown: cut off
        assert page.locator(f'{row} td[data-col="tier"]').get_attribute("title") == "cut off now"
        page.click(f'{row} button[data-action="grant"]')  # no token entered yet: refused
        page.wait_for_function("document.querySelector('#users-result').innerText"
                               ".includes('grant refused (401)')")
        assert keys.get(cutoff_user(user)) and not admitted()

        # With the token: $0.10 more today, so $0.2 with $0.12 spent; the cutoff clears.
        page.fill("#token", TOKEN)
        page.click(f'{row} button[data-action="grant"]')
        assert asked[-1][1] == "1.00" and user in asked[-1][0]
        page.wait_for_function("document.querySelector('#users-result').innerText"
                               ".includes('raised by $0.10')")
        _wait_text(page, f'{row} td[data-col="budget"]', "$0.2")
        _wait_text(page, f'{row} td[data-col="left"]', "$0.08")
        budget = page.locator(f'{row} td[data-col="budget"]')
        assert "granted" in str(budget.get_attribute("class"))
        assert "$0.1 granted" in str(budget.get_attribute("title"))
        wait_until(admitted, 30, f"{user} admitted after the grant")
        page.wait_for_selector(flag, state="detached", timeout=30_000)
        page.wait_for_selector(f'{row} button[data-action="unblock"]', state="detached")
        _shot(page, "dashboard-grant")

        # Past the raised budget: cut off again, then unblocked from the flags table; the
        # worker grants what gives the tier's whole $0.10 back: $0.31 with $0.1 left.
        _spend(running, user, 3, "0.03")
        page.click(f'{flag} button[data-action="unblock"]', timeout=60_000)
        page.wait_for_function("document.querySelector('#flags-result').innerText"
                               ".includes('unblock " + user + "')")
        _wait_text(page, f'{row} td[data-col="budget"]', "$0.31")
        _wait_text(page, f'{row} td[data-col="left"]', "$0.1")
        wait_until(admitted, 30, f"{user} admitted after the unblock")
        page.wait_for_selector(flag, state="detached", timeout=30_000)
    finally:
        guard.close()
        page.close()


def test_page_without_a_token_setting_cannot_write(browser, dashboards, running):  # noqa: F811
    page = browser.new_page()
    page.goto(dashboards[1].url)
    page.wait_for_selector('#features tr[data-feature="chat"] button[data-action="disable"]')
    assert "read-only" in _cell(page, "#mode")
    assert page.locator("#token").is_disabled()
    page.click('#features tr[data-feature="chat"] button[data-action="disable"]')
    page.wait_for_function("document.querySelector('#switch-result').innerText"
                           ".includes('refused (403)')")
    assert "SPENDSTREAM_DASHBOARD_TOKEN" in _cell(page, "#switch-result")
    assert running.stack.redis().get("cutoff:feature:chat") is None
    # Grant and unblock are disabled, saying why.
    heavy = '#flags tr[data-flag="cutoff:user:acct-heavy"]'
    page.wait_for_selector(f'{heavy} button[data-action="unblock"]')
    for button in (page.locator(f'{heavy} button[data-action="unblock"]'),
                   page.locator('#users-today tr[data-user="acct-heavy"] '
                                'button[data-action="grant"]')):
        assert button.is_disabled()
        assert "read-only" in str(button.get_attribute("title"))
    assert Decimal(running.sql("SELECT count(*) FROM cost_logs")[0][0]) > 0
    page.close()
