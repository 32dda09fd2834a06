"""The Dockerfiles and the scripts the images run, checked without building them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.deploy import deployfiles as df

DOCKER_DIR = df.DEPLOY / "docker"
APP_DOCKERFILE = DOCKER_DIR / "app.Dockerfile"
TRITON_DOCKERFILE = DOCKER_DIR / "triton.Dockerfile"
TRITON_ENTRYPOINT = DOCKER_DIR / "triton-entrypoint.sh"
WAIT_FOR_MIGRATIONS = DOCKER_DIR / "wait_for_migrations.py"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buffer += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(buffer)
            buffer = ""
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def build_args(path: Path) -> dict[str, str]:
    return dict(arg.split("=", 1) for kw, arg in instructions(path) if kw == "ARG" and "=" in arg)


def pins(pyproject: dict[str, Any]) -> dict[str, str]:
    """name -> exact version of every pinned dependency in pyproject.toml."""
    result = {}
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        result[requirement.name.lower()] = specifier.version
    return result


def makefile_pin(package: str) -> str:
    match = re.search(rf"{re.escape(package)}==([0-9][^\s']*)", (df.REPO_ROOT / "Makefile").read_text())
    assert match, f"{package} is not pinned in the Makefile"
    return match.group(1)


def test_app_image_pins_agree_with_pyproject_and_makefile(pyproject: dict[str, Any]) -> None:
    args = build_args(APP_DOCKERFILE)
    python_image = args["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+", python_image)
    assert match, f"pin the full Python patch version: {python_image}"
    version = ".".join(match.groups())
    assert version in SpecifierSet(pyproject["project"]["requires-python"]), version
    assert args["TORCH_VERSION"] == pins(pyproject)["torch"]
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu"), "the app image must not pull the CUDA torch"
    text = APP_DOCKERFILE.read_text()
    for package in ("invisible-watermark", "pip", "setuptools"):
        assert f"{package}=={makefile_pin(package)}" in text, package
    # Dependencies come from pyproject itself, not a second hand-kept list.
    assert "['project']['dependencies']" in text


def test_app_image_runs_unprivileged_through_the_entrypoint() -> None:
    parsed = instructions(APP_DOCKERFILE)
    runtime = parsed[max(i for i, (kw, _) in enumerate(parsed) if kw == "FROM") :]
    user = [arg for kw, arg in runtime if kw == "USER"]
    assert user and not user[-1].startswith(("0", "root")), user
    (entrypoint,) = [json.loads(arg) for kw, arg in runtime if kw == "ENTRYPOINT"]
    script = df.REPO_ROOT / entrypoint[0].removeprefix("/app/")
    assert script.is_file() and os.access(script, os.X_OK)
    (command,) = [json.loads(arg) for kw, arg in runtime if kw == "CMD"]
    assert command[:3] == ["uvicorn", "--factory", "services.gateway.app:create_app"]


def test_app_build_context_leaves_out_local_state_but_keeps_what_the_image_needs() -> None:
    ignored = {
        line.strip()
        for line in (DOCKER_DIR / "app.Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", ".env", "deploy/secrets", ".git"} <= ignored
    # migrate.py finds these next to the sources; the entry point and exporter run from /app/deploy/docker.
    needed = [
        "migrations",
        "alembic.ini",
        "shared",
        "services",
        "pyproject.toml",
        "README.md",
        "deploy/docker",
    ]
    for path in needed:
        assert (df.REPO_ROOT / path).exists(), path
        assert not any(path == entry or path.startswith(entry + "/") for entry in ignored), path


@pytest.mark.slow  # imports torch and transformers in a fresh interpreter (~5 s)
def test_triton_image_is_pinned_and_installs_what_the_models_import(pyproject: dict[str, Any]) -> None:
    args = build_args(TRITON_DOCKERFILE)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", args["TRITON_IMAGE"])
    assert args["TORCH_VERSION"] == pins(pyproject)["torch"]
    installed = dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][\w.]*)", TRITON_DOCKERFILE.read_text()))
    installed = {name.lower(): version for name, version in installed.items() if name.upper() != name}
    installed["torch"] = args["TORCH_VERSION"]
    project = pins(pyproject)
    for name, version in installed.items():
        assert project.get(name) == version, (
            f"{name}=={version} in the Triton image, pyproject says {project.get(name)}"
        )
    # Import the Triton model code in a clean interpreter and list the distributions it loads.
    probe = (
        "import sys, json, importlib.metadata as md\n"
        "import services.inference.triton_models, services.inference.engine, shared.model.network\n"
        "dists = md.packages_distributions()\n"
        "print(json.dumps(sorted({d.lower() for m in list(sys.modules) for d in dists.get(m.split('.')[0], [])})))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=df.REPO_ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    direct = {name for name in loaded if name in project} - {"goha-platform"}
    assert {"torch", "numpy"} <= direct
    assert direct <= set(installed), f"the Triton image lacks {sorted(direct - set(installed))}"


def test_triton_image_copies_existing_sources_into_its_pythonpath() -> None:
    parsed = instructions(TRITON_DOCKERFILE)
    copies = [shlex.split(arg) for kw, arg in parsed if kw == "COPY"]
    destinations = {}
    for parts in copies:
        parts = [p for p in parts if not p.startswith("--")]
        *sources, destination = parts
        for source in sources:
            assert (df.REPO_ROOT / source).exists(), source
            destinations[source] = destination
    env = " ".join(arg for kw, arg in parsed if kw == "ENV")
    pythonpath = re.search(r"PYTHONPATH=(\S+)", env)
    assert pythonpath
    for package in ("shared", "services/inference"):
        assert destinations[package] == f"{pythonpath.group(1)}/{package}", package
    assert destinations["deploy/triton/model_repository"] == "/models"
    (command,) = [json.loads(arg) for kw, arg in parsed if kw == "CMD"]
    assert command == [destinations["deploy/docker/triton-entrypoint.sh"]]


def fake_tritonserver(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `tritonserver` prints its arguments: the script's contract is the command it execs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_triton_entrypoint_refuses_to_start_without_an_access_token(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(TRITON_ENTRYPOINT)],
        env=fake_tritonserver(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 64
    assert "GOHA_TRITON_ACCESS_TOKEN" in result.stderr


def test_triton_entrypoint_serves_the_repository_with_restricted_admin_apis(tmp_path: Path) -> None:
    env = {**fake_tritonserver(tmp_path), "GOHA_TRITON_ACCESS_TOKEN": "tok-123"}
    result = subprocess.run(
        ["sh", str(TRITON_ENTRYPOINT), "--log-verbose=1"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert "--model-repository=/models" in args
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--strict-readiness=true"} <= set(
        args
    )
    restricted = "shared-memory,model-repository,statistics,trace,logging:triton-access-token=tok-123"
    assert f"--http-restricted-api={restricted}" in args
    assert f"--grpc-restricted-protocol={restricted}" in args
    assert args[-1] == "--log-verbose=1", "extra arguments are passed through"


def run_wait(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOHA_")}
    return subprocess.run(
        [sys.executable, str(WAIT_FOR_MIGRATIONS), "--database-url", url, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_wait_for_migrations_waits_for_the_head_revision(tmp_path: Path) -> None:
    from shared.platform.migrate import head_revision, upgrade

    url = f"sqlite:///{tmp_path / 'goha.sqlite3'}"
    pending = run_wait(url, "--timeout", "0.3", "--interval", "0.1")
    assert pending.returncode == 1
    assert json.loads(pending.stderr.strip().splitlines()[-1])["ready"] is False
    upgrade(url)
    ready = run_wait(url, "--timeout", "5")
    assert ready.returncode == 0, ready.stderr
    assert json.loads(ready.stdout.strip().splitlines()[-1]) == {
        "database": url,
        "revision": head_revision(),
        "ready": True,
    }


@pytest.mark.parametrize("password", ["hunter2-secret"])
def test_wait_for_migrations_never_prints_credentials(password: str) -> None:
    url = f"postgresql+psycopg://goha:{password}@127.0.0.1:1/goha"
    result = run_wait(url, "--timeout", "0.2", "--interval", "0.1")
    assert result.returncode == 1
    assert password not in result.stdout + result.stderr
