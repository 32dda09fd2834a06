"""Issue 16 (Low): the platform's MinIO user reaches its own bucket's objects and nothing else.

compose's ``minio-init`` command is run for real by ``/bin/sh`` (with a recording ``mc`` on PATH, since
no MinIO server is part of the test environment): the policy it creates is read back and evaluated with
S3 policy semantics (Allow statements, wildcard actions and resources) for every operation
``shared/platform/storage.py`` performs, and for operations it must not be able to perform."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import deployfiles as df

TEMPLATE = df.DEPLOY / "minio" / "app-policy.json"
# MinIO's built-in policy the user had before (mc admin policy info ... readwrite).
READWRITE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}],
}


def allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    allowed = False
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        hit = any(fnmatch.fnmatchcase(action, a) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        )
        if hit and statement["Effect"] == "Deny":
            return False
        allowed = allowed or (hit and statement["Effect"] == "Allow")
    return allowed


# What S3Storage does (minio client): bucket_exists / region lookup, put (single and multipart),
# get / stat / presigned GET, remove, list.
NEEDED = [
    ("s3:ListBucket", "arn:aws:s3:::{bucket}"),
    ("s3:GetBucketLocation", "arn:aws:s3:::{bucket}"),
    ("s3:GetObject", "arn:aws:s3:::{bucket}/tenants/t1/jobs/j1/result.mp4"),
    ("s3:PutObject", "arn:aws:s3:::{bucket}/tenants/t1/assets/a1"),
    ("s3:DeleteObject", "arn:aws:s3:::{bucket}/tenants/t1/assets/a1"),
    ("s3:AbortMultipartUpload", "arn:aws:s3:::{bucket}/tenants/t1/assets/a1"),
    ("s3:ListMultipartUploadParts", "arn:aws:s3:::{bucket}/tenants/t1/assets/a1"),
]
FORBIDDEN = [
    ("s3:GetObject", "arn:aws:s3:::other-bucket/secret.txt"),
    ("s3:PutObject", "arn:aws:s3:::other-bucket/x"),
    ("s3:ListBucket", "arn:aws:s3:::other-bucket"),
    ("s3:GetObject", "arn:aws:s3:::{bucket}-backup/x"),  # a bucket whose name starts with ours
    ("s3:ListAllMyBuckets", "arn:aws:s3:::*"),
    ("s3:CreateBucket", "arn:aws:s3:::new-bucket"),
    ("s3:DeleteBucket", "arn:aws:s3:::{bucket}"),
    ("s3:PutBucketPolicy", "arn:aws:s3:::{bucket}"),
    ("s3:PutLifecycleConfiguration", "arn:aws:s3:::{bucket}"),
    ("admin:CreateUser", "arn:aws:s3:::*"),
]


def _judge(policy: dict[str, Any], bucket: str) -> tuple[list[str], list[str]]:
    missing = [f"{a} {r}" for a, r in NEEDED if not allows(policy, a, r.format(bucket=bucket))]
    excess = [f"{a} {r}" for a, r in FORBIDDEN if allows(policy, a, r.format(bucket=bucket))]
    return missing, excess


@pytest.fixture
def run_init(tmp_path: Path) -> Any:
    raw = df.load_compose_raw()["services"]["minio-init"]
    script = raw["command"][0].replace("$$", "$")  # compose's escape for a literal $
    assert raw["entrypoint"] == ["/bin/sh", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mc.log"
    (bin_dir / "mc").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "'
        + str(tmp_path / "created.json")
        + '"; fi\n'
    )
    (bin_dir / "mc").chmod(0o755)

    def run(bucket: str) -> tuple[subprocess.CompletedProcess[str], list[str], dict[str, Any] | None]:
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "MINIO_ROOT_USER": "root",
            "MINIO_ROOT_PASSWORD": "root-password",
            "APP_ACCESS_KEY": "goha-app",
            "APP_SECRET_KEY": "app-secret",
            "BUCKET": bucket,
            "POLICY_TEMPLATE": str(TEMPLATE),
            "POLICY_FILE": str(tmp_path / "policy.json"),
        }
        done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        calls = log.read_text().splitlines() if log.exists() else []
        created = tmp_path / "created.json"
        return done, calls, json.loads(created.read_text()) if created.exists() else None

    return run


def test_the_compose_user_gets_a_policy_limited_to_the_bucket(run_init: Any) -> None:
    done, calls, policy = run_init("goha-media")
    assert done.returncode == 0, done.stderr
    assert policy is not None
    assert _judge(policy, "goha-media") == ([], [])
    assert "admin policy attach goha goha-app --user goha-app" in calls
    assert not any("attach goha readwrite" in call for call in calls)
    assert "admin policy detach goha readwrite --user goha-app" in calls  # an upgraded user loses readwrite
    raw = df.load_compose_raw()["services"]["minio-init"]
    assert "./deploy/minio/app-policy.json:/etc/goha/minio/app-policy.json:ro" in raw["volumes"]
    assert raw["environment"]["POLICY_TEMPLATE"] == "/etc/goha/minio/app-policy.json"


def test_a_bucket_name_that_would_break_the_policy_is_refused(run_init: Any) -> None:
    done, calls, policy = run_init('goha", "arn:aws:s3:::*')
    assert done.returncode == 2 and "bad bucket name" in done.stderr
    assert calls == [] and policy is None


def test_the_evaluation_would_catch_the_old_readwrite_policy() -> None:
    missing, excess = _judge(READWRITE, "goha")
    s3_forbidden = [a for a, _ in FORBIDDEN if a.startswith("s3:")]  # readwrite is s3:* (not admin:*)
    assert missing == [] and len(excess) == len(s3_forbidden)
