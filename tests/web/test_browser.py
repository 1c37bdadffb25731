"""The chat page in a real headless Chromium against a real server (see conftest.py): sign-in, streamed replies,
Stop, documents with progress and citations, branch and delete, errors, phone width, and the docs offline."""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import DOCS_KEY, USER_KEY
from tests.web.conftest import BrowserPage, screenshot_path

# Chromium reports a response with an error status as a console error; the page shows such answers itself.
RESOURCE_ERROR = "Failed to load resource: the server responded with a status of"
VAULT = "Vault procedures.\nThe access code of the Zanzibar vault is 4471. The vault opens on weekdays only.\n"

# Recorded from inside the page as it changes, so that a test sees the states it went through, not only the last.
RECORDER = """
window.__streamed = [];
window.__progress = [];
new MutationObserver(() => {
  const bubble = document.querySelector(".message.assistant.streaming .bubble");
  if (bubble) window.__streamed.push(bubble.textContent.length);
  const status = document.getElementById("upload-status");
  const progress = document.getElementById("upload-progress");
  const percent = document.getElementById("upload-percent");
  if (status && !status.hidden) window.__progress.push([progress.value, percent.textContent]);
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


def assistant_replies(page: Page) -> list[str]:
    return page.locator(".message.assistant:not(.streaming) .bubble").all_inner_texts()


def send(page: Page, text: str, max_tokens: int) -> None:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def wait_for_reply(page: Page, count: int) -> None:
    """Until `count` replies are complete (their actions appear only once the stored reply has arrived)."""
    try:
        expect(page.locator(".message.assistant .actions")).to_have_count(count, timeout=120_000)
    except AssertionError as exc:
        raise AssertionError(f"{count} complete replies expected; the chat shows: {page.inner_text('#chat')}") from exc


def test_a_wrong_key_shows_the_servers_message(open_page: BrowserPage) -> None:
    page = open_page.page
    page.goto(open_page.server.url + "/")
    page.fill("#key-input", "sk-not-a-key-0123456789")
    page.click("#login-button")
    error = page.locator("#login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(re.compile("key", re.IGNORECASE))
    expect(page.locator("#app-view")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    open_page.assert_clean(expected_console=(f"{RESOURCE_ERROR} 401",))


def test_a_chat_streams_its_reply_token_by_token(open_page: BrowserPage) -> None:
    page = open_page.page
    page.add_init_script(RECORDER)
    open_page.sign_in()
    # The key is in this tab's sessionStorage, and nowhere in the address or a cookie.
    assert page.evaluate("Object.values(sessionStorage)").count(USER_KEY) == 1
    assert USER_KEY not in page.url and not page.context.cookies()

    page.fill("#system-prompt", "You are a concise assistant.")
    send(page, "What is the capital of France?", 24)
    wait_for_reply(page, 1)
    streamed = page.evaluate("window.__streamed")
    assert len({n for n in streamed if n > 0}) >= 3, f"the reply did not grow in steps: {streamed}"
    (reply,) = assistant_replies(page)
    assert reply.strip()
    expect(page.locator("#session-list li")).to_have_count(1)
    expect(page.locator("#session-list li.current")).to_contain_text("What is the capital of France?")
    expect(page.locator("#system-note")).to_be_visible()

    # The stored session holds what the page showed.
    session_id = page.locator("#session-list li.current").get_attribute("data-session-id")
    with open_page.server.api() as http:
        stored = http.get(f"/chat/{session_id}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["system_prompt"] == "You are a concise assistant."
    assert stored["messages"][1]["content"].strip() == reply.strip()
    open_page.assert_clean()


def test_stop_cancels_the_generation_on_the_server(open_page: BrowserPage) -> None:
    page = open_page.page
    open_page.sign_in()
    cancelled = open_page.server.cancelled()
    send(page, "Tell me a very long story about a dragon who learns to cook.", 512)
    streaming = page.locator(".message.assistant.streaming .bubble")
    expect(streaming).not_to_have_text("", timeout=120_000)  # the first tokens are here
    expect(page.locator("#stop-button")).to_be_visible()
    page.click("#stop-button")
    expect(page.locator(".message.assistant.stopped")).to_contain_text("Stopped")
    expect(page.locator("#send-button")).to_be_visible()
    # The connection closed, so the server's batch dropped the request: its workers count it as cancelled.
    deadline = time.monotonic() + 30
    while open_page.server.cancelled() <= cancelled:
        assert time.monotonic() < deadline, "the server did not cancel the generation"
        time.sleep(0.2)
    open_page.assert_clean()


def test_documents_upload_with_progress_and_answers_cite_them(open_page: BrowserPage, tmp_path: Path) -> None:
    page = open_page.page
    page.add_init_script(RECORDER)
    open_page.sign_in()
    # A slow link, so that the upload is seen part-way: the padding is blank lines, nothing to embed.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    throttle = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": 64 * 1024})
    vault = tmp_path / "vault.txt"
    vault.write_text(VAULT + "\n" * 160_000)
    page.set_input_files("#file-input", str(vault))
    expect(page.locator("#document-list li")).to_have_count(1, timeout=120_000)
    cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1})
    progress = page.evaluate("window.__progress")
    values = {value for value, _ in progress}
    assert any(0 < v < 100 for v in values), f"no progress part-way: {progress}"
    assert ["100", "Processing…"] in [[str(round(v)), text] for v, text in progress], progress
    expect(page.locator("#document-list")).to_contain_text("vault.txt")

    # A second one by drag and drop onto the drop zone.
    drop = page.evaluate_handle(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(["Our office cat is called Biscuit."], "cat.md", { type: "text/markdown" }));
            return data;
        }"""
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
    expect(page.locator("#document-list li")).to_have_count(2, timeout=120_000)

    page.check("#use-documents")
    send(page, "What is the access code of the Zanzibar vault?", 40)
    wait_for_reply(page, 1)
    citation = page.locator(".sources .citation").first
    expect(citation).to_contain_text("vault.txt")
    citation.click()
    dialog = page.locator("#citation-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#citation-excerpt")).to_contain_text("4471")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # Delete the dropped one: the list and the server agree.
    page.locator("#document-list li", has_text="cat.md").get_by_role("button").click()
    expect(page.locator("#document-list li")).to_have_count(1)
    with open_page.server.api() as http:
        assert [d["filename"] for d in http.get("/documents").json()["documents"]] == ["vault.txt"]

    take_screenshots(page, tmp_path)
    open_page.assert_clean()


