"""The browser page in headless Chromium against the real gateway: submit, follow, play, verify."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.web.cdp import Browser
from tests.web.conftest import WebStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READY = "document.body && document.body.dataset.ready === 'true'"


def text_of(browser: Browser, element_id: str) -> str:
    return str(browser.evaluate(f"document.getElementById({json.dumps(element_id)}).textContent"))


def assert_page_clean(browser: Browser, *, refused_requests: bool = False) -> None:
    assert browser.evaluate("window.__cspViolations") == [], "the page broke its own Content-Security-Policy"
    errors = browser.console_errors()
    if refused_requests:  # Chromium logs every 4xx answer as "Failed to load resource": expected here
        errors = [error for error in errors if not error.startswith("network: ")]
    assert errors == []


def fill_job_form(browser: Browser, stack: WebStack, media: dict[str, Path], *, subject: str) -> None:
    browser.navigate(f"{stack.base_url}/", READY)
    browser.type_text("#api-key", stack.key)
    browser.set_files("#portrait", media["portrait"])
    browser.set_files("#driving-video", media["driving"])
    browser.type_text("#consent-subject", subject)
    browser.set_value("#consent-method", "self")
    browser.set_value("#consent-obtained-at", "2026-01-02T03:04")
    browser.type_text("#consent-reference", "release-42")
    browser.click("#submit-job")


def wait_playable(browser: Browser) -> dict[str, object]:
    return browser.wait_for(
        """(() => {
          const v = document.getElementById('result-video');
          return v.readyState >= 2 && v.duration > 0
            ? {w: v.videoWidth, h: v.videoHeight, d: v.duration, src: v.currentSrc} : null;
        })()""",
        timeout_s=20,
    )


def test_submit_follow_play_and_verify(
    browser: Browser,
    web_stack: WebStack,
    api: httpx.Client,
    media: dict[str, Path],
    screenshot_dir: Path,
) -> None:
    fill_job_form(browser, web_stack, media, subject="Jane <b>Doe</b>")
    # The page follows the job to the end through the real queue and worker.
    browser.wait_for("document.getElementById('job-state').textContent === 'succeeded'", timeout_s=45)
    job_id = text_of(browser, "job-id")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["progress"]["frames_total"] == 24
    assert browser.evaluate("document.getElementById('job-progress').value") == 1
    assert text_of(browser, "job-frames") == "24 / 24 frames"

    # The consent went out as typed (a string, never markup) and the date with an explicit offset.
    provenance = api.get(f"/v1/jobs/{job_id}/provenance").json()["document"]
    assert "Jane <b>Doe</b>" in json.dumps(provenance)
    assert browser.evaluate("document.querySelectorAll('b').length") == 0

    # The result plays beside the inputs: a decoded video with real frames, next to the local files.
    playable = wait_playable(browser)
    assert (playable["w"], playable["h"]) == (160, 160)
    assert playable["d"] == pytest.approx(2.0, abs=0.2)
    assert playable["src"].startswith("blob:")  # embedded mode: streamed with the key, then a blob
    assert browser.wait_for(
        "document.getElementById('input-driving').readyState >= 2 && "
        "document.getElementById('input-portrait').naturalWidth === 256"
    )
    # The page checked the streamed bytes against the digest the gateway recorded.
    assert text_of(browser, "result-sha256") == "SHA-256 matches the server's record"
    result = api.get(f"/v1/jobs/{job_id}/result")
    assert browser.evaluate("document.getElementById('result-download').download") == f"{job_id}.mp4"

    browser.click("#play-both")
    browser.wait_for(
        "document.getElementById('result-video').currentTime > 0.2 && "
        "document.getElementById('input-driving').currentTime > 0.2",
        timeout_s=10,
    )

    # Verify: the page shows the API's answer for the same file.
    result_file = screenshot_dir / f"{job_id}.mp4"
    result_file.write_bytes(result.content)
    browser.set_files("#verify-video", result_file)
    browser.click("#verify-submit")
    browser.wait_for("!document.getElementById('verify-result').hidden", timeout_s=30)
    with result_file.open("rb") as handle:
        expected = api.post("/v1/verify", files={"video": (result_file.name, handle, "video/mp4")}).json()
    assert text_of(browser, "verify-state") == expected["status"] == "checked"
    assert text_of(browser, "verify-message") == expected["message"]
    assert text_of(browser, "verify-watermark").startswith("found: no")  # the stand-in output is unmarked
    assert json.loads(text_of(browser, "verify-json")) == expected

    # Deleting the data: the first click only arms the button, the second erases; the record stays.
    browser.click("#delete-job")
    assert text_of(browser, "delete-job") == "Click again to delete"
    assert api.get(f"/v1/jobs/{job_id}").json()["media_deleted_at"] is None
    browser.click("#delete-job")
    browser.wait_for(
        "document.getElementById('delete-job').textContent === 'Result and inputs deleted'", timeout_s=10
    )
    assert browser.evaluate("document.getElementById('delete-job').disabled") is True
    assert browser.evaluate("document.getElementById('result-video').getAttribute('src')") is None
    assert api.get(f"/v1/jobs/{job_id}").json()["media_deleted_at"] is not None
    assert api.get(f"/v1/jobs/{job_id}/result").json()["error"]["code"] == "result_deleted"
    assert api.get(f"/v1/jobs/{job_id}/provenance").json()["signature_valid"] is True

    # The key stayed in memory: no cookie, nothing in local or session storage.
    storage = browser.evaluate(
        "({cookie: document.cookie, local: localStorage.length, session: sessionStorage.length})"
    )
    assert storage == {"cookie": "", "local": 0, "session": 0}
    assert_page_clean(browser)
    shot = browser.screenshot(screenshot_dir / "page-after-job.png")
    print(f"screenshot: {shot}")


def test_api_errors_and_key_handling(browser: Browser, web_stack: WebStack, media: dict[str, Path]) -> None:
    browser.navigate(f"{web_stack.base_url}/", READY)
    # A wrong key: the API's error code and message, as text.
    browser.type_text("#api-key", "goha_000000000000_not-a-real-key")
    browser.set_files("#portrait", media["portrait"])
    browser.set_files("#driving-video", media["driving"])
    browser.type_text("#consent-subject", "Jane Doe")
    browser.set_value("#consent-obtained-at", "2026-01-02T03:04")
    browser.click("#submit-job")
    browser.wait_for("document.getElementById('submit-status').dataset.kind === 'error'")
    assert text_of(browser, "submit-status").startswith("unauthenticated: ")
    assert browser.evaluate("document.getElementById('job-section').hidden") is True

    # A refused input: the gateway decides the type from the bytes; a PNG named as the video is refused.
    browser.type_text("#api-key", web_stack.key)
    browser.set_files("#driving-video", media["portrait"])
    browser.click("#submit-job")
    browser.wait_for("document.getElementById('submit-status').textContent.startsWith('wrong_media_kind')")

    # Opting in keeps the key for this tab only; "Forget" removes it everywhere.
    browser.click("#remember-key")
    assert browser.evaluate("sessionStorage.getItem('goha.apiKey')") == web_stack.key
    browser.navigate(f"{web_stack.base_url}/", READY)
    assert browser.evaluate("document.getElementById('api-key').value") == web_stack.key
    browser.click("#forget-key")
    assert browser.evaluate("[sessionStorage.length, document.getElementById('api-key').value]") == [0, ""]
    assert browser.evaluate("localStorage.length") == 0
    assert_page_clean(browser, refused_requests=True)


def test_result_plays_from_a_presigned_url(
    browser: Browser, s3_web_stack: WebStack, media: dict[str, Path]
) -> None:
    """With S3 storage the video element streams the presigned URL itself: the page's CSP must allow
    exactly that origin, and the key never travels to it."""
    fill_job_form(browser, s3_web_stack, media, subject="Jane Doe")
    browser.wait_for("document.getElementById('job-state').textContent === 'succeeded'", timeout_s=45)
    playable = wait_playable(browser)
    s3_origin = f"http://{s3_web_stack.settings.s3_endpoint}/"
    assert str(playable["src"]).startswith(s3_origin) and "X-Amz-Signature=" in str(playable["src"])
    assert (playable["w"], playable["h"]) == (160, 160)
    assert s3_web_stack.key not in str(playable["src"])
    assert browser.evaluate("document.getElementById('result-download').href") == playable["src"]
    assert_page_clean(browser)
