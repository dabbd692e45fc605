"""TLS and mutual TLS between the services, with real CAs made here (trustme) and real
uvicorn processes on 127.0.0.1: what connects, what is refused, and that a refusal names
its fix instead of hanging."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import free_port

from services.common.errors import UpstreamUnavailableError
from services.head.settings import HeadSettings
from services.head.tail_client import TailClient
from splitdnn import serve
from splitdnn.errors import ConfigError
from splitdnn.tls import TLSFiles, client_context, make_certificates, tls_files

trustme = pytest.importorskip("trustme", reason="needs the dev extra (trustme)")


@dataclass
class Authority:
    """A CA made for the test, and PEM files of certificates it issued."""

    ca: trustme.CA
    directory: Path

    @property
    def ca_pem(self) -> Path:
        path = self.directory / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return path

    def issue(self, name: str, *hosts: str, **dates: dt.datetime) -> TLSFiles:
        leaf = self.ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")), common_name=name,
                                  **dates)  # fmt: skip
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return TLSFiles(cert, key, self.ca_pem)


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> Authority:
    return Authority(trustme.CA(), tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory) -> Authority:
    """Another CA: what it signed the services do not trust."""
    return Authority(trustme.CA(), tmp_path_factory.mktemp("rogue"))


def _start(app: str, port: int, env: dict[str, str], tls: dict, log: Path) -> subprocess.Popen:
    command = serve.uvicorn_command(app, "127.0.0.1", port, "info", tls)
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env={
                **os.environ,
                "SPLITDNN_TAIL_INTRA_OP_THREADS": "1",
                "SPLITDNN_HEAD_INTRA_OP_THREADS": "1",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@dataclass
class Tail:
    url: str
    log: Path


@pytest.fixture(scope="module")
def tls_tail(authority, toy_bundle_dir, tmp_path_factory) -> Iterator[Tail]:
    """The tail under mutual TLS: its certificate names 127.0.0.1 only (not localhost)."""
    files = authority.issue("tail", "127.0.0.1")
    port, log = free_port(), tmp_path_factory.mktemp("logs") / "tail.log"
    process = _start(serve.TAIL_APP, port, {**serve.tail_env(toy_bundle_dir), **files.env()},
                     serve.uvicorn_tls(files, mutual=True), log)  # fmt: skip
    probe = client_context(authority.ca_pem, *_head_cert(authority))
    url = f"https://127.0.0.1:{port}"
    try:
        assert serve.wait_ready(f"{url}/v2/health/ready", 60, process, probe), log.read_text()
        yield Tail(url, log)
    finally:
        serve.stop_processes([process])


def _head_cert(authority: Authority) -> tuple[Path, Path]:
    files = authority.issue("head")
    return files.cert, files.key  # type: ignore[return-value]


def _client(url: str, **tls: Path | None) -> TailClient:
    return TailClient(HeadSettings(tail_url=url, load_in_background=False, tail_timeout_s=5.0,
                                   **tls))  # fmt: skip


def _refusal(client: TailClient) -> str:
    with pytest.raises(UpstreamUnavailableError) as refused:
        client.send("GET", "/v2/health/ready")
    client.close()
    return refused.value.detail


# --- what is refused, and how ---------------------------------------------------------------


def test_a_head_with_a_certificate_the_tail_does_not_trust_is_refused(
    tls_tail, authority, rogue
) -> None:
    foreign = rogue.issue("impostor")
    detail = _refusal(
        _client(tls_tail.url, tls_ca=authority.ca_pem, tls_cert=foreign.cert, tls_key=foreign.key)
    )
    assert "does not trust this service's client certificate" in detail and "--tls-ca" in detail


def test_a_head_without_a_client_certificate_is_refused(tls_tail, authority) -> None:
    detail = _refusal(_client(tls_tail.url, tls_ca=authority.ca_pem))
    assert "client certificate" in detail and "--tls-cert" in detail


def test_plain_http_to_a_tls_tail_is_refused_naming_https(tls_tail) -> None:
    plain = tls_tail.url.replace("https://", "http://")
    detail = _refusal(_client(plain))
    assert "use https://" in detail
    with pytest.raises(httpx.RemoteProtocolError):  # an answerless close, not a hang
        httpx.get(plain + "/v2/health/ready", timeout=5.0)


def test_a_tail_whose_certificate_no_trusted_ca_signed_is_refused(
    tls_tail, authority, rogue
) -> None:
    cert, key = _head_cert(authority)
    detail = _refusal(_client(tls_tail.url, tls_ca=rogue.ca_pem, tls_cert=cert, tls_key=key))
    assert "not signed by a CA this service trusts" in detail and "--tls-ca" in detail


def test_a_tail_called_by_a_name_its_certificate_lacks_is_refused(tls_tail, authority) -> None:
    cert, key = _head_cert(authority)
    wrong_host = tls_tail.url.replace("127.0.0.1", "localhost")
    detail = _refusal(_client(wrong_host, tls_ca=authority.ca_pem, tls_cert=cert, tls_key=key))
    assert "does not name the host" in detail


def test_https_to_a_plain_port_is_refused_naming_http(authority, toy_bundle_dir, tmp_path):
    port = free_port()
    process = _start(serve.TAIL_APP, port, serve.tail_env(toy_bundle_dir), {}, tmp_path / "log")
    try:
        assert serve.wait_ready(f"http://127.0.0.1:{port}/v2/health/live", 60, process)
        detail = _refusal(_client(f"https://127.0.0.1:{port}", tls_ca=authority.ca_pem))
    finally:
        serve.stop_processes([process])
    assert "does not speak TLS" in detail and "use http://" in detail


# --- refused at start-up --------------------------------------------------------------------


def test_an_expired_certificate_is_refused_at_start_up(authority) -> None:
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    old = authority.issue("old", not_before=long_ago, not_after=long_ago + dt.timedelta(days=1))
    with pytest.raises(ConfigError, match=r"expired.*splitdnn certs"):
        tls_files("tail", old.cert, old.key, old.ca)


def test_a_certificate_of_another_ca_or_key_is_refused_at_start_up(authority, rogue) -> None:
    ours, theirs = authority.issue("tail"), rogue.issue("tail-rogue")
    with pytest.raises(ConfigError, match="issue it from the CA in --tls-ca"):
        tls_files("tail", theirs.cert, theirs.key, authority.ca_pem)
    with pytest.raises(ConfigError, match="does not belong to --tls-cert"):
        tls_files("tail", ours.cert, theirs.key, authority.ca_pem)
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        tls_files("tail", ours.cert, None, authority.ca_pem)
    assert tls_files("tail", ours.cert, ours.key, authority.ca_pem) == ours


def test_the_cli_refuses_a_bad_certificate_before_serving(authority, rogue) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    theirs = rogue.issue("tail-rogue2")
    args = ["serve", "tail", "--tls-cert", str(theirs.cert), "--tls-key", str(theirs.key),
            "--tls-ca", str(authority.ca_pem)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--tls-ca" in result.output


def test_mutual_tls_stands_in_for_the_token_off_loopback(authority) -> None:
    files = authority.issue("tail")
    serve.check_exposure("tail", "0.0.0.0", None, tls=files)  # mutual TLS: allowed
    with pytest.raises(ConfigError, match="mutual TLS"):
        serve.check_exposure("tail", "0.0.0.0", None, tls=TLSFiles(files.cert, files.key))


# --- what answers ---------------------------------------------------------------------------


def test_split_over_mutual_tls_equals_the_plain_answer_and_the_tail_logs_the_device(
    tls_tail, authority, toy_bundle_dir, cat_jpeg, tmp_path
) -> None:
    cert, key = _head_cert(authority)
    heads = {}
    processes = []
    try:
        for name, url, tls in (
            ("tls", tls_tail.url, TLSFiles(cert, key, authority.ca_pem)),
            ("plain", None, None),
        ):
            if url is None:  # the same bundle on a plain tail
                tail_port = free_port()
                env = serve.tail_env(toy_bundle_dir)
                processes.append(_start(serve.TAIL_APP, tail_port, env, {}, tmp_path / "t.log"))
                url = f"http://127.0.0.1:{tail_port}"
            port = free_port()
            env = {**serve.head_env(url, toy_bundle_dir), **(tls.env() if tls else {})}
            processes.append(_start(serve.HEAD_APP, port, env, {}, tmp_path / f"{name}.log"))
            heads[name] = f"http://127.0.0.1:{port}"
        for name, url in heads.items():
            ready = serve.wait_ready(f"{url}/v2/health/ready", 60)
            assert ready, (tmp_path / f"{name}.log").read_text()
        answers = {
            name: httpx.post(
                f"{url}/infer/split", content=cat_jpeg, params={"fallback": "false"}, timeout=30
            ).json()
            for name, url in heads.items()
        }
    finally:
        serve.stop_processes(processes)
    assert answers["tls"]["mode"] == "split" and answers["tls"]["fallback"] is False
    assert answers["tls"]["top_k"] == answers["plain"]["top_k"]
    assert "device 'head'" in tls_tail.log.read_text()


def test_serve_all_with_certs_from_the_certs_command_answers_over_tls(
    toy_bundle_dir, cat_jpeg, tmp_path
) -> None:
    """`splitdnn certs` then `splitdnn serve all --tls-dir`: the device answers over HTTPS and
    reaches the mutual-TLS tail with the head's certificate (split answers, no fallback)."""
    pytest.importorskip("cryptography")
    certs = tmp_path / "certs"
    make_certificates(certs, ["tail", "head"])
    ports = [free_port() for _ in range(2)]
    command = [sys.executable, "-m", "splitdnn.cli", "serve", "all", "--tls-dir", str(certs),
               "--bundle", str(toy_bundle_dir), "--log-level", "warning",
               "--gateway-port", str(ports[0]), "--tail-port", str(ports[1])]  # fmt: skip
    log = tmp_path / "all.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    gateway = f"https://127.0.0.1:{ports[0]}"
    verify = client_context(certs / "ca.pem")
    try:
        assert serve.wait_ready(f"{gateway}/v2/health/ready", 90, None, verify), log.read_text()
        answer = httpx.post(f"{gateway}/classify", content=cat_jpeg, params={"mode": "split",
                            "fallback": "false"}, verify=verify, timeout=30)  # fmt: skip
    finally:
        serve.stop_processes([process])
    assert answer.status_code == 200, answer.text
    assert answer.json()["mode"] == "split"


