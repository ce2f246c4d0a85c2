"""`svcfp run`: program the switches, collect their counters into a database, until stopped."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from controller.base.checks import PORT_LIMIT
from controller.base.errors import InputError
from controller.base.fileio import writable_folder
from controller.base.logformat import LOG_FORMATS, configure_logging
from controller.control import controller as control_loop
from controller.control.alerts import DEFAULT_HISTORY_THRESHOLD, AlertSettings
from controller.control.config import (
    DEFAULT_IDLE_UNITS,
    MONITOR_ELECTION_ID,
    PRIMARY_ELECTION_ID,
    RegisterRate,
    RunConfig,
    SwitchSpec,
    load_switches,
)
from controller.control.controller import log_unit
from controller.control.live import LiveSettings
from controller.control.registry import RegisterPolicy
from controller.engine.exporter import ExporterConfig
from controller.engine.identify import References
from controller.p4rt.session import Role, TlsOptions
from controller.web.settings import DEFAULT_LISTEN, TOKEN_ENV, WebSettings
from svcfp import api
from svcfp.cli import config_file
from svcfp.cli.compliance import add_mud_argument, mud_profiles_from_args
from svcfp.cli.engine import add_engine_arguments, engine_config
from svcfp.cli.inputs import DB_HELP, add_db_timeout, database_location

log = logging.getLogger("controller.control.controller")


def _election_id(text: str) -> tuple[int, int]:
    try:
        high, low = (int(part, 0) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HIGH,LOW") from None
    if high < 0 or low < 0 or (high, low) == (0, 0):
        raise argparse.ArgumentTypeError("election id must be positive")
    return high, low


def port_list(text: str) -> tuple[int, ...]:
    """Ports as `--ports` takes them: `0,1,2`, `0-3`, or both (`0-3,8`)."""
    ports: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(end) for end in part.split("-"))
                if hi < lo:
                    raise argparse.ArgumentTypeError(f"{part!r}: a range runs low-high, e.g. 0-3")
                if lo < 0 or hi >= PORT_LIMIT:
                    raise argparse.ArgumentTypeError(
                        f"{part!r}: switch ports lie in 0..{PORT_LIMIT - 1}"
                    )
                ports.extend(range(lo, hi + 1))
            elif part:
                ports.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port list like 0,1,2 or 0-3") from None
    return tuple(ports)


def _register_rate(text: str) -> RegisterRate:
    try:
        return RegisterRate.parse(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp run`."""
    parser = subparsers.add_parser(
        "run",
        help="program switches and collect per-device service activity into SQLite",
        description=control_loop.__doc__,
        track_given=True,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file with any of these settings and [[switch]] tables; flags override it",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--grpc-addr", action="append", help="switch address (repeatable)")
    where.add_argument(
        "--switches", type=Path, help="JSON list of {name, grpc_addr, device_id, ports}"
    )
    parser.add_argument(
        "--device-id", type=int, default=None, help="P4Runtime device id (with --grpc-addr)"
    )
    parser.add_argument(
        "--ports", type=port_list, default=(), help="switch ports to flood to, e.g. 0-3"
    )
    parser.add_argument(
        "--election-id",
        type=_election_id,
        default=None,
        help="HIGH,LOW (default 0,10 for a primary, 0,5 for a monitor)",
    )
    parser.add_argument("--role", choices=["primary", "monitor"], default="primary")
    parser.add_argument("--p4info", type=Path, help="P4Info of the program (required)")
    parser.add_argument("--bmv2-json", type=Path, help="device config to push (BMv2 JSON)")
    parser.add_argument(
        "--target",
        choices=["bmv2", "tofino", "tofino2"],
        default="bmv2",
        help="what the device config is: BMv2 JSON (--bmv2-json) or the Tofino compiler's output "
        "(--tofino-out) packed as Tofino P4Runtime servers take it (default bmv2)",
    )
    parser.add_argument(
        "--tofino-out", type=Path, help="Tofino compiler output folder (p4c -o), with pipe/"
    )
    parser.add_argument(
        "--program-name",
        default="fingerprint_tna",
        help="program name in a Tofino device config (default fingerprint_tna)",
    )
    parser.add_argument("--skip-config", action="store_true", help="attach to the running pipeline")
    parser.add_argument("--cpu-port", type=int, default=None)
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval, seconds")
    parser.add_argument("--time-unit", type=float, default=3600.0, help="time unit, seconds")
    parser.add_argument(
        "--db",
        type=database_location,
        default=Path("svcfp.db"),
        help=f"where activity and results go: {DB_HELP} (default: svcfp.db)",
    )
    add_db_timeout(parser)
    parser.add_argument(
        "--scope",
        default="",
        help="this controller's name in a database several controllers share: its devices "
        "and switches are its own (switch names must differ between controllers)",
    )
    parser.add_argument("--catalogue", type=Path, help="catalogue JSON (default: built-in)")
    parser.add_argument(
        "--devices",
        type=Path,
        help="static devices CSV: mac,label[,port[,switch]]; label 'infrastructure': a gateway "
        "or server, counted but never identified",
    )
    parser.add_argument(
        "--register-policy",
        default="all",
        choices=["all", "none", "allowlist"],
        help="which MACs new-device digests register (group addresses never)",
    )
    parser.add_argument(
        "--allowlist", type=Path, help="MACs registered under --register-policy allowlist"
    )
    parser.add_argument(
        "--register-rate",
        type=_register_rate,
        default=RegisterRate(),
        metavar="COUNT/SECONDS",
        help="new MACs registered or learned per switch port per interval",
    )
    parser.add_argument(
        "--capacity", type=int, default=None, help="max registered devices (default: the table)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="evict devices registered from digests after this many silent seconds; 0 never "
        f"(default: {DEFAULT_IDLE_UNITS} time units)",
    )
    parser.add_argument("--tap", action="store_true", help="count, then drop (mirror port)")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="dump every P4Runtime request here"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--export", type=Path, default=None, help="on exit, export the stored tables to this folder"
    )
    parser.add_argument("--export-format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--tls-ca", type=Path)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument(
        "--references",
        type=Path,
        help="references JSON from `svcfp enroll`: identify every exported fingerprint",
    )
    add_mud_argument(parser)
    add_engine_arguments(parser)
    web = parser.add_argument_group("dashboard, metrics and alerts")
    web.add_argument(
        "--http",
        nargs="?",
        const=DEFAULT_LISTEN,
        default=None,
        metavar="HOST:PORT",
        help=f"serve the dashboard and /metrics here (alone: {DEFAULT_LISTEN}); an address "
        "beyond loopback needs --http-token-file",
    )
    web.add_argument(
        "--http-token-file",
        type=Path,
        help=f"file holding the dashboard's access token (or set {TOKEN_ENV})",
    )
    web.add_argument("--alert-webhook", help="POST every alert as JSON to this http(s) URL")
    web.add_argument(
        "--history-threshold",
        type=float,
        default=None,
        help="a fingerprint less similar than this to each of the device's recent ones is a "
        f"behaviour change (default: {DEFAULT_HISTORY_THRESHOLD})",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help="log lines as text or JSON (default: svcfp --log-format, text)",
    )
    parser.set_defaults(func=main, run_parser=parser)


