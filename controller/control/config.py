"""What a controller run is asked to do: the switches it programs and every setting of the run.

The values are checked where they are made, so a bad one is refused as bad input (exit status 2)
naming the setting, before any switch is contacted or anything is stored: a NaN interval would
be a busy loop, a device id outside 64 bits cannot be sent, a port past 9 bits cannot be
programmed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.base.checks import UINT64_LIMIT, check_device_id, check_grpc_addr, check_port
from controller.base.errors import InputError
from controller.base.fileio import read_json
from controller.base.p4info import normalize_mac
from controller.control.alerts import AlertSettings
from controller.control.live import LiveSettings
from controller.control.registry import RegisterPolicy
from controller.engine.activity import MAX_UNIT_SECONDS
from controller.p4rt.session import Role, TlsOptions
from controller.store.storage import redacted
from controller.store.store import DEFAULT_DB_TIMEOUT

# Read-only clients (a monitor, an operator's p4runtime-shell at 0,1) stay below the primary.
PRIMARY_ELECTION_ID = (0, 10)
MONITOR_ELECTION_ID = (0, 5)
# Shorter intervals or units than this are a busy loop rather than a measurement.
MIN_SECONDS = 0.01
# Idle devices registered from digests are evicted after this many time units by default.
DEFAULT_IDLE_UNITS = 24
ExportFormat = Literal["csv", "parquet"]


def check_seconds(
    name: str, value: float, *, minimum: float = MIN_SECONDS, maximum: float = math.inf
) -> float:
    """`value` if it is a finite number of seconds in [`minimum`, `maximum`], else InputError."""
    if not math.isfinite(value) or value < minimum:
        raise InputError(f"{name} {value!r}: expected a finite number of seconds ≥ {minimum:g}")
    if value > maximum:
        raise InputError(f"{name} {value!r}: expected at most {maximum:g} seconds")
    return value


@dataclass(frozen=True)
class SwitchSpec:
    """One switch the controller programs: its name, address, device id, flood ports, MACs.

    `tap`, `cpu_port`, `register_rate` and `tls`, when given, override the run's setting for
    this switch alone (a mirror port on one switch, a CPU port on another).
    """

    name: str
    grpc_addr: str
    device_id: int
    ports: tuple[int, ...] = ()
    l2: dict[str, int] = field(default_factory=dict)
    tap: bool | None = None
    cpu_port: int | None = None
    register_rate: RegisterRate | None = None
    tls: TlsOptions | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise InputError("a switch needs a name")
        check_grpc_addr(self.grpc_addr)
        check_device_id(self.device_id)
        for port in self.ports:
            check_port("--ports: port", port)
        for mac, port in self.l2.items():
            check_port(f"switch {self.name}: port of {mac}", port)
        if self.cpu_port is not None:
            check_port(f"switch {self.name}: cpu_port", self.cpu_port)


# The keys a switch may have in a switches file (JSON) or a run's config file (TOML).
SWITCH_KEYS = frozenset(
    {"name", "grpc_addr", "device_id", "ports", "l2", "tap", "cpu_port", "register_rate", "tls"}
)


def switch_from_mapping(item: Any, where: str, index: int) -> SwitchSpec:
    """A switch from one entry of a switches file or a config file (InputError naming `where`)."""
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object")
    unknown = sorted(set(item) - SWITCH_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown keys {', '.join(unknown)}")
    try:
        tls = item.get("tls")
        rate = item.get("register_rate")
        cpu_port = item.get("cpu_port")
        tap = item.get("tap")
        if not isinstance(item.get("ports", []), list):
            raise ValueError(
                f"ports {item['ports']!r}: expected a list of port numbers, e.g. [0, 1]"
            )
        options = None
        if tls is not None:
            ca, cert, key = (Path(tls[k]) if tls.get(k) else None for k in ("ca", "cert", "key"))
            options = TlsOptions(ca, cert, key, names=("tls.ca", "tls.cert", "tls.key"))
            options.check()
        return SwitchSpec(
            name=str(item.get("name", f"s{index + 1}")),
            grpc_addr=str(item["grpc_addr"]),
            device_id=int(item["device_id"]),
            ports=tuple(int(p) for p in item.get("ports", ())),
            l2={normalize_mac(m): int(p) for m, p in dict(item.get("l2", {})).items()},
            tap=None if tap is None else bool(tap),
            cpu_port=None if cpu_port is None else int(cpu_port),
            register_rate=None if rate is None else RegisterRate.parse(str(rate)),
            tls=options,
        )
    except KeyError as exc:
        raise InputError(f"{where}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, InputError) as exc:
        raise InputError(f"{where}: {exc}") from None


def check_unique_names(specs: list[SwitchSpec], source: str) -> None:
    """Refuse two switches of one name."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"{source}: switch names must be unique")


def load_switches(path: Path) -> list[SwitchSpec]:
    """Parse a JSON list of {name, grpc_addr, device_id, ports[, l2, tap, cpu_port,
    register_rate, tls]}."""
    data = read_json(path, "switches file")
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty JSON list of switches")
    specs = [switch_from_mapping(item, f"{path}: switch #{i}", i) for i, item in enumerate(data)]
    check_unique_names(specs, str(path))
    return specs


@dataclass(frozen=True)
class RegisterRate:
    """At most `count` devices registered (or MACs learned) per switch port per `seconds`.

    A host sending frames from random source MACs then costs one port its budget, not the
    device table.
    """

    count: int = 8
    seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InputError(f"--register-rate {self.count}/{self.seconds:g}: count must be ≥ 1")
        check_seconds("--register-rate: seconds", self.seconds)

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"

    @classmethod
    def parse(cls, text: str) -> RegisterRate:
        """`COUNT/SECONDS`, e.g. `8/60`."""
        count, sep, seconds = text.partition("/")
        try:
            return cls(int(count), float(seconds) if sep else 60.0)
        except ValueError:
            raise InputError(
                f"--register-rate {text!r}: expected COUNT/SECONDS, e.g. 8/60"
            ) from None


