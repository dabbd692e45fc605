"""Start the services without Docker. The library imports no web framework: uvicorn gets an
import string and builds each app in its own factory, configured through the same
``SPLITDNN_*`` environment variables a container would set.

    serve_tail(port=8001)                         edge server
    serve_tail_ray(port=8001, replicas=2)         edge server on Ray Serve (replicas, batching)
    serve_device(port=8000, tail_url=...)         device: gateway and head in one process, public
    serve_head(port=8002, tail_url=...)           device, head alone (a gateway elsewhere)
    serve_gateway(port=8000, head_url=...)        public front apart from its head
    serve_member(index=0, nonn_bundle=...)        one NoNN member (port 8010 + index)
    serve_all()                                   tail and device on 127.0.0.1, one command
                                                  (nonn_bundle=...: and the NoNN members)

Head and tail authenticate their callers with ``SPLITDNN_TOKEN`` or, under mutual TLS, by
their client certificate; one that would bind an address other hosts can reach with neither
refuses to start unless told ``insecure`` (:func:`check_exposure`). The gateway is the
public front and sends the head that token. TLS: :mod:`splitdnn.tls`; every service takes a
:class:`~splitdnn.tls.TLSFiles` (``--tls-cert/--tls-key/--tls-ca``).
"""

from __future__ import annotations

import errno
import importlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from splitdnn.bundle import MANIFEST, default_bundle_path
from splitdnn.errors import BundleError, ConfigError
from splitdnn.nonn.bundle import NONN_MANIFEST, load_nonn_bundle
from splitdnn.tls import TLSFiles, client_context, tls_files
from splitdnn.wire import COMPRESSIONS, ENTROPY, QUANTISATIONS

#: What a head may be told to send split as (``bundle``: as the bundle was trained to be sent).
SPLIT_QUANTISATIONS = (*QUANTISATIONS, ENTROPY, "bundle")

TAIL_APP = "services.tail.app:create_app"
#: The tail on Ray Serve: ``run(**options)`` deploys it (needs the ``ray`` extra).
TAIL_RAY_RUN = "services.tail.ray_app:run"
#: Its deployments and replica counts through the cluster's GCS (no dashboard needed).
TAIL_RAY_STATUS = "services.tail.ray_app:status"
HEAD_APP = "services.head.app:create_app"
#: One NoNN member: the image in, its pooled features out (services/member/).
MEMBER_APP = "services.member.app:create_app"
GATEWAY_APP = "gateway.app:create_app"
#: Gateway and head in one process: /classify calls the head's pipeline, no second hop.
DEVICE_APP = "gateway.app:create_device_app"
#: uvicorn's HTTP protocol with its parser's refusals (a URL over 64 KB) as problem+json and
#: each mutual-TLS client certificate logged by name.
HTTP_PROTOCOL = "services.common.http:ServiceHTTPProtocol"
DEFAULT_PORTS = {"gateway": 8000, "device": 8000, "tail": 8001, "head": 8002, "member": 8010}
#: Where each service answers when started with the defaults: the one source of the default
#: URLs in the CLI, ``serve`` and the services' settings.
DEFAULT_URLS = {name: f"http://127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}


def _check_bundle(bundle: Path | None) -> Path:
    path = Path(bundle) if bundle is not None else default_bundle_path()
    if not (path / MANIFEST).is_file():
        raise BundleError(
            f"no bundle at {path} ({MANIFEST} missing): pass --bundle DIR, set SPLITDNN_BUNDLE, "
            "or build the default with `splitdnn export default`"
        )
    return path


def _check_nonn_bundle(bundle: Path) -> Path:
    if not (Path(bundle) / NONN_MANIFEST).is_file():
        raise BundleError(
            f"no NoNN bundle at {bundle} ({NONN_MANIFEST} missing): write one with `splitdnn "
            "export nonn RUN --out DIR` (e.g. RUN = splitdnn/assets/nonn/k2)"
        )
    return Path(bundle)


def nonn_members(bundle: Path) -> int:
    """How many members the NoNN bundle at ``bundle`` has (its files not yet verified)."""
    return len(load_nonn_bundle(_check_nonn_bundle(bundle), verify=False).manifest.members)


def member_urls(host: str, count: int, scheme: str = "http") -> list[str]:
    """Where ``count`` members started with the default ports answer (8010, 8011, …)."""
    return [f"{scheme}://{host}:{DEFAULT_PORTS['member'] + i}" for i in range(count)]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); other names count
    as reachable from other hosts."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(
    service: str,
    host: str,
    token: str | None,
    insecure: bool = False,
    tls: TLSFiles | None = None,
) -> None:
    """Refuse (:class:`ConfigError`) to serve ``service`` on a non-loopback ``host`` without
    a token or mutual TLS: anyone who can reach it could run the models and, through the
    head, the tail."""
    if token or insecure or is_loopback(host) or (tls is not None and is_mutual(tls)):
        return
    raise ConfigError(
        f"the {service} would listen on {host} without a token: set SPLITDNN_TOKEN (or "
        "--token) to the secret head and tail share, or serve mutual TLS (--tls-cert, "
        "--tls-key and --tls-ca), bind 127.0.0.1, or pass --insecure to serve it open on purpose"
    )