def config_from_args(
    args: argparse.Namespace, file_switches: list[SwitchSpec] | None = None
) -> RunConfig:
    """The RunConfig a parsed `svcfp run` command line describes (with the switches of its
    config file, unless the command line names its own)."""
    if args.p4info is None:
        raise InputError("--p4info is required (or p4info in the --config file)")
    if args.switches is not None:
        if args.device_id is not None:
            raise InputError("--device-id goes with --grpc-addr; --switches files carry device_id")
        switches = load_switches(args.switches)
    elif args.grpc_addr:
        if args.device_id is None:
            raise InputError("--device-id is required with --grpc-addr (BMv2 defaults to 0)")
        switches = [
            SwitchSpec(f"s{i + 1}", addr, args.device_id, args.ports)
            for i, addr in enumerate(args.grpc_addr)
        ]
    elif file_switches:
        switches = file_switches
    else:
        raise InputError(
            "no switch: give --grpc-addr, --switches, or [[switch]] tables in --config"
        )
    role: Role = args.role
    election = args.election_id or (
        MONITOR_ELECTION_ID if role == "monitor" else PRIMARY_ELECTION_ID
    )
    tls = None
    live = live_settings(args)
    if args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key)
        tls.check()
    return RunConfig(
        switches=tuple(switches),
        p4info=args.p4info,
        bmv2_json=args.bmv2_json,
        target=args.target,
        tofino_out=args.tofino_out,
        program_name=args.program_name,
        skip_config=args.skip_config or role == "monitor",
        election_id=election,
        role=role,
        tls=tls,
        cpu_port=args.cpu_port,
        interval=args.interval,
        time_unit=args.time_unit,
        db=args.db,
        scope=args.scope,
        db_timeout=args.db_timeout,
        catalogue=args.catalogue,
        devices=args.devices,
        policy=RegisterPolicy.parse(args.register_policy, args.allowlist),
        register_rate=args.register_rate,
        capacity=args.capacity,
        idle_timeout=args.idle_timeout,
        tap=args.tap,
        log_dir=args.log_dir,
        export_dir=args.export,
        export_format=args.export_format,
        duration=args.duration,
        connect_timeout=args.connect_timeout,
        live=live,
        alerts=AlertSettings(
            webhook=getattr(args, "alert_webhook", None),
            history_threshold=getattr(args, "history_threshold", None),
        ),
    )


