"""The operator's API client keeps the kubeconfig's TLS settings (it builds its own connection pool, see client.py):
the cluster's CA is trusted, and a server whose certificate that CA did not sign is refused."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl

import aiohttp.web
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lightkube import KubeConfig

from graft_operator import client


def _self_signed(tmp_path, name: str) -> tuple[bytes, ssl.SSLContext]:
    """A certificate for 127.0.0.1 signed by itself (so it is its own CA), and a server context serving it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / f"{name}.crt").write_bytes(pem)
    (tmp_path / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    return pem, ctx


def _kubeconfig(server: str, ca_pem: bytes) -> KubeConfig:
    return KubeConfig.from_dict({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                                "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]})


@pytest.mark.parametrize("trusted", [True, False], ids=["cluster-ca", "another-ca"])
def test_the_kubeconfig_ca_is_what_the_client_trusts(tmp_path, trusted):
    server_pem, server_ctx = _self_signed(tmp_path, "apiserver")
    other_pem, _ = _self_signed(tmp_path, "other")

    async def secret(request: aiohttp.web.Request) -> aiohttp.web.Response:
        assert request.headers["Authorization"] == "Bearer t"
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Secret", "data": {},
                                          "metadata": {"name": "s3", "namespace": "ml"}})

    async def scenario():
        app = aiohttp.web.Application()
        app.router.add_get("/api/v1/namespaces/ml/secrets/s3", secret)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        kube = client.Kube(_kubeconfig(f"https://127.0.0.1:{port}", server_pem if trusted else other_pem))
        try:
            if trusted:
                assert (await kube.get("Secret", "s3", "ml"))["metadata"]["name"] == "s3"
            else:
                with pytest.raises(client.Errors) as refused:
                    await kube.get("Secret", "s3", "ml")
                assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(scenario())
