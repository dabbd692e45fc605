"""``splitdnn serve tail|device|head|gateway|member|all``: thin Typer commands over
:mod:`splitdnn.serve`.

Mounted by ``splitdnn/cli.py`` with ``app.add_typer(serve_app, name="serve")``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from splitdnn import serve
from splitdnn.errors import ConfigError, SplitDNNError
from splitdnn.tls import tls_files
from splitdnn.wire import COMPRESSIONS

serve_app = typer.Typer(
    help="Run the split-inference services locally (no Docker).", no_args_is_help=True
)

Port = Annotated[int, typer.Option(help="TCP port.")]
Host = Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 to accept other hosts.")]
BundleOpt = Annotated[
    Path | None,
    typer.Option(help="Bundle directory; default $SPLITDNN_BUNDLE or the packaged bundle."),
]
Token = Annotated[
    str | None,
    typer.Option(envvar="SPLITDNN_TOKEN", help="Shared bearer token between head and tail."),
]
LogLevel = Annotated[str, typer.Option(help="uvicorn log level.")]
Insecure = Annotated[
    bool,
    typer.Option(
        help="Serve without a token on an address other hosts can reach (refused otherwise: "
        "anyone could run the models)."
    ),
]
TailUrl = Annotated[str, typer.Option(help="Base URL of the tail service (edge server).")]
TLSCert = Annotated[
    Path | None,
    typer.Option(
        envvar="SPLITDNN_TLS_CERT",
        help="Serve HTTPS with this certificate (PEM); also shown to a server that asks "
        "for a client certificate. `splitdnn certs` makes development ones.",
    ),
]
TLSKey = Annotated[
    Path | None, typer.Option(envvar="SPLITDNN_TLS_KEY", help="The certificate's key (PEM).")
]
TLSCA = Annotated[
    Path | None,
    typer.Option(
        envvar="SPLITDNN_TLS_CA",
        help="CA (PEM) that signed the peers' certificates: https:// servers this service "
        "calls are verified against it, and with --tls-cert the tail and head accept only "
        "clients it signed (mutual TLS).",
    ),
]
Quantisation = Annotated[
    str | None,
    typer.Option(
        help=f"Envelope quantisation: {', '.join(serve.SPLIT_QUANTISATIONS)} (default bundle: "
        "entropy for a bundle with coding tables, else the manifest's quantisation, else uint8)."
    ),
]
Compression = Annotated[
    str | None,
    typer.Option(help=f"Envelope compression: {' or '.join(COMPRESSIONS)} (default zstd)."),
]
DefaultMode = Annotated[
    str | None, typer.Option(help="Mode when a request names none (default split).")
]
NoNNBundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--nonn",
        help="NoNN bundle (`splitdnn export nonn`): adds mode=nonn, whose join runs here.",
    ),
]
MemberUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--member-url",
        help="With --nonn: base URL of a NoNN member (`splitdnn serve member`), once per "
        "member in member order; default: 127.0.0.1:8010, :8011, …",
    ),
]


@contextmanager
def _exit_on_library_error() -> Iterator[None]:
    """A bad bundle or setting ends the command with one line on stderr and code 2,
    not a traceback."""
    try:
        yield
    except SplitDNNError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


@serve_app.command("tail")
def tail(
    port: Port = serve.DEFAULT_PORTS["tail"],
    host: Host = "127.0.0.1",
    bundle: BundleOpt = None,
    token: Token = None,
    log_level: LogLevel = "info",
    insecure: Insecure = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray", help="Run on Ray Serve: replicas, autoscaling, batching (the ray extra)."
        ),
    ] = False,
    replicas: Annotated[int, typer.Option(help="With --ray: replicas (the minimum).")] = 1,
    max_replicas: Annotated[
        int | None,
        typer.Option(help="With --ray: autoscale on ongoing requests up to this many."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="With --ray: join the Ray cluster at HOST:PORT (default: start one)."),
    ] = None,
    batch_max_size: Annotated[
        int, typer.Option(help="With --ray: most requests in one batch; 1 turns batching off.")
    ] = 16,
    batch_wait_ms: Annotated[
        float, typer.Option(help="With --ray: longest wait for a batch to fill (ms).")
    ] = 5.0,
    num_cpus: Annotated[
        int | None, typer.Option(help="With --ray and no --address: CPUs of the local cluster.")
    ] = None,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_ca: TLSCA = None,
) -> None:
    """The edge half: server part for split mode, whole teacher for offload mode."""
    with _exit_on_library_error():
        tls = tls_files("tail", tls_cert, tls_key, tls_ca)
        if ray and tls.serves_tls:
            raise ConfigError("--ray serves plain HTTP: put TLS in front of Ray Serve's proxy")
        if ray:
            serve.serve_tail_ray(
                host=host,
                port=port,
                bundle=bundle,
                token=token,
                insecure=insecure,
                address=address,
                replicas=replicas,
                max_replicas=max_replicas,
                batch_max_size=batch_max_size,
                batch_wait_ms=batch_wait_ms,
                num_cpus=num_cpus,
            )
            return
        serve.serve_tail(
            host=host,
            port=port,
            bundle=bundle,
            token=token,
            log_level=log_level,
            insecure=insecure,
            tls=tls,
        )


@serve_app.command("status")
def status(
    address: Annotated[
        str,
        typer.Option(
            help="The Ray cluster's HOST:PORT (its GCS port), or auto: the cluster `splitdnn "
            "serve tail --ray` started last on this machine (under the same RAY_TMPDIR)."
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The Ray tail's deployments and how many replicas run, read from the cluster itself:
    Ray's own `serve status` needs the dashboard, which `serve tail --ray` leaves off."""
    with _exit_on_library_error():
        report = serve.ray_tail_status(address)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for name, application in report["applications"].items():
        typer.echo(f"application {name}: {application['status']}")
        for deployment_name, deployment in application["deployments"].items():
            states = ", ".join(f"{k} {v}" for k, v in sorted(deployment["replicas"].items()))
            typer.echo(
                f"  deployment {deployment_name}: {deployment['status']}, "
                f"{deployment['running']} replica(s) running ({states or 'none'})"
            )
            if deployment["message"]:
                typer.echo(f"    {deployment['message']}")


