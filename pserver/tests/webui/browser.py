"""Drive a PServer's web UI in a real headless Chromium (Debian's package)
through Playwright, for pserver/tests/it/webui.rs.

The Rust test starts a central and three PServers, then runs this script
with the venv's Python. Everything it needs comes in environment variables:

  WEBUI_URL          the control API of the PServer under test (http://127.0.0.1:PORT)
  WEBUI_TOKEN        its PSERVER_API_TOKEN
  WEBUI_ARTIFACTS    folder for screenshots (and, on failure, page HTML and console)
  WEBUI_B_NAME/ID    a file held by another peer: downloaded to the end
  WEBUI_C_NAME/ID    a big file held by a peer that uploads slowly: cancelled
                     (then wanted as words, notify only, on the Wanted page)
  WEBUI_PICK         a local file to upload through the file picker
  WEBUI_DROP_NAME    a name for a small file dropped on the drop zone
  CHROMIUM_BIN       the browser (default /usr/bin/chromium)

Each step waits on a condition with a deadline, never a fixed time. The
last line on stdout is one JSON object with what the page showed; on a
failure the script saves a screenshot, the page's HTML and its console to
the artifacts folder and exits 1 with the reason on stderr.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

# Two slow, shared cores: generous, but each wait still has a deadline.
DEADLINE_MS = 60_000

ENV = os.environ
URL = ENV["WEBUI_URL"].rstrip("/")
TOKEN = ENV["WEBUI_TOKEN"]
ART = Path(ENV["WEBUI_ARTIFACTS"])
B_NAME, B_ID = ENV["WEBUI_B_NAME"], ENV["WEBUI_B_ID"]
C_NAME, C_ID = ENV["WEBUI_C_NAME"], ENV["WEBUI_C_ID"]
PICK = Path(ENV["WEBUI_PICK"])
DROP_NAME = ENV["WEBUI_DROP_NAME"]
CHROMIUM = ENV.get("CHROMIUM_BIN") or "/usr/bin/chromium"

console = []  # every console message and page error, in order
shots = []


def log(msg):
    print(f"[browser {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def shot(page, name):
    path = ART / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shots.append(str(path))
    log(f"screenshot {path}")


def nav(page, route):
    page.click(f'nav a[data-route="{route}"]')
    expect(page.locator(f"#page-{route}")).to_be_visible()


def first_word(name):
    return re.split(r"[^0-9A-Za-z]+", name)[0]


def facts(page):
    return page.eval_on_selector_all(
        "[data-fact]",
        "els => Object.fromEntries(els.map(e => [e.dataset.fact, e.dataset.value]))",
    )


def search_row(page, word, file_id):
    """Type `word` key by key into the search box (the results follow the
    typing) and return the result row of `file_id`."""
    nav(page, "search")
    box = page.locator("#search-input")
    box.fill("")
    box.press_sequentially(word, delay=60)
    row = page.locator(f'#search-results tr[data-file-id="{file_id}"]')
    expect(row).to_be_visible()
    return row


def run(page, result):
    # 1. No token: the prompt, not the app.
    page.goto(f"{URL}/#search")
    expect(page.locator("#token-prompt")).to_be_visible()
    expect(page.locator("#token-input")).to_be_focused()
    shot(page, "token-prompt")
    log("token prompt shown")

    # 2. A wrong token: the prompt again, with the server's refusal.
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    err = page.locator("#token-error")
    expect(err).to_be_visible()
    expect(err).to_contain_text("This token was refused: ")
    expect(page.locator("#token-prompt")).to_be_visible()
    result["wrong_token_message"] = err.inner_text()
    shot(page, "token-wrong")
    log("wrong token refused")

    # 3. The right token: the app loads; the token is in sessionStorage only.
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    expect(page.locator("#token-prompt")).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    expect(page.locator("#live")).to_have_text("live")
    stored = page.evaluate(
        "() => [sessionStorage.getItem('peerdex-token'), localStorage.length, document.cookie]"
    )
    assert stored == [TOKEN, 0, ""], f"token storage: {stored}"
    log("app loaded")

    # 4. Network: every fact of `peerdex status`.
    nav(page, "network")
    expect(page.locator('[data-fact="peer_id"]')).not_to_be_empty()
    # Named from the Join on (not only after the first heartbeat): a
    # single central leads itself. The exact names are compared with the
    # API's at the end.
    expect(page.locator("#leader")).not_to_have_text("—")
    expect(page.locator('[data-fact="central_name"]')).not_to_have_attribute("data-value", "null")
    expect(page.locator("#centrals")).to_contain_text("(in use, ")
    result["facts_first"] = facts(page)
    shot(page, "network")

    # 5. Search B's file by a word of its name; download it; watch it finish.
    row = search_row(page, first_word(B_NAME), B_ID)
    expect(row.locator("td").first).to_have_text(B_NAME)
    shot(page, "search")
    row.locator("button.download").click()
    expect(page).to_have_url(re.compile(r"#transfers$"))
    job = page.locator(f'.job[data-file-id="{B_ID}"]')
    expect(job).to_be_visible()
    expect(job).to_have_attribute("data-state", "done", timeout=DEADLINE_MS * 2)
    expect(job.locator(".pct")).to_have_text("100 %")
    assert job.locator("progress").evaluate("p => p.value") == 100
    result["download_job"] = job.get_attribute("data-job-id")
    shot(page, "transfers")
    log("download done")

    # 6. My files lists it; save a copy through the page (fetch → blob).
    nav(page, "files")
    b_row = page.locator(f'#files-table tr[data-file-id="{B_ID}"]')
    expect(b_row).to_be_visible()
    expect(b_row.locator("td").first).to_have_text(B_NAME)
    with page.expect_download(timeout=DEADLINE_MS) as dl:
        b_row.locator("button.save").click()
    saved = ART / f"saved-{B_NAME}"
    dl.value.save_as(str(saved))
    assert dl.value.suggested_filename == B_NAME, dl.value.suggested_filename
    result["saved"] = str(saved)

    # 7. Upload through the file picker; then a file dropped on the zone.
    page.set_input_files("#file-input", str(PICK))
    up = page.locator(f'#uploads li[data-name="{PICK.name}"]')
    expect(up).to_have_attribute("data-state", "done", timeout=DEADLINE_MS)
    expect(up.locator(".pct")).to_have_text("100 %")
    picked_row = page.locator(f'#files-table tr[data-name="{PICK.name}"]')
    expect(picked_row).to_be_visible()
    result["picked_id"] = picked_row.get_attribute("data-file-id")
    log("picker upload done")

    page.evaluate(
        """name => {
            const dt = new DataTransfer();
            dt.items.add(new File(['dropped on the zone by the browser test\\n'], name));
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
            }
        }""",
        DROP_NAME,
    )
    dropped = page.locator(f'#uploads li[data-name="{DROP_NAME}"]')
    expect(dropped).to_have_attribute("data-state", "done", timeout=DEADLINE_MS)
    expect(page.locator(f'#files-table tr[data-name="{DROP_NAME}"]')).to_be_visible()
    result["dropped_id"] = dropped.get_attribute("data-file-id")
    log("dropped upload done")

    # The same name again with other bytes: 409, shown on the item.
    page.evaluate(
        """name => {
            const dt = new DataTransfer();
            dt.items.add(new File(['other bytes, same name\\n'], name));
            document.getElementById('drop-zone').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        DROP_NAME,
    )
    clash = page.locator(f'#uploads li[data-name="{DROP_NAME}"][data-state="failed"]')
    expect(clash).to_be_visible(timeout=DEADLINE_MS)
    expect(clash.locator(".up-msg")).to_contain_text("Name taken")
    result["clash_message"] = clash.locator(".up-msg").inner_text()

    # Remove the dropped file: asked to confirm first, then gone.
    drop_row = page.locator(f'#files-table tr[data-name="{DROP_NAME}"]')
    drop_row.locator("button.remove").click()
    expect(drop_row.locator("button.confirm-remove")).to_be_visible()
    drop_row.locator("button.confirm-remove").click()
    expect(page.locator(f'#files-table tr[data-name="{DROP_NAME}"]')).to_have_count(0)
    log("dropped file removed")

    # Copy the picked file's peer-API URL.
    picked_row.locator("button.copy-url").click()
    expect(picked_row.locator(".copied")).to_have_text("copied")
    result["copied_url"] = page.evaluate("() => navigator.clipboard.readText()")
    shot(page, "files")

    # 8. C's big file, served slowly: start it, see it run, cancel it.
    row = search_row(page, first_word(C_NAME), C_ID)
    row.locator("button.download").click()
    expect(page).to_have_url(re.compile(r"#transfers$"))
    job = page.locator(f'.job[data-file-id="{C_ID}"]')
    expect(job).to_have_attribute("data-state", "downloading", timeout=DEADLINE_MS)
    expect(job.locator(".job-name")).to_have_text(C_NAME)
    expect(page.locator("#active-count")).to_have_text("1")
    cancel = job.locator("button.cancel")
    expect(cancel).to_be_visible()
    shot(page, "transfers-running")
    cancel.click()
    expect(job).to_have_attribute("data-state", "cancelled", timeout=DEADLINE_MS)
    expect(cancel).to_be_hidden()
    expect(page.locator("#active-count")).to_be_hidden()
    result["cancel_job"] = job.get_attribute("data-job-id")
    shot(page, "transfers-cancelled")
    log("download cancelled")

    # 9. Network again, now that nothing moves: the facts to compare.
    nav(page, "network")
    expect(page.locator('[data-fact="shared_files"]')).to_have_attribute("data-value", "2")
    expect(page.locator('[data-fact="active_downloads"]')).to_have_attribute("data-value", "0")
    result["facts"] = facts(page)
    shot(page, "network-end")

    # 10. Wanted: a name nobody shares yet waits; the words of a file a
    # peer shares, notify only, match at once, told by a toast; nothing is
    # downloaded for them; stop wanting the first.
    nav(page, "wanted")
    page.fill("#want-input", "not-shared-yet.txt")
    page.click("#want-add")
    waiting = page.locator('#wanted-table tr[data-state="waiting"]')
    expect(waiting).to_have_count(1)
    page.fill("#want-input", C_NAME)
    page.check("#want-words")
    page.check("#want-notify")
    page.click("#want-add")
    expect(page.locator('#wanted-table tr[data-state="matched"]')).to_have_count(1)
    expect(page.locator('#toasts .toast[data-kind="matched"]').first).to_be_visible()
    expect(page.locator("#wanted-count")).to_have_text("2")
    shot(page, "wanted")
    waiting.locator("button.remove-want").click()
    expect(waiting).to_have_count(0)
    expect(page.locator("#wanted-count")).to_have_text("1")
    result["wanted"] = page.locator("#wanted-table tbody tr").count()
    log("wants shown, matched, removed")

    # The same pages in the dark and on a phone's width (for people to look at).
    page.emulate_media(color_scheme="dark")
    shot(page, "network-dark")
    nav(page, "transfers")
    shot(page, "transfers-dark")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    nav(page, "files")
    expect(page.locator(f'#files-table tr[data-file-id="{B_ID}"]')).to_be_visible()
    shot(page, "files-narrow")


