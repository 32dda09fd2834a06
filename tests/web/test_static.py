"""The page's files, served by the gateway with a strict CSP; the script's own safety rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.routers.web import WEB_DIR, content_security_policy
from shared.platform.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("web-static-var"), verifier="none")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_index_is_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"  # no inline, no eval
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["media-src"] == "'self' blob:"  # local storage: results arrive as blobs
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"

    parser = _Tags()
    parser.feed(page.text)
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all(attrs.get("src", "").startswith("/web/") for attrs in scripts)
    assert not any(name.startswith("on") for _, attrs in parser.tags for name in attrs)  # no inline handlers
    assert not any("style" in attrs for _, attrs in parser.tags)
    assert any(attrs.get("type") == "password" and attrs.get("id") == "api-key" for _, attrs in parser.tags)


@pytest.mark.parametrize(("name", "media_type"), [("app.js", "text/javascript"), ("style.css", "text/css")])
def test_assets_are_served_with_their_types(client: TestClient, name: str, media_type: str) -> None:
    answer = client.get(f"/web/{name}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(media_type)
    assert answer.content == (WEB_DIR / name).read_bytes()
    assert "content-security-policy" in answer.headers


@pytest.mark.parametrize(
    "path",
    ["/web/missing.js", "/web/index.html", "/web/..%2Fapp.py", "/web/%2E%2E%2F%2E%2E%2Fapp.py", "/web/"],
)
def test_only_the_shipped_files_are_served(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404
    if answer.headers["content-type"].startswith("application/json"):
        assert answer.json()["error"]["code"] == "not_found"


def test_s3_results_may_play_from_the_public_endpoint_only() -> None:
    settings = Settings(
        storage_backend="s3",
        s3_endpoint="seaweed:8333",
        s3_public_endpoint="media.example:443",
        s3_secure=True,
    )
    policy = content_security_policy(settings)
    assert "media-src 'self' blob: https://media.example:443;" in policy
    assert "seaweed" not in policy  # the internal endpoint is never exposed to pages
    assert "connect-src 'self';" in policy  # the script itself still talks to the gateway only


def test_script_never_parses_strings_as_html_nor_persists_the_key() -> None:
    source = (WEB_DIR / "app.js").read_text()
    code = re.sub(r"//[^\n]*", "", source)  # the rules are stated in comments; check the code
    for forbidden in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
        "document.cookie",
        'setAttribute("on',
    ):
        assert forbidden not in code, forbidden
    # The key only ever goes into the Authorization header, this tab's sessionStorage and, only when
    # "remember on this device" is ticked, localStorage.
    uses = [line.strip() for line in code.splitlines() if re.search(r"\bapiKey\b", line)]
    assert all(not re.search(r"[?&]key=|href|src", line) for line in uses), uses
    lines = code.splitlines()
    assert sum("sessionStorage.setItem(KEY_NAME" in line for line in lines) == 1
    local_writes = [line for line in lines if "localStorage.setItem" in line]
    assert len(local_writes) == 1 and '$("remember-key").checked' in local_writes[0], local_writes


def test_every_page_element_the_script_uses_exists() -> None:
    ids_used = set(re.findall(r'\$\("([a-z0-9-]+)"\)', (WEB_DIR / "app.js").read_text()))
    ids_used |= set(re.findall(r'setText\(\s*"([a-z0-9-]+)"', (WEB_DIR / "app.js").read_text()))
    ids_used |= set(re.findall(r'setStatus\("([a-z0-9-]+)"', (WEB_DIR / "app.js").read_text()))
    parser = _Tags()
    parser.feed((WEB_DIR / "index.html").read_text())
    ids_present = {attrs["id"] for _, attrs in parser.tags if attrs.get("id")}
    assert ids_used and ids_used <= ids_present, ids_used - ids_present


def test_api_reference_works_offline(client: TestClient) -> None:
    """/docs loads Swagger UI from the gateway itself (swagger-ui-bundle), never from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    parser = _Tags()
    parser.feed(page.text)
    urls = [attrs.get("src") or attrs.get("href") for tag, attrs in parser.tags if tag in ("script", "link")]
    urls = [url for url in urls if url]
    assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
    assert "https://" not in page.text and "http://" not in page.text
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"]