@serve_app.command("head")
def head(
    port: Port = serve.DEFAULT_PORTS["head"],
    tail_url: TailUrl = serve.DEFAULT_URLS["tail"],
    host: Host = "127.0.0.1",
    bundle: BundleOpt = None,
    token: Token = None,
    quantisation: Quantisation = None,
    compression: Compression = None,
    log_level: LogLevel = "info",
    insecure: Insecure = False,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_ca: TLSCA = None,
) -> None:
    """The device half alone (a gateway on another machine calls it): device part and
    envelope upload, the local model, auto mode. On one device, `serve device` runs both."""
    with _exit_on_library_error():
        serve.serve_head(
            host=host,
            port=port,
            tail_url=tail_url,
            bundle=bundle,
            token=token,
            quantisation=quantisation,
            compression=compression,
            log_level=log_level,
            insecure=insecure,
            tls=tls_files("head", tls_cert, tls_key, tls_ca),
        )


@serve_app.command("device")
def device(
    port: Port = serve.DEFAULT_PORTS["device"],
    tail_url: TailUrl = serve.DEFAULT_URLS["tail"],
    host: Host = "127.0.0.1",
    bundle: BundleOpt = None,
    token: Token = None,
    quantisation: Quantisation = None,
    compression: Compression = None,
    default_mode: DefaultMode = None,
    log_level: LogLevel = "info",
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_ca: TLSCA = None,
) -> None:
    """The device: gateway and head in one process (POST /classify runs the device part here,
    no second HTTP hop). Use head + gateway instead when they run on different machines.
    With TLS files it serves HTTPS and shows its certificate to an https:// tail."""
    with _exit_on_library_error():
        serve.serve_device(
            host=host,
            port=port,
            tail_url=tail_url,
            bundle=bundle,
            token=token,
            quantisation=quantisation,
            compression=compression,
            default_mode=default_mode,
            log_level=log_level,
            tls=tls_files("head", tls_cert, tls_key, tls_ca),
        )


