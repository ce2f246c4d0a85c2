"""TLS between the controller and a switch (mutual authentication), and TLS option errors."""

from __future__ import annotations

import asyncio
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from controller.base.errors import InputError, SwitchError
from controller.base.p4info import P4Schema
from controller.p4rt.session import Session, SwitchTarget, TlsOptions
from refswitch.server import P4RuntimeService
from refswitch.switch import Switch
from tests.support.paths import P4INFO
from tests.support.pki import make_pki, needs_openssl


@needs_openssl
def test_mutual_tls_session_pushes_and_reads(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    switch = Switch(0)
    service = P4RuntimeService(switch)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((service.handler(),))
    credentials = grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.crt"].read_bytes())],
        root_certificates=pki["ca.crt"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    schema = P4Schema.load(P4INFO)

    async def scenario(tls: TlsOptions, timeout: float) -> int:
        target = SwitchTarget("tls", f"127.0.0.1:{port}", 0, election_id=(0, 2), tls=tls)
        async with Session(target, connect_timeout=timeout) as session:
            await session.ensure_pipeline(schema, b"", skip_config=False)
            values = await session.read_counter(schema.counter("service_hits"))
            return len(values.packets)

    try:
        full = TlsOptions(pki["ca.crt"], pki["client.crt"], pki["client.key"])
        assert asyncio.run(scenario(full, 5.0)) == 262_144
        with pytest.raises(SwitchError, match="is unreachable"):
            asyncio.run(scenario(TlsOptions(pki["ca.crt"]), 1.0))
    finally:
        server.stop(0)
        switch.close()


def test_tls_option_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="certificate and key must be given together"):
        TlsOptions(cert=tmp_path / "c.crt").credentials()
    with pytest.raises(InputError, match=r"cannot read TLS file .*missing.crt"):
        TlsOptions(ca=tmp_path / "missing.crt").credentials()
