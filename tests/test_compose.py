"""The compose deployment, checked without a Docker engine.

- docker-compose 1.29 (Debian) validates the file against the compose-spec schema it ships;
- every service command is a real `foa` subcommand or an importable module of this project;
- agents, credentials, key mounts and LLM host names agree with the agent specs;
- the mosquitto config starts the real mosquitto (paths adjusted), its health check passes, and
  its commented TLS listener works once enabled;
- the same service processes, with the compose environment, run outside Docker (`processes`).
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agents.spec import load_spec
from fabric import acl, topics
from fabric.broker import free_port, mosquitto_binary, wait_listening
from fabric.bus import Bus, BusError
from fabric.cli import build_parser
from fabric.messages import JobSubmit
from fabric.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
SPECS = ROOT / "agents" / "specs"
VENV_BIN = Path(sys.executable).parent
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `foa creds init` writes for the shipped specs (the compose --env-file among it)."""
    out = tmp_path_factory.mktemp("compose-creds")
    ids = [load_spec(p).id for p in sorted(SPECS.glob("*.yaml"))]
    acl.CredentialBundle.create(ids).write(out)
    return out


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} ($$ is a literal $)."""

    def sub(m: re.Match[str]) -> str:
        value = env.get(m["name"])
        if m["op"] in (":?", "?") and not value:
            raise KeyError(f"{m['name']} is required: {m['arg']}")
        return value if value else (m["arg"] or "") if m["op"] in (":-", "-") else value or ""

    return _VAR.sub(sub, text.replace("$$", "\x00")).replace("\x00", "$")


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


def services(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return load_compose(env)["services"]


def agent_services(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services(env).items() if svc.get("command", [])[:3] == ["foa", "agent", "run"]}


# ---- validation -------------------------------------------------------------------------


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed: `apt-get install -y docker-compose` "
            "(Debian's 1.29 validates without an engine)"
        )
    return binary


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_docker_compose_config_validates(creds: Path, profile: str) -> None:
    cmd = [
        docker_compose(),
        "--env-file",
        str(creds / acl.ENV_FILE),
        "-f",
        str(COMPOSE),
        "--profile",
        profile,
        "config",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert {"mosquitto", "router", "orchestrator", "vllm-qwen", "llm-cpu"} <= set(resolved["services"])
    assert (
        resolved["services"]["router"]["environment"]["FOA_BROKER_PASSWORD"]
        == read_env_file(creds / acl.ENV_FILE)["FOA_PW_ROUTER"]
    )


def test_docker_compose_without_creds_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOA_PW_")}
    result = subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0 and "foa creds init" in result.stderr


def test_every_command_exists_in_the_project() -> None:
    """Parse each service's command with the real `foa` argparse tree; report what is missing."""
    parser = build_parser()
    missing: list[str] = []
    checked = 0
    for name, svc in services(read_env_file_defaults()).items():
        cmd = svc.get("command")
        if not cmd:
            continue
        if cmd[0] == "foa":
            checked += 1
            try:
                args = parser.parse_args(cmd[1:])
            except SystemExit:
                missing.append(f"{name}: {' '.join(cmd)}")
                continue
            assert getattr(args, "func", None), f"{name}: `{' '.join(cmd)}` selects no command"
            if cmd[1:3] == ["agent", "run"]:
                assert load_spec(ROOT / cmd[3]).id, cmd
        elif cmd[:2] == ["python", "-m"]:
            checked += 1
            if importlib.util.find_spec(cmd[2]) is None:
                missing.append(f"{name}: module {cmd[2]} is not importable (install the `embedded` extra)")
        elif svc.get("image", "").startswith("vllm/"):
            continue  # arguments to the vLLM image's own entrypoint
        else:
            pytest.fail(f"{name}: command {cmd} is neither `foa ...` nor `python -m ...`")
    assert checked >= 10
    if missing:
        pytest.fail("compose commands that do not exist (yet) in this project:\n  " + "\n  ".join(missing))


def read_env_file_defaults() -> dict[str, str]:
    """Placeholder values for the required password variables (structure-only checks)."""
    names = set(re.findall(r"\$\{(FOA_PW_[A-Z0-9_]+)", COMPOSE.read_text()))
    return {n: "x" for n in names}