@serve_app.command("gateway")
def gateway(
    port: Port = serve.DEFAULT_PORTS["gateway"],
    head_url: Annotated[
        str | None,
        typer.Option(
            help=f"Base URL of the head service (device); default {serve.DEFAULT_URLS['head']}, "
            "except with --nonn: no head, the gateway serves mode=nonn only."
        ),
    ] = None,
    tail_url: TailUrl = serve.DEFAULT_URLS["tail"],
    host: Host = "127.0.0.1",
    default_mode: DefaultMode = None,
    token: Token = None,
    log_level: LogLevel = "info",
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_ca: TLSCA = None,
    nonn: NoNNBundleOpt = None,
    member_url: MemberUrls = None,
) -> None:
    """The public front apart from its head: POST /classify?mode=split|local|offload|auto
    (sends the head the token). On one device, `serve device` runs both in one process.
    With --nonn (and its members' URLs) also mode=nonn; --nonn without --head-url: a NoNN-only
    gateway, ready when its members are."""
    with _exit_on_library_error():
        urls = member_url  # no head URL: the gateway's settings pick the default head's,
        # or none when it has a NoNN bundle (from --nonn or SPLITDNN_NONN_BUNDLE)
        if nonn is not None and not urls:
            urls = serve.member_urls("127.0.0.1", serve.nonn_members(nonn))
        serve.serve_gateway(
            host=host,
            port=port,
            head_url=head_url,
            tail_url=tail_url,
            default_mode=default_mode,
            log_level=log_level,
            token=token,
            tls=tls_files("gateway", tls_cert, tls_key, tls_ca),
            nonn_bundle=nonn,
            member_urls=urls,
        )


@serve_app.command("member")
def member(
    nonn: Annotated[
        Path,
        typer.Option("--nonn", help="NoNN bundle directory (`splitdnn export nonn`)."),
    ],
    index: Annotated[int, typer.Option(min=0, help="Which member of the bundle this runs.")] = 0,
    port: Annotated[
        int | None,
        typer.Option(help=f"TCP port; default {serve.DEFAULT_PORTS['member']} + index."),
    ] = None,
    host: Host = "127.0.0.1",
    token: Token = None,
    log_level: LogLevel = "info",
    insecure: Insecure = False,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_ca: TLSCA = None,
) -> None:
    """One NoNN member (one device): the image in, its pooled features out as a wire
    envelope (POST /v2/features). A gateway with --nonn joins the members' answers."""
    with _exit_on_library_error():
        serve.serve_member(
            nonn_bundle=nonn,
            index=index,
            host=host,
            port=port,
            token=token,
            log_level=log_level,
            insecure=insecure,
            tls=tls_files(f"member{index}", tls_cert, tls_key, tls_ca),
        )


@serve_app.command("all")
def all_(
    host: Host = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option(help="Port of /classify (the device).")] = 8000,
    tail_port: Annotated[int, typer.Option(help="Tail port.")] = 8001,
    bundle: BundleOpt = None,
    token: Token = None,
    log_level: LogLevel = "info",
    insecure: Insecure = False,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            help="Both over TLS, the tail under mutual TLS (the device shows DIR/head.pem), "
            "with the certificates `splitdnn certs DIR` made (DIR/ca.pem, DIR/<name>.pem, .key)."
        ),
    ] = None,
    nonn: Annotated[
        Path | None,
        typer.Option(
            "--nonn",
            help="Also a NoNN bundle's members (ports 8010, 8011, …); the device answers "
            "mode=nonn with them.",
        ),
    ] = None,
) -> None:
    """The tail and the device (gateway and head in one process) on one machine, wired;
    with --nonn the NoNN members too."""
    with _exit_on_library_error():
        code = serve.serve_all(
            nonn_bundle=nonn,
            host=host,
            gateway_port=gateway_port,
            tail_port=tail_port,
            bundle=bundle,
            token=token,
            log_level=log_level,
            insecure=insecure,
            tls_dir=tls_dir,
        )
    raise typer.Exit(code=code)
