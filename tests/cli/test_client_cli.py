"""The client and the ``goha`` CLI against a real gateway (uvicorn on loopback, SQLite, filesystem broker).
No worker runs here: jobs stay queued unless a test completes one with the reference job
(``services.worker.reference.run_reference_job``), which copies the driving clip as the "result"."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from goha import cli
from goha.client import ApiError, Consent, GohaClient
from services.worker.reference import run_reference_job
from shared.platform.processes import free_ports
from shared.platform.settings import Settings
from tests.cli.conftest import CONSENT_FLAGS, Gateway, serve_gateway

pytestmark = pytest.mark.integration

CONSENT = Consent(subject="Eileen Collins", method="written_release", reference="release-1")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr without log records (the in-process gateway logs JSON to stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    err = "\n".join(line for line in err.splitlines() if not line.startswith('{"ts"'))
    return code, out, err


def api(gateway: Gateway, key: str | None = None) -> list[str]:
    return ["--api-url", gateway.url, "--api-key", key or gateway.api_key]


def test_bad_key_prints_the_api_code_and_message(local_gateway: Gateway, capsys) -> None:
    code, out, err = run_cli(capsys, "status", *api(local_gateway, "goha_000000000000_notakey"))
    assert code == 1
    assert out == ""
    assert err.startswith("error: [unauthenticated] "), err
    assert len(err.strip()) > len("error: [unauthenticated] ")  # the API's human message follows


def test_key_from_environment(local_gateway: Gateway, capsys, monkeypatch) -> None:
    monkeypatch.setenv("GOHA_API_URL", local_gateway.url)
    monkeypatch.setenv("GOHA_API_KEY", local_gateway.api_key)
    code, out, err = run_cli(capsys, "status")
    assert code == 0, err
    monkeypatch.setenv("GOHA_API_KEY", "goha_000000000000_revoked")
    code, _, err = run_cli(capsys, "status")
    assert code == 1 and "[unauthenticated]" in err


def test_submit_without_consent_is_refused_with_its_code(
    local_gateway: Gateway, sample_inputs, capsys
) -> None:
    portrait, driving = sample_inputs
    code, out, err = run_cli(capsys, "submit", str(portrait), str(driving), *api(local_gateway))
    assert code == 1
    assert err.startswith("error: [consent_required] "), err


def test_submit_status_list_cancel_and_result_not_ready(
    local_gateway: Gateway, sample_inputs, capsys
) -> None:
    portrait, driving = sample_inputs
    code, out, err = run_cli(
        capsys,
        "submit",
        str(portrait),
        str(driving),
        *CONSENT_FLAGS,
        "--output-size",
        "128",
        "--callback-url",
        "https://hooks.example.com/goha",
        *api(local_gateway),
    )
    assert code == 0, err
    job_id = out.strip()
    assert len(job_id) == 36 and f"goha status {job_id}" in err

    code, out, err = run_cli(capsys, "status", job_id, *api(local_gateway))
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["job"] == job_id
    assert lines["state"].startswith("queued  (reenact, attempt 0)")
    assert lines["progress"] == "-" and lines["stage"] == "queued"

    code, out, err = run_cli(capsys, "status", *api(local_gateway))
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split() == ["JOB", "STATE", "TYPE", "PROGRESS", "CREATED"]
    assert any(row.split()[:3] == [job_id, "queued", "reenact"] for row in rows), out

    code, out, err = run_cli(capsys, "status", job_id, "--json", *api(local_gateway))
    body = json.loads(out)
    assert body["id"] == job_id and body["options"]["output_size"] == 128
    assert body["callback"]["url"] == "https://hooks.example.com/goha"

    code, out, err = run_cli(capsys, "download", job_id, "-o", "unused.mp4", *api(local_gateway))
    assert code == 1 and err.startswith("error: [result_not_ready] "), err
    code, out, err = run_cli(capsys, "delete", job_id, *api(local_gateway))
    assert code == 1 and err.startswith("error: [job_not_finished] "), err

    code, out, err = run_cli(capsys, "cancel", job_id, *api(local_gateway))
    assert code == 0, err
    assert "cancelled" in out
    code, out, err = run_cli(capsys, "cancel", job_id, *api(local_gateway))
    assert code == 1 and err.startswith("error: [job_not_cancellable] "), err

    code, out, err = run_cli(capsys, "delete", job_id, *api(local_gateway))
    assert code == 0, err
    assert "deleted" in out and "provenance kept" in out
    code, out, err = run_cli(capsys, "download", job_id, "-o", "unused.mp4", *api(local_gateway))
    assert code == 1 and err.startswith("error: [result_deleted] "), err

    code, out, err = run_cli(capsys, "status", "no-such-job", *api(local_gateway))
    assert code == 1 and err.startswith("error: [not_found] "), err


def test_client_submit_idempotent_and_download_streams_the_result(
    local_gateway: Gateway, sample_inputs, tmp_path: Path
) -> None:
    portrait, driving = sample_inputs
    with GohaClient(local_gateway.url, local_gateway.api_key) as client:
        first = client.submit(portrait, driving, consent=CONSENT, idempotency_key="order-17")
        again = client.submit(portrait, driving, consent=CONSENT, idempotency_key="order-17")
        assert again["id"] == first["id"]
        with pytest.raises(ApiError) as refused:
            client.submit(
                portrait, driving, consent=CONSENT, options={"smoothing": 0.1}, idempotency_key="order-17"
            )
        assert (refused.value.status, refused.value.code) == (409, "idempotency_key_reused")

        assert run_reference_job(first["id"], local_gateway.settings) == "succeeded"
        seen: list[str] = []
        job = client.wait(first["id"], on_progress=lambda j: seen.append(j["state"]), poll_interval_s=0.05)
        assert job["state"] == "succeeded" and seen[-1] == "succeeded"
        download = client.download_result(first["id"], tmp_path / "sub" / "result.mp4")
    # The reference job's "result" is the driving clip itself: byte-identical, hash checked.
    assert download.path.read_bytes() == driving.read_bytes()
    assert download.sha256 == hashlib.sha256(driving.read_bytes()).hexdigest()
    assert not list(download.path.parent.glob(".*.part"))


def test_wait_times_out_with_a_code(local_gateway: Gateway, sample_inputs) -> None:
    portrait, driving = sample_inputs
    with GohaClient(local_gateway.url, local_gateway.api_key) as client:
        job = client.submit(portrait, driving, consent=CONSENT)
        with pytest.raises(ApiError) as timed_out:
            client.wait(job["id"], poll_interval_s=0.05, timeout_s=0.3)
    assert timed_out.value.code == "wait_timed_out"
    assert timed_out.value.details["state"] == "queued"


def test_verify_of_a_non_video_prints_the_refusal(local_gateway: Gateway, sample_inputs, capsys) -> None:
    portrait, _ = sample_inputs
    code, out, err = run_cli(capsys, "verify", str(portrait), *api(local_gateway))
    assert code == 1
    assert err.startswith("error: [wrong_media_kind] "), err


def test_unreachable_gateway_and_missing_file(capsys, sample_inputs) -> None:
    (port,) = free_ports(1)
    code, out, err = run_cli(capsys, "status", "--api-url", f"http://127.0.0.1:{port}", "--api-key", "k")
    assert code == 1 and err.startswith("error: [unreachable] cannot reach the API"), err
    code, out, err = run_cli(
        capsys, "submit", "/nonexistent/portrait.png", *CONSENT_FLAGS, "--api-url", f"http://127.0.0.1:{port}"
    )
    assert code == 1 and err.startswith("error: [file_not_found] "), err


@pytest.mark.slow
def test_download_follows_the_presigned_redirect_without_the_key(
    goha_s3_settings: dict[str, Any], sample_inputs, tmp_path: Path
) -> None:
    """S3 storage: /result answers 307 to a presigned SeaweedFS URL; the client fetches it (the URL's
    signature authorises it; the API key is not sent to the storage host)."""
    settings = Settings(
        var_dir=tmp_path / "var",
        embedded=True,
        queue_name=f"goha-cli-{secrets.token_hex(4)}",
        **goha_s3_settings,
    )
    portrait, driving = sample_inputs
    with serve_gateway(settings) as gateway, GohaClient(gateway.url, gateway.api_key) as client:
        job = client.submit(portrait, driving, consent=CONSENT)
        assert run_reference_job(job["id"], settings) == "succeeded"
        sent: list[tuple[str, bool]] = []
        client._http.event_hooks["request"].append(
            lambda request: sent.append(
                (request.url.host + f":{request.url.port}", "authorization" in request.headers)
            )
        )
        download = client.download_result(job["id"], tmp_path / "result.mp4")
    assert download.path.read_bytes() == driving.read_bytes()
    gateway_host = gateway.url.removeprefix("http://")
    assert sent[0] == (gateway_host, True)
    assert sent[1][0] == goha_s3_settings["s3_endpoint"] and sent[1][1] is False, sent


def test_consent_default_time_is_fixed_once_so_retries_send_the_same_body() -> None:
    import time

    consent = Consent(subject="Eileen Collins", method="written_release")
    first = consent.to_form()
    time.sleep(1.05)  # a per-call "now" (second resolution) would differ here
    assert consent.to_form() == first
    assert first["consent_obtained_at"].endswith("+00:00")
