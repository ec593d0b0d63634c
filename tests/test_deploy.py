"""The deployment files (Dockerfile, deploy/): each checked by a parser or run where this
machine allows. The systemd unit by ``systemd-analyze verify``; the nginx site by
``nginx -t`` and then by nginx itself, in front of ``gencli serve`` started with the unit's
own command line, carrying a streamed reply over TLS; the Kubernetes manifests by PyYAML
and the rules a cluster would apply (selectors, ports, probes on routes the app serves,
non-root); the Dockerfile's instructions (and ``docker build`` when a Docker daemon
answers). Every ``gencli serve`` flag the files use is one the command has, and their
command lines start a real server."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import GENCLI, clean_env
from tests.fakes.openai_upstream import FAKE_KEY
from tests.fakes.tls import make_ca
from tests.helpers import free_port, wait_until
from tests.server_fixture import KEY_VAR, models_json

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "gencli.service"
SITE = DEPLOY / "nginx" / "gencli.conf"
K8S = DEPLOY / "kubernetes" / "gencli.yaml"
REDIS = DEPLOY / "kubernetes" / "redis.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def serve_options() -> set[str]:
    import typer.main

    from gencli.cli.app import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {o for p in serve.params for o in (*p.opts, *p.secondary_opts)}


def unit_exec() -> list[str]:
    """The unit's ExecStart as argv (continuation lines joined)."""
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart=") :])