def is_mutual(tls: TLSFiles) -> bool:
    """Whether a tail, head or member with these files asks clients for a certificate."""
    return tls.serves_tls and tls.ca is not None


def uvicorn_tls(tls: TLSFiles | None, mutual: bool = False) -> dict[str, Any]:
    """uvicorn's options for serving with ``tls``; ``mutual``: only clients with a
    certificate the CA signed get past the handshake, and each is logged by name."""
    if tls is None or not tls.serves_tls:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if mutual and tls.ca is not None:
        options.update(ssl_ca_certs=str(tls.ca), ssl_cert_reqs=int(ssl.CERT_REQUIRED))
    return options


def _env(values: Mapping[str, object | None]) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _run(
    app: str,
    host: str,
    port: int,
    env: Mapping[str, str],
    log_level: str,
    tls: dict[str, Any] | None = None,
) -> None:
    os.environ.update(env)
    import uvicorn  # only here: the library never imports the web stack at module level

    # The services log each request themselves, with its request id (splitdnn.access).
    uvicorn.run(
        app,
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=HTTP_PROTOCOL,
        **(tls or {}),
    )


def tail_env(bundle: Path | None = None, token: str | None = None) -> dict[str, str]:
    return _env({"SPLITDNN_BUNDLE": _check_bundle(bundle), "SPLITDNN_TOKEN": token})


def head_env(
    tail_url: str,
    bundle: Path | None = None,
    token: str | None = None,
    quantisation: str | None = None,
    compression: str | None = None,
) -> dict[str, str]:
    if quantisation is not None and quantisation not in SPLIT_QUANTISATIONS:
        raise ConfigError(
            f"quantisation must be one of {list(SPLIT_QUANTISATIONS)}, not {quantisation!r}"
        )
    if compression is not None and compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {list(COMPRESSIONS)}, not {compression!r}")
    return _env(
        {
            "SPLITDNN_BUNDLE": _check_bundle(bundle),
            "SPLITDNN_TOKEN": token,
            "SPLITDNN_HEAD_TAIL_URL": tail_url,
            "SPLITDNN_HEAD_QUANTISATION": quantisation,
            "SPLITDNN_HEAD_COMPRESSION": compression,
        }
    )


def gateway_env(
    head_url: str | None,
    tail_url: str,
    default_mode: str | None = None,
    token: str | None = None,
    nonn_bundle: Path | None = None,
    member_urls: list[str] | None = None,
) -> dict[str, str]:
    """The gateway's environment; ``nonn_bundle`` and ``member_urls`` add mode=nonn, and
    without ``head_url`` such a gateway serves mode=nonn only."""
    return {
        **_env(
            {
                "SPLITDNN_GATEWAY_HEAD_URL": head_url,
                "SPLITDNN_GATEWAY_TAIL_URL": tail_url,
                "SPLITDNN_GATEWAY_DEFAULT_MODE": default_mode,
                "SPLITDNN_TOKEN": token,
            }
        ),
        **nonn_env(nonn_bundle, member_urls),
    }