def take_screenshots(page: Page, tmp_path: Path) -> None:
    """The README's pictures: desktop and phone width, light and dark, of the page as the test left it."""
    if page.locator("#toast").is_visible():
        page.click("#toast-close")
    page.mouse.move(0, 0)
    for width, height, name in ((1280, 820, "desktop"), (390, 844, "phone")):
        page.set_viewport_size({"width": width, "height": height})
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.wait_for_timeout(150)
            page.screenshot(path=screenshot_path(tmp_path, f"{name}-{scheme}.png"))
    page.click("#menu-button")
    expect(page.locator("#sidebar")).to_be_visible()
    page.wait_for_timeout(300)
    page.screenshot(path=screenshot_path(tmp_path, "phone-menu-dark.png"))
    page.emulate_media(color_scheme="light")


def test_branch_at_a_message_then_delete_chats(open_page: BrowserPage) -> None:
    page = open_page.page
    open_page.sign_in()
    send(page, "Name a color.", 8)
    wait_for_reply(page, 1)
    send(page, "Name another one.", 8)
    wait_for_reply(page, 2)
    original = page.locator("#session-list li.current").get_attribute("data-session-id")

    # Branch at the first reply: a new chat with its first two messages; the original keeps all four.
    page.locator(".message.assistant .branch-button").first.click()
    expect(page.locator("#messages .message")).to_have_count(2)
    branch = page.locator("#session-list li.current")
    expect(branch).to_contain_text("2 messages")
    branch_id = branch.get_attribute("data-session-id")
    assert branch_id != original
    with open_page.server.api() as http:
        assert len(http.get(f"/chat/{original}").json()["messages"]) == 4

    # Delete both from the list: the server forgets them.
    for session_id in (branch_id, original):
        page.locator(f'#session-list li[data-session-id="{session_id}"] .delete-session').click()
        expect(page.locator(f'#session-list li[data-session-id="{session_id}"]')).to_have_count(0)
    with open_page.server.api() as http:
        for session_id in (branch_id, original):
            assert http.get(f"/chat/{session_id}").status_code == 404
    expect(page.locator("#chat-title")).to_have_text("New chat")
    open_page.assert_clean()


def test_the_error_envelopes_message_is_shown(open_page: BrowserPage) -> None:
    page = open_page.page
    open_page.sign_in()
    # Over MAX_NEW_TOKENS (512): the server refuses (422) before anything streams, and says why.
    send(page, "Hello", 4000)
    toast = page.locator("#toast")
    expect(toast).to_be_visible()
    expect(toast).to_contain_text("max_new_tokens")
    expect(page.locator(".message.assistant.failed")).to_contain_text("max_new_tokens")
    open_page.assert_clean(expected_console=(f"{RESOURCE_ERROR} 422",))


def test_a_key_without_the_chat_scope_is_told_so(open_page: BrowserPage) -> None:
    page = open_page.page
    page.goto(open_page.server.url + "/")
    page.fill("#key-input", DOCS_KEY)
    page.press("#key-input", "Enter")
    expect(page.locator("#toast")).to_contain_text("chat")  # 403 FORBIDDEN: the key lacks the scope
    expect(page.locator("#documents-empty")).to_be_visible()  # documents still work for it
    open_page.assert_clean(expected_console=(f"{RESOURCE_ERROR} 403",))


def test_keyboard_alone_on_a_phone_sized_screen(open_page: BrowserPage) -> None:
    page = open_page.page
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(open_page.server.url + "/")
    expect(page.locator("#key-input")).to_be_focused()
    page.keyboard.type(USER_KEY)
    page.keyboard.press("Enter")
    expect(page.locator("#composer-input")).to_be_focused()
    expect(page.locator("#sidebar")).to_be_hidden()  # a drawer on a narrow screen
    page.keyboard.type("Say hi.")
    page.fill("#max-tokens", "6")
    page.focus("#composer-input")
    page.keyboard.press("Enter")
    wait_for_reply(page, 1)
    # The drawer opens from the keyboard, and Escape closes it.
    page.focus("#menu-button")
    page.keyboard.press("Enter")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#new-chat-button")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    open_page.assert_clean()


def test_the_api_docs_render_with_other_hosts_blocked(open_page: BrowserPage) -> None:
    page = open_page.page
    page.goto(open_page.server.url + "/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/chat/{session_id}/messages").first).to_be_visible()
    open_page.assert_clean()

    page.goto(open_page.server.url + "/redoc")
    expect(page.get_by_role("heading", name=re.compile("inference-api")).first).to_be_visible()
    # ReDoc's footer shows Redocly's logo from their CDN; the CSP refuses it before any request is made.
    open_page.assert_clean(expected_console=("https://cdn.redoc.ly/",))
