from __future__ import annotations

import datetime as dt
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.media import c2pa_sign
from shared.media.c2pa_sign import (
    PROVENANCE_ASSERTION_LABEL,
    TRAINED_ALGORITHMIC_MEDIA,
    ProvenanceClaim,
    SigningChain,
    ensure_dev_chain,
    load_signing_chain,
    read_manifest,
    sign_video,
)
from shared.media.errors import MediaError
from shared.media.hashing import sha256_file
from shared.media.video import probe_video, reencode

DAYS_PAST_LEAF_LIFETIME = c2pa_sign.DEV_LEAF_DAYS + 1


def _claim(portrait: Path, driving: Path) -> ProvenanceClaim:
    return ProvenanceClaim(
        job_id="job-42",
        model_version="goha-tiny@sha256:abc123",
        portrait_sha256=sha256_file(portrait),
        driving_sha256=sha256_file(driving),
        watermark_payload=0xCAFEBABE,
    )


def _mdat_payload_offset(path: Path) -> tuple[int, int]:
    """(offset, size) of the mdat box's payload."""
    data = path.read_bytes()
    position = 0
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[position + 8 : position + 16])[0]
            header = 16
        if kind == b"mdat":
            return position + header, size - header
        position += size
    raise AssertionError("no mdat box")


@pytest.fixture()
def signed_clip(tmp_path: Path, source_clip: Path, dev_chain: SigningChain) -> Path:
    out = tmp_path / "signed.mp4"
    result = sign_video(source_clip, out, _claim(source_clip, source_clip), dev_chain)
    assert result.manifest_bytes > 0 and len(result.manifest_sha256) == 64
    return out


def test_dev_chain_is_created_once_with_c2pa_profile(tmp_path: Path) -> None:
    folder = tmp_path / "chain"
    chain = ensure_dev_chain(folder)
    files = {
        name: (folder / name).read_bytes() for name in ("root.pem", "root.key", "signer.pem", "signer.key")
    }
    again = ensure_dev_chain(folder)
    assert again.certificate_chain_pem == chain.certificate_chain_pem
    assert all((folder / name).read_bytes() == content for name, content in files.items())  # idempotent
    for key_file in ("root.key", "signer.key"):
        assert stat.S_IMODE(os.stat(folder / key_file).st_mode) == 0o600
    assert chain.algorithm == "es256" and chain.trust_anchor_pem is not None
    leaf = x509.load_pem_x509_certificate(chain.certificate_chain_pem.encode())
    root = x509.load_pem_x509_certificate(chain.trust_anchor_pem.encode())
    assert (
        isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        and leaf.public_key().curve.name == "secp256r1"
    )
    assert leaf.issuer == root.subject and root.issuer == root.subject
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in list(eku)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki == ski
    assert "PRIVATE KEY" not in repr(chain)  # keys never end up in logs
    assert chain.certificate_chain_pem.count("BEGIN CERTIFICATE") == 1  # leaf only, never the root


def test_expiring_leaf_is_reissued_under_the_same_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "chain"
    first = ensure_dev_chain(folder)
    monkeypatch.setattr(c2pa_sign, "LEAF_RENEW_BEFORE", dt.timedelta(days=DAYS_PAST_LEAF_LIFETIME))
    renewed = ensure_dev_chain(folder)
    assert renewed.trust_anchor_pem == first.trust_anchor_pem
    assert renewed.certificate_chain_pem != first.certificate_chain_pem


def test_production_chain_loading(tmp_path: Path, dev_chain: SigningChain) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(dev_chain.certificate_chain_pem + (dev_chain.trust_anchor_pem or ""))
    key = tmp_path / "signer.key"
    key.write_text(dev_chain.private_key_pem)
    chain = load_signing_chain(bundle, key)
    # A root bundled with the leaf is split off into the trust anchor.
    assert chain.certificate_chain_pem == dev_chain.certificate_chain_pem
    assert chain.trust_anchor_pem == dev_chain.trust_anchor_pem
    other = ensure_dev_chain(tmp_path / "other")
    key.write_text(other.private_key_pem)
    with pytest.raises(MediaError) as excinfo:
        load_signing_chain(bundle, key)
    assert excinfo.value.code == "c2pa_certificate_invalid"
    with pytest.raises(MediaError) as excinfo:
        load_signing_chain(tmp_path / "missing.pem", key)
    assert excinfo.value.code == "file_not_found"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(MediaError) as excinfo:
        load_signing_chain(garbage, key)
    assert excinfo.value.code == "c2pa_certificate_invalid"