def nonn_env(nonn_bundle: Path | None, member_urls: list[str] | None) -> dict[str, str]:
    """mode=nonn of a gateway or device: the NoNN bundle (its join runs there) and one member
    URL per member, checked against the bundle before anything starts."""
    if nonn_bundle is None:
        if member_urls:
            raise ConfigError("member URLs need the NoNN bundle they serve: pass --nonn DIR")
        return {}
    members = nonn_members(nonn_bundle)
    if len(member_urls or []) != members:
        raise ConfigError(
            f"the NoNN bundle {nonn_bundle} has {members} members: pass --member-url once per "
            f"member, in member order (got {len(member_urls or [])}); `splitdnn serve member "
            "--index I` starts member I"
        )
    return {
        "SPLITDNN_NONN_BUNDLE": str(nonn_bundle),
        "SPLITDNN_GATEWAY_MEMBER_URLS": json.dumps(member_urls),
    }


def member_env(nonn_bundle: Path, index: int, token: str | None = None) -> dict[str, str]:
    members = nonn_members(nonn_bundle)
    if not 0 <= index < members:
        raise ConfigError(f"member {index}: the NoNN bundle {nonn_bundle} has {members} members")
    return _env(
        {
            "SPLITDNN_NONN_BUNDLE": nonn_bundle,
            "SPLITDNN_MEMBER_INDEX": index,
            "SPLITDNN_TOKEN": token,
        }
    )


def device_env(
    tail_url: str,
    bundle: Path | None = None,
    token: str | None = None,
    quantisation: str | None = None,
    compression: str | None = None,
    default_mode: str | None = None,
    nonn_bundle: Path | None = None,
    member_urls: list[str] | None = None,
) -> dict[str, str]:
    """The head's environment plus the gateway's: one process reads both."""
    return {
        **head_env(tail_url, bundle, token, quantisation, compression),
        **_env(
            {"SPLITDNN_GATEWAY_TAIL_URL": tail_url, "SPLITDNN_GATEWAY_DEFAULT_MODE": default_mode}
        ),
        **nonn_env(nonn_bundle, member_urls),
    }


def serve_tail(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORTS["tail"],
    bundle: Path | None = None,
    token: str | None = None,
    log_level: str = "info",
    insecure: bool = False,
    tls: TLSFiles | None = None,
) -> None:
    """Run the tail (edge) service in this process until interrupted; with ``tls`` over
    HTTPS, and with its CA only for clients that CA signed."""
    check_exposure("tail", host, token, insecure, tls)
    env = {**tail_env(bundle, token), **(tls.env() if tls else {})}
    _run(TAIL_APP, host, port, env, log_level, uvicorn_tls(tls, mutual=True))


def serve_tail_ray(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORTS["tail"],
    bundle: Path | None = None,
    token: str | None = None,
    insecure: bool = False,
    address: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    batch_max_size: int = 16,
    batch_wait_ms: float = 5.0,
    num_cpus: int | None = None,
) -> None:
    """Run the tail as a Ray Serve deployment: a local cluster in this process, or joining
    the one at ``address``; ``max_replicas`` above ``replicas`` turns on autoscaling."""
    check_exposure("tail", host, token, insecure)
    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise ConfigError("replicas must be at least 1 and max_replicas at least replicas")
    if batch_max_size < 1 or batch_wait_ms < 0:
        raise ConfigError("batch_max_size must be at least 1 and batch_wait_ms not negative")
    os.environ.update(tail_env(bundle, token))
    os.environ["SPLITDNN_TAIL_BATCH_MAX_SIZE"] = str(batch_max_size)
    os.environ["SPLITDNN_TAIL_BATCH_WAIT_MS"] = str(batch_wait_ms)
    _ray_tail(TAIL_RAY_RUN)(
        host=host,
        port=port,
        address=address,
        replicas=replicas,
        max_replicas=max_replicas,
        num_cpus=num_cpus,
    )


