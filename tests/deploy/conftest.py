"""Fixtures of the deployment tests: parsed files and the settings model they must agree with."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from shared.platform.settings import Settings
from tests.deploy import deployfiles as df


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    return df.read_env_file(df.ENV_EXAMPLE)


@pytest.fixture(scope="session")
def compose(env_example: dict[str, str]) -> dict[str, Any]:
    return df.load_compose(env_example)


@pytest.fixture(scope="session")
def k8s() -> list[df.Resource]:
    return df.k8s_resources()


@pytest.fixture(scope="session")
def settings_env_names() -> set[str]:
    """Every environment variable the one Settings model reads (prefix GOHA_)."""
    prefix = Settings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((df.REPO_ROOT / "pyproject.toml").read_text())


@pytest.fixture
def settings_from_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Mapping[str, str]], Settings]]:
    """Build Settings exactly as a process would from ``env`` (nothing from the test runner leaks in)."""

    def build(env: Mapping[str, str]) -> Settings:
        with monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.upper().startswith("GOHA_"):
                    patch.delenv(name)
            for name, value in env.items():
                if name.startswith("GOHA_"):
                    patch.setenv(name, value)
            return Settings()

    yield build
