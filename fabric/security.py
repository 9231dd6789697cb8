"""Signed VCVs: an agent signs its VCV with its ed25519 key, routers verify against a trust store.

A broker login proves who connected; the ACL keeps each login under its own topics. The
signature closes the remaining gap (a broker without ACLs, a bridged broker, a replayed
retained message): the router only indexes a VCV whose signature was made by the key the
trust store holds for that `agent_id`, so agent B's key cannot advertise capabilities as A.

Keys on disk: `{agent_id}.key` (PKCS#8 PEM, mode 0600) and `{agent_id}.pub` (SubjectPublicKeyInfo
PEM). On the wire and in the trust-store JSON a public key is base64 of the 32 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fabric import topics
from fabric.errors import ConfigError
from fabric.messages import AuditEvent, NodeOutcome
from fabric.settings import Settings
from fabric.topics import validate_id
from fabric.vcv import VCV

log = logging.getLogger("foa.security")

TRUST_STORE_FORMAT = "foa-trust/1"

#: rejection codes returned (as the prefix of the reason) by TrustStore.verify
UNSIGNED = "unsigned"
UNKNOWN_AGENT = "unknown-agent"
KEY_MISMATCH = "key-mismatch"
BAD_SIGNATURE = "bad-signature"
TOPIC_MISMATCH = "topic-mismatch"

#: the trust-store name of the key orchestrators sign node outcomes with (`foa creds init` writes
#: it; agent ids may not be role names, so no agent can hold it)
ORCHESTRATOR_KEY = "orchestrator"


class KeyFileError(ConfigError):
    """A key file that is missing, unreadable or not an ed25519 key."""


# ---- keys -------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64: the form carried in `VCV.public_key`."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def public_key_from_b64(value: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError("public key is not valid base64") from exc
    if len(raw) != 32:
        raise KeyFileError(f"an ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def write_private_file(path: Path, data: bytes) -> None:
    """Create the file with mode 0600 from the start (no window where it is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    path = Path(path)
    write_private_file(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return path


def save_public_key(key: Ed25519PrivateKey | Ed25519PublicKey, path: str | Path) -> Path:
    path = Path(path)
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, expected an ed25519 key")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("private key is readable by others; chmod 600 it", extra={"path": str(path)})
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, expected an ed25519 key")
    return key


def agent_key_path(key_dir: str | Path, agent_id: str) -> Path:
    return Path(key_dir) / f"{validate_id(agent_id, 'agent_id')}.key"


def agent_key_for(settings: Settings, agent_id: str) -> Ed25519PrivateKey | None:
    """The agent's signing key from FOA_AGENT_KEY_DIR; None when no key dir is configured.

    A configured directory without the agent's key is an error: silently publishing unsigned
    would get the agent dropped by every verifying router.
    """
    if settings.agent_key_dir is None:
        return None
    path = agent_key_path(settings.agent_key_dir, agent_id)
    if not path.exists():
        raise KeyFileError(f"no signing key for agent {agent_id!r}: {path} does not exist (run `foa creds init`)")
    return load_private_key(path)


def orchestrator_key(settings: Settings) -> Ed25519PrivateKey | None:
    """The key orchestrators sign node outcomes with: `orchestrator.key` in FOA_AGENT_KEY_DIR.

    None without a key dir. A key dir without the key is logged, not fatal: a job does not need
    it, but routers with a trust store will not learn from this orchestrator's outcomes."""
    if settings.agent_key_dir is None:
        return None
    path = agent_key_path(settings.agent_key_dir, ORCHESTRATOR_KEY)
    if not path.exists():
        log.warning("no orchestrator key: node outcomes go out unsigned (routers with a trust store ignore them)",
                    extra={"expected": str(path), "fix": "foa creds init"})
        return None
    return load_private_key(path)


# ---- signing ----------------------------------------------------------------------------


def sign_vcv(vcv: VCV, private_key: Ed25519PrivateKey) -> VCV:
    """A copy of `vcv` carrying the signer's public key and a signature over `signing_bytes()`.

    The public key is set first because it is part of the signed bytes: a signature cannot
    be moved to another key.
    """
    return _signed(vcv, private_key)


Signed = TypeVar("Signed", VCV, NodeOutcome)
MISMATCH = "does not match its signature"


def _signed(obj: Signed, private_key: Ed25519PrivateKey, **fields: str) -> Signed:
    """`obj` with `fields`, the public key and a signature over `signing_bytes()` (which cover
    the key and the fields, so a signature cannot be moved to another key or signer)."""
    keyed = obj.model_copy(update={**fields, "public_key": public_key_b64(private_key), "signature": None})
    signature = private_key.sign(keyed.signing_bytes())
    return keyed.model_copy(update={"signature": base64.b64encode(signature).decode()})


def _signature_problem(public_key: str, signature: str, data: bytes) -> str | None:
    """None when `signature` (base64) over `data` verifies with `public_key` (base64 raw), else
    why: an undecodable key or signature, or MISMATCH."""
    try:
        key = public_key_from_b64(public_key)
        raw = base64.b64decode(signature, validate=True)
    except (KeyFileError, binascii.Error, ValueError) as exc:
        return str(exc)
    try:
        key.verify(raw, data)
    except InvalidSignature:
        return MISMATCH
    return None


def verify_signature(vcv: VCV) -> str | None:
    """Check the signature against the key the VCV itself carries (no trust decision)."""
    if not vcv.signature or not vcv.public_key:
        missing = "public key" if vcv.signature else "signature"
        return f"{UNSIGNED}: VCV of {vcv.agent_id!r} has no {missing}"
    problem = _signature_problem(vcv.public_key, vcv.signature, vcv.signing_bytes())
    if problem == MISMATCH:
        return f"{BAD_SIGNATURE}: VCV of {vcv.agent_id!r} v{vcv.version} {MISMATCH}"
    return None if problem is None else f"{BAD_SIGNATURE}: VCV of {vcv.agent_id!r}: {problem}"


@dataclass
class TrustStore:
    """agent_id -> the public key (base64 raw) that may sign that agent's VCVs."""

    keys: dict[str, str] = field(default_factory=dict)

    def add(self, agent_id: str, key: Ed25519PrivateKey | Ed25519PublicKey | str) -> None:
        b64 = key if isinstance(key, str) else public_key_b64(key)
        public_key_from_b64(b64)  # validate
        self.keys[validate_id(agent_id, "agent_id")] = b64

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def verify(self, vcv: VCV) -> str | None:
        """None when the VCV is signed by the key trusted for its agent_id, else the reason.

        The reason starts with a stable code (`unsigned`, `unknown-agent`, `key-mismatch`,
        `bad-signature`) before a colon: use `reason_code()` for metrics and audit events.
        """
        if not vcv.signature or not vcv.public_key:
            return verify_signature(vcv)
        trusted = self.keys.get(vcv.agent_id)
        if trusted is None:
            return f"{UNKNOWN_AGENT}: agent {vcv.agent_id!r} is not in the trust store"
        if vcv.public_key != trusted:
            return f"{KEY_MISMATCH}: VCV of {vcv.agent_id!r} is signed by a key that is not the one trusted for it"
        return verify_signature(vcv)

    # -- persistence --

    def to_json(self) -> str:
        return json.dumps({"format": TRUST_STORE_FORMAT, "agents": dict(sorted(self.keys.items()))}, indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_json_file(cls, path: str | Path) -> TrustStore:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise KeyFileError(f"cannot read trust store {path}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"trust store {path} is not JSON: {exc}") from exc
        agents = data.get("agents") if isinstance(data, dict) else None
        if not isinstance(agents, dict):
            raise KeyFileError(f"trust store {path} has no 'agents' mapping of agent_id -> base64 public key")
        store = cls()
        for agent_id, key in agents.items():
            if not isinstance(key, str):
                raise KeyFileError(f"trust store {path}: key of {agent_id!r} is not a string")
            try:
                store.add(agent_id, key)
            except ValueError as exc:
                raise KeyFileError(f"trust store {path}: entry {agent_id!r}: {exc}") from exc
        return store

    @classmethod
    def from_directory(cls, folder: str | Path) -> TrustStore:
        """Every `{agent_id}.pub` (PEM) in the folder."""
        store = cls()
        for pub in sorted(Path(folder).glob("*.pub")):
            store.add(pub.stem, load_public_key(pub))
        return store

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        path = Path(path)
        if path.is_dir():
            return cls.from_directory(path)
        return cls.from_json_file(path)


def reason_code(reason: str) -> str:
    """The stable code of a rejection reason (`bad-signature: ...` -> `bad-signature`)."""
    return reason.split(":", 1)[0]


class VcvGate:
    """What a router applies to every incoming VCV: verify when a trust store is configured.

    Without one it accepts unsigned VCVs and says so once, so an open deployment is a visible
    choice rather than a silent one. A VCV that carries a signature is still checked against
    its own key (a corrupted signature is never accepted).
    """

    def __init__(self, trust_store: TrustStore | None) -> None:
        self.trust_store = trust_store
        self._warned = False

    @classmethod
    def from_settings(cls, settings: Settings) -> VcvGate:
        if settings.trust_store is None:
            return cls(None)
        store = TrustStore.load(settings.trust_store)
        log.info("verifying VCV signatures", extra={"trust_store": str(settings.trust_store), "agents": len(store)})
        return cls(store)

    def check(self, vcv: VCV, topic: str | None = None) -> str | None:
        """None to accept the VCV (received on `topic`, when given), else the rejection reason."""
        if topic is not None and topics.agent_id_of(topic) != vcv.agent_id:
            return f"{TOPIC_MISMATCH}: VCV of {vcv.agent_id!r} arrived on {topic!r}"
        if self.trust_store is not None:
            return self.trust_store.verify(vcv)
        if not self._warned:
            self._warned = True
            log.warning("no trust store (FOA_TRUST_STORE): accepting unsigned VCVs from any agent")
        return verify_signature(vcv) if vcv.signature else None

    def check_outcome(self, outcome: NodeOutcome) -> str | None:
        """None to learn from a node outcome, else why not (`verify_outcome`)."""
        return verify_outcome(outcome, self.trust_store)


def sign_outcome(outcome: NodeOutcome, private_key: Ed25519PrivateKey, signer: str = ORCHESTRATOR_KEY) -> NodeOutcome:
    """A copy of `outcome` signed like a VCV: the signer's name and public key are signed too."""
    return _signed(outcome, private_key, signer=signer)


def verify_outcome(outcome: NodeOutcome, store: TrustStore | None) -> str | None:
    """None when a router may learn from `outcome`, else the reason (a stable code first).

    With a trust store the outcome must be signed by the key it holds for the orchestrators;
    without one it is accepted (the broker's ACL already keeps agents off the topic), but a
    signature it carries must still match its own key."""
    what = f"outcome of {outcome.job_id}/{outcome.node_id}"
    if not outcome.signature or not outcome.public_key:
        return f"{UNSIGNED}: {what} is not signed (give orchestrators FOA_AGENT_KEY_DIR with orchestrator.key)" if (
            store is not None
        ) else None
    if store is not None:
        if outcome.signer != ORCHESTRATOR_KEY or ORCHESTRATOR_KEY not in store:
            return f"{UNKNOWN_AGENT}: {what} is signed by {outcome.signer!r}, not the trusted {ORCHESTRATOR_KEY!r} key"
        if store.keys[ORCHESTRATOR_KEY] != outcome.public_key:
            return f"{KEY_MISMATCH}: {what} is signed by a key that is not the orchestrators' trusted key"
    if _signature_problem(outcome.public_key, outcome.signature, outcome.signing_bytes()) is not None:
        return f"{BAD_SIGNATURE}: {what} {MISMATCH}"
    return None


def rejection_audit(vcv: VCV, reason: str) -> AuditEvent:
    """The audit event a router publishes on `foa/policies/enforcement` for a refused VCV."""
    return AuditEvent(
        query_id=f"vcv:{vcv.agent_id}:{vcv.version}",
        agent_id=vcv.agent_id,
        gate="signature",
        detail=reason,
    )