def _ray_tail(target: str) -> Any:
    """A function of the Ray tail, imported by name (the library imports no service)."""
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"Ray Serve is not installed: pip install 'splitdnn[ray]' ({exc})"
        ) from exc
    return getattr(module, function)


def ray_tail_status(address: str = "auto") -> dict[str, Any]:
    """The Ray tail's applications, deployments and replica counts (``serve status`` without
    the dashboard); :class:`ConfigError` when the cluster or the tail is not there."""
    return _ray_tail(TAIL_RAY_STATUS)(address=address)


def serve_head(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORTS["head"],
    tail_url: str = DEFAULT_URLS["tail"],
    bundle: Path | None = None,
    token: str | None = None,
    quantisation: str | None = None,
    compression: str | None = None,
    log_level: str = "info",
    insecure: bool = False,
    tls: TLSFiles | None = None,
) -> None:
    """Run the head (device) service in this process until interrupted; ``tls`` as for the
    tail, and its certificate is what the head shows an https:// tail."""
    check_exposure("head", host, token, insecure, tls)
    env = {**head_env(tail_url, bundle, token, quantisation, compression),
           **(tls.env() if tls else {})}  # fmt: skip
    _run(HEAD_APP, host, port, env, log_level, uvicorn_tls(tls, mutual=True))


def serve_gateway(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORTS["gateway"],
    head_url: str | None = DEFAULT_URLS["head"],
    tail_url: str = DEFAULT_URLS["tail"],
    default_mode: str | None = None,
    log_level: str = "info",
    token: str | None = None,
    tls: TLSFiles | None = None,
    nonn_bundle: Path | None = None,
    member_urls: list[str] | None = None,
) -> None:
    """Run the gateway (the public front: it may bind any address) until interrupted; with
    ``tls`` over HTTPS (no client certificates asked), its CA verifying an https:// head.
    ``nonn_bundle`` and ``member_urls`` add mode=nonn; with ``head_url`` None it is the only
    mode served."""
    env = {
        **gateway_env(head_url, tail_url, default_mode, token, nonn_bundle, member_urls),
        **(tls.env() if tls else {}),
    }
    _run(GATEWAY_APP, host, port, env, log_level, uvicorn_tls(tls))


def serve_member(
    *,
    nonn_bundle: Path,
    index: int = 0,
    host: str = "127.0.0.1",
    port: int | None = None,
    token: str | None = None,
    log_level: str = "info",
    insecure: bool = False,
    tls: TLSFiles | None = None,
) -> None:
    """Run NoNN member ``index`` of ``nonn_bundle`` (port 8010 + index by default) until
    interrupted; exposure and TLS as for the tail (with a CA, only clients it signed)."""
    check_exposure("member", host, token, insecure, tls)
    env = {**member_env(nonn_bundle, index, token), **(tls.env() if tls else {})}
    port = DEFAULT_PORTS["member"] + index if port is None else port
    _run(MEMBER_APP, host, port, env, log_level, uvicorn_tls(tls, mutual=True))


def serve_device(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORTS["device"],
    tail_url: str = DEFAULT_URLS["tail"],
    bundle: Path | None = None,
    token: str | None = None,
    quantisation: str | None = None,
    compression: str | None = None,
    default_mode: str | None = None,
    log_level: str = "info",
    tls: TLSFiles | None = None,
) -> None:
    """Run gateway and head in one process (the public front: it may bind any address;
    the head's own endpoints are not served) until interrupted; with ``tls`` over HTTPS (no
    client certificates asked), and its certificate is what the device shows an https://
    tail, its CA what verifies that tail."""
    env = {**device_env(tail_url, bundle, token, quantisation, compression, default_mode),
           **(tls.env() if tls else {})}  # fmt: skip
    _run(DEVICE_APP, host, port, env, log_level, uvicorn_tls(tls))


