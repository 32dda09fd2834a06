"""C2PA provenance manifests on output videos (``c2pa-python`` 0.38.1).

Each output MP4 gets a manifest, signed last (any later re-encode removes it), with

- a ``c2pa.actions`` assertion holding ``c2pa.created`` with IPTC digital source type
  ``trainedAlgorithmicMedia`` (the standard way to say "made by a generative model"), and
- a custom ``org.goha.provenance`` assertion: model version, SHA-256 of the portrait and the driving video,
  job id and the invisible-watermark payload, so a manifest ties the file to its job and inputs.

Signing chains
    - Development: :func:`ensure_dev_chain` creates, once, a self-signed root CA and a leaf signing
      certificate (EC P-256) in a directory, then reuses them (idempotent and safe when several workers
      start together). A dev-signed file reads back ``Valid`` but not ``Trusted``; pass the root as a
      trust anchor to get ``Trusted``.
    - Production: :func:`load_signing_chain` reads a leaf (+ intermediates) PEM and its private key issued by
      a CA that C2PA validators trust.
    The signer is given the leaf and intermediates, never the root. No timestamp authority is used (the
    platform may run offline), so validity is judged against the certificate's lifetime at read time.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.media.errors import C2PA_CERTIFICATE_INVALID, C2PA_SIGNING_FAILED, FILE_NOT_FOUND, MediaError

PathLike = str | os.PathLike[str]

PROVENANCE_ASSERTION_LABEL = "org.goha.provenance"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CLAIM_GENERATOR_NAME = "goha-platform"
CLAIM_GENERATOR_VERSION = "0.1.0"
VIDEO_MIME = "video/mp4"

DEV_ROOT_CERT = "root.pem"
DEV_ROOT_KEY = "root.key"
DEV_SIGNER_CERT = "signer.pem"
DEV_SIGNER_KEY = "signer.key"
DEV_ROOT_DAYS = 3650
DEV_LEAF_DAYS = 365
# A leaf this close to expiry is re-issued from the dev root, so signatures never use an expiring cert.
LEAF_RENEW_BEFORE = dt.timedelta(days=7)


# -- data ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProvenanceClaim:
    """What the manifest states about one generated video."""

    job_id: str
    model_version: str
    portrait_sha256: str
    driving_sha256: str
    watermark_payload: int
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    title: str = "reenactment.mp4"
    generator_version: str = CLAIM_GENERATOR_VERSION

    def assertion_data(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model_version": self.model_version,
            "inputs": {"portrait_sha256": self.portrait_sha256, "driving_video_sha256": self.driving_sha256},
            "watermark": {"scheme": "rivagan-32", "payload": int(self.watermark_payload)},
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class SigningChain:
    """A signer: leaf + intermediates (PEM), its private key (PKCS#8 PEM), and the root for trust checks."""

    certificate_chain_pem: str
    private_key_pem: str
    algorithm: str  # c2pa name: es256, es384, es512, ps256, ed25519
    trust_anchor_pem: str | None = None

    def __repr__(self) -> str:  # never print the private key in logs
        return f"SigningChain(algorithm={self.algorithm!r}, trust_anchor={'yes' if self.trust_anchor_pem else 'no'})"


@dataclass(frozen=True)
class SignResult:
    path: str
    manifest_bytes: int
    manifest_sha256: str


@dataclass(frozen=True)
class ManifestReport:
    """Result of reading a file's C2PA manifest."""

    present: bool
    valid: bool = False  # signature, certificate and content hashes check out ("Valid" or "Trusted")
    trusted: bool = False  # ...and the chain ends in a configured trust anchor
    validation_state: str | None = None
    validation_codes: tuple[str, ...] = ()  # failure codes, e.g. assertion.bmffHash.mismatch
    informational_codes: tuple[str, ...] = ()
    claim: dict[str, Any] | None = None  # the org.goha.provenance assertion
    digital_source_type: str | None = None
    actions: tuple[str, ...] = ()
    signer: dict[str, Any] | None = None
    manifest_label: str | None = None
    error: str | None = None  # why a present manifest could not be read

    @property
    def ai_generated(self) -> bool:
        return self.digital_source_type == TRAINED_ALGORITHMIC_MEDIA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ai_generated"] = self.ai_generated
        return data


# -- certificates ----------------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GOHA platform (development)"),
        ]
    )


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_root(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("GOHA dev C2PA root CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    now: dt.datetime, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=DEV_LEAF_DAYS), root.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("GOHA dev C2PA signer"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, ca=False), critical=True)
        # C2PA requires an EKU on signing certificates; emailProtection is in its default allowed list.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    return key, cert


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _pem_key(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _write_atomic(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _algorithm_for(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in names:
            return names[key.curve.name]
    elif isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise MediaError(C2PA_CERTIFICATE_INVALID, f"unsupported signing key type {type(key).__name__}")


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _load_chain(chain_pem: str, key_pem: str, trust_anchor_pem: str | None, source: str) -> SigningChain:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise MediaError(
            C2PA_CERTIFICATE_INVALID, f"cannot parse signing certificate/key from {source}: {exc}"
        ) from exc
    leaf = certs[0]
    public_der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*public_der) != key.public_key().public_bytes(*public_der):
        raise MediaError(
            C2PA_CERTIFICATE_INVALID, f"private key does not match the signing certificate ({source})"
        )
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise MediaError(
            C2PA_CERTIFICATE_INVALID,
            f"signing certificate is outside its validity ({leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}) ({source})",
        )
    # Validators want leaf + intermediates; a root bundled in the file becomes the trust anchor instead.
    chain = [leaf] + [cert for cert in certs[1:] if not _is_self_signed(cert)]
    roots = [cert for cert in certs[1:] if _is_self_signed(cert)]
    if trust_anchor_pem is None and roots:
        trust_anchor_pem = "".join(_pem_cert(cert) for cert in roots)
    return SigningChain(
        certificate_chain_pem="".join(_pem_cert(cert) for cert in chain),
        private_key_pem=key_pem,
        algorithm=_algorithm_for(key),
        trust_anchor_pem=trust_anchor_pem,
    )


def _read_text(path: PathLike, what: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise MediaError(FILE_NOT_FOUND, f"{what} not found: {os.fspath(path)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MediaError(C2PA_CERTIFICATE_INVALID, f"cannot read {what} {os.fspath(path)}: {exc}") from exc


def load_signing_chain(
    certificate_chain_path: PathLike, private_key_path: PathLike, trust_anchor_path: PathLike | None = None
) -> SigningChain:
    """Production chain: a PEM with the leaf first (+ intermediates) and its unencrypted PEM private key."""
    anchor = _read_text(trust_anchor_path, "trust anchor") if trust_anchor_path is not None else None
    return _load_chain(
        _read_text(certificate_chain_path, "signing certificate"),
        _read_text(private_key_path, "signing key"),
        anchor,
        os.fspath(certificate_chain_path),
    )


def ensure_dev_chain(directory: PathLike) -> SigningChain:
    """Create (first run) or load the development root CA + EC P-256 leaf in ``directory``.

    Idempotent: existing files are reused; a leaf near expiry is re-issued from the stored root, so files
    signed earlier stay verifiable against the same root. Keys are written 0600.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    root_cert_path, root_key_path = folder / DEV_ROOT_CERT, folder / DEV_ROOT_KEY
    leaf_cert_path, leaf_key_path = folder / DEV_SIGNER_CERT, folder / DEV_SIGNER_KEY
    with _directory_lock(folder):
        now = dt.datetime.now(dt.UTC)
        root_key: Any = None
        root: x509.Certificate | None = None
        if root_cert_path.is_file() and root_key_path.is_file():
            root = x509.load_pem_x509_certificate(root_cert_path.read_bytes())
            root_key = serialization.load_pem_private_key(root_key_path.read_bytes(), password=None)
            if root.not_valid_after_utc - now < LEAF_RENEW_BEFORE:
                root = None  # an expiring dev root: start over
        if root is None:
            root_key, root = _make_root(now)
            _write_atomic(root_key_path, _pem_key(root_key), 0o600)
            _write_atomic(root_cert_path, _pem_cert(root), 0o644)
            leaf_cert_path.unlink(missing_ok=True)
        renew = True
        if leaf_cert_path.is_file() and leaf_key_path.is_file():
            leaf = x509.load_pem_x509_certificate(leaf_cert_path.read_bytes())
            renew = leaf.issuer != root.subject or leaf.not_valid_after_utc - now < LEAF_RENEW_BEFORE
        if renew:
            leaf_key, leaf = _make_leaf(now, root_key, root)
            _write_atomic(leaf_key_path, _pem_key(leaf_key), 0o600)
            _write_atomic(leaf_cert_path, _pem_cert(leaf), 0o644)
        return _load_chain(
            leaf_cert_path.read_text(encoding="ascii"),
            leaf_key_path.read_text(encoding="ascii"),
            root_cert_path.read_text(encoding="ascii"),
            os.fspath(leaf_cert_path),
        )


# -- signing ---------------------------------------------------------------------------------------------
def _manifest_definition(claim: ProvenanceClaim) -> dict[str, Any]:
    agent = {"name": CLAIM_GENERATOR_NAME, "version": claim.generator_version}
    return {
        "claim_generator_info": [agent],
        "title": claim.title,
        "format": VIDEO_MIME,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": agent,
                            "description": "Head-avatar reenactment: a portrait animated by a driving video",
                        }
                    ]
                },
            },
            {"label": PROVENANCE_ASSERTION_LABEL, "data": claim.assertion_data()},
        ],
    }


def sign_video(
    path_in: PathLike, path_out: PathLike, claim: ProvenanceClaim, chain: SigningChain
) -> SignResult:
    """Write ``path_out``: ``path_in`` with an embedded, signed C2PA manifest (atomic; in == out allowed)."""
    source, target = Path(path_in), Path(path_out)
    if not source.is_file():
        raise MediaError(FILE_NOT_FOUND, f"video to sign not found: {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".mp4")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        info = c2pa.C2paSignerInfo(
            chain.algorithm,
            chain.certificate_chain_pem.encode("ascii"),
            chain.private_key_pem.encode("ascii"),
            None,
        )
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(_manifest_definition(claim)) as builder:
            with open(source, "rb") as src, open(tmp, "w+b") as dst:
                manifest = builder.sign(signer, VIDEO_MIME, src, dst)
        os.replace(tmp, target)
    except c2pa.C2paError as exc:
        tmp.unlink(missing_ok=True)
        raise MediaError(C2PA_SIGNING_FAILED, f"C2PA signing of {source.name} failed: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SignResult(
        path=os.fspath(target),
        manifest_bytes=len(manifest),
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
    )


# -- reading ---------------------------------------------------------------------------------------------
def _codes(results: dict[str, Any] | None, kind: str) -> tuple[str, ...]:
    if not results:
        return ()
    codes: list[str] = []
    active = results.get("activeManifest") or {}
    codes.extend(item.get("code", "") for item in active.get(kind, []) or [])
    for delta in results.get("ingredientDeltas", []) or []:
        validation = delta.get("validationDeltas") or {}
        codes.extend(item.get("code", "") for item in validation.get(kind, []) or [])
    return tuple(code for code in codes if code)


def _context(trust_anchors_pem: str | None) -> c2pa.Context | None:
    if not trust_anchors_pem:
        return None
    return c2pa.Context.from_dict(
        {"trust": {"trust_anchors": trust_anchors_pem}, "verify": {"verify_trust": True}}
    )


def read_manifest(path: PathLike, trust_anchors_pem: str | None = None) -> ManifestReport:
    """Read and validate the C2PA manifest of a file; a missing manifest is ``present=False``, not an error.

    ``trust_anchors_pem``: PEM root certificate(s) to trust; without it a valid manifest is never ``trusted``.
    """
    file_path = Path(path)
    if not file_path.is_file():
        raise MediaError(FILE_NOT_FOUND, f"file not found: {file_path}")
    context = _context(trust_anchors_pem)
    try:
        with open(file_path, "rb") as stream:
            # Format is sniffed from the bytes: uploads arrive with arbitrary names.
            reader = (
                c2pa.Reader.try_create(stream)
                if context is None
                else c2pa.Reader.try_create(None, stream, None, context)
            )
            if reader is None:
                return ManifestReport(present=False)
            with reader:
                state = reader.get_validation_state()
                results = reader.get_validation_results()
                active = reader.get_active_manifest() or {}
    except c2pa.C2paError as exc:
        # JUMBF present but unparseable, or a format the SDK does not know: no usable manifest.
        # A format the SDK cannot read cannot carry a manifest it could check: report it absent.
        if isinstance(exc, c2pa.C2paError.NotSupported | c2pa.C2paError.ManifestNotFound):
            return ManifestReport(present=False, error=str(exc))
        return ManifestReport(present=True, validation_state="Invalid", error=str(exc))
    finally:
        if context is not None:
            context.close()
    return _report(state, results, active)


def _report(state: str | None, results: dict[str, Any] | None, active: dict[str, Any]) -> ManifestReport:
    claim: dict[str, Any] | None = None
    actions: list[str] = []
    source_type: str | None = None
    for assertion in active.get("assertions", []) or []:
        label = assertion.get("label", "")
        data = assertion.get("data") or {}
        if label == PROVENANCE_ASSERTION_LABEL:
            claim = data
        elif label.startswith("c2pa.actions"):
            for action in data.get("actions", []) or []:
                actions.append(action.get("action", ""))
                if action.get("action") == "c2pa.created" and action.get("digitalSourceType"):
                    source_type = action["digitalSourceType"]
    signature = active.get("signature_info") or None
    return ManifestReport(
        present=True,
        valid=state in ("Valid", "Trusted"),
        trusted=state == "Trusted",
        validation_state=state,
        validation_codes=_codes(results, "failure"),
        informational_codes=_codes(results, "informational"),
        claim=json.loads(json.dumps(claim)) if claim is not None else None,
        digital_source_type=source_type,
        actions=tuple(actions),
        signer=dict(signature) if signature else None,
        manifest_label=active.get("label"),
    )