def test_services_agree_with_specs_and_creds(creds: Path) -> None:
    env = read_env_file(creds / acl.ENV_FILE)
    svcs = services(env)
    agents = agent_services(env)
    assert len(agents) >= 5
    gpu = {n: s for n, s in svcs.items() if "gpu" in s.get("profiles", [])}
    cpu = {n: s for n, s in svcs.items() if "cpu" in s.get("profiles", [])}
    assert gpu and cpu
    cpu_aliases = {a for s in cpu.values() for a in s["networks"]["default"]["aliases"]}
    cpu_models = json.loads(
        subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "llama_cpp_config.py")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    )
    cpu_served = {m["model_alias"] for m in cpu_models["models"]}
    served_by_host: dict[str, str] = {}
    for name, svc in gpu.items():
        assert svc["image"].startswith("vllm/vllm-openai:"), name
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert "/health" in " ".join(svc["healthcheck"]["test"]), name
        cmd = svc["command"]
        model = cmd[cmd.index("--served-model-name") + 1]
        for alias in svc["networks"]["default"]["aliases"]:
            served_by_host[alias] = model
    for name, svc in agents.items():
        spec = load_spec(ROOT / svc["command"][3])
        e = svc["environment"]
        assert e["FOA_BROKER_USERNAME"] == spec.id, name
        assert e["FOA_BROKER_PASSWORD"] == env[acl.Principal(spec.id, "agent", "").env_var()], name
        assert f"./deploy/creds/keys/{spec.id}.key:{e['FOA_AGENT_KEY_DIR']}/{spec.id}.key:ro" in svc["volumes"], name
        host = httpx.URL(e["FOA_LLM_BASE_URL"]).host
        assert served_by_host.get(host) == spec.llm.model, (
            f"{name}: {host} does not serve {spec.llm.model} on the gpu profile"
        )
        assert host in cpu_aliases and spec.llm.model in cpu_served, f"{name}: the cpu profile lacks {spec.llm.model}"
        assert svc["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    for name, svc in svcs.items():
        assert "healthcheck" in svc, f"{name} has no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert cond["condition"] in ("service_healthy", "service_started", "service_completed_successfully")
            assert "healthcheck" in svcs[dep], f"{name} waits for {dep} to be healthy but it has no health check"
    assert svcs["router"]["environment"]["FOA_TRUST_STORE"] == "/creds/trust.json"
    mosq = svcs["mosquitto"]
    assert mosq["image"].startswith("eclipse-mosquitto:2")
    assert "./deploy/creds/passwd:/mosquitto/config/passwd:ro" in mosq["volumes"]


# ---- the broker config, on the real mosquitto -------------------------------------------


def local_mosquitto_conf(creds: Path, data: Path, port: int, tls: dict[str, Path] | None = None) -> str:
    """deploy/mosquitto/mosquitto.conf with the container paths and ports mapped to this machine."""
    text = MOSQUITTO_CONF.read_text()
    text = text.replace("/mosquitto/config/passwd", str(creds / acl.PASSWD_FILE))
    text = text.replace("/mosquitto/config/acl", str(creds / acl.ACL_FILE))
    text = text.replace("/mosquitto/data/", f"{data}/")
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    if os.geteuid() == 0:  # as root mosquitto drops to user `mosquitto`, which cannot read pytest's 0700 dirs
        text = "user root\n" + text
    if tls:
        text = re.sub(r"^#(listener 8883|protocol mqtt|cafile|certfile|keyfile|tls_version)", r"\1", text, flags=re.M)
        text = text.replace("listener 8883 0.0.0.0", f"listener {tls['port']} 127.0.0.1")
        for name in ("ca.crt", "server.crt", "server.key"):
            text = text.replace(f"/mosquitto/certs/{name}", str(tls[name]))
    return text


class Proc:
    """A child process in its own session, stopped with SIGTERM then SIGKILL."""

    def __init__(self, cmd: list[str], log: Path, **kwargs: Any) -> None:
        self.log = log
        self.fh = log.open("wb")
        self.p = subprocess.Popen(cmd, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self.fh.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def compose_broker(creds: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed")
    data = tmp_path_factory.mktemp("compose-mosquitto")
    port = free_port()
    conf = data / "mosquitto.conf"
    conf.write_text(local_mosquitto_conf(creds, data, port))
    proc = Proc([str(mosquitto_binary()), "-c", str(conf)], data / "mosquitto.out")
    try:
        wait_listening("127.0.0.1", port, 10)
    except RuntimeError:
        proc.stop()
        pytest.fail(f"mosquitto refused deploy/mosquitto/mosquitto.conf:\n{proc.tail()}")
    yield port, data
    proc.stop()


def test_mosquitto_config_and_health_check(compose_broker: tuple[int, Path], creds: Path) -> None:
    port, _ = compose_broker
    env = read_env_file(creds / acl.ENV_FILE)
    mosq = services(env)["mosquitto"]
    check = mosq["healthcheck"]["test"][1].replace("-p 1883", f"-p {port}")
    result = subprocess.run(
        ["sh", "-c", check], env={**os.environ, **mosq["environment"]}, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, f"compose health check failed: {result.stderr}"
    bad = subprocess.run(
        ["sh", "-c", check], env={**os.environ, "FOA_HEALTH_PASSWORD": "wrong"}, capture_output=True, timeout=20
    )
    assert bad.returncode != 0

    async def logins() -> None:
        settings = Settings(broker_url=f"mqtt://127.0.0.1:{port}", keepalive_s=2, request_timeout_s=3)
        async with Bus(settings, "router-0", username="router", password=env["FOA_PW_ROUTER"], persistent=False) as bus:
            assert bus.connected
        with pytest.raises(BusError, match="refused"):
            await Bus(settings, "anon-0", persistent=False).connect()

    asyncio.run(logins())


def _self_signed(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, with the `cryptography` package."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foa-test-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    srv = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = {"ca.crt": folder / "ca.crt", "server.crt": folder / "server.crt", "server.key": folder / "server.key"}
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server.crt"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths["server.key"].write_bytes(
        srv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_listener_once_uncommented(creds: Path, tmp_path: Path) -> None:
    tls: dict[str, Any] = {**_self_signed(tmp_path), "port": free_port()}
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(local_mosquitto_conf(creds, tmp_path, free_port(), tls))
    proc = Proc([str(mosquitto_binary()), "-c", str(conf)], tmp_path / "mosquitto.out")
    try:
        try:
            wait_listening("127.0.0.1", tls["port"], 10)
        except RuntimeError:
            pytest.fail(f"mosquitto did not start the TLS listener:\n{proc.tail()}")
        password = read_env_file(creds / acl.ENV_FILE)["FOA_PW_CLIENT"]

        async def connect(ca: Path | None) -> None:
            settings = Settings(
                broker_url=f"mqtts://127.0.0.1:{tls['port']}", broker_ca_file=ca, keepalive_s=2, request_timeout_s=3
            )
            async with Bus(settings, "client-tls", username="client", password=password, persistent=False) as bus:
                assert bus.connected
                # a burst through TLS: records OpenSSL holds decrypted must still be read
                got: list[str] = []
                await bus.subscribe(
                    topics.JOBS_SUBMIT,
                    lambda m: got.append(m.envelope.body.job_id),  # type: ignore[union-attr]  # subscribed without accept_empty: never None
                    body_types=JobSubmit,
                )
                sent = [f"tls-{i}" for i in range(300)]
                for job_id in sent:
                    await bus.publish(topics.JOBS_SUBMIT, JobSubmit(job_id=job_id, question="q " * 200), wait=False)
                deadline = time.monotonic() + 20
                while len(got) < len(sent) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert got == sent

        asyncio.run(connect(tls["ca.crt"]))
        with pytest.raises(BusError):  # an unknown CA is refused
            asyncio.run(connect(None))
    finally:
        proc.stop()


# ---- the cpu profile's model server ------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` with the config the image builds (the compose cpu profile)."""
    if importlib.util.find_spec("llama_cpp.server") is None:
        pytest.skip("llama-cpp-python[server] not installed (the `embedded` extra)")
    folder = tmp_path_factory.mktemp("llm-cpu")
    port = free_port()
    config = folder / "llama-models.json"
    subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "llama_cpp_config.py"), "--port", str(port), "--threads", "1",
         "--n-ctx", "1024", "--out", str(config)],
        check=True, cwd=ROOT,
    )  # fmt: skip
    data = json.loads(config.read_text())
    data["host"] = "127.0.0.1"
    config.write_text(json.dumps(data))
    proc = Proc([sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)], folder / "server.out")
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not come up:\n{proc.tail()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.stop()


@pytest.mark.slow
def test_cpu_profile_serves_every_spec_model(cpu_llm: str) -> None:
    wanted = {model for p in SPECS.glob("*.yaml") if (model := load_spec(p).llm.model)}
    listed = {m["id"] for m in httpx.get(f"{cpu_llm}/models", timeout=5).json()["data"]}
    assert wanted <= listed
    reply = httpx.post(
        f"{cpu_llm}/chat/completions",
        json={"model": sorted(wanted)[0], "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].strip()


# ---- the same processes outside Docker ---------------------------------------------------


def localise(
    svc: dict[str, Any], broker_port: int, creds: Path, data: Path, llm_url: str, metrics_port: int
) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment, mapped onto this machine."""
    env = {k: str(v) for k, v in svc.get("environment", {}).items()}
    env["FOA_BROKER_URL"] = f"mqtt://127.0.0.1:{broker_port}"
    env["FOA_METRICS_PORT"] = str(metrics_port)
    env["FOA_METRICS_HOST"] = "127.0.0.1"
    env["FOA_DATA_DIR"] = str(data)
    env.pop("FOA_STORE_URL", None)  # the compose postgres service: outside Docker the SQLite store
    for key in ("FOA_TRUST_STORE", "FOA_AGENT_KEY_DIR"):
        if key in env:
            env[key] = env[key].replace("/creds/", f"{creds}/")
    if "FOA_LLM_BASE_URL" in env:
        env["FOA_LLM_BASE_URL"] = llm_url
    cmd = list(svc["command"])
    if cmd[0] == "foa":
        cmd[0] = str(VENV_BIN / "foa")
    return cmd, {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}


@pytest.mark.slow
def test_compose_processes_run_together_outside_docker(
    compose_broker: tuple[int, Path], creds: Path, cpu_llm: str, tmp_path: Path
) -> None:
    """router, orchestrator and two agents with their compose environment (logins, ACL, trust
    store, keys) against mosquitto with the compose config: all pass their compose health checks,
    the agents come online, and the router serves them."""
    parser = build_parser()
    env = read_env_file(creds / acl.ENV_FILE)
    svcs = services(env)
    chosen = ["router", "orchestrator", "agent-pharmacist", "agent-summariser"]
    missing = []
    for name in chosen:
        try:
            parser.parse_args(svcs[name]["command"][1:])
        except SystemExit:
            missing.append(" ".join(svcs[name]["command"]))
    if missing:
        pytest.skip(f"not built yet: {missing}")
    broker_port, _ = compose_broker
    procs: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    try:
        for name in chosen:
            ports[name] = free_port()
            cmd, penv = localise(svcs[name], broker_port, creds, tmp_path / name, cpu_llm, ports[name])
            (tmp_path / name).mkdir()
            procs[name] = Proc(cmd, tmp_path / f"{name}.log", env=penv, cwd=ROOT)
        deadline = time.monotonic() + 120
        for name in chosen:
            check = svcs[name]["healthcheck"]["test"][1:]
            check = [part.replace(":9100/", f":{ports[name]}/") for part in check]
            check[0] = sys.executable if check[0] == "python" else check[0]
            while subprocess.run(check, capture_output=True).returncode != 0:
                if procs[name].p.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{name} never passed its compose health check:\n{procs[name].tail()}")
                time.sleep(1)

        from fabric.cli.status import collect

        client = Settings(
            broker_url=f"mqtt://127.0.0.1:{broker_port}", broker_username="client", broker_password=env["FOA_PW_CLIENT"]
        )
        urls = [f"http://127.0.0.1:{ports[n]}/metrics" for n in chosen]
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            report = asyncio.run(collect(client, 1.0, urls))
            online = {a["agent_id"] for a in report["agents"] if a["status"] == "online"}
            if {"pharmacist", "summariser"} <= online:
                break
        assert {"pharmacist", "summariser"} <= {a["agent_id"] for a in report["agents"] if a["status"] == "online"}, (
            report
        )
        assert all(s["up"] for s in report["services"]), report["services"]
        signed = {a["agent_id"]: a["signed"] for a in report["agents"]}
        assert signed.get("pharmacist") and signed.get("summariser"), f"agents did not sign their VCVs: {signed}"

        # the CLI's `client` login asks the router (shared subscription, reply on its own topic)
        route = subprocess.run(
            [str(VENV_BIN / "foa"), "route", "what is the maximum daily dose of paracetamol", "--json"],
            env={**os.environ, "FOA_BROKER_URL": client.broker_url or "", "FOA_BROKER_USERNAME": "client",
                 "FOA_BROKER_PASSWORD": env["FOA_PW_CLIENT"]},
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert route.returncode == 0, route.stderr
        assert "pharmacist" in {m["agent_id"] for m in json.loads(route.stdout)["matches"]}
    finally:
        for proc in procs.values():
            proc.stop()
