"""The Tofino target: the packed device config, the TNA P4Info (both of its forms) against the
contract, the resource summary, `make build TARGET=tofino`, and a fresh compile with the Tofino
compiler compared with the committed P4Info."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i

from controller.base import contract
from controller.base.errors import InputError, SvcfpError
from controller.base.p4info import P4Schema
from controller.control.config import RunConfig, SwitchSpec
from controller.control.controller import read_device_config
from controller.p4rt import tofino
from svcfp.cli import build_parser
from svcfp.cli import run as run_cli

ROOT = Path(__file__).resolve().parent.parent
TNA_SOURCE = ROOT / "p4src" / "fingerprint_tna.p4"
TNA_P4INFO = ROOT / "p4src" / "fingerprint_tna.p4info.txtpb"
V1_P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
P4C = tofino.find_tofino_p4c()
needs_compiler = pytest.mark.skipif(
    P4C is None, reason=f"the Tofino compiler is not installed ({tofino.DEFAULT_P4C})"
)


def test_packed_device_config_is_name_binary_context_with_little_endian_lengths() -> None:
    packed = tofino.pack_device_config("fp", b"\x01\x02\x03", b'{"a": 1}')
    assert packed == (
        b"\x02\x00\x00\x00fp" + b"\x03\x00\x00\x00\x01\x02\x03" + b'\x08\x00\x00\x00{"a": 1}'
    )


def test_device_config_of_a_compiler_output_folder(tmp_path: Path) -> None:
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "tofino.bin").write_bytes(bytes(range(256)) * 2)
    (tmp_path / "pipe" / "context.json").write_bytes(b"{}")
    packed = tofino.device_config(tmp_path, "fingerprint_tna")
    name = b"fingerprint_tna"
    assert packed == (
        len(name).to_bytes(4, "little")
        + name
        + (512).to_bytes(4, "little")
        + bytes(range(256)) * 2
        + (2).to_bytes(4, "little")
        + b"{}"
    )
    with pytest.raises(InputError, match=r"tofino2\.bin"):
        tofino.device_config(tmp_path, "fingerprint_tna", "tofino2")


def test_svcfp_run_target_tofino_pushes_the_packed_config(tmp_path: Path) -> None:
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "tofino.bin").write_bytes(b"BIN")
    (tmp_path / "pipe" / "context.json").write_bytes(b"CTX")
    switch = (SwitchSpec("s1", "127.0.0.1:1", 0),)
    run = RunConfig(switches=switch, p4info=TNA_P4INFO, target="tofino", tofino_out=tmp_path)
    assert read_device_config(run) == (
        b"\x0f\x00\x00\x00fingerprint_tna\x03\x00\x00\x00BIN\x03\x00\x00\x00CTX"
    )
    with pytest.raises(InputError, match="--tofino-out"):
        read_device_config(RunConfig(switches=switch, p4info=TNA_P4INFO, target="tofino"))


def test_svcfp_run_parses_target_and_tofino_out(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--grpc-addr",
            "127.0.0.1:1",
            "--device-id",
            "0",
            "--p4info",
            str(TNA_P4INFO),
            "--target",
            "tofino",
            "--tofino-out",
            str(tmp_path),
        ]
    )
    merged, switches = run_cli.resolve(args)
    config = run_cli.config_from_args(merged, switches)
    assert (config.target, config.tofino_out, config.program_name) == (
        "tofino",
        tmp_path,
        "fingerprint_tna",
    )


def test_committed_tna_p4info_carries_the_contract_by_name() -> None:
    tna, v1 = P4Schema.load(TNA_P4INFO), P4Schema.load(V1_P4INFO)
    assert tna.p4info.pkg_info.arch == "tna"
    layout = tofino.source_layout(TNA_SOURCE)
    assert (tna.contract.max_devices, tna.contract.max_services) == layout
    assert tna.contract.counter_size == layout[0] * layout[1]
    # Tables and actions keep the v1model program's pinned ids; the externs' are the compiler's.
    for name in contract.TABLES:
        assert tna.table(name).id == v1.table(name).id
        assert tna.table(name).match_fields == v1.table(name).match_fields
    for name in contract.ACTIONS:
        assert tna.action(name) == v1.action(name)
    counter = tna.counter(contract.COUNTER)
    assert (counter.unit, counter.size) == ("BOTH", tna.contract.counter_size)
    assert tna.digest(contract.NEW_DEVICE_DIGEST).members == contract.DIGEST_MEMBERS
    assert tna.register(contract.DIGEST_MAC).bitwidth == 64
    assert tna.register(contract.DIGEST_TIME).bitwidth == 32


def test_tna_registers_with_v1model_widths_are_refused() -> None:
    schema = P4Schema.load(TNA_P4INFO)
    changed = p4i.P4Info()
    changed.CopyFrom(schema.p4info)
    changed.pkg_info.arch = "v1model"
    with pytest.raises(InputError, match=r"register IngressImpl.digest_mac is bit<64>"):
        _ = P4Schema(changed).contract


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def barefoot_form(standard: p4i.P4Info) -> p4i.P4Info:
    """What bf-p4c writes without --p4runtime-force-std-externs: the counter, registers and
    digest as Barefoot externs with ids of their own, tables under the pipeline's name."""
    message = p4i.P4Info()
    message.CopyFrom(standard)
    del message.counters[:], message.registers[:], message.digests[:]
    for table in message.tables:
        table.preamble.name = "pipe." + table.preamble.name
    kinds: list[tuple[int, str, int, Any]] = [
        (131, "Counter", 0x83000001, standard.counters),
        (139, "Register", 0x8B000001, standard.registers),
        (142, "Digest", 0x8E000001, standard.digests),
    ]
    for type_id, kind, first_id, items in kinds:
        extern = message.externs.add(extern_type_id=type_id, extern_type_name=kind)
        for number, item in enumerate(items):
            instance = extern.instances.add()
            instance.preamble.CopyFrom(item.preamble)
            instance.preamble.id = first_id + number
            instance.preamble.name = "pipe." + item.preamble.name
            instance.info.type_url = f"type.googleapis.com/barefoot.{kind}"
            spec = item.spec if kind == "Counter" else item.type_spec
            info = _field(1, spec.SerializeToString())
            if kind != "Digest":
                info += _field(2, item.size)
            instance.info.value = info
    return message


