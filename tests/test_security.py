"""Security: mosquitto-compatible password hashes, ACLs enforced by a real mosquitto, signed VCVs.

The broker tests start their own mosquitto with the password file and ACL that `foa creds init`
writes (anonymous off), and talk to it through the fabric's own Bus.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import acl, security, topics
from fabric.bloom import BloomFilter
from fabric.broker import Mosquitto
from fabric.bus import Bus, BusError, Incoming
from fabric.cli import main as foa_main
from fabric.envelope import decode, make
from fabric.messages import NodeOutcome, TaskRequest
from fabric.settings import Settings
from fabric.vcv import VCV

AGENTS = ["cardiologist", "pharmacist"]


def run_async(fn):
    """Run an async test body on a fresh event loop (the suite does not use pytest-asyncio)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def make_vcv(embedder, agent_id: str, description: str, policies: list[str] | None = None) -> VCV:
    vecs = embedder.embed([description, f"You are the {agent_id}. {description}"])
    skills = [agent_id, "medicine"]
    return VCV(
        agent_id=agent_id,
        version=1,
        name=agent_id,
        description=description,
        capability=vecs[0].tolist(),
        skills=skills,
        skills_bloom=BloomFilter.of(skills).to_b64(),
        policies=policies or ["clinical"],
        spec_embedding=vecs[1].tolist(),
        embedding_model=embedder.model_name,
    )


# ---- password hashes --------------------------------------------------------------------


def test_hash_reads_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """Our checker accepts mosquitto_passwd's own output, so the formats agree."""
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "alice", "s3cret-pw"], check=True)
    encoded = path.read_text().strip().split(":", 1)[1]
    assert encoded.startswith("$7$101$")
    assert acl.check_mosquitto_hash("s3cret-pw", encoded)
    assert not acl.check_mosquitto_hash("wrong", encoded)


def test_hash_format_matches_mosquitto_passwd() -> None:
    ours = acl.mosquitto_hash("pw", salt=b"0123456789ab")
    kind, iterations, salt, digest = ours.split("$")[1:]
    assert (kind, iterations) == ("7", "101")
    assert len(salt) == 16 and len(digest) == 88  # base64 of 12 and 64 bytes, as mosquitto_passwd writes
    assert acl.check_mosquitto_hash("pw", ours)
    with pytest.raises(ValueError):
        acl.check_mosquitto_hash("pw", "plain-text")


# ---- keys and signatures ----------------------------------------------------------------


