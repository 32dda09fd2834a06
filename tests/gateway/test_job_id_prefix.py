"""Issue 18: a short job id is looked up by the server (``GET /v1/jobs?id_prefix=``), scoped to the
tenant, instead of by the client among the latest 1,000 jobs. Real gateway app on PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from shared.platform import repository
from shared.platform.db import Database
from shared.platform.models import Tenant
from tests.gateway.conftest import TenantKey
from tests.support.factories import make_job_for_tests

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _job_ids(ids: list[str]) -> Iterator[None]:
    """Jobs created meanwhile get these ids, in order (ids are random UUIDs otherwise)."""
    real_create, real_new_id = repository.create_job, repository.new_id
    pending = iter(ids)

    def create(*args: object, **kwargs: object) -> object:
        repository.new_id = lambda: next(pending)
        try:
            return real_create(*args, **kwargs)
        finally:
            repository.new_id = real_new_id

    repository.create_job = create  # type: ignore[assignment]
    try:
        yield
    finally:
        repository.create_job = real_create


def _jobs(db: Database, who: TenantKey, ids: list[str]) -> None:
    with db.session() as session, _job_ids(ids):
        tenant = session.get(Tenant, who.tenant_id)
        for _ in ids:
            make_job_for_tests(session, tenant=tenant)
        session.commit()


def _lookup(client: TestClient, who: TenantKey, prefix: str):  # type: ignore[no-untyped-def]
    return client.get("/v1/jobs", params={"id_prefix": prefix}, headers=who.headers)


def test_a_prefix_names_one_job_of_the_tenant_only(
    idle_client: TestClient, db: Database, tenant_factory: Callable[..., TenantKey]
) -> None:
    mine, theirs = tenant_factory(), tenant_factory()
    base = "7e1d2c3b-0000-4000-8000-00000000000"
    _jobs(db, mine, [base + "1", base + "2", "7e1d2c3c-0000-4000-8000-000000000003"])
    _jobs(db, theirs, ["7e1d2c3c-0000-4000-8000-000000000004", "9a9a9a9a-0000-4000-8000-000000000005"])

    one = _lookup(idle_client, mine, "7E1D2C3C")  # case does not matter
    assert one.status_code == 200, one.text
    assert [job["id"] for job in one.json()["items"]] == ["7e1d2c3c-0000-4000-8000-000000000003"]
    assert _lookup(idle_client, theirs, "7e1d2c3c").json()["items"][0]["id"].endswith("4")
    # Another tenant's job is not matched (and does not make the prefix ambiguous).
    assert _lookup(idle_client, mine, "9a9a9a9a").json() == {"items": [], "next_cursor": None}

    both = _lookup(idle_client, mine, "7e1d2c3b")
    assert both.status_code == 409
    error = both.json()["error"]
    assert error["code"] == "ambiguous_job_id"
    assert sorted(error["details"]["job_ids"]) == [base + "1", base + "2"]
    exact = _lookup(idle_client, mine, base + "2")
    assert [job["id"] for job in exact.json()["items"]] == [base + "2"]


def test_short_prefixes_are_refused_and_odd_ones_match_nothing(
    idle_client: TestClient, tenant: TenantKey
) -> None:
    short = _lookup(idle_client, tenant, "7e1d2c3")
    assert short.status_code == 400 and short.json()["error"]["code"] == "job_id_too_short"
    for odd in ("%%%%%%%%", "________", "7e1d2c3b%", "ffffffff-no"):  # LIKE wildcards match literally
        nothing = _lookup(idle_client, tenant, odd)
        assert nothing.status_code == 200 and nothing.json()["items"] == [], odd


def test_wildcards_never_widen_the_match(
    idle_client: TestClient, db: Database, tenant_factory: Callable[..., TenantKey]
) -> None:
    mine = tenant_factory()
    _jobs(db, mine, ["5b5b5b5b-0000-4000-8000-000000000001", "5b5b5b5c-0000-4000-8000-000000000002"])
    assert _lookup(idle_client, mine, "5b5b5b5_").json()["items"] == []  # "_" is not "any character"
    assert _lookup(idle_client, mine, "5b5b5b5%").json()["items"] == []