def test_barefoot_externs_are_read_by_name_with_the_extern_ids() -> None:
    standard = P4Schema.load(TNA_P4INFO)
    schema = P4Schema(barefoot_form(standard.p4info), source="barefoot")
    assert schema.contract == standard.contract
    counter = schema.counter(contract.COUNTER)
    assert (counter.id, counter.unit, counter.size) == (
        0x83000001,
        "BOTH",
        standard.contract.counter_size,
    )
    assert schema.counter(0x83000001) is counter
    assert schema.register(contract.DIGEST_TIME).id == 0x8B000002
    assert schema.digest(contract.NEW_DEVICE_DIGEST).id == 0x8E000001
    assert schema.table(contract.DEVICE_TABLE).id == standard.table(contract.DEVICE_TABLE).id
    # The message pushed to a switch is the one given, not the standard form.
    assert "Counter" in {e.extern_type_name for e in schema.p4info.externs}
    assert not schema.p4info.counters


def test_barefoot_text_p4info_is_refused_naming_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "bf.p4info.txtpb"
    path.write_text(
        'externs { extern_type_id: 131 extern_type_name: "Counter" instances { preamble { id: 1 '
        'name: "c" } info { [type.googleapis.com/barefoot.Counter] { size: 4 } } } }\n'
    )
    with pytest.raises(InputError, match="--p4runtime-force-std-externs"):
        P4Schema.load(path)


def test_replace_between_markers_and_missing_markers() -> None:
    text = f"a\n{tofino.RESOURCES_BEGIN}\nold\n{tofino.RESOURCES_END}\nb\n"
    assert tofino.replace_between(
        text, tofino.RESOURCES_BEGIN, tofino.RESOURCES_END, "new\n", "README"
    ) == (f"a\n{tofino.RESOURCES_BEGIN}\nnew\n{tofino.RESOURCES_END}\nb\n")
    with pytest.raises(InputError, match="README: markers"):
        tofino.replace_between("a\n", tofino.RESOURCES_BEGIN, tofino.RESOURCES_END, "", "README")


