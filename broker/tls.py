"""TLS for the embedded broker and its clients: ssl contexts from the --tls-* flags.

The broker: `--tls-cert FILE --tls-key FILE` serves TLS; `--tls-ca FILE` also
requires every client to present a certificate signed by that CA. A client:
a `tls://HOST:PORT` address, `--tls-ca FILE` to trust the CA that signed the
broker's certificate (else the system's CAs), and `--tls-cert/--tls-key` when
the broker asks for a client certificate. NATS takes the same client flags.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from broker.errors import ConfigError

CA_ENV, CERT_ENV, KEY_ENV = "SLIPSTREAM_TLS_CA", "SLIPSTREAM_TLS_CERT", "SLIPSTREAM_TLS_KEY"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA to trust, and this side's certificate and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls) -> TlsFiles:
        return cls(*(Path(os.environ[name]) if os.environ.get(name) else None
                     for name in (CA_ENV, CERT_ENV, KEY_ENV)))

    def __bool__(self) -> bool:
        return any((self.ca, self.cert, self.key))


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The broker's context: its certificate, and with a CA, client certificates required."""
    if files.cert is None or files.key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, files.cert, files.key)
    if files.ca is not None:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client's context: verify the broker against --tls-ca (or the system's CAs), and
    present --tls-cert/--tls-key when given."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca is not None:
        _load_ca(context, files.ca)
    if files.cert is not None or files.key is not None:
        if files.cert is None or files.key is None:
            raise ConfigError("a client certificate needs both --tls-cert and --tls-key")
        _load_chain(context, files.cert, files.key)
    return context


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key} cannot be used: "
                          f"{exc.reason or exc} (PEM certificate and its private key)") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    if not ca.is_file():
        raise ConfigError(f"--tls-ca {ca}: no such file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-ca {ca} cannot be used: {exc.reason or exc} "
                          "(a PEM CA certificate)") from None
