"""Issue 16, item 12: the gateway trusts X-Forwarded-For only from the configured proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _trusted() -> str:
    (configmap,) = [d for d in _docs("configmap.yaml") if d["kind"] == "ConfigMap"]
    return str(configmap["data"]["FORWARDED_ALLOW_IPS"])


def test_the_gateway_does_not_trust_forwarded_headers_from_everyone() -> None:
    (deployment,) = [d for d in _docs("gateway.yaml") if d["kind"] == "Deployment"]
    (gateway,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    args = [str(a) for a in gateway.get("args", [])]
    assert "--proxy-headers" in args
    if "--forwarded-allow-ips" in args:
        assert args[args.index("--forwarded-allow-ips") + 1] != "*"
    assert "*" not in _trusted() and _trusted().strip()


def _client_seen(client_ip: str, forwarded_for: str) -> str:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"][0]

    middleware = ProxyHeadersMiddleware(app, trusted_hosts=_trusted())  # type: ignore[arg-type]
    scope = {
        "type": "http",
        "client": (client_ip, 1234),
        "headers": [(b"x-forwarded-for", forwarded_for.encode())],
    }
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    return str(seen["client"])


def test_a_client_cannot_forge_its_audit_ip() -> None:
    assert _client_seen("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # direct client: header ignored
    assert _client_seen("10.244.3.7", "198.51.100.1") == "198.51.100.1"  # the ingress: header believed