def test_signed_video_reads_back_valid_with_claim(
    signed_clip: Path, source_clip: Path, dev_chain: SigningChain
) -> None:
    report = read_manifest(signed_clip)
    assert report.present and report.valid and not report.trusted
    assert "signingCredential.untrusted" in report.validation_codes
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA and report.ai_generated
    assert report.actions == ("c2pa.created",)
    assert report.claim is not None
    assert report.claim["job_id"] == "job-42"
    assert report.claim["model_version"] == "goha-tiny@sha256:abc123"
    assert report.claim["watermark"]["payload"] == 0xCAFEBABE
    assert report.claim["inputs"]["driving_video_sha256"] == sha256_file(source_clip)
    assert report.signer is not None and report.signer["common_name"] == "GOHA dev C2PA signer"
    # The signed file is still the same playable video with its audio.
    info = probe_video(signed_clip)
    assert info.frame_count == 50 and info.has_audio
    assert PROVENANCE_ASSERTION_LABEL == "org.goha.provenance"


def test_trust_anchor_makes_it_trusted(signed_clip: Path, dev_chain: SigningChain, tmp_path: Path) -> None:
    trusted = read_manifest(signed_clip, trust_anchors_pem=dev_chain.trust_anchor_pem)
    assert trusted.valid and trusted.trusted and trusted.validation_state == "Trusted"
    stranger = ensure_dev_chain(tmp_path / "stranger")
    untrusted = read_manifest(signed_clip, trust_anchors_pem=stranger.trust_anchor_pem)
    assert untrusted.valid and not untrusted.trusted


def test_flipped_byte_in_media_data_invalidates(signed_clip: Path, tmp_path: Path) -> None:
    offset, size = _mdat_payload_offset(signed_clip)
    tampered = tmp_path / "tampered.mp4"
    data = bytearray(signed_clip.read_bytes())
    data[offset + size // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    report = read_manifest(tampered)
    assert report.present and not report.valid and report.validation_state == "Invalid"
    assert "assertion.bmffHash.mismatch" in report.validation_codes


def test_reencoding_removes_the_manifest(signed_clip: Path, tmp_path: Path) -> None:
    reencoded = tmp_path / "reencoded.mp4"
    reencode(signed_clip, reencoded, crf=28)
    report = read_manifest(reencoded)
    assert not report.present and not report.valid and report.claim is None


def test_unsigned_and_non_media_files(source_clip: Path, tmp_path: Path) -> None:
    assert not read_manifest(source_clip).present
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(2048))
    report = read_manifest(junk)
    assert not report.present and report.error
    with pytest.raises(MediaError) as excinfo:
        read_manifest(tmp_path / "absent.mp4")
    assert excinfo.value.code == "file_not_found"


def test_sign_in_place_and_missing_input(tmp_path: Path, source_clip: Path, dev_chain: SigningChain) -> None:
    copy = tmp_path / "inplace.mp4"
    copy.write_bytes(source_clip.read_bytes())
    sign_video(copy, copy, _claim(source_clip, source_clip), dev_chain)
    assert read_manifest(copy).valid
    assert not any(name.name.startswith(".inplace") for name in tmp_path.iterdir())  # no temp files left
    with pytest.raises(MediaError) as excinfo:
        sign_video(tmp_path / "absent.mp4", tmp_path / "x.mp4", _claim(source_clip, source_clip), dev_chain)
    assert excinfo.value.code == "file_not_found"
    not_video = tmp_path / "notvideo.mp4"
    not_video.write_bytes(b"garbage" * 100)
    with pytest.raises(MediaError) as excinfo:
        sign_video(not_video, tmp_path / "y.mp4", _claim(source_clip, source_clip), dev_chain)
    assert excinfo.value.code == "c2pa_signing_failed"
    assert not (tmp_path / "y.mp4").exists()