def uvicorn_command(
    app: str, host: str, port: int, log_level: str = "info", tls: dict[str, Any] | None = None
) -> list[str]:
    """The argv that runs ``app`` under uvicorn with this interpreter; ``tls`` is
    :func:`uvicorn_tls` of the service's files."""
    command = [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--host", host, "--port", str(port), "--log-level", log_level, "--no-access-log",
        "--http", HTTP_PROTOCOL,
    ]  # fmt: skip
    for name, value in (tls or {}).items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def ports_in_use(host: str, ports: Iterable[int]) -> list[int]:
    """The ``ports`` that cannot be bound on ``host`` now (another server holds them)."""
    busy = []
    for port in ports:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigError(f"cannot bind {host!r}: {exc}") from None
        family, kind, proto, _, address = found[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None
                busy.append(port)
    return busy


def _listening_inodes(port: int, pid: int | str = "self") -> set[str] | None:
    """Socket inodes listening on TCP ``port`` in the network namespace of process ``pid``
    (Linux /proc), or None where unknown. The process's own tables: a service started in
    another network namespace (the sweep's tail) listens where ``/proc/net`` does not see."""
    inodes: set[str] = set()
    tables = [Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")]
    if not any(table.is_file() for table in tables):
        return None
    for table in tables:
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listens_on(process: subprocess.Popen, port: int) -> bool:
    """Whether ``process`` itself holds the listening socket of ``port`` (True where the
    system cannot tell: no /proc)."""
    inodes = _listening_inodes(port, process.pid)
    if inodes is None:
        return True
    try:
        fds = list(Path(f"/proc/{process.pid}/fd").iterdir())
    except OSError:
        return True
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_ready(
    url: str,
    timeout: float = 60.0,
    process: subprocess.Popen | None = None,
    tls: ssl.SSLContext | None = None,
) -> bool:
    """Poll ``url`` until it answers 200; False on timeout or if ``process`` exits.

    With ``process``, a 200 counts only once that process holds the port's listening
    socket: another server already on the port must not pass for the one started. ``tls``
    verifies an https:// server (and shows a client certificate under mutual TLS).
    """
    port = urllib.parse.urlsplit(url).port
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=tls) as response:
                if response.status == 200 and (
                    process is None or port is None or listens_on(process, port)
                ):
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM every process still running, then wait; kill whatever has not exited by then.

    All are signalled before any is awaited, so the shutdowns overlap.
    """
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass(frozen=True)
class Child:
    """One service to start: its argv (the service's uvicorn command, or that command
    wrapped by a namespace or a CPU group), what to add to the environment, the URL that
    answers 200 once it is ready and the TLS context to ask it with."""

    argv: list[str]
    env: Mapping[str, str]
    ready_url: str
    probe: ssl.SSLContext | None = None


def start_children(
    children: Mapping[str, Child], ready_timeout: float
) -> dict[str, subprocess.Popen]:
    """Start ``children`` in order, then wait for each to answer ready: the processes by
    name. If one exits or is not ready in time, all are stopped and RuntimeError names it.
    The tests' and the benchmarks' stacks start this way."""
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, child in children.items():
            processes[name] = subprocess.Popen(child.argv, env={**os.environ, **child.env})
        for name, child in children.items():
            if not wait_ready(child.ready_url, ready_timeout, processes[name], child.probe):
                raise RuntimeError(f"{name} did not become ready at {child.ready_url}")
    except BaseException:
        stop_processes(processes.values())
        raise
    return processes


@contextmanager
def running_children(
    children: Mapping[str, Child], ready_timeout: float
) -> Iterator[dict[str, subprocess.Popen]]:
    """:func:`start_children`, stopping them all on exit."""
    processes = start_children(children, ready_timeout)
    try:
        yield processes
    finally:
        stop_processes(processes.values())


def serve_all(
    *,
    host: str = "127.0.0.1",
    gateway_port: int = DEFAULT_PORTS["device"],
    tail_port: int = DEFAULT_PORTS["tail"],
    bundle: Path | None = None,
    token: str | None = None,
    log_level: str = "info",
    ready_timeout: float = 120.0,
    insecure: bool = False,
    tls_dir: Path | None = None,
    nonn_bundle: Path | None = None,
) -> int:
    """Start the tail and the device (gateway and head in one process) as child processes
    on ``host``; stop both on Ctrl-C. ``nonn_bundle``: its members too (ports 8010, 8011, …),
    and the device serves mode=nonn with them.

    ``tls_dir`` (made by ``splitdnn certs``): both over TLS, the tail under mutual TLS (the
    device shows ``head.pem``: to the tail it is the head), with ``ca.pem``.
    Returns the exit code: 0 after an interrupt, else the code of the first child to die.
    Raises :class:`ConfigError` before starting anything when a port is taken or given twice.
    """
    members = nonn_members(nonn_bundle) if nonn_bundle is not None else 0
    member_names = [f"member{i}" for i in range(members)]
    # The device shows the head's certificate: to the tail it is the head.
    services = (("tail", "tail"), ("device", "head"), *((m, m) for m in member_names))
    files = {
        name: tls_files(name, *astuple(TLSFiles.from_dir(Path(tls_dir), cert)))
        for name, cert in services
    } if tls_dir is not None else {}  # fmt: skip
    check_exposure("tail", host, token, insecure, files.get("tail"))
    ports = {"gateway": gateway_port, "tail": tail_port}
    ports |= {name: DEFAULT_PORTS["member"] + i for i, name in enumerate(member_names)}
    if len(set(ports.values())) < len(ports):
        raise ConfigError(f"no two services may share a port (two different ports), not {ports}")
    busy = ports_in_use(host, ports.values())
    if busy:
        named = ", ".join(f"{name} {port}" for name, port in ports.items() if port in busy)
        raise ConfigError(
            f"port(s) already in use on {host}: {named} (another `splitdnn serve`?). Stop what "
            "holds them or pick others with --gateway-port/--tail-port"
        )
    scheme = "https" if files else "http"
    tail_url = f"{scheme}://{host}:{tail_port}"
    base = dict(os.environ)
    urls = member_urls(host, members, scheme) if nonn_bundle is not None else None
    device = device_env(tail_url, bundle, token, nonn_bundle=nonn_bundle, member_urls=urls)
    plan = [
        ("tail", TAIL_APP, tail_port, tail_env(bundle, token)),
        *(
            (name, MEMBER_APP, ports[name], member_env(nonn_bundle, i, token))
            for i, name in enumerate(member_names)
            if nonn_bundle is not None
        ),
        ("device", DEVICE_APP, gateway_port, device),
    ]
    probe = None
    if files:  # the probe shows the device's certificate to the mutual-TLS tail
        probe = client_context(files["device"].ca, files["device"].cert, files["device"].key)
    children: dict[str, subprocess.Popen] = {}

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM ends it like Ctrl-C; SIGINT is installed too, because a shell starts background
    # jobs (`splitdnn serve all &` in a script, CI runners) with SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: `kill -INT` would leave both running.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name, app, port, env in plan:
            tls = files.get(name)
            # the device is the public front; the tail and the members ask for certificates
            options = uvicorn_tls(tls, mutual=name != "device")
            command = uvicorn_command(app, host, port, log_level, options)
            tls_env = tls.env() if tls else {}
            children[name] = subprocess.Popen(command, env={**base, **env, **tls_env})
        for name, _, port, _ in plan:
            url = f"{scheme}://{host}:{port}/v2/health/ready"
            if not wait_ready(url, ready_timeout, children[name], probe):
                print(f"splitdnn: {name} did not become ready at {url}", file=sys.stderr)
                return 1
        print(
            f"splitdnn: ready. POST {scheme}://{host}:{gateway_port}/classify?mode=split|local|"
            f"offload|auto{'|nonn' if members else ''} (Ctrl-C stops them all)",
            flush=True,
        )
        while True:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    print(f"splitdnn: {name} exited with {code}", file=sys.stderr)
                    return code or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_processes(children.values())
