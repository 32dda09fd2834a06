"""The CLI's conveniences (issue 18): --version, option choices in --help, short job ids, download's
default file name, a pagination hint that works, the stage in status, and Ctrl-C during a wait."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from goha import cli
from goha.client import ApiError, GohaClient
from services.worker.reference import run_reference_job
from tests.cli.conftest import CONSENT_FLAGS, Gateway
from tests.cli.test_client_cli import api, run_cli


def test_version_and_choices_in_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"goha {cli.package_version()}"
    assert cli.package_version() != "unknown"  # the project is installed (-e) in the venv
    with pytest.raises(SystemExit):
        cli.main(["submit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for choices in (
        "{relative,absolute}",
        "{bottom-right,bottom-left,top-right,top-left}",
        "{true,false}",
        "{written_release,electronic_signature,recorded_verbal,self}",
        "{reenact,orbit}",
    ):
        assert choices in help_text, choices
    with pytest.raises(SystemExit) as refused:
        cli.main(["submit", "p.png", "--motion-mode", "sideways"])
    assert refused.value.code == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err


def _submit(gateway: Gateway, sample_inputs, capsys) -> str:
    portrait, driving = sample_inputs
    code, out, err = run_cli(capsys, "submit", str(portrait), str(driving), *CONSENT_FLAGS, *api(gateway))
    assert code == 0, err
    return out.strip()


@pytest.mark.integration
def test_short_ids_default_download_name_and_stage(
    local_gateway: Gateway, sample_inputs, capsys, tmp_path: Path, monkeypatch
) -> None:
    job_id = _submit(local_gateway, sample_inputs, capsys)
    code, out, err = run_cli(capsys, "status", job_id[:8], *api(local_gateway))
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["job"] == job_id
    assert lines["stage"] == "queued"
    code, _, err = run_cli(capsys, "status", job_id[:7], *api(local_gateway))
    assert code == 1 and err.startswith("error: [job_id_too_short] "), err
    code, _, err = run_cli(capsys, "status", "ffffffff-no", *api(local_gateway))
    assert code == 1 and err.startswith("error: [not_found] "), err

    assert run_reference_job(job_id, local_gateway.settings) == "succeeded"
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "download", job_id[:10], *api(local_gateway))
    assert code == 0, err
    assert (tmp_path / f"{job_id}.mp4").read_bytes() == sample_inputs[1].read_bytes()
    assert out.startswith(f"saved {job_id}.mp4 ")

    code, out, err = run_cli(capsys, "wait", job_id[:8], "-o", "again.mp4", *api(local_gateway))
    assert code == 0, err
    assert "succeeded" in out and (tmp_path / "again.mp4").exists()


def test_ambiguous_prefix_names_the_candidates() -> None:
    ids = ["6f0c1a2b-0000-4000-8000-000000000001", "6f0c1a2b-0000-4000-8000-000000000002"]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [{"id": i} for i in ids], "next_cursor": None})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with GohaClient("http://gateway.test", "k", http=http) as client:
        with pytest.raises(ApiError) as ambiguous:
            client.resolve_job_id("6F0C1A2B")
        assert ambiguous.value.code == "ambiguous_job_id"
        assert ambiguous.value.details["job_ids"] == ids
        assert client.resolve_job_id("6f0c1a2b-0000-4000-8000-000000000001") == ids[0]
        assert client.resolve_job_id("6f0c1a2b-0000-4000-8000-000000000002 ") == ids[1]
        assert client.resolve_job_id(ids[1]) == ids[1]


@pytest.mark.integration
def test_pagination_hint_is_a_command_that_works(local_gateway: Gateway, sample_inputs, capsys) -> None:
    first = _submit(local_gateway, sample_inputs, capsys)
    second = _submit(local_gateway, sample_inputs, capsys)
    code, out, err = run_cli(capsys, "status", "--limit", "1", *api(local_gateway))
    assert code == 0, err
    assert second in out and first not in out
    hint = next(line for line in err.splitlines() if line.startswith("# more: "))
    argv = hint.removeprefix("# more: goha ").split()
    code, out, err = run_cli(capsys, *argv, *api(local_gateway))
    assert code == 0, err
    assert first in out


@pytest.mark.integration
def test_ctrl_c_while_waiting_says_the_job_goes_on(
    local_gateway: Gateway, sample_inputs, capsys, monkeypatch
) -> None:
    def interrupted(self, job_id, on_progress=None, **_):
        on_progress(self.get_job(job_id))
        raise KeyboardInterrupt

    monkeypatch.setattr(GohaClient, "wait", interrupted)
    portrait, driving = sample_inputs
    code, out, err = run_cli(
        capsys,
        "submit",
        str(portrait),
        str(driving),
        *CONSENT_FLAGS,
        "--wait",
        "-o",
        "x.mp4",
        *api(local_gateway),
    )
    assert code == 130
    job_id = err.split("# submitted job ")[1].split()[0]
    assert f"job {job_id} goes on" in err
    assert f"goha wait {job_id} -o x.mp4" in err and f"goha cancel {job_id}" in err
    code, out, _ = run_cli(capsys, "status", job_id, "--json", *api(local_gateway))
    assert json.loads(out)["state"] == "queued"  # nothing was cancelled


@pytest.mark.integration
def test_a_short_id_is_found_by_the_gateway_beyond_the_latest_1000_jobs(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Issue 18: the client used to look a short id up among the tenant's latest 1,000 jobs; the gateway
    now finds it among all of them (GET /v1/jobs?id_prefix=), in one request."""
    import secrets

    from shared.platform import repository
    from shared.platform.db import Database
    from shared.platform.settings import Settings
    from tests.cli.conftest import serve_gateway
    from tests.support.factories import make_job_for_tests

    settings = Settings(
        var_dir=tmp_path / "var",
        embedded=True,
        queue_name=f"goha-cli-{secrets.token_hex(4)}",
        rate_limit_per_minute=10_000,
    )
    with serve_gateway(settings) as gateway:
        db = Database.from_settings(settings)
        try:
            with db.session() as session:
                tenant = repository.authenticate(session, gateway.api_key).tenant  # type: ignore[union-attr]
                oldest = make_job_for_tests(session, tenant=tenant).id
                for _ in range(1000):
                    make_job_for_tests(session, tenant=tenant)
                session.commit()
        finally:
            db.dispose()
        requests: list[str] = []
        real_send = httpx.Client.send

        def counting_send(self: httpx.Client, request: httpx.Request, **kwargs: object) -> httpx.Response:
            requests.append(str(request.url))
            return real_send(self, request, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(httpx.Client, "send", counting_send)
        code, out, err = run_cli(capsys, "status", oldest[:8], *api(gateway))
    assert code == 0, err
    assert dict(line.split(None, 1) for line in out.strip().splitlines())["job"] == oldest
    lookups = [url for url in requests if "/v1/jobs?" in url]
    assert len(lookups) == 1 and f"id_prefix={oldest[:8]}" in lookups[0], requests
