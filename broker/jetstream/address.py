"""NATS addresses: 'nats://HOST:PORT', a comma-separated list of seeds, credentials."""

from __future__ import annotations

from urllib.parse import urlsplit

from broker.errors import ConfigError

DEFAULT_NATS_PORT = 4222


def parse_servers(text: str) -> list[str]:
    """'nats://a:4222,nats://b:4222' (or 'nats://a:4222,b:4222') -> one URL per seed.

    Credentials ('nats://user:pass@host' or 'nats://token@host') stay in the URLs,
    where nats-py reads them. ConfigError names the part that is wrong.
    """
    servers = []
    scheme = ""
    for part in (item.strip() for item in text.split(",")):
        if not part:
            continue
        if "://" not in part:
            if not scheme:
                raise ConfigError(f"{text!r}: {part!r} has no nats:// scheme")
            part = f"{scheme}://{part}"
        try:
            url = urlsplit(part)
            port = url.port or DEFAULT_NATS_PORT
        except ValueError as exc:
            raise ConfigError(f"{text!r}: {part!r} is not nats://HOST:PORT ({exc})") from None
        if url.scheme != "nats":
            raise ConfigError(f"{text!r}: {part!r} is not a nats:// address (for TLS: "
                              "nats:// with --tls-ca)")
        if not url.hostname:
            raise ConfigError(f"{text!r}: {part!r} names no host")
        if url.path not in ("", "/") or url.query:
            raise ConfigError(f"{text!r}: {part!r} has a path or query; the stream is chosen "
                              "with --stream (env SLIPSTREAM_STREAM)")
        scheme = url.scheme
        servers.append(part if url.port else f"{part}:{port}")
    if not servers:
        raise ConfigError(f"{text!r} names no NATS server")
    return servers


def display(servers: list[str]) -> str:
    """The servers for a log line, without any credentials."""
    shown = []
    for server in servers:
        url = urlsplit(server)
        shown.append(f"{url.scheme}://{url.hostname}:{url.port}")
    return ",".join(shown)
