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
    # The consent date defaults to now (the local wall time of a datetime-local field).
    assert len(str(browser.evaluate("document.getElementById('consent-obtained-at').value"))) == 16
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
    # Previews and the quick face check before anything is queued; the portrait was uploaded once, as an
    # asset, and the job names it.
    assert browser.wait_for("document.getElementById('portrait-preview').naturalWidth === 256")
    assert browser.wait_for(
        "document.getElementById('driving-facts').textContent.startsWith('2.0 s, 160×160')"
    )
    assert browser.wait_for("document.getElementById('portrait-check').textContent.startsWith('face found')")
    # The page follows the job to the end through the real queue and worker.
    browser.wait_for("document.getElementById('job-state').textContent === 'succeeded'", timeout_s=45)
    job_id = text_of(browser, "job-id")
    assert text_of(browser, "job-announcer") == f"Job {job_id[:8]} succeeded"  # aria-live
    assert browser.evaluate("document.getElementById('job-announcer').getAttribute('aria-live')") == "polite"
    assert browser.evaluate("document.getElementById('cancel-job').hidden") is True
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
    assert browser.evaluate("document.getElementById('result-video').muted") is False  # the driver's sound
    assert browser.wait_for(
        "document.getElementById('input-driving').readyState >= 2 && "
        "document.getElementById('input-portrait').naturalWidth === 256"
    )
    # The page checked the streamed bytes against the digest the gateway recorded.
    assert text_of(browser, "result-sha256") == "SHA-256 matches the server's record"
    result = api.get(f"/v1/jobs/{job_id}/result")
    assert browser.evaluate("document.getElementById('result-download').download") == f"{job_id}.mp4"
    assert browser.evaluate("document.getElementById('result-download').hidden") is False
    # The job is in the history, with its portrait's thumbnail.
    browser.wait_for(
        f"""(() => {{
          const item = document.querySelector('#history-list li[data-job-id="{job_id}"]');
          return item && item.querySelector('img').naturalWidth > 0 && item.dataset.current === 'true';
        }})()""",
        timeout_s=10,
    )

    browser.click("#play-both")
    browser.wait_for(
        "document.getElementById('result-video').currentTime > 0.2 && "
        "document.getElementById('input-driving').currentTime > 0.2",
        timeout_s=10,
    )

    # "Verify this result" in one click: the page shows the API's answer for the same bytes.
    result_file = screenshot_dir / f"{job_id}.mp4"
    result_file.write_bytes(result.content)
    browser.click("#verify-result")
    browser.wait_for("!document.getElementById('verify-result').hidden", timeout_s=30)
    with result_file.open("rb") as handle:
        expected = api.post("/v1/verify", files={"video": (result_file.name, handle, "video/mp4")}).json()
    assert text_of(browser, "verify-state") == expected["status"] == "checked"
    assert text_of(browser, "verify-message") == expected["message"]
    assert text_of(browser, "verify-watermark").startswith("found: no")  # the stand-in output is unmarked
    assert json.loads(text_of(browser, "verify-json")) == expected
    # ... and the same answer for a chosen file.
    browser.evaluate("document.getElementById('verify-result').hidden = true")
    browser.set_files("#verify-video", result_file)
    browser.click("#verify-submit")
    browser.wait_for("!document.getElementById('verify-result').hidden", timeout_s=30)
    assert json.loads(text_of(browser, "verify-json")) == expected

    # A reload comes back to the job (its id is in the URL's fragment; the key in this tab's session).
    assert browser.evaluate("location.hash") == f"#job={job_id}"
    browser.navigate(f"{web_stack.base_url}/#job={job_id}", READY)
    browser.wait_for("document.getElementById('job-state').textContent === 'succeeded'", timeout_s=10)
    assert text_of(browser, "job-id") == job_id
    assert wait_playable(browser)["src"].startswith("blob:")
    assert browser.wait_for("document.getElementById('input-portrait').naturalWidth > 0")  # the thumbnail

    # Deleting the data: the first click only arms the button, the second erases; the record stays.
    browser.click("#delete-job")
    assert text_of(browser, "delete-job") == "Click again to delete"
    assert api.get(f"/v1/jobs/{job_id}").json()["media_deleted_at"] is None
    browser.click("#delete-job")
    browser.wait_for(
        "document.getElementById('delete-job').textContent === 'Result and inputs deleted'", timeout_s=10
    )
    assert browser.evaluate("document.getElementById('delete-job').disabled") is True
    assert browser.evaluate("document.getElementById('delete-job').hidden") is True  # no longer applies
    assert browser.evaluate("document.getElementById('result-section').hidden") is True
    assert browser.evaluate("document.getElementById('result-video').getAttribute('src')") is None
    assert api.get(f"/v1/jobs/{job_id}").json()["media_deleted_at"] is not None
    assert api.get(f"/v1/jobs/{job_id}/result").json()["error"]["code"] == "result_deleted"
    assert api.get(f"/v1/jobs/{job_id}/provenance").json()["signature_valid"] is True

    # The key is kept for this tab's session only (not opted in): no cookie, nothing in localStorage.
    storage = browser.evaluate(
        "({cookie: document.cookie, local: localStorage.length,"
        " key: sessionStorage.getItem('goha.apiKey'), job: sessionStorage.getItem('goha.jobId')})"
    )
    assert storage == {"cookie": "", "local": 0, "key": web_stack.key, "job": job_id}
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

    # The key is kept for the tab's session; "remember on this device" (opt-in) also keeps it in
    # localStorage; "Forget" removes it everywhere.
    assert browser.evaluate("sessionStorage.getItem('goha.apiKey')") == web_stack.key
    assert browser.evaluate("localStorage.length") == 0
    browser.click("#remember-key")
    assert browser.evaluate("localStorage.getItem('goha.apiKey')") == web_stack.key
    browser.navigate(f"{web_stack.base_url}/", READY)
    assert browser.evaluate("document.getElementById('api-key').value") == web_stack.key
    assert browser.evaluate("document.getElementById('remember-key').checked") is True
    browser.click("#forget-key")
    assert browser.evaluate("[sessionStorage.length, document.getElementById('api-key').value]") == [0, ""]
    assert browser.evaluate("localStorage.length") == 0
    assert_page_clean(browser, refused_requests=True)


def test_no_face_is_said_before_anything_is_queued(
    browser: Browser, web_stack: WebStack, api: httpx.Client, media: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image
    from skimage.data import coffee

    cup = tmp_path / "coffee.png"
    Image.fromarray(coffee()).save(cup)
    before = len(api.get("/v1/jobs", params={"limit": 100}).json()["items"])
    browser.navigate(f"{web_stack.base_url}/", READY)
    browser.type_text("#api-key", web_stack.key)
    browser.set_files("#portrait", cup)
    browser.wait_for(
        "document.getElementById('portrait-check').textContent.startsWith('no_face: ')", timeout_s=20
    )
    browser.set_files("#driving-video", media["driving"])
    browser.type_text("#consent-subject", "Jane Doe")
    browser.click("#submit-job")
    browser.wait_for(
        "document.getElementById('submit-status').textContent.startsWith('no_face: ')", timeout_s=20
    )
    assert "choose another portrait" in text_of(browser, "submit-status")
    assert browser.evaluate("document.getElementById('job-section').hidden") is True
    assert len(api.get("/v1/jobs", params={"limit": 100}).json()["items"]) == before
    assert_page_clean(browser)


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
