"""`svcfp run --config FILE`: every flag of `svcfp run` in a TOML file, switches as tables.

A key is a flag's long name without the dashes (`time_unit` or `time-unit`); its value is what
the flag takes (a number, a string as on the command line, `true` for a switch flag, a list for
a repeatable one). Relative paths are relative to the file's folder. Each `[[switch]]` table is
one switch, with the keys of a `--switches` file (`name`, `grpc_addr`, `device_id`, `ports`,
`l2`) and the settings a switch may have of its own (`tap`, `cpu_port`, `register_rate`, `tls`
with `ca`, `cert`, `key`). Flags on the command line override the file; switches given there
(`--grpc-addr`, `--switches`) replace the file's.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller.base.errors import InputError
from controller.base.fileio import read_text
from controller.control.config import SwitchSpec, check_unique_names, switch_from_mapping

SWITCH_TABLE = "switch"
# Options that make no sense in the file itself.
NOT_IN_FILE = frozenset({"config", "help"})


def load(path: Path) -> dict[str, Any]:
    """The TOML document at `path` (InputError naming the file and line when it is not TOML)."""
    try:
        return tomllib.loads(read_text(path, "config file"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not a TOML config file: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: TOML nested too deeply to read") from None


def _convert(action: argparse.Action, value: Any, where: str, folder: Path) -> Any:
    """`value` from the file as `action` would have stored it from the command line."""
    kind: Callable[[str], Any] | None = action.type  # type: ignore[assignment]
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(kind, item, where, folder, action.choices) for item in items]
    return _convert_one(kind, value, where, folder, action.choices)


def _convert_one(
    kind: Callable[[str], Any] | None,
    value: Any,
    where: str,
    folder: Path,
    choices: Any,
) -> Any:
    if isinstance(value, list) and kind not in (None, Path, int, float):
        # A list where the flag takes a comma-separated one (ports, granularities).
        value = ",".join(str(v) for v in value)
    elif isinstance(value, dict | list):
        raise InputError(f"{where}: expected a single value")
    try:
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(value)
            converted: Any = kind(value)
        elif kind is not None:
            converted = kind(str(value))
        else:
            converted = value if isinstance(value, str) else str(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise InputError(f"{where}: {exc or value!r}") from None
    if isinstance(converted, Path):
        converted = folder / converted.expanduser()
    if choices is not None and converted not in choices:
        raise InputError(f"{where}: {converted!r} is not one of {', '.join(map(str, choices))}")
    return converted


def switches(
    tables: Any, source: Path, ports: Callable[[str], tuple[int, ...]]
) -> list[SwitchSpec]:
    """The `[[switch]]` tables as switches; `ports` may be a list or a range string."""
    if not isinstance(tables, list) or not tables:
        raise InputError(f"{source}: [[{SWITCH_TABLE}]] must be a non-empty array of tables")
    specs = []
    for i, table in enumerate(tables):
        where = f"{source}: switch #{i}"
        if isinstance(table, dict) and isinstance(table.get("ports"), str):
            try:
                table = {**table, "ports": list(ports(table["ports"]))}
            except argparse.ArgumentTypeError as exc:
                raise InputError(f"{where}: ports: {exc}") from None
        if isinstance(table, dict) and isinstance(table.get("tls"), dict):
            tls = {k: str(source.parent / v) for k, v in table["tls"].items() if v}
            table = {**table, "tls": tls}
        specs.append(switch_from_mapping(table, where, i))
    check_unique_names(specs, str(source))
    return specs


def merge(
    args: argparse.Namespace,
    options: Mapping[str, argparse.Action],
    path: Path,
    ports: Callable[[str], tuple[int, ...]],
) -> tuple[argparse.Namespace, list[SwitchSpec] | None, list[str]]:
    """The command line's values over the file's: a namespace with every option, the file's
    switches (None when it has none, or the command line gives its own), and which settings
    came from the file."""
    data = load(path)
    given: frozenset[str] = getattr(args, "given", frozenset())
    values = vars(args).copy()
    from_file: list[str] = []
    file_switches = None
    if SWITCH_TABLE in data:
        file_switches = switches(data.pop(SWITCH_TABLE), path, ports)
        if "grpc_addr" in {k.replace("-", "_") for k in data}:
            raise InputError(f"{path}: give switches as [[switch]] tables or grpc_addr, not both")
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = options.get(dest)
        if action is None or dest in NOT_IN_FILE:
            known = ", ".join(sorted(d for d in options if d not in NOT_IN_FILE))
            raise InputError(f"{path}: unknown setting {key!r}; settings: {known}")
        if dest in given:
            continue
        values[dest] = _convert(action, value, f"{path}: {key}", path.parent)
        from_file.append(dest)
    if file_switches is not None and ({"grpc_addr", "switches"} & given):
        file_switches = None
    return argparse.Namespace(**values), file_switches, sorted(from_file)