def test_build_without_the_compiler_says_so_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "build",
        "--p4",
        str(TNA_SOURCE),
        "--p4info",
        str(TNA_P4INFO),
        "--out",
        str(tmp_path / "out"),
        "--readme",
        str(tmp_path / "README.md"),
    ]
    assert tofino.main(argv, environ={tofino.P4C_ENV: str(tmp_path / "no-p4c")}) == 0
    assert "Tofino compiler not found" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@needs_compiler
@pytest.mark.parametrize("chip", sorted(tofino.CHIPS))
def test_fresh_compile_matches_the_committed_p4info_and_fits(tmp_path: Path, chip: str) -> None:
    assert P4C is not None
    build = tofino.compile_tna(P4C, TNA_SOURCE, tmp_path / "out", chip)
    if chip == "tofino":
        assert build.p4info.read_text() == TNA_P4INFO.read_text()
    else:
        fresh = P4Schema.load(build.p4info)
        assert fresh.p4info.pkg_info.arch == "t2na"
        assert fresh.contract == P4Schema.load(TNA_P4INFO).contract
    found = tofino.read_resources(build.logs)
    assert 0 < found.stages_used <= found.stages
    assert found.stages == (12 if chip == "tofino" else 20)
    assert found.sram > 0 and found.tcam > 0 and found.phv_bits > 0
    # The committed table is the compiler's summary of exactly this build.
    devices, services = tofino.source_layout(TNA_SOURCE)
    row = tofino.resource_row(tofino.CHIPS[chip], devices, services, found)
    assert row in (ROOT / "p4src" / "README.md").read_text()
    packed = tofino.device_config(build.out, "fingerprint_tna", chip)
    assert packed.startswith(b"\x0f\x00\x00\x00fingerprint_tna")
    assert len(packed) == 12 + 15 + build.binary.stat().st_size + build.context_json.stat().st_size


@needs_compiler
def test_the_barefoot_form_the_compiler_writes_reads_as_the_committed_p4info(
    tmp_path: Path,
) -> None:
    assert P4C is not None
    build = tofino.compile_tna(P4C, TNA_SOURCE, tmp_path / "out", "tofino", std_externs=False)
    barefoot, committed = P4Schema.load(build.p4info), P4Schema.load(TNA_P4INFO)
    assert not barefoot.p4info.counters and barefoot.p4info.externs
    assert barefoot.contract == committed.contract
    counter = barefoot.counter(contract.COUNTER)
    assert counter.id >> 24 == 0x83, "a Barefoot counter id"
    assert (counter.name, counter.unit, counter.size) == (
        contract.COUNTER,
        "BOTH",
        committed.contract.counter_size,
    )
    for name in contract.TABLES:
        assert barefoot.table(name) == committed.table(name)
    assert barefoot.digest(contract.NEW_DEVICE_DIGEST).members == contract.DIGEST_MEMBERS


@needs_compiler
def test_a_layout_beyond_one_stage_does_not_fit_and_says_why(tmp_path: Path) -> None:
    assert P4C is not None
    attempts = tofino.search_layouts(
        P4C, TNA_SOURCE, tmp_path, "tofino", services=(256,), step=256, first=256
    )
    assert [(a.devices, a.resources is not None) for a in attempts] == [(256, True), (512, False)]
    assert "131072 entries of Counter IngressImpl.service_hits" in attempts[1].reason
    assert tofino.largest(attempts) is attempts[0]
    table = tofino.layouts_table(attempts)
    assert "| Tofino 1 | 256 | 256 | 65536 |" in table
    assert "| 512: Could not place table" in table


@needs_compiler
@pytest.mark.parametrize(
    ("define", "message"),
    [
        ("MAX_SERVICES=100", "MAX_SERVICES must be a power of two"),
        ("DIGEST_CACHE_SIZE=100", "DIGEST_CACHE_SIZE must be a power of two"),
    ],
)
def test_sizes_tofino_cannot_index_are_refused_naming_the_constant(
    tmp_path: Path, define: str, message: str
) -> None:
    assert P4C is not None
    name, _, value = define.partition("=")
    with pytest.raises(SvcfpError, match=message):
        tofino.compile_tna(P4C, TNA_SOURCE, tmp_path, "tofino", {name: value})
    assert not (tmp_path / "pipe").exists()
