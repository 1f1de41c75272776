"""The built book in a real browser: headless Chromium, offline, driven by Playwright.

Needs `make book` first (`make test` does it). Every request that leaves localhost is blocked
and recorded, so passing proves the pages work with no network: MathJax is served from the
book itself, figures are embedded, and the static slider runs on its own script.

Chromium is Debian's (/usr/bin/chromium) or the one named by $CHROMIUM. Without one the test
skips, unless MLBOOK_REQUIRE_BROWSER=1 (set by .ci/run), when it fails.
"""

from __future__ import annotations

import functools
import http.server
import os
import pathlib
import shutil
import threading
from urllib.parse import urlparse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HTML = pathlib.Path(os.environ.get("MLBOOK_HTML", ROOT / "_build" / "html"))   # the built book
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
RAW_TEX = ["\\frac", "\\mathbb", "\\mathrm", "\\log", "\\qquad", "$$", "\\(", "\\["]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _missing(reason: str):
    if os.environ.get("MLBOOK_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        _missing("no built book in _build/html: run `make book` first")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        _missing("no Chromium found (install Debian's `chromium`, or set $CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


class Page:
    """A page opened offline, with every blocked request, script error, console error and byte
    received recorded."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 900):
        self.external, self.failed, self.errors, self.console = [], [], [], []
        self.bytes = 0
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("requestfailed", lambda req: self.failed.append(req.url))
        self.page.on("console", lambda msg: msg.type == "error" and self.console.append(msg.text))
        self.page.on("requestfinished", self._count)
        self.page.route("**/*", self._route)
        response = self.page.goto(url, wait_until="load")
        assert response is not None and response.ok, f"{url} answered {response and response.status}"
        # MathJax 3 typesets asynchronously; wait until it reports being done (pages without
        # math, like the bibliography, do not load it).
        if self.page.locator("script[src*='mathjax']").count():
            self.page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                                        timeout=20_000)
            self.page.evaluate("MathJax.startup.promise")

    def _count(self, request):
        """Bytes of the page itself: its HTML and images, not the theme's, MathJax's and the
        search index's shared files that a browser caches after the first page."""
        path = urlparse(request.url).path
        if request.url.startswith("data:") or path.startswith("/_static/") or path == "/searchindex.js":
            return
        sizes = request.sizes()
        self.bytes += sizes["responseBodySize"] + sizes["responseHeadersSize"]

    def _route(self, route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def text(self) -> str:
        return self.page.inner_text("main")

    def screenshot(self, name: str, **kwargs) -> pathlib.Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), **kwargs)
        print(f"\nscreenshot: {path}")
        return path

    def close(self):
        self.context.close()


def _assert_math_rendered(page: Page, minimum: int):
    rendered = page.page.locator("mjx-container").count()
    assert rendered >= minimum, f"only {rendered} formulas typeset by MathJax"
    errors = page.page.locator("mjx-merror").count()
    assert errors == 0, f"{errors} formulas failed to typeset"
    text = page.text()
    leftover = [tex for tex in RAW_TEX if tex in text]
    assert not leftover, f"raw TeX left on the page: {leftover}"


def _assert_clean(page: Page):
    assert not page.errors, f"JavaScript errors: {page.errors}"
    assert not page.console, f"console errors: {page.console}"
    assert not page.external, f"requests leaving localhost: {page.external}"
    local_failures = [u for u in page.failed if u not in page.external]
    assert not local_failures, f"resources of the book failed to load: {local_failures}"


def test_chapter_page_renders_math_offline(server, browser):
    page = Page(browser, f"{server}/book/kl.html")
    try:
        _assert_math_rendered(page, minimum=40)
        # Numbered equations and cross-references resolved to numbers.
        assert page.page.locator("span.eqno").count() >= 10
        assert page.page.locator("a[href^='#equation-kl-']").count() >= 10
        # Theorem and proof blocks, exercises with solutions hidden until clicked.
        assert page.page.locator("div.theorem").count() >= 1
        assert page.page.locator("div.proof").count() >= 2
        solutions = page.page.locator("div.solution")
        assert solutions.count() == 3
        body = solutions.first.locator("p").last
        assert not body.is_visible(), "exercise solutions should start folded"
        solutions.first.locator(".admonition-title").click()
        body.wait_for(state="visible", timeout=5_000)
        # Citations link to the bibliography.
        assert page.page.locator("a[href*='bibliography.html']").count() >= 3
        page.screenshot("kl-chapter.png", full_page=False)
        _assert_clean(page)
        # MathJax itself was served by the book: nothing it needed was blocked.
        assert not [u for u in page.external if "mathjax" in u.lower()], page.external
    finally:
        page.close()


def test_notebook_page_figures_and_static_slider(server, browser):
    page = Page(browser, f"{server}/notebooks/kl_approximation.html")
    try:
        _assert_math_rendered(page, minimum=10)
        # Executed outputs are in the page: the checked table and the figures.
        assert "torch exact" in page.text()
        figures = page.page.locator("div.cell_output img")
        assert figures.count() >= 2, "expected the sd/KL figure and the slider's frame"
        widths = figures.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert all(w > 100 for w in widths), f"figure failed to load: natural widths {widths}"
        # Launch buttons to Colab and Binder.
        hrefs = page.page.locator("a[href*='colab.research.google.com'], a[href*='mybinder.org']")
        assert hrefs.count() >= 2

        slider = page.page.locator("div.mlbook-slider").first
        slider.scroll_into_view_if_needed()
        frame = slider.locator("img.mlbook-frame")
        first_src, first_frame = frame.get_attribute("src"), slider.get_attribute("data-frame")
        assert first_frame is not None, "the slider's script did not run"
        before = page.screenshot("kl-slider-before.png", clip=slider.bounding_box())
        ranges = slider.locator("input.mlbook-range")
        assert ranges.count() == 2
        label = ranges.first.locator("xpath=following-sibling::output")
        old_label = label.inner_text()
        ranges.first.focus()
        page.page.keyboard.press("ArrowRight")
        page.page.wait_for_function(
            "([el, old]) => el.getAttribute('data-frame') !== old", arg=[slider.element_handle(), first_frame])
        assert frame.get_attribute("src") != first_src, "moving the slider did not change the figure"
        assert label.inner_text() != old_label, "moving the slider did not update its value label"
        after = page.screenshot("kl-slider-after.png", clip=slider.bounding_box())
        assert before.read_bytes() != after.read_bytes()
        _assert_clean(page)
    finally:
        page.close()


def _toc_pages() -> list[str]:
    """Every page of the book, as paths relative to the HTML root, read from _toc.yml."""
    import execute

    return [f"{p}.html" for p in execute.toc_files()]


PAGES = _toc_pages()
NOTEBOOK_PAGES = [p for p in PAGES if p.startswith("notebooks/")]


DERIVATION_PAGES = [p for p in PAGES if p.startswith("book/")
                    and p not in ("book/intro.html", "book/bibliography.html", "book/notation.html")]
MAX_PAGE_BYTES = 4_000_000
PHONE, TABLET, DESKTOP = 390, 768, 1280

# Formulas cut off: a typeset formula that sticks out of an ancestor which hides its overflow.
CLIPPED_MATH = """() => {
  const cut = [];
  for (const m of document.querySelectorAll("article mjx-container")) {
    let r = m.getBoundingClientRect();
    if (r.width === 0) continue;                              // folded away
    for (let el = m.parentElement; el && el !== document.body; el = el.parentElement) {
      const style = getComputedStyle(el);
      const box = el.getBoundingClientRect();
      if (style.overflowX === "auto" || style.overflowX === "scroll") {
        r = box;                  // what sticks out of a scrolling box is reached by scrolling
        continue;
      }
      if (style.overflowX !== "hidden" && style.overflowX !== "clip") continue;
      if (r.right > box.right + 1 || r.left < box.left - 1) {
        cut.push(m.textContent.slice(0, 50));
        break;
      }
    }
  }
  return cut;
}"""
# Boxes wider than their content area: code, printed output, tables.
OVERFLOWING = """() => {
  const wide = [];
  const boxes = document.querySelectorAll(
    "article div.cell_input pre, article div.cell_output pre, article .mlbook-table, " +
    "article .pst-scrollable-table-container, article div.highlight pre");
  for (const el of boxes) {
    if (el.getBoundingClientRect().width === 0) continue;     // folded away
    if (el.scrollWidth > el.clientWidth + 1) wide.push(el.textContent.trim().slice(0, 50));
  }
  return wide;
}"""
# The book's script (book/_static/mlbook.js) counts its measurements of wide formulas and boxes.
MEASURED = "n => Number(document.documentElement.dataset.mlbookMeasured || 0) > n"
PAGE_WIDER_THAN_SCREEN = "() => document.documentElement.scrollWidth > window.innerWidth + 1"
BAD_ALT = """() => Array.from(document.querySelectorAll("article img"))
  .filter(i => !i.alt || /\\.(png|jpe?g|gif|svg|webp)$/i.test(i.alt) || i.alt.includes("_images/"))
  .map(i => i.alt || i.src.slice(0, 60))"""


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_offline(server, browser, path):
    """Each page, loaded once: math typeset, no errors, no request leaving the machine, weight,
    alt text, nothing cut or wider than its column at 1280 px and at 390 px; a derivation page's
    captioned figures; a notebook page's sliders switching frames."""
    page = Page(browser, f"{server}/{path}")
    try:
        if page.page.locator("div.math, span.math").count():
            _assert_math_rendered(page, minimum=1)
        unresolved = page.page.locator("span.xref.std, .problematic").count()   # references Sphinx could not resolve
        assert unresolved == 0, f"{unresolved} unresolved references on {path}"
        _assert_clean(page)
        assert page.bytes <= MAX_PAGE_BYTES, f"{path} weighs {page.bytes / 1e6:.1f} MB"
        assert page.page.evaluate(BAD_ALT) == [], "images whose alt text is a file path or empty"
        # Desktop: nothing cut, every code cell, output and table fits its column.
        page.page.wait_for_function(MEASURED, arg=0, timeout=10_000)    # the book's script measured
        assert page.page.evaluate(CLIPPED_MATH) == [], f"formulas cut off at {DESKTOP} px"
        assert page.page.evaluate(OVERFLOWING) == [], f"boxes wider than the column at {DESKTOP} px"
        assert not page.page.evaluate(PAGE_WIDER_THAN_SCREEN)
        if path in DERIVATION_PAGES:
            _check_figures(page, path)
        if path in NOTEBOOK_PAGES:
            _check_sliders(page, path)
            _assert_clean(page)
        # Phone: wide things scroll inside their own boxes, never the page; nothing is cut.
        count = int(page.page.evaluate("document.documentElement.dataset.mlbookMeasured"))
        page.page.set_viewport_size({"width": PHONE, "height": 844})
        page.page.wait_for_function(MEASURED, arg=count, timeout=10_000)   # re-measured after resizing
        assert page.page.evaluate(CLIPPED_MATH) == [], f"formulas cut off at {PHONE} px"
        assert not page.page.evaluate(PAGE_WIDER_THAN_SCREEN), f"the page scrolls sideways at {PHONE} px"
    finally:
        page.close()


def _check_figures(page: Page, path: str):
    """A derivation page has at least one figure, each with a caption and alt text in words."""
    figures = page.page.locator("article figure:has(img)")
    assert figures.count() >= 1, f"{path} has no figure"
    for k in range(figures.count()):
        figure = figures.nth(k)
        assert figure.locator("figcaption").inner_text().strip(), f"figure {k} has no caption"
        alt = figure.locator("img").first.get_attribute("alt") or ""
        assert len(alt.split()) >= 5, f"figure {k} has alt text {alt!r}: say what it shows"
        assert figure.locator("img").first.evaluate("i => i.complete && i.naturalWidth > 100")


# Contrast of links inside theorem, proof, exercise and solution boxes against the box's
# background (WCAG 2 relative luminance), in the light and the dark theme.
LINK_CONTRAST = """() => {
  const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {          // translucent tints composited over what lies beneath
    const layers = [];
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      const alpha = c.length === 4 ? c[3] : 1;
      if (alpha > 0) layers.push([c.slice(0, 3), alpha]);
      if (alpha === 1) break;
    }
    let out = [255, 255, 255];
    for (const [c, alpha] of layers.reverse()) out = out.map((v, k) => alpha * c[k] + (1 - alpha) * v);
    return out;
  };
  const worst = [];
  for (const a of document.querySelectorAll(".admonition a, div.proof a, div.solution a")) {
    if (!a.getBoundingClientRect().width || a.classList.contains("headerlink")) continue;
    const l1 = lum(rgb(getComputedStyle(a).color)), l2 = lum(background(a));
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    if (ratio < 4.5) worst.push([a.textContent.trim().slice(0, 30), ratio.toFixed(2)]);
  }
  return worst;
}"""


@pytest.mark.parametrize("path", ["book/diffusion_fast.html", "book/kl.html", "book/alignment.html"])
def test_links_in_theorem_and_exercise_boxes_are_readable(server, browser, path):
    page = Page(browser, f"{server}/{path}")                  # loaded once, checked in both themes
    try:
        for theme in ("light", "dark"):
            page.page.evaluate(f"document.documentElement.dataset.theme = '{theme}'")
            page.page.wait_for_timeout(100)
            assert page.page.evaluate(LINK_CONTRAST) == [], f"low-contrast links in the {theme} theme"
    finally:
        page.close()


@pytest.mark.parametrize("width", [PHONE, TABLET])
@pytest.mark.parametrize("path", ["book/kl.html", "notebooks/kl_approximation.html"])
def test_menu_and_contents_open_and_close_on_phones_and_tablets(server, browser, path, width):
    page = Page(browser, f"{server}/{path}", width=width, height=844)
    try:
        for toggle, dialog, inside in [("primary-toggle", "#pst-primary-sidebar-modal", "a[href*='svm']"),
                                       ("secondary-toggle", "#pst-secondary-sidebar-modal", "a.nav-link")]:
            buttons = page.page.locator(f"button.{toggle}:visible")
            assert buttons.count() >= 1, f"no visible {toggle} at {width} px"
            buttons.first.click()
            page.page.wait_for_selector(f"{dialog}[open]", timeout=5_000)
            assert page.page.locator(f"{dialog} {inside}").first.is_visible()
            if width == PHONE and toggle == "primary-toggle":
                page.screenshot(f"menu-open-{width}.png")
            page.page.keyboard.press("Escape")
            page.page.wait_for_selector(f"{dialog}:not([open])", state="attached", timeout=5_000)
        _assert_clean(page)
    finally:
        page.close()


def test_the_menu_button_folds_the_sidebar_on_a_desktop(server, browser):
    page = Page(browser, f"{server}/book/kl.html")
    try:
        sidebar = page.page.locator("#pst-primary-sidebar")
        assert sidebar.is_visible()
        page.page.locator("button.primary-toggle:visible").first.click()
        page.page.wait_for_function(
            "() => document.querySelector('#pst-primary-sidebar').classList.contains('pst-sidebar-hidden')")
        page.page.locator("button.primary-toggle:visible").first.click()
        page.page.wait_for_function(
            "() => !document.querySelector('#pst-primary-sidebar').classList.contains('pst-sidebar-hidden')")
        _assert_clean(page)
    finally:
        page.close()


PART_PAGES = ["book/intro.html", "book/kl.html", "notebooks/ensembles_trees.html", "book/diffusion_sde.html",
              "notebooks/fast_samplers.html", "book/alignment.html"]


@pytest.mark.parametrize("path", PART_PAGES)
def test_screenshots_of_one_page_per_part(server, browser, path):
    """Screenshots for a person to look at (test-artifacts/): desktop and phone, top of the page
    and the first figure."""
    name = path.split("/")[-1].replace(".html", "")
    page = Page(browser, f"{server}/{path}", width=DESKTOP, height=900)   # loaded once, then resized
    try:
        for width, height in [(DESKTOP, 900), (PHONE, 844)]:
            if width != DESKTOP:
                count = int(page.page.evaluate("document.documentElement.dataset.mlbookMeasured"))
                page.page.set_viewport_size({"width": width, "height": height})
                page.page.wait_for_function(MEASURED, arg=count, timeout=10_000)
            page.page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(f"{name}-{width}-top.png")
            figure = page.page.locator("article figure img, article div.cell_output img").first
            if figure.count():
                figure.scroll_into_view_if_needed()
                page.screenshot(f"{name}-{width}-figure.png")
    finally:
        page.close()


def _check_sliders(page: Page, path: str):
    """Every slider of a notebook page switches its precomputed frame (a screenshot of the first)."""
    sliders = page.page.locator("div.mlbook-slider")
    if sliders.count() == 0:
        return          # each chapter needs one somewhere: test_every_chapter_has_a_widget
    assert page.page.locator("div.cell_output img").count() >= 1
    for k in range(sliders.count()):
        slider = sliders.nth(k)
        slider.scroll_into_view_if_needed()
        frame = slider.locator("img.mlbook-frame")
        for r in range(slider.locator("input.mlbook-range").count()):
            rng = slider.locator("input.mlbook-range").nth(r)
            before_src, before = frame.get_attribute("src"), slider.get_attribute("data-frame")
            assert before is not None, "the slider's script did not run"
            rng.focus()
            # Step towards the end that has room to move.
            key = "ArrowLeft" if rng.input_value() == rng.get_attribute("max") else "ArrowRight"
            page.page.keyboard.press(key)
            page.page.wait_for_function("([el, old]) => el.getAttribute('data-frame') !== old",
                                        arg=[slider.element_handle(), before])
            assert frame.get_attribute("src") != before_src, f"slider {r} of widget {k} left the figure unchanged"
    name = path.split("/")[-1].replace(".html", "")
    sliders.first.scroll_into_view_if_needed()        # a clip is in viewport coordinates
    page.screenshot(f"{name}-widget.png", clip=sliders.first.bounding_box())


def test_every_chapter_has_a_widget():
    """Each chapter with notebooks has at least one working-in-HTML slider among them."""
    import yaml

    if not (HTML / "index.html").exists():
        _missing("no built book in _build/html: run `make book` first")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            notebooks = [s["file"] for s in chapter.get("sections", []) if s["file"].startswith("notebooks/")]
            if not notebooks:
                continue
            with_widget = [nb for nb in notebooks
                           if 'class="mlbook-slider"' in (HTML / f"{nb}.html").read_text()]
            assert with_widget, f"chapter {chapter['file']} has no slider widget in {notebooks}"