def test_the_container_healthcheck_speaks_mutual_tls(tls_tail, authority) -> None:
    """docker/healthcheck.py with the service's SPLITDNN_TLS_* checks https and shows the
    certificate; without one, the mutual-TLS tail refuses it (unhealthy, not hung)."""
    script = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"
    cert, key = _head_cert(authority)
    port = tls_tail.url.rsplit(":", 1)[1]
    base = {"PATH": os.environ.get("PATH", ""), "PORT": port}
    tls_env = {"SPLITDNN_TLS_CERT": str(cert), "SPLITDNN_TLS_KEY": str(key),
               "SPLITDNN_TLS_CA": str(authority.ca_pem)}  # fmt: skip
    healthy = subprocess.run([sys.executable, str(script)], env={**base, **tls_env}, timeout=30)
    assert healthy.returncode == 0
    no_cert = {**base, "HEALTHCHECK_URL": f"{tls_tail.url}/v2/health/ready",
               "SPLITDNN_TLS_CA": str(authority.ca_pem)}  # fmt: skip
    refused = subprocess.run([sys.executable, str(script)], env=no_cert, timeout=30)
    assert refused.returncode == 1


def test_a_tail_with_an_expired_certificate_is_refused_naming_it(authority, tmp_path) -> None:
    """A server whose certificate expired (served anyway: a raw TLS listener here, since
    `splitdnn serve` would refuse to start with it) fails the head's handshake in words."""
    import socket
    import ssl
    import threading

    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    old = authority.issue("stale", not_before=long_ago, not_after=long_ago + dt.timedelta(days=1))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(old.cert, old.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_once() -> None:
        conn, _ = listener.accept()
        try:
            server.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass  # the client gives up at the handshake
        finally:
            conn.close()

    threading.Thread(target=accept_once, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        detail = _refusal(_client(url, tls_ca=authority.ca_pem))
    finally:
        listener.close()
    assert "expired" in detail and "splitdnn certs" in detail


def test_nonn_members_under_mutual_tls_answer_the_gateway_and_only_it(
    authority, tmp_path, cat_jpeg
) -> None:
    """Members accept only clients the CA signed: the gateway with its certificate gets a
    full (not degraded) answer; one without a certificate is refused by both, in words."""
    pytest.importorskip("torch")
    import json

    from toy_nonn_bundle import build_toy_nonn_bundle

    bundle = tmp_path / "nonn"
    bundle.mkdir()
    build_toy_nonn_bundle(bundle)
    processes, member_urls = [], []
    try:
        for i in range(2):
            files, port = authority.issue(f"member{i}"), free_port()
            env = {"SPLITDNN_NONN_BUNDLE": str(bundle), "SPLITDNN_MEMBER_INDEX": str(i),
                   "SPLITDNN_MEMBER_INTRA_OP_THREADS": "1", **files.env()}  # fmt: skip
            options = serve.uvicorn_tls(files, mutual=True)
            processes.append(
                _start("services.member.app:create_app", port, env, options, tmp_path / f"m{i}")
            )
            member_urls.append(f"https://127.0.0.1:{port}")
        gateways = {}
        for name, files in (("with-cert", authority.issue("gateway")),
                            ("no-cert", TLSFiles(ca=authority.ca_pem))):  # fmt: skip
            port = free_port()
            env = {"SPLITDNN_NONN_BUNDLE": str(bundle), **files.env(),
                   "SPLITDNN_GATEWAY_MEMBER_URLS": json.dumps(member_urls),
                   "SPLITDNN_GATEWAY_HEAD_URL": "http://127.0.0.1:9"}  # fmt: skip
            processes.append(_start(serve.GATEWAY_APP, port, env, {}, tmp_path / f"{name}.log"))
            gateways[name] = f"http://127.0.0.1:{port}"
        probe = client_context(authority.ca_pem, *_head_cert(authority))
        for url in member_urls:
            assert serve.wait_ready(f"{url}/v2/health/ready", 60, None, probe)
        answers = {}
        for name, url in gateways.items():
            assert serve.wait_ready(f"{url}/v2/health/live", 60)
            answers[name] = httpx.post(f"{url}/classify", params={"mode": "nonn"},
                                       content=cat_jpeg, timeout=60)  # fmt: skip
    finally:
        serve.stop_processes(processes)
    full = answers["with-cert"].json()
    assert answers["with-cert"].status_code == 200 and full["degraded"] is False, full
    refused = answers["no-cert"]
    assert refused.status_code == 503, refused.text
    assert "asks for a client certificate" in refused.json()["detail"]
