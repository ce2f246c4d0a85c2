"""TLS between the controller and a switch (mutual authentication), and TLS option errors."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from controller.base.errors import InputError, SwitchError
from controller.base.p4info import P4Schema
from controller.p4rt.session import Session, SwitchTarget, TlsOptions
from refswitch.server import P4RuntimeService
from refswitch.switch import Switch
from svcfp.cli import main
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
    with pytest.raises(InputError, match="--tls-cert and --tls-key must be given together"):
        TlsOptions(cert=tmp_path / "c.crt").credentials()
    missing = tmp_path / "missing.crt"
    with pytest.raises(InputError, match=f"--tls-ca {missing}: cannot read: No such file"):
        TlsOptions(ca=missing).credentials()


def written(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@needs_openssl
def test_empty_or_non_pem_tls_files_are_refused_naming_the_option(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    empty = written(tmp_path, "empty.pem", "")
    blank = written(tmp_path, "blank.pem", "\n \n")
    text = written(tmp_path, "notes.txt", "not a certificate\n")
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a" + bytes(64))
    ca, cert, key = pki["ca.crt"], pki["client.crt"], pki["client.key"]
    locked = tmp_path / "locked.key"
    subprocess.run(
        ["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:x", "-out", locked],
        check=True,
        capture_output=True,
    )
    cases = [
        (TlsOptions(empty), f"--tls-ca {empty}: empty file, expected a PEM CA certificate"),
        (TlsOptions(blank), f"--tls-ca {blank}: empty file, expected a PEM CA certificate"),
        (TlsOptions(text), f"--tls-ca {text}: not a PEM CA certificate"),
        (TlsOptions(der), f"--tls-ca {der}: not a PEM CA certificate"),
        (TlsOptions(ca, empty, key), f"--tls-cert {empty}: empty file, expected a PEM certificate"),
        (TlsOptions(ca, text, key), f"--tls-cert {text}: not a PEM certificate"),
        (TlsOptions(ca, key, key), f"--tls-cert {key}: not a PEM certificate"),
        (TlsOptions(ca, cert, empty), f"--tls-key {empty}: empty file, expected a PEM private key"),
        (TlsOptions(ca, cert, text), f"--tls-key {text}: not a PEM private key"),
        (TlsOptions(ca, cert, cert), f"--tls-key {cert}: not a PEM private key"),
        (
            TlsOptions(ca, cert, locked),
            f"--tls-key {locked}: an encrypted private key; gRPC needs it unencrypted",
        ),
        (
            TlsOptions(ca, cert, pki["server.key"]),
            f"--tls-cert {cert} / --tls-key {pki['server.key']}: not a PEM certificate chain "
            "and its private key",
        ),
    ]
    for options, message in cases:
        for check in (options.check, options.credentials):
            with pytest.raises(InputError) as refused:
                check()
            assert str(refused.value).startswith(message), (options, str(refused.value))
    TlsOptions(ca, cert, key).check()
    TlsOptions(ca).check()


def test_the_controller_refuses_an_unusable_tls_file_before_it_connects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = written(tmp_path, "empty.pem", "")
    text = written(tmp_path, "notes.txt", "not a certificate\n")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        cases = [
            (("--tls-ca", str(empty)), f"--tls-ca {empty}: empty file, expected a PEM CA"),
            (("--tls-ca", str(text)), f"--tls-ca {text}: not a PEM CA certificate"),
            (
                ("--tls-cert", str(text), "--tls-key", str(empty)),
                f"--tls-cert {text}: not a PEM certificate",
            ),
            (("--tls-cert", str(text)), "--tls-cert and --tls-key must be given together"),
        ]
        for tls, message in cases:
            status = main(
                [
                    *("run", "--p4info", str(P4INFO), "--grpc-addr", address),
                    *("--device-id", "0", "--db", str(tmp_path / "svcfp.db"), *tls),
                ]
            )
            assert status == 2
            assert message in capsys.readouterr().err
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert not (tmp_path / "svcfp.db").exists()


def test_a_switches_file_names_its_unusable_tls_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = written(tmp_path, "empty.pem", "")
    switches = tmp_path / "switches.json"
    switches.write_text(
        json.dumps([{"grpc_addr": "127.0.0.1:1", "device_id": 0, "tls": {"ca": str(empty)}}])
    )
    args = ["run", "--p4info", str(P4INFO), "--switches", str(switches)]
    assert main([*args, "--db", str(tmp_path / "svcfp.db")]) == 2
    assert (
        f"{switches}: switch #0: tls.ca {empty}: empty file, expected a PEM CA certificate"
        in capsys.readouterr().err
    )
