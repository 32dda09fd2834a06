from __future__ import annotations

from pathlib import Path

import pytest

from shared.platform.db import Database
from shared.platform.errors import ConfigurationError
from shared.platform.models import Job, ProvenanceRecord
from shared.platform.provenance import (
    complete_provenance,
    key_id,
    load_signing_key,
    provenance_document,
    signature_valid,
)
from shared.platform.settings import Settings
from tests.support.factories import TEST_SIGNING_KEY, make_job_for_tests


def test_record_is_signed_at_submission_and_completion(any_db: Database) -> None:
    with any_db.session() as session:
        job = make_job_for_tests(session)
        job_id = job.id
    with any_db.session() as session:  # read back: the signature must survive the database round trip
        record = session.query(ProvenanceRecord).filter_by(job_id=job_id).one()
        assert signature_valid(record, TEST_SIGNING_KEY)
        assert record.completed_at is None and record.consent["subject_name"] == "Test Subject"
        job = session.get(Job, job_id)
        complete_provenance(
            session,
            job,
            key=TEST_SIGNING_KEY,
            output_sha256="cd" * 32,
            model_version="tiny@abc",
            watermark_payload=0xDEADBEEF,
        )
    with any_db.session() as session:
        record = session.query(ProvenanceRecord).filter_by(job_id=job_id).one()
        assert signature_valid(record, TEST_SIGNING_KEY)
        document = provenance_document(record)
        assert document["output_sha256"] == "cd" * 32 and document["watermark_payload"] == 0xDEADBEEF
        assert not signature_valid(record, b"another-key-of-enough-length")
        record.output_sha256 = "ef" * 32  # tampering with the row breaks the signature
        assert not signature_valid(record, TEST_SIGNING_KEY)
        session.rollback()


def test_signing_key_sources(tmp_path: Path) -> None:
    explicit = Settings(var_dir=tmp_path, provenance_signing_key="x" * 32)
    assert load_signing_key(explicit) == b"x" * 32
    embedded = Settings(var_dir=tmp_path)
    generated = load_signing_key(embedded)
    assert len(generated) >= 32 and load_signing_key(embedded) == generated  # created once, then reused
    assert (tmp_path / "provenance.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigurationError):
        load_signing_key(Settings(var_dir=tmp_path / "prod", embedded=False))
    with pytest.raises(ConfigurationError):
        load_signing_key(Settings(var_dir=tmp_path, provenance_signing_key="short"))
    assert key_id(b"a" * 32) != key_id(b"b" * 32)
