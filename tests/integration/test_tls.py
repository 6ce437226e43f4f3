"""TLS: a broker with --tls-cert/--tls-key (and --tls-ca for client certificates), clients
on tls://HOST:PORT with --tls-ca, against a throwaway CA made here with `cryptography`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker import Client
from broker.errors import BrokerError, ConfigError, ConnectError, HandshakeRefusedError
from broker.tls import TlsFiles
from tests.helpers import LURKERS, Processes, rss_mib, run_command, take


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusts nothing of the above


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    _write(directory / "ca.pem", _certificate("test CA", ca_key, "test CA", ca_key, ca=True),
           None)
    _write(directory / "other-ca.pem",
           _certificate("other CA", other_key, "other CA", other_key, ca=True), None)
    server_key, client_key = _key(), _key()
    _write(directory / "server.pem",
           _certificate("broker", server_key, "test CA", ca_key, ip="127.0.0.1"), server_key)
    _write(directory / "client.pem", _certificate("client", client_key, "test CA", ca_key),
           client_key)
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
               directory / "client.pem", directory / "client.key", directory / "other-ca.pem")


def tls_address(port: int) -> str:
    return f"tls://127.0.0.1:{port}"


async def test_publish_and_subscribe_over_tls_deliver_everything(processes: Processes,
                                                                 pki: Pki) -> None:
    broker = await processes.broker("--tls-cert", str(pki.server_cert),
                                    "--tls-key", str(pki.server_key))
    trust = TlsFiles(ca=pki.ca)
    address = tls_address(broker.port)
    async with Client(address, name="sub", tls=trust) as consumer, \
               Client(address, name="pub", tls=trust) as producer:
        sub = await consumer.subscribe("demo.>")
        for n in range(2_000):
            await producer.publish("demo.tls", n)
        messages = await take(sub, 2_000)
    assert [m.data for m in messages] == list(range(2_000))
    assert "with TLS" in broker.log()
    # The command line: the same flags on every client.
    code, out, err = await run_command("-m", "slipstream", "pub", "demo.tls", "1", "--broker",
                                       address, "--tls-ca", str(pki.ca))
    assert (code, out) == (0, "published demo.tls #2001\n"), err


async def test_a_certificate_not_trusted_is_refused_with_what_to_do(processes: Processes,
                                                                   pki: Pki) -> None:
    broker = await processes.broker("--tls-cert", str(pki.server_cert),
                                    "--tls-key", str(pki.server_key))
    with pytest.raises(HandshakeRefusedError, match=r"TLS certificate is not trusted .*--tls-ca"):
        await Client(tls_address(broker.port), tls=TlsFiles(ca=pki.other_ca)).connect()
    code, _, err = await run_command("-m", "slipstream", "stats", "--broker",
                                     tls_address(broker.port), "--tls-ca", str(pki.other_ca))
    assert code == 2 and "not trusted" in err.strip().splitlines()[-1]
    # A plain client at a TLS broker is told where to look.
    with pytest.raises(ConnectError, match=r"tls://HOST:PORT"):
        await Client(f"127.0.0.1:{broker.port}").connect()
    # ... and a TLS client at a plain broker.
    plain = await processes.broker()
    with pytest.raises(ConnectError, match=r"TLS with broker .* failed"):
        await Client(tls_address(plain.port), tls=TlsFiles(ca=pki.ca)).connect()


async def test_with_tls_ca_the_broker_requires_a_client_certificate(processes: Processes,
                                                                   pki: Pki) -> None:
    broker = await processes.broker("--tls-cert", str(pki.server_cert), "--tls-key",
                                    str(pki.server_key), "--tls-ca", str(pki.ca))
    address = tls_address(broker.port)
    with pytest.raises(HandshakeRefusedError, match="client certificate"):
        async with Client(address, tls=TlsFiles(ca=pki.ca), reconnect=False) as client:
            await client.ping()
    mutual = TlsFiles(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    async with Client(address, name="pub", tls=mutual) as client:
        assert await client.publish("demo.mtls", 1, confirm=True) == 1
    assert "client certificates required" in broker.log()


async def test_unusable_tls_files_are_exit_2_with_the_file_named(pki: Pki,
                                                                 tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    code, _, err = await run_command("-m", "broker", "--port", "0", "--tls-cert", str(junk),
                                     "--tls-key", str(pki.server_key))
    assert code == 2 and f"--tls-cert {junk}" in err.strip().splitlines()[-1]
    code, _, err = await run_command("-m", "broker", "--port", "0", "--tls-cert",
                                     str(pki.server_cert))
    assert code == 2 and "TLS needs both --tls-cert and --tls-key" in err
    with pytest.raises(ConfigError, match=r"--tls-ca .*no such file"):
        Client("tls://127.0.0.1:1", tls=TlsFiles(ca=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="reached at tls://HOST:PORT"):
        Client("127.0.0.1:1", tls=TlsFiles(ca=pki.ca))


async def test_listening_beyond_loopback_without_tls_warns(pki: Pki) -> None:
    from broker.__main__ import exposure_warning
    from broker.server.server import BrokerConfig

    assert "without TLS" in (exposure_warning(BrokerConfig(host="0.0.0.0", token="t")) or "")
    warning = exposure_warning(BrokerConfig(host="0.0.0.0")) or ""
    assert "without --users (or --token) or TLS" in warning
    secured = BrokerConfig(host="0.0.0.0", token="t",
                           tls=TlsFiles(cert=pki.server_cert, key=pki.server_key))
    assert exposure_warning(secured) is None



async def test_a_client_certificate_is_its_user_s_credential(processes: Processes, pki: Pki,
                                                             tmp_path: Path) -> None:
    """--users with cert = "client": the certificate's CN is who the client is, without a
    password; its rules apply, and a password for another user is still checked."""
    users = tmp_path / "users.toml"
    users.write_text('[users.client]\ncert = "client"\npublish = ["cam.>"]\n'
                     'subscribe = ["cam.>"]\n\n[users.other]\ncert = "someone-else"\n'
                     'publish = [">"]\n')
    broker = await processes.broker("--tls-cert", str(pki.server_cert), "--tls-key",
                                    str(pki.server_key), "--tls-ca", str(pki.ca), "--users",
                                    str(users))
    files = TlsFiles(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    async with Client(tls_address(broker.port), name="cam", tls=files) as cam:
        sub = await cam.subscribe("cam.>")
        await cam.publish("cam.lap", 1, confirm=True)
        assert [m.data for m in await take(sub, 1)] == [1]
        with pytest.raises(BrokerError) as refused:
            await cam.publish("live.x", 1, confirm=True)
        assert refused.value.code == "permission_denied"
        assert "user 'client' may not publish to 'live.x'" in refused.value.text
    with pytest.raises(HandshakeRefusedError, match="user or password wrong"):
        await Client(tls_address(broker.port), tls=files, user="other",
                     reconnect=False).connect()


async def test_stalled_tls_handshakes_count_from_accept_and_cannot_lock_clients_out(
        processes: Processes, pki: Pki) -> None:
    """Issue 24: 12,000 stalled TLS handshakes were all accepted (RSS 29 -> 611 MB), as the
    handshake ran before the broker counted the connection. 2,000 sockets that send nothing
    and come back when dropped now hold at most --max-connections, the oldest silent
    handshake makes room, legitimate TLS clients get in, and memory stays small."""
    broker = await processes.broker("--tls-cert", str(pki.server_cert), "--tls-key",
                                    str(pki.server_key), "--max-connections", "300",
                                    "--handshake-timeout", "30")
    pid = broker.process.pid
    lurkers = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", LURKERS, str(broker.port), "1000", "8") for _ in range(2)]
    most_fds, served = 0, 0
    try:
        await asyncio.sleep(1.0)  # the flood is on
        for _ in range(30):
            most_fds = max(most_fds, len(os.listdir(f"/proc/{pid}/fd")))
            client = Client(tls_address(broker.port), name="legit", tls=TlsFiles(ca=pki.ca),
                            reconnect=False, connect_timeout_s=3)
            with contextlib.suppress(ConnectError, HandshakeRefusedError):
                await client.connect()
                await client.ping()
                served += 1
            await client.close()
            await asyncio.sleep(0.05)
        peak_mib = rss_mib(pid, "VmHWM")
    finally:
        for lurker in lurkers:
            if lurker.returncode is None:
                lurker.kill()
            await lurker.wait()
    assert served >= 27, f"only {served} of 30 TLS clients got in"
    assert most_fds <= 300 + 20, f"the broker held {most_fds} file descriptors"
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
    async with Client(tls_address(broker.port), tls=TlsFiles(ca=pki.ca)) as client:
        counters = (await client.stats())["server"]["counters"]
    assert counters["dropped_handshakes"] + counters["refused_connections"] > 1000