def test_keys_roundtrip_with_private_mode(tmp_path: Path) -> None:
    key = security.generate_key()
    path = security.save_private_key(key, tmp_path / "keys" / "a.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = security.load_private_key(path)
    assert security.public_key_b64(loaded) == security.public_key_b64(key)
    pub = security.load_public_key(security.save_public_key(key, tmp_path / "keys" / "a.pub"))
    assert security.public_key_b64(pub) == security.public_key_b64(key)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(security.KeyFileError, match="not an unencrypted PEM"):
        security.load_private_key(tmp_path / "junk.key")
    with pytest.raises(security.KeyFileError, match="cannot read"):
        security.load_private_key(tmp_path / "missing.key")


def test_agent_key_for_settings(tmp_path: Path) -> None:
    assert security.agent_key_for(Settings(agent_key_dir=None), "a") is None
    settings = Settings(agent_key_dir=tmp_path)
    with pytest.raises(security.KeyFileError, match="foa creds init"):
        security.agent_key_for(settings, "a")
    security.save_private_key(security.generate_key(), tmp_path / "a.key")
    assert security.agent_key_for(settings, "a") is not None


def test_signature_survives_the_wire_and_detects_tampering(embedder) -> None:
    key_a, key_b = security.generate_key(), security.generate_key()
    store = security.TrustStore()
    store.add("cardiologist", key_a)
    store.add("pharmacist", key_b)
    vcv = make_vcv(embedder, "cardiologist", "Cardiology: chest pain, ECG, heart failure.")

    signed = security.sign_vcv(vcv, key_a)
    received = decode(make(signed).to_json(), VCV).body  # what a router sees after JSON + base64 vectors
    assert store.verify(received) is None

    reasons = {
        "unsigned": store.verify(vcv),
        "impostor": store.verify(security.sign_vcv(vcv, key_b)),  # B's key claiming to be A
        "unknown": store.verify(security.sign_vcv(vcv.model_copy(update={"agent_id": "stranger"}), key_a)),
        "tampered": store.verify(received.model_copy(update={"policies": ["clinical", "hipaa"]})),
        "garbage": store.verify(received.model_copy(update={"signature": "!!notbase64"})),
    }
    codes = {name: security.reason_code(r) if r else None for name, r in reasons.items()}
    assert codes == {
        "unsigned": security.UNSIGNED,
        "impostor": security.KEY_MISMATCH,
        "unknown": security.UNKNOWN_AGENT,
        "tampered": security.BAD_SIGNATURE,
        "garbage": security.BAD_SIGNATURE,
    }
    # an impostor who also swaps in A's public key cannot produce a valid signature for it
    forged = security.sign_vcv(vcv, key_b).model_copy(update={"public_key": security.public_key_b64(key_a)})
    assert security.reason_code(store.verify(forged) or "") == security.BAD_SIGNATURE


def test_trust_store_files(tmp_path: Path) -> None:
    keys = {name: security.generate_key() for name in AGENTS}
    store = security.TrustStore()
    for name, key in keys.items():
        store.add(name, key)
        security.save_public_key(key, tmp_path / "dir" / f"{name}.pub")
    store.save(tmp_path / "trust.json")
    assert security.TrustStore.load(tmp_path / "trust.json").keys == store.keys
    assert security.TrustStore.load(tmp_path / "dir").keys == store.keys
    (tmp_path / "bad.json").write_text(json.dumps({"agents": {"x": "AAAA"}}))
    with pytest.raises(security.KeyFileError, match="32 bytes"):
        security.TrustStore.load(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text("{")
    with pytest.raises(security.KeyFileError, match="not JSON"):
        security.TrustStore.load(tmp_path / "worse.json")


def test_gate_without_trust_store_warns_once(embedder, caplog: pytest.LogCaptureFixture) -> None:
    gate = security.VcvGate.from_settings(Settings(trust_store=None))
    vcv = make_vcv(embedder, "cardiologist", "Cardiology.")
    with caplog.at_level(logging.WARNING, logger="foa.security"):
        assert gate.check(vcv, topics.agent_vcv("cardiologist")) is None
        assert gate.check(vcv) is None
    assert sum("unsigned" in r.getMessage() for r in caplog.records) == 1
    assert security.reason_code(gate.check(vcv, topics.agent_vcv("pharmacist")) or "") == security.TOPIC_MISMATCH
    broken = security.sign_vcv(vcv, security.generate_key()).model_copy(update={"version": 9})
    assert security.reason_code(gate.check(broken) or "") == security.BAD_SIGNATURE
    audit = security.rejection_audit(broken, gate.check(broken) or "")
    assert audit.gate == "signature" and audit.agent_id == "cardiologist"


# ---- foa creds init ---------------------------------------------------------------------


def _specs_dir(tmp_path: Path, ids: list[str]) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    for agent_id in ids:
        (folder / f"{agent_id}.yaml").write_text(f"id: {agent_id}\ndescription: the {agent_id} agent\nreplicas: 2\n")
    return folder


def test_creds_init_writes_and_keeps_credentials(tmp_path: Path) -> None:
    specs = _specs_dir(tmp_path, AGENTS)
    out = tmp_path / "creds"
    assert foa_main(["creds", "init", "--specs", str(specs), "--out", str(out)]) == 0
    for name in ("passwd", "acl", "credentials.json", "broker.env", "trust.json", "keys/cardiologist.key"):
        assert (out / name).exists(), name
    for private in ("credentials.json", "broker.env", "keys/pharmacist.key"):
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private
    creds = json.loads((out / "credentials.json").read_text())
    assert {u: c["role"] for u, c in creds.items()} == {
        "router": "router", "orchestrator": "orchestrator", "client": "client", "health": "health",
        "cardiologist": "agent", "pharmacist": "agent",
    }  # fmt: skip
    hashes = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert all(acl.check_mosquitto_hash(creds[u]["password"], h) for u, h in hashes.items())
    assert f"FOA_PW_AGENT_CARDIOLOGIST={creds['cardiologist']['password']}" in (out / "broker.env").read_text()
    trust = security.TrustStore.load(out / "trust.json")
    key = security.load_private_key(out / "keys" / "cardiologist.key")
    assert trust.keys["cardiologist"] == security.public_key_b64(key)

    # re-running (e.g. after adding an agent) keeps passwords and keys; --rotate replaces them
    assert foa_main(["creds", "init", "--specs", str(specs), "--out", str(out)]) == 0
    assert json.loads((out / "credentials.json").read_text()) == creds
    assert security.TrustStore.load(out / "trust.json").keys == trust.keys
    assert foa_main(["creds", "init", "--specs", str(specs), "--out", str(out), "--rotate"]) == 0
    rotated = json.loads((out / "credentials.json").read_text())
    assert all(rotated[u]["password"] != creds[u]["password"] for u in creds)
    assert security.TrustStore.load(out / "trust.json").keys["cardiologist"] != trust.keys["cardiologist"]


def test_creds_refuses_agent_named_like_a_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs = _specs_dir(tmp_path, ["router"])
    assert foa_main(["creds", "init", "--specs", str(specs), "--out", str(tmp_path / "c")]) == 1
    assert "collide with service logins" in capsys.readouterr().err


# ---- a real mosquitto with the generated password file and ACL --------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, dict[str, str], Path]]:
    out = tmp_path_factory.mktemp("creds")
    bundle = acl.CredentialBundle.create(AGENTS)
    bundle.write(out)
    extra = f"password_file {out / acl.PASSWD_FILE}\nacl_file {out / acl.ACL_FILE}\n"
    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("secure-mosquitto"), extra_conf=extra, anonymous=False)
    broker.start()
    yield broker, {p.username: p.password for p in bundle.principals}, out
    broker.stop()


def _bus(broker: Mosquitto, tmp_path: Path, client_id: str, username: str, password: str) -> Bus:
    settings = Settings(broker_url=broker.url, data_dir=tmp_path, keepalive_s=2, request_timeout_s=3.0)
    return Bus(settings, client_id, username=username, password=password, persistent=False)


@run_async
async def test_broker_refuses_bad_logins(secured, tmp_path: Path) -> None:
    broker, passwords, _ = secured
    for user, password in [("cardiologist", "wrong-password"), ("nobody", passwords["cardiologist"])]:
        with pytest.raises(BusError, match="refused the connection"):
            await _bus(broker, tmp_path, f"{user}-0", user, password).connect()
    bus = _bus(broker, tmp_path, "cardiologist-0", "cardiologist", passwords["cardiologist"])
    await bus.connect()
    assert bus.connected
    await bus.close()


@run_async
async def test_acl_keeps_agents_in_their_own_topics(secured, tmp_path: Path, embedder) -> None:
    broker, passwords, out = secured
    router = _bus(broker, tmp_path, "router-0", "router", passwords["router"])
    impostor = _bus(broker, tmp_path, "cardiologist-0", "cardiologist", passwords["cardiologist"])
    honest = _bus(broker, tmp_path, "pharmacist-0", "pharmacist", passwords["pharmacist"])
    orchestrator = _bus(broker, tmp_path, "orchestrator-0", "orchestrator", passwords["orchestrator"])
    seen: list[tuple[str, VCV]] = []
    inbox: dict[str, list[str]] = {"cardiologist": [], "pharmacist": []}
    async with router, impostor, honest, orchestrator:
        await router.subscribe(
            topics.AGENT_VCV_WILDCARD,
            lambda m: seen.append((m.topic, m.envelope.body)),  # type: ignore[union-attr]  # subscribed without accept_empty: never None
            body_types=VCV,
        )

        # the cardiologist's valid login cannot publish on the pharmacist's VCV topic
        fake = make_vcv(embedder, "pharmacist", "Pharmacist: doses and drug interactions.", ["hipaa"])
        with pytest.raises(BusError, match="[Nn]ot authori[sz]ed"):
            await impostor.publish(topics.agent_vcv("pharmacist"), fake, retain=True)
        # nor can the orchestrator, which may send tasks to agents
        with pytest.raises(BusError, match="[Nn]ot authori[sz]ed"):
            await orchestrator.publish(topics.agent_vcv("pharmacist"), fake, retain=True)

        # each agent reads only its own inbox
        def collect(agent: str):
            return lambda m: inbox[agent].append(m.envelope.body.task_id)

        await honest.subscribe(
            topics.shared(topics.SHARE_GROUP_AGENT, topics.agent_tasks("pharmacist")),
            collect("pharmacist"),
            body_types=TaskRequest,
        )
        try:  # mosquitto may refuse the SUBACK or just never deliver: either way nothing arrives
            await impostor.subscribe(topics.agent_tasks("pharmacist"), collect("cardiologist"), body_types=TaskRequest)
        except BusError:
            pass
        await orchestrator.publish(
            topics.agent_tasks("pharmacist"), TaskRequest(task_id="t1", task_kind="draft", agent_id="pharmacist")
        )

        # the honest agent's own, signed VCV goes through
        key = security.load_private_key(out / "keys" / "pharmacist.key")
        real = security.sign_vcv(make_vcv(embedder, "pharmacist", "Pharmacist: doses and drug interactions."), key)
        await honest.publish(topics.agent_vcv("pharmacist"), real, retain=True)
        for _ in range(100):
            if seen and inbox["pharmacist"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # give a wrongly delivered message time to show up
        await honest.publish(topics.agent_vcv("pharmacist"), None, retain=True)  # leave no retained state

    assert [t for t, _ in seen] == [topics.agent_vcv("pharmacist")]
    assert seen[0][1].policies == ["clinical"]  # the real one, not the impostor's "hipaa"
    assert inbox == {"cardiologist": [], "pharmacist": ["t1"]}


@run_async
async def test_router_trust_store_refuses_impostor_on_its_own_topic(secured, tmp_path: Path, embedder) -> None:
    """The ACL lets the cardiologist publish under its own topic; the signature check catches a
    VCV that claims another agent (and a VCV signed with the wrong key)."""
    broker, passwords, out = secured
    gate = security.VcvGate.from_settings(Settings(trust_store=out / acl.TRUST_FILE))
    verdicts: list[tuple[str, str | None]] = []

    def on_vcv(msg: Incoming) -> None:
        assert msg.envelope is not None  # subscribed without accept_empty
        vcv = msg.envelope.body
        verdicts.append((vcv.agent_id, gate.check(vcv, msg.topic)))

    cardio_key = security.load_private_key(out / "keys" / "cardiologist.key")
    pharma_key = security.load_private_key(out / "keys" / "pharmacist.key")
    router = _bus(broker, tmp_path, "router-1", "router", passwords["router"])
    agent = _bus(broker, tmp_path, "cardiologist-1", "cardiologist", passwords["cardiologist"])
    async with router, agent:
        await router.subscribe(topics.AGENT_VCV_WILDCARD, on_vcv, body_types=VCV)
        own_topic = topics.agent_vcv("cardiologist")
        claims_other = make_vcv(embedder, "pharmacist", "Pharmacist.")
        await agent.publish(own_topic, security.sign_vcv(claims_other, cardio_key))  # other agent's id
        wrong_key = make_vcv(embedder, "cardiologist", "Cardiology.")
        await agent.publish(own_topic, security.sign_vcv(wrong_key, pharma_key))  # stolen/other key
        await agent.publish(own_topic, wrong_key)  # unsigned
        await agent.publish(own_topic, security.sign_vcv(wrong_key, cardio_key))  # the real thing
        for _ in range(100):
            if len(verdicts) == 4:
                break
            await asyncio.sleep(0.02)
    codes = [(agent_id, security.reason_code(v) if v else None) for agent_id, v in verdicts]
    assert codes == [
        ("pharmacist", security.TOPIC_MISMATCH),
        ("cardiologist", security.KEY_MISMATCH),
        ("cardiologist", security.UNSIGNED),
        ("cardiologist", None),
    ]


@run_async
async def test_only_orchestrators_publish_node_outcomes_and_routers_trust_only_their_key(
    secured, tmp_path: Path, embedder
) -> None:
    """An agent must not report its own success: the broker refuses an outcome from an agent's
    login, and with a trust store a router learns only from outcomes signed by the orchestrators'
    key (`foa creds init` writes it), not from one signed by an agent's key or unsigned."""
    broker, passwords, out = secured
    gate = security.VcvGate.from_settings(Settings(trust_store=out / acl.TRUST_FILE))
    vec = embedder.embed(["Check the dose of paracetamol for an adult"])[0]
    forged = NodeOutcome(job_id="job-x", node_id="s1", subtask="dose", vector=vec, kept=["pharmacist"],
                         assigned=["pharmacist"], completed=True)
    heard: list[NodeOutcome] = []
    router = _bus(broker, tmp_path, "router-2", "router", passwords["router"])
    agent = _bus(broker, tmp_path, "pharmacist-2", "pharmacist", passwords["pharmacist"])
    orchestrator = _bus(broker, tmp_path, "orchestrator-2", "orchestrator", passwords["orchestrator"])
    async with router, agent, orchestrator:
        await router.subscribe(
            topics.ROUTER_OUTCOMES,
            lambda m: heard.append(m.envelope.body),  # type: ignore[union-attr]  # never empty here
            body_types=NodeOutcome,
        )
        with pytest.raises(BusError, match="[Nn]ot authori[sz]ed"):
            await agent.publish(topics.ROUTER_OUTCOMES, forged)
        orchestrator_key = security.load_private_key(out / "keys" / f"{security.ORCHESTRATOR_KEY}.key")
        await orchestrator.publish(topics.ROUTER_OUTCOMES, security.sign_outcome(forged, orchestrator_key))
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    assert len(heard) == 1 and gate.check_outcome(heard[0]) is None
    agent_key = security.load_private_key(out / "keys" / "pharmacist.key")
    codes = [
        security.reason_code(gate.check_outcome(o) or "")
        for o in (
            forged,
            security.sign_outcome(forged, agent_key, signer="pharmacist"),
            security.sign_outcome(forged, agent_key),  # claims the orchestrators' name with another key
            heard[0].model_copy(update={"kept": ["cardiologist"]}),  # altered after signing
        )
    ]
    assert codes == [security.UNSIGNED, security.UNKNOWN_AGENT, security.KEY_MISMATCH, security.BAD_SIGNATURE]
    assert "orchestrator.key" in (gate.check_outcome(forged) or "")  # says what to configure


def test_private_files_not_world_readable_after_rewrite(tmp_path: Path) -> None:
    """write_private_file tightens an existing file too (O_CREAT's mode only applies to new files)."""
    path = tmp_path / "secret"
    path.write_text("old")
    os.chmod(path, 0o644)
    security.write_private_file(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"new"