def docker_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def manifests(path: Path) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def k8s_args() -> list[str]:
    deployment = manifests(K8S)["Deployment/gencli"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def docker_cmd() -> tuple[list[str], list[str]]:
    ins = dict(docker_instructions())
    return json.loads(ins["ENTRYPOINT"]), json.loads(ins["CMD"])


def flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def test_every_serve_flag_the_files_use_exists():
    known = serve_options()
    entry, cmd = docker_cmd()
    assert entry == ["gencli", "serve"]
    used = {"unit": flags(unit_exec()), "kubernetes": flags(k8s_args()), "Dockerfile": flags(cmd)}
    for where, names in used.items():
        assert names and names <= known, (where, names - known)


def start(argv: list[str], tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """``gencli serve`` with ``argv`` (its --port made 0 and read back); the process and port."""
    argv = list(argv)
    argv[argv.index("--port") + 1] = "0"
    err = tmp / "serve.err"
    proc = subprocess.Popen(
        [GENCLI, "serve", *argv],
        env=clean_env(tmp, **env),
        cwd=tmp,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(err, "wb"),
    )

    def port() -> int:
        for line in err.read_text(errors="replace").splitlines():
            m = re.search(r"listening on http://\S+:(\d+)", line)
            if m:
                return int(m.group(1))
        assert proc.poll() is None, err.read_text()
        return 0

    found = wait_until(port, timeout=30)
    assert found, err.read_text()
    assert wait_until(lambda: _answers(found), timeout=30), err.read_text()
    return proc, found


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def test_the_kubernetes_and_docker_command_lines_start_a_server(tmp_path, openai_fake):
    models = tmp_path / "models.json"
    models.write_text(json.dumps(models_json(openai_fake.base_url)))
    env = {KEY_VAR: FAKE_KEY, "GENCLI_API_KEY": "sk-deploy", "GENCLI_MODELS": str(models)}
    for name, argv in (("k8s", k8s_args()), ("docker", docker_cmd()[1])):
        folder = tmp_path / name
        folder.mkdir()
        proc, port = start(argv, folder, env)
        try:
            url = f"http://127.0.0.1:{port}"
            assert httpx.get(url + "/ready").status_code == 200
            r = httpx.post(
                url + "/api/generate",
                json={"model": "echo", "prompt": "hi"},
                headers={"Authorization": "Bearer sk-deploy"},
            )
            assert r.status_code == 200 and r.json()["response"] == "You said: hi"
        finally:
            assert stop(proc) == 0
        log = (folder / "serve.err").read_text()
        assert any(ln.startswith("{") and json.loads(ln)["route"] == "/api/generate" for ln in log.splitlines())
    # without the key the same command line refuses to start: the exposure rule on 0.0.0.0
    p = subprocess.run(
        [GENCLI, "serve", *k8s_args()],
        env=clean_env(tmp_path, GENCLI_MODELS=str(models)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and "GENCLI_API_KEY" in p.stderr


# -- systemd --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path):
    unit = tmp_path / "gencli.service"
    # the binary it names must exist for verify: this checkout's
    unit.write_text(UNIT.read_text().replace("/opt/gencli/bin/gencli", GENCLI))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    complaints = [ln for ln in (p.stdout + p.stderr).splitlines() if "gencli.service" in ln]
    assert complaints == []  # no unknown key, no bad value
    text = UNIT.read_text()
    assert "DynamicUser=yes" in text and "KillSignal=SIGTERM" in text
    grace = 30  # serve's default --grace
    stop_sec = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    assert stop_sec > grace  # systemd waits for the streams gencli lets finish


# -- nginx ----------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def nginx_conf(tmp: Path, gencli_port: int, http_port: int, tls_port: int) -> tuple[Path, Path]:
    """The site as it is, only its addresses, ports and certificate made this test's, inside
    a minimal nginx.conf whose files all live in ``tmp``; (that nginx.conf, the CA to trust)."""
    ca = make_ca(tmp)
    site = SITE.read_text()
    site = site.replace("server 127.0.0.1:11434;", f"server 127.0.0.1:{gencli_port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};").replace("listen [::]:80;\n", "")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;").replace("listen [::]:443 ssl;\n", "")
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {ca.cert_pem};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {ca.key_pem};", site)
    assert f"127.0.0.1:{tls_port}" in site and str(ca.key_pem) in site
    (tmp / "site.conf").write_text(site)
    temp = {name: tmp / name for name in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp["client"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {tmp}/site.conf;
}}
"""
    )
    return conf, ca.ca_pem


@pytest.mark.skipif(NGINX is None, reason="needs nginx (apt-get install -y nginx-light)")
def test_nginx_site_passes_nginx_t_and_streams_through_to_gencli(tmp_path, openai_fake):
    models = tmp_path / "models.json"
    models.write_text(json.dumps(models_json(openai_fake.base_url)))
    argv = unit_exec()[2:]  # after ".../gencli serve"
    argv[argv.index("--models") + 1] = str(models)
    serve_dir = tmp_path / "serve"
    serve_dir.mkdir()
    proc, port = start(argv, serve_dir, {KEY_VAR: FAKE_KEY})
    http_port, tls_port = free_port(), free_port()
    conf, ca = nginx_conf(tmp_path, port, http_port, tls_port)
    test = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert test.returncode == 0 and "test is successful" in test.stderr, test.stderr
    nginx = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"https://127.0.0.1:{tls_port}"
        host = {"Host": "gencli.example.com"}
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as client:
            assert wait_until(lambda: _through(client, base + "/health", host), timeout=10)
            # a stream comes through token by token (proxy_buffering off), with nginx's request id
            body = {"model": "slow", "prompt": "x", "stream": True}
            arrivals = []
            with client.stream("POST", base + "/api/generate", json=body, headers=host, timeout=30) as r:
                assert r.status_code == 200, r.read()
                rid = r.headers["x-request-id"]
                for line in r.iter_lines():
                    if line:
                        arrivals.append((time.monotonic(), json.loads(line)))
            assert re.fullmatch(r"[0-9a-f]{32}", rid)  # nginx's $request_id, taken by gencli
            assert arrivals[-1][1]["done"] is True and len(arrivals) >= 4
            assert arrivals[-1][0] - arrivals[0][0] > 0.1  # spread over the slow model's delays, not one buffer
            metrics = client.get(base + "/metrics", headers=host)
            assert metrics.status_code == 200, metrics.text
            assert "gencli_requests_total" in metrics.text  # allowed from 127.0.0.1
            plain = httpx.get(f"http://127.0.0.1:{http_port}/api/tags", headers=host)
            assert plain.status_code == 301 and plain.headers["location"].startswith("https://gencli.example.com/")
        logged = wait_until(lambda: [d for d in _json_lines(serve_dir / "serve.err") if d["request_id"] == rid])
        assert logged and logged[0]["route"] == "/api/generate" and logged[0]["status"] == 200
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
        stop(proc)


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(errors="replace").splitlines() if ln.startswith("{")]


def _through(client: httpx.Client, url: str, headers: dict) -> bool:
    try:
        return client.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# -- Kubernetes -----------------------------------------------------------------------------


def test_kubernetes_manifests_parse_and_fit_together(tmp_path):
    from gencli.config.registry import Registry
    from gencli.server.app import App

    docs = manifests(K8S)
    assert set(docs) == {"ConfigMap/gencli-models", "Deployment/gencli", "Service/gencli"}
    deployment, service, config = docs["Deployment/gencli"], docs["Service/gencli"], docs["ConfigMap/gencli-models"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert ports["http"] == int(args[args.index("--port") + 1])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # the ConfigMap's models.json is a registry gencli loads (fallbacks checked too)
    path = tmp_path / "models.json"
    path.write_text(config["data"]["models.json"])
    reg = Registry.load(path=str(path), env={})
    assert reg.models["fast"].fallbacks == ["claude"]
    # the probes ask routes the app serves without a key
    app = App(registry=reg)
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert container[probe]["httpGet"]["path"] == path and ("GET", path) in app.routes
    from gencli.server.guard import PUBLIC_PATHS

    assert {"/ready", "/health"} <= PUBLIC_PATHS
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp"  # writable: prometheus_client's multiprocess files (--workers)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert Path(env["GENCLI_MODELS"]).parent.as_posix() in mounts
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(args[args.index("--grace") + 1])
    # the Dockerfile's user is the pod's
    ins = dict(docker_instructions())
    assert ins["USER"].split(":")[0] == str(security["runAsUser"])


def test_example_redis_parses_and_fits_together():
    docs = manifests(REDIS)
    assert set(docs) == {"Deployment/gencli-redis", "Service/gencli-redis"}
    pod = docs["Deployment/gencli-redis"]["spec"]["template"]
    assert docs["Service/gencli-redis"]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 6379 and container["image"].startswith("redis:")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# -- Docker ---------------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_serves_on_its_port():
    ins = docker_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all("-slim" in f.split()[0] for f in froms)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    d = dict(ins)
    _, cmd = docker_cmd()
    assert d["EXPOSE"] == cmd[cmd.index("--port") + 1] == "11434"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # a published port cannot reach the container's loopback
    assert "/health" in d["HEALTHCHECK"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored  # no keys or history in the build context


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(not _docker_daemon(), reason="needs a running Docker daemon")
def test_docker_image_builds_and_runs_as_non_root(tmp_path):
    tag = f"gencli-test:{time.monotonic_ns()}"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-2000:]
    try:
        who = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True, timeout=60
        )
        assert who.stdout.strip() == "10001"
        refused = subprocess.run(["docker", "run", "--rm", tag], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "GENCLI_API_KEY" in refused.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)