@dataclass(frozen=True)
class RunConfig:
    """Everything a controller run was asked to do (`svcfp run`, the testbed, the demo).

    `idle_timeout` None evicts devices registered from digests after DEFAULT_IDLE_UNITS silent
    time units; 0 never evicts.
    """

    switches: tuple[SwitchSpec, ...]
    p4info: Path
    bmv2_json: Path | None = None
    # "bmv2": the device config is the BMv2 JSON (`bmv2_json`); "tofino"/"tofino2": it is packed
    # from the Tofino compiler's output folder `tofino_out` under `program_name`.
    target: str = "bmv2"
    tofino_out: Path | None = None
    program_name: str = "fingerprint_tna"
    skip_config: bool = False
    election_id: tuple[int, int] = PRIMARY_ELECTION_ID
    role: Role = "primary"
    tls: TlsOptions | None = None
    cpu_port: int | None = None
    interval: float = 5.0
    time_unit: float = 3600.0
    db: Path | str = Path("svcfp.db")
    # Controllers sharing one database each keep their devices and switches in a scope.
    scope: str = ""
    db_timeout: float = DEFAULT_DB_TIMEOUT
    catalogue: Path | None = None
    devices: Path | None = None
    policy: RegisterPolicy = field(default_factory=lambda: RegisterPolicy("all"))
    register_rate: RegisterRate = field(default_factory=RegisterRate)
    capacity: int | None = None
    idle_timeout: float | None = None
    tap: bool = False
    log_dir: Path | None = None
    export_dir: Path | None = None
    export_format: ExportFormat = "csv"
    duration: float | None = None
    connect_timeout: float = 10.0
    reconnect_delay: float = 1.0
    # Settings of the live exporter and identification (controller/control/live.py).
    live: LiveSettings | None = None
    alerts: AlertSettings = field(default_factory=AlertSettings)

    def __post_init__(self) -> None:
        if not self.switches:
            raise InputError("no switch to program")
        names = [s.name for s in self.switches]
        if len(set(names)) != len(names):
            raise InputError(f"switch names must be unique: {', '.join(names)}")
        high, low = self.election_id
        if not (0 <= high < UINT64_LIMIT and 0 <= low < UINT64_LIMIT) or (high, low) == (0, 0):
            raise InputError(f"--election-id {high},{low}: two 64-bit halves, not both 0")
        if self.cpu_port is not None:
            check_port("--cpu-port", self.cpu_port)
        check_seconds("--interval", self.interval)
        check_seconds("--time-unit", self.time_unit, maximum=MAX_UNIT_SECONDS)
        check_seconds("--connect-timeout", self.connect_timeout, minimum=0.1, maximum=3600.0)
        check_seconds("--db-timeout", self.db_timeout, minimum=1.0, maximum=3600.0)
        check_seconds("reconnect delay", self.reconnect_delay, minimum=0.0)
        if self.duration is not None:
            check_seconds("--duration", self.duration)
        if self.idle_timeout is not None:
            check_seconds("--idle-timeout", self.idle_timeout, minimum=0.0)
        if self.capacity is not None and self.capacity < 1:
            raise InputError(f"--capacity {self.capacity}: at least one device")
        if self.export_format not in ("csv", "parquet"):
            raise InputError(f"--export-format {self.export_format!r}: csv or parquet")

    def tap_of(self, spec: SwitchSpec) -> bool:
        """Whether `spec` runs in tap mode (its own setting, else the run's)."""
        return self.tap if spec.tap is None else spec.tap

    def cpu_port_of(self, spec: SwitchSpec) -> int | None:
        """The CPU port of `spec` (its own setting, else the run's)."""
        return self.cpu_port if spec.cpu_port is None else spec.cpu_port

    def register_rate_of(self, spec: SwitchSpec) -> RegisterRate:
        """The registration rate limit on the ports of `spec`."""
        return self.register_rate if spec.register_rate is None else spec.register_rate

    def tls_of(self, spec: SwitchSpec) -> TlsOptions | None:
        """The TLS options of the session with `spec`."""
        return self.tls if spec.tls is None else spec.tls

    def describe(self) -> dict[str, Any]:
        """Every setting as plain JSON values: what the controller logs at start."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, RegisterRate):
                return str(value)
            if isinstance(value, RegisterPolicy):
                return {"mode": value.mode, "allowlist": len(value.allowlist)}
            if isinstance(value, LiveSettings):
                refs = value.references
                return {
                    "exporter": value.exporter.to_json(),
                    "references": None
                    if refs is None
                    else {
                        "types": list(refs.types),
                        "fingerprints": len(refs.labels),
                        "theta": refs.theta,
                    },
                }
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, dict):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            return value

        described: dict[str, Any] = plain(self)
        # A password in a database URL stays out of the log.
        described["db"] = redacted(self.db)
        described["idle_seconds"] = self.idle_seconds
        return described

    @property
    def idle_seconds(self) -> float | None:
        """How long a device registered from a digest may be silent before it is evicted."""
        if self.idle_timeout is None:
            return DEFAULT_IDLE_UNITS * self.time_unit
        return self.idle_timeout or None


@dataclass
class RunStats:
    """What a run did, for logs and tests."""

    polls: int = 0
    rows: int = 0
    connects: dict[str, int] = field(default_factory=dict)
    pushes: dict[str, int] = field(default_factory=dict)
