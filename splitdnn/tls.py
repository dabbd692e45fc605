"""TLS between the services: contexts, a start-up check, failures in words, dev certificates.

Every hop (gateway → head → tail, gateway → members) can run over TLS. A service given
``--tls-cert``/``--tls-key`` serves HTTPS; ``--tls-ca`` names the CA its peers' certificates
must chain to. With a CA, the tail, the head and the members accept only clients whose
certificate that CA signed (mutual TLS: the certificate is the device's identity); the
gateway, the public front, never asks its callers for one. A client verifies the server
against ``--tls-ca`` (the system's CAs without it) and checks its host name; nothing here
switches verification off.

Only the standard ``ssl`` module at run time; :func:`make_certificates` (``splitdnn certs``)
uses ``cryptography`` (the ``certs`` extra).
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from splitdnn.errors import ConfigError

#: The files ``splitdnn certs`` writes: the CA, then ``<name>.pem`` and ``<name>.key`` each.
CA_CERT, CA_KEY = "ca.pem", "ca.key"
#: The services ``splitdnn certs`` issues for by default.
DEFAULT_NAMES = ("tail", "head", "gateway", "member0", "member1")


@dataclass(frozen=True)
class TLSFiles:
    """A service's certificate and key (it serves HTTPS when set), and the CA its peers
    must chain to (all PEM)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None

    def env(self) -> dict[str, str]:
        """The ``SPLITDNN_TLS_*`` variables the service's settings read (its client hops)."""
        values = {"SPLITDNN_TLS_CERT": self.cert, "SPLITDNN_TLS_KEY": self.key,
                  "SPLITDNN_TLS_CA": self.ca}  # fmt: skip
        return {k: str(v) for k, v in values.items() if v is not None}

    @classmethod
    def from_dir(cls, directory: Path, name: str) -> TLSFiles:
        """``<name>.pem``, ``<name>.key`` and ``ca.pem`` in a ``splitdnn certs`` folder."""
        return cls(directory / f"{name}.pem", directory / f"{name}.key", directory / CA_CERT)


