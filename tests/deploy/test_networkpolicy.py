"""Issue 16 (Low): deploy/k8s has a default-deny NetworkPolicy and exactly the flows the platform needs.

The manifests are validated against the Kubernetes schema (kubernetes-validate, strict) and then
*evaluated*: a small model of NetworkPolicy semantics (pod and namespace selectors, ipBlock with except,
ports, policy types; a flow needs the source's egress and the destination's ingress) decides every flow
below, so a policy that is too wide or too narrow fails here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import deployfiles as df
from tests.deploy.test_k8s import KUBERNETES_VERSION, by_kind, workloads

NAMESPACE = "goha"


@dataclass(frozen=True)
class Pod:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE


@dataclass(frozen=True)
class Address:
    ip: str


Endpoint = Pod | Address


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, Address):
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif other.namespace != NAMESPACE:
        return False  # a bare podSelector means pods of the policy's own namespace
    return _selects(peer.get("podSelector"), other.labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def _allowed(
    policies: list[dict[str, Any]], pod: Pod, other: Endpoint, port: int, protocol: str, kind: str
) -> bool:
    """Whether ``pod`` (in the namespace) accepts ``kind`` = Ingress from / Egress to ``other``."""
    if pod.namespace != NAMESPACE:
        return True  # other namespaces are not ours to police
    relevant = [
        p
        for p in policies
        if _selects(p["spec"]["podSelector"], pod.labels) and kind in p["spec"]["policyTypes"]
    ]
    if not relevant:
        return True
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for policy in relevant:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, other) for peer in peers)) and _port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def flow(
    policies: list[dict[str, Any]], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    egress = not isinstance(source, Pod) or _allowed(policies, source, target, port, protocol, "Egress")
    ingress = not isinstance(target, Pod) or _allowed(policies, target, source, port, protocol, "Ingress")
    return egress and ingress


@pytest.fixture(scope="module")
def policies(k8s: list[df.Resource]) -> list[dict[str, Any]]:
    return [r.doc for r in by_kind(k8s, "NetworkPolicy").values()]


@pytest.fixture(scope="module")
def pods(k8s: list[df.Resource]) -> dict[str, Pod]:
    found = {r.name: Pod(r.name, df.pod_labels(r)) for r, _ in workloads(k8s)}
    assert {"goha-gateway", "goha-worker", "goha-reconciler", "goha-redis", "goha-triton"} <= set(found)
    return found


INGRESS = Pod("ingress-nginx-controller", {"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
PROMETHEUS = Pod("prometheus", {"app.kubernetes.io/name": "prometheus"}, "monitoring")
KEDA = Pod("keda-operator", {"app": "keda-operator"}, "keda")
DNS = Pod("coredns", {"k8s-app": "kube-dns"}, "kube-system")
STRANGER = Pod("intruder", {"app": "intruder"}, "default")
DATABASE = Address("10.20.0.5")  # outside the cluster (ExternalName Services)
STORAGE = Address("10.30.0.7")
RECEIVER = Address("93.184.216.34")  # a public webhook receiver
METADATA = Address("169.254.169.254")


def test_every_policy_matches_the_kubernetes_schema(policies: list[dict[str, Any]]) -> None:
    assert len(policies) >= 2
    for policy in policies:
        kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)


def test_everything_is_denied_by_default(policies: list[dict[str, Any]]) -> None:
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # A pod nobody listed (say a debug pod someone starts in the namespace) can reach nothing but DNS.
    debug = Pod("debug", {"app": "debug"})
    assert flow(policies, debug, DNS, 53, "UDP")
    for target, port in ((DATABASE, 5432), (RECEIVER, 443), (METADATA, 80)):
        assert not flow(policies, debug, target, port)
    assert not flow(policies, STRANGER, debug, 8080)


def test_the_flows_the_platform_needs_are_allowed(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    gateway, worker, reconciler = pods["goha-gateway"], pods["goha-worker"], pods["goha-reconciler"]
    redis, triton = pods["goha-redis"], pods["goha-triton"]
    needed = [
        (INGRESS, gateway, 8080),
        (PROMETHEUS, gateway, 8080),
        (PROMETHEUS, worker, 9200),
        (PROMETHEUS, reconciler, 9200),
        (PROMETHEUS, triton, 8002),
        (PROMETHEUS, redis, 9121),
        (gateway, redis, 6379),
        (worker, redis, 6379),
        (reconciler, redis, 6379),
        (KEDA, redis, 6379),
        (worker, triton, 8001),
        (reconciler, RECEIVER, 443),
    ]
    for name in ("goha-gateway", "goha-worker", "goha-reconciler", "goha-migrate", "goha-retention"):
        needed += [(pods[name], DATABASE, 5432), (pods[name], STORAGE, 9000)]
    for pod in pods.values():
        needed.append((pod, DNS, 53))
    missing = [(s, t, p) for s, t, p in needed if not flow(policies, s, t, p, "UDP" if p == 53 else "TCP")]
    assert missing == []


def test_nothing_else_is_allowed(policies: list[dict[str, Any]], pods: dict[str, Pod]) -> None:
    gateway, worker, reconciler = pods["goha-gateway"], pods["goha-worker"], pods["goha-reconciler"]
    redis, triton = pods["goha-redis"], pods["goha-triton"]
    forbidden = [
        (STRANGER, redis, 6379),  # the queue is not reachable from other namespaces
        (STRANGER, gateway, 8080),  # only through the ingress controller
        (INGRESS, worker, 9200),
        (INGRESS, redis, 6379),
        (gateway, triton, 8001),  # the internet-facing pod never reaches the model server
        (reconciler, triton, 8001),
        (PROMETHEUS, triton, 8000),  # Triton's HTTP API (model control) is for nobody
        (worker, RECEIVER, 443),  # GPU workers never call out (webhooks are the reconciler's)
        (gateway, RECEIVER, 443),
        (reconciler, RECEIVER, 80),  # webhooks on 443 only
        (reconciler, METADATA, 443),  # never the cloud metadata service
        (reconciler, Address("10.1.2.3"), 443),  # nor a private address
        (worker, gateway, 8080),
        (triton, DATABASE, 5432),
        (redis, RECEIVER, 443),
    ]
    allowed = [(s, t, p) for s, t, p in forbidden if flow(policies, s, t, p)]
    assert allowed == []


def test_the_model_catches_a_too_wide_policy(policies: list[dict[str, Any]], pods: dict[str, Pod]) -> None:
    """The evaluator is not vacuous: opening the gateway's egress to everything is noticed."""
    wide = [p for p in policies if p["metadata"]["name"] != "goha-gateway"]
    wide.append(
        {
            "metadata": {"name": "too-wide"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
        }
    )
    assert flow(wide, pods["goha-gateway"], RECEIVER, 443)
    assert not flow(policies, pods["goha-gateway"], RECEIVER, 443)