def live_settings(args: argparse.Namespace) -> LiveSettings:
    """Exporter settings from the flags over the references' (or the defaults without them);
    references made with another time unit or representation are refused."""
    profiles = mud_profiles_from_args(args)
    if args.references is None:
        return LiveSettings(engine_config(args, ExporterConfig()), mud=profiles)
    refs = References.load(args.references)
    if args.theta is not None:
        refs = refs.with_settings(theta=args.theta)
    settings = LiveSettings(engine_config(args, refs.config), refs, profiles)
    settings.check(args.time_unit, str(args.references))
    return settings


def resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, list[SwitchSpec] | None]:
    """The command line over its `--config` file, if any: every option's value and the file's
    switches."""
    if args.config is None:
        return args, None
    options = {a.dest: a for a in args.run_parser._actions if a.dest != argparse.SUPPRESS}
    options["log_format"] = next(a for a in args.run_parser._actions if a.dest == "log_format")
    merged, switches, from_file = config_file.merge(args, options, args.config, port_list)
    log.info("event=config_file path=%s settings=%s", args.config, ",".join(from_file) or "-")
    return merged, switches


def web_settings(args: argparse.Namespace) -> WebSettings | None:
    """Where to serve the dashboard, if anywhere."""
    if args.http is None:
        if args.http_token_file is not None:
            raise InputError("--http-token-file goes with --http")
        return None
    return WebSettings.parse(args.http, args.http_token_file)


def main(args: argparse.Namespace) -> int:
    """Entry point of `svcfp run`."""
    args, file_switches = resolve(args)
    log_format = getattr(args, "log_format", None)
    if log_format is not None:
        configure_logging(args.log_level, log_format)
    config = config_from_args(args, file_switches)
    web = web_settings(args)
    for folder, flag in ((config.export_dir, "--export"), (config.log_dir, "--log-dir")):
        if folder is not None:
            writable_folder(folder, flag)
    described = config.describe() | {
        "http": None
        if web is None
        else {"listen": f"{web.host}:{web.port}", "token": bool(web.token)}
    }
    log.info("event=config settings=%s", json.dumps(described, separators=(",", ":")))
    if web is None:
        stats = api.run(config, log_unit)
    else:
        stats = api.run_with_dashboard(config, web, log_unit, _announce)
    log.info("event=stopped polls=%d rows=%d", stats.polls, stats.rows)
    return 0


def _announce(url: str) -> None:
    log.info("event=dashboard_ready url=%s", url)