def tls_files(
    service: str, cert: Path | None = None, key: Path | None = None, ca: Path | None = None
) -> TLSFiles:
    """The checked files of ``service`` (without a certificate it serves plain HTTP and
    ``ca`` only verifies the servers it calls).

    Refuses (:class:`ConfigError`, naming the fix) a certificate without its key, a missing
    file, a key that does not match, and a certificate the CA did not sign or that is
    expired or not yet valid: each would otherwise surface as a refused connection later.
    """
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"the {service}'s {flag} {path} is not a file")
    if cert is None and key is None:
        return TLSFiles(ca=Path(ca) if ca is not None else None)
    if cert is None or key is None:
        raise ConfigError(f"the {service} needs both --tls-cert and --tls-key (got one)")
    files = TLSFiles(Path(cert), Path(key), Path(ca) if ca is not None else None)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"the {service}'s --tls-key {files.key} does not belong to --tls-cert {files.cert} "
            f"({exc.reason}): pass the key issued with that certificate"
        ) from exc
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # names are checked by each client against its URL
    if files.ca is not None:
        client.load_verify_locations(files.ca)
    else:
        client.load_verify_locations(files.cert)  # without a CA: only the dates are checked
    try:
        _handshake(server, client)
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        fix = (
            "issue a new one (splitdnn certs)"
            if "expired" in reason or "not yet valid" in reason
            else f"issue it from the CA in --tls-ca {files.ca} (splitdnn certs)"
        )
        raise ConfigError(f"the {service}'s --tls-cert {files.cert}: {reason}; {fix}") from exc
    return files


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """A TLS handshake between two contexts in memory (no socket)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_side=False)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((tls_client, c_out, s_in), (tls_server, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == 2:
            return


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """How a service verifies the server it calls: against ``ca`` (the system's CAs when
    None), host name checked; ``cert``/``key`` are shown when the server asks (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


def explain(exc: BaseException, url: str, client_cert: bool = False) -> str | None:
    """What a failed connection to ``url`` means and how to fix it, when it is a TLS
    failure or a TLS/plain-HTTP mix-up; None for any other failure. ``client_cert``: this
    side showed a certificate (a server that closes right after the handshake distrusts it;
    without one, it wanted one).
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    https = url.startswith("https://")
    for error in chain:
        if isinstance(error, ssl.SSLCertVerificationError):
            reason = error.verify_message or str(error)
            if "expired" in reason or "not yet valid" in reason:
                return f"its certificate {reason}: the server needs a new one (splitdnn certs)"
            if "mismatch" in reason:
                return (
                    f"its certificate does not name the host in {url} ({reason}): issue it for "
                    "that name (splitdnn certs --host NAME) or call it by a name it carries"
                )
            return (
                f"its certificate is not signed by a CA this service trusts ({reason}): name "
                "the CA that issued it with --tls-ca (SPLITDNN_TLS_CA)"
            )
        if isinstance(error, ssl.SSLError):
            reason = (error.reason or str(error)).upper()
            if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET" in reason:
                return (
                    f"it does not speak TLS at {url}: use http:// or start it with "
                    "--tls-cert/--tls-key"
                )
            if "CERTIFICATE_REQUIRED" in reason or "UNKNOWN_CA" in reason or "BAD_CERT" in reason:
                return _refused_client(client_cert)
            return f"TLS failed ({error.reason or error})"
        closed = isinstance(error, (http.client.RemoteDisconnected, *_CLOSED)) or (
            "without sending a response" in str(error)
        )
        if closed and https:
            return _refused_client(client_cert)
        if closed:
            return (
                f"it closed the connection without an answer: if it serves TLS, use https:// "
                f"in the URL ({url})"
            )
    return None


#: How a peer that hung up shows: on reading, or on writing the rest of a request body.
_CLOSED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _refused_client(client_cert: bool) -> str:
    """A server that ends the connection at or right after the handshake (mutual TLS)."""
    if client_cert:
        return (
            "it closed the connection at the TLS handshake: it does not trust this service's "
            "client certificate (mutual TLS); issue it from the CA the server has in --tls-ca"
        )
    return (
        "it closed the connection at the TLS handshake: it asks for a client certificate "
        "(mutual TLS) and got none; give this service --tls-cert/--tls-key issued by the "
        "server's CA"
    )


def make_certificates(
    directory: Path,
    names: tuple[str, ...] | list[str] = DEFAULT_NAMES,
    hosts: tuple[str, ...] | list[str] = (),
    days: int = 825,
) -> list[Path]:
    """A development CA and one certificate + key per name in ``directory``.

    Each certificate is valid for its service name (the compose host name), ``localhost``,
    127.0.0.1 and every ``hosts`` entry, for server and client use (the head shows its own
    to the tail). The CA's key is written too, to issue more later; keep it off devices.
    An existing CA in ``directory`` is reused, so certificates added later chain to it.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise ConfigError(
            f"making certificates needs: pip install 'splitdnn[certs]' ({exc})"
        ) from exc
    if days < 1:
        raise ConfigError(f"--days must be at least 1, not {days}")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        data = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.write_bytes(data)
        # the CA's key stays private; a service's key must be readable by the container's
        # user (uid 10001) when compose mounts the folder: development certificates only
        path.chmod(0o600 if path.name == CA_KEY else 0o644)

    ca_cert_path, ca_key_path = directory / CA_CERT, directory / CA_KEY
    if ca_cert_path.is_file() and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "splitdnn development CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca_cert_path.write_bytes(ca_cert.public_bytes(pem))
        write_key(ca_key_path, ca_key)
    written = [ca_cert_path]
    for name in names:
        alt: list[x509.GeneralName] = []
        for host in (name, "localhost", "127.0.0.1", *hosts):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(alt))), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        write_key(directory / f"{name}.key", key)
        written += [directory / f"{name}.pem", directory / f"{name}.key"]
    return written
