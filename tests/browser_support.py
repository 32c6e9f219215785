"""A real browser for the web register's tests: Debian's chromium driven by Playwright for Python
(never `playwright install`, which downloads browsers), one per test module, and signed-in pages
whose screenshots are saved when the test using them fails."""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
PHONE = 390  # px: a phone's screen, as the phone layouts are tested
SignIn = Callable[..., Page]


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def signed_in_pages(browser: Browser, url: str, password: str,
                    request: pytest.FixtureRequest) -> Iterator[SignIn]:
    """For a fixture: sign_in(login, lang="en", password=...) -> a page of a new browser context,
    signed in, showing pages in that language. Screenshots of every page if the test fails."""
    contexts: list[BrowserContext] = []

    def open_as(login: str, lang: str = "en", password: str = password) -> Page:
        context = browser.new_context(base_url=url, viewport={"width": 1200, "height": 900},
                                      locale="zh-CN" if lang == "zh" else "en-GB")
        context.set_default_timeout(15000)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"/signin?lang={lang}")
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", password)
        page.click("form[action='/signin'] button[type=submit]")
        expect(page.locator(".topbar .who")).to_contain_text(login)
        html_lang = "zh-Hans" if lang == "zh" else "en"
        if page.locator("html").get_attribute("lang") != html_lang:
            page.click(f"form[action='/me/language'] button[value={lang}]")
            expect(page.locator("html")).to_have_attribute("lang", html_lang)
        return page

    failed = request.session.testsfailed
    yield open_as
    if request.session.testsfailed > failed:
        folder = Path(tempfile.mkdtemp(prefix=f"gw-shots-{request.node.name[:40]}-"))
        for i, context in enumerate(contexts):
            for j, page in enumerate(context.pages):
                shot = folder / f"page-{i}-{j}.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of {page.url}: {shot}")
    for context in contexts:
        context.close()


def rows_within_the_screen(table: Locator, cells: tuple[str, ...], *, rows: int = 1, width: int = PHONE) -> Locator:
    """The body rows of `table` (at least `rows`), once it is seen not to scroll sideways and each
    of `cells` of every row to lie within a screen `width` wide."""
    assert table.evaluate("t => t.scrollWidth - t.clientWidth") == 0
    found = table.locator("tbody tr")
    expect(found.first).to_be_visible()
    assert found.count() >= rows, found.count()
    for i in range(found.count()):
        for cell in cells:
            box = found.nth(i).locator(cell).first.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (i, cell, box)
    return found