def main():
    ART.mkdir(parents=True, exist_ok=True)
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        print(
            f"no Chromium at {CHROMIUM}: install the Debian package (apt-get install chromium) "
            "or point CHROMIUM_BIN at a Chromium",
            file=sys.stderr,
        )
        return 2
    expect.set_options(timeout=DEADLINE_MS)
    result = {"artifacts": str(ART)}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
            ],
            timeout=DEADLINE_MS,
        )
        result["browser"] = browser.version
        context = browser.new_context(
            viewport={"width": 1280, "height": 860},
            accept_downloads=True,
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=URL)
        context.set_default_timeout(DEADLINE_MS)
        page = context.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            run(page, result)
            # The page broke no rule of its policy and threw nothing.
            bad = [
                m
                for m in console
                if m.startswith("pageerror")
                or "Content Security Policy" in m
                or "Refused to" in m
            ]
            assert not bad, f"the page reported errors: {bad}"
        except (AssertionError, PlaywrightError) as e:
            fail(page, e)
            return 1
        finally:
            (ART / "console.txt").write_text("\n".join(console) + "\n")
        browser.close()
    result["screenshots"] = shots
    result["console"] = console
    print(json.dumps(result))
    return 0


def fail(page, e):
    log(f"FAILED: {e}")
    try:
        page.screenshot(path=str(ART / "failure.png"), full_page=True)
        (ART / "failure.html").write_text(page.content())
    except PlaywrightError as again:
        log(f"cannot save the failure's page: {again}")
    print(
        f"web UI test failed: {e}\n(see {ART}/failure.png, failure.html, console.txt)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
