"""Reading MUD files (RFC 8520 with the ACLs of RFC 8519) into `MudProfile`s.

The reader follows the RFCs and accepts what real generators write besides: MUDgee's
`ietf-access-control-list:access-lists` (the container's name in the drafts before RFC 8519,
where the RFC says `acls`), `local-networks: []` for `[null]`, and a document stored as a JSON
string holding the document. Each such departure becomes a note on the profile. Anything it
cannot read raises an `InputError` naming the file and the element, as a path:
`x.json: ietf-access-control-list:acls/acl[2]/aces/ace[0]/matches/tcp/source-port: ...`.

Each accepting ACE becomes one rule (see `controller.mud.profile`): its protocol, the port it
names and the device's role in it. Which role a port means depends on the policy the ACL is in:

| policy      | destination-port     | source-port          |
|-------------|----------------------|----------------------|
| from-device | the remote's: client | the device's: server |
| to-device   | the device's: server | the remote's: client |

An ACE naming both ports (a single connection) keeps the lower one as the service and drops the
other ("client-port"). What a rule cannot say is dropped and counted by kind: the endpoint
(`dns-name`, `address`, and the MUD classes `local-networks`, `controller`, `my-controller`,
`manufacturer`, `same-manufacturer`, `model`), Ethernet matches (`ethernet`), ICMP types and
codes (`icmp-type`), other header fields (`header-field`), interfaces (`interface`), ACEs for
non-IP frames (`non-ip-ace`: the switch never looks those up), deny ACEs (`deny-ace`) and ACLs
no policy uses (`unused-acl`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.base.checks import is_decimal
from controller.base.errors import InputError
from controller.base.fileio import FolderLister, parse_json, read_text
from controller.engine.services import ICMP, ICMPV6, PORT_MAX, TCP, UDP
from controller.mud.profile import MudProfile, Role, Rule, rule_order

MUD = "ietf-mud:mud"
ACLS = "ietf-access-control-list:acls"
DRAFT_ACLS = "ietf-access-control-list:access-lists"
POLICIES = {"from-device-policy": "from-device", "to-device-policy": "to-device"}
MUD_CLASSES = (
    "manufacturer",
    "same-manufacturer",
    "model",
    "local-networks",
    "controller",
    "my-controller",
)
_ENDPOINTS = {
    "ietf-acldns:src-dnsname": "dns-name",
    "ietf-acldns:dst-dnsname": "dns-name",
    "source-ipv4-network": "address",
    "destination-ipv4-network": "address",
    "source-ipv6-network": "address",
    "destination-ipv6-network": "address",
}
_PORT_KEYS = ("source-port", "destination-port")
_ACCEPT = ("accept", "ietf-access-control-list:accept")
_DENY = ("drop", "reject", "ietf-access-control-list:drop", "ietf-access-control-list:reject")
_DIRECTIONS = ("from-device", "to-device")


class NotMud(InputError):
    """A file that is not a MUD document at all (not a JSON object with an `ietf-mud:mud`
    container), as opposed to a MUD document with a bad element."""


@dataclass(frozen=True)
class MudFile:
    """A candidate MUD file and whether it was named itself (not found in a folder)."""

    path: Path
    named: bool


def mud_files(paths: Sequence[Path | MudFile]) -> list[MudFile]:
    """The candidate MUD files among `paths`, each once, where it first came: files as given,
    folders searched recursively for `*.json` (sorted; each folder listed once), and a
    `MudFile` (from an earlier call) as it is, so what a command checks is what it reads."""
    found: list[MudFile] = []
    lister = FolderLister((".json",))
    for path in paths:
        if isinstance(path, MudFile):
            found.append(path)
        elif path.is_dir():
            found.extend(MudFile(p, False) for p in lister.files_below(path))
        elif path.exists():
            found.append(MudFile(path, True))
        else:
            raise InputError(f"{path}: no such MUD file or folder")
    first: dict[Path, MudFile] = {}
    for candidate in found:
        first.setdefault(candidate.path, candidate)
    if not first:
        raise InputError(f"no MUD file (*.json) in {', '.join(str(p) for p in paths)}")
    return list(first.values())


def read_mud(path: Path, type_name: str | None = None) -> MudProfile:
    """The profile of the MUD file `path` (its type: `type_name`, else the file's `model-name`,
    `systeminfo` or name)."""
    return parse_mud(parse_json(read_text(path, "MUD file"), str(path)), str(path), type_name)


def read_muds(
    paths: Sequence[Path | MudFile], type_name: str | None = None
) -> tuple[list[MudProfile], list[str]]:
    """The profiles of the MUD files among `paths` (see `mud_files`), and what was passed over:
    a JSON file found in a folder that is no MUD document is skipped with the reason; one named
    on its own, or a MUD document with a bad element, is an error."""
    profiles: list[MudProfile] = []
    skipped: list[str] = []
    for candidate in mud_files(paths):
        try:
            profiles.append(read_mud(candidate.path, type_name))
        except NotMud as exc:
            if candidate.named:
                raise
            skipped.append(str(exc))
    if not profiles:
        raise InputError(f"no MUD file among {', '.join(str(p) for p in paths)}")
    return profiles, skipped


def load_document(path: Path) -> tuple[dict[str, Any], list[str]]:
    """A MUD file's JSON object, unwrapped once if it was stored as a JSON string, with a note
    saying so."""
    document = parse_json(read_text(path, "MUD file"), str(path))
    return _unwrapped(document, str(path))


def _unwrapped(document: Any, source: str) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    if isinstance(document, str):
        document = parse_json(document, f"{source} (a JSON string holding a document)")
        notes.append("the document is a JSON string holding the MUD document: decoded twice")
    if not isinstance(document, dict):
        raise NotMud(f"{source}: not a MUD file: expected a JSON object, got {_kind(document)}")
    return document, notes


@dataclass
class _Reader:
    """One file's walk: where it is (for errors) and what it dropped."""

    source: str
    dropped: Counter[str]
    notes: list[str]

    def fail(self, where: str, problem: str) -> InputError:
        return InputError(f"{self.source}: {where}: {problem}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {_kind(value)}")
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {_kind(value)}")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {_kind(value)}")
        return value.strip()

    def number(self, value: Any, where: str, top: int) -> int:
        # YANG's JSON encoding writes uint8 and uint16 as numbers; digits in a string are
        # accepted too, since some generators quote every value.
        if isinstance(value, str) and is_decimal(value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise self.fail(where, f"expected an integer in 0..{top}, got {value!r}")
        return value


def parse_mud(document: Any, source: str, type_name: str | None = None) -> MudProfile:
    """The profile of a parsed MUD document; `source` names it in errors."""
    doc, notes = _unwrapped(document, source)
    reader = _Reader(source, Counter(), notes)
    if MUD not in doc:
        raise NotMud(f"{source}: not a MUD file: no {MUD!r} container (RFC 8520)")
    mud = reader.obj(doc[MUD], MUD)
    if ACLS in doc:
        acls_key = ACLS
    elif DRAFT_ACLS in doc:
        acls_key = DRAFT_ACLS
        notes.append(f"ACLs under {DRAFT_ACLS!r} (the pre-RFC 8519 name), read as {ACLS!r}")
    else:
        raise reader.fail(ACLS, "missing: the file has no access lists")
    sides = _policies(reader, mud)
    acls = reader.obj(doc[acls_key], acls_key)
    rules: set[Rule] = set()
    seen: set[str] = set()
    for i, acl_value in enumerate(reader.items(acls.get("acl"), f"{acls_key}/acl")):
        where = f"{acls_key}/acl[{i}]"
        acl = reader.obj(acl_value, where)
        name = reader.text(acl.get("name"), f"{where}/name")
        seen.add(name)
        aces = reader.items(
            reader.obj(acl.get("aces", {"ace": []}), f"{where}/aces").get("ace", []),
            f"{where}/aces/ace",
        )
        side = sides.get(name)
        if side is None:
            reader.dropped["unused-acl"] += 1
            continue
        for j, ace in enumerate(aces):
            rules.update(_ace_rules(reader, ace, side, f"{where}/aces/ace[{j}]"))
    missing = sorted(set(sides) - seen)
    if missing:
        raise reader.fail(
            f"{MUD}/{sides[missing[0]]}-policy",
            f"access list {missing[0]!r} is not defined under {acls_key}/acl",
        )
    return MudProfile(
        type=type_name or _type_of(mud, source),
        source=source,
        rules=tuple(sorted(rules, key=rule_order)),
        mud_url=str(mud.get("mud-url", "")),
        systeminfo=str(mud.get("systeminfo", "")),
        dropped=tuple(sorted(reader.dropped.items())),
        notes=tuple(dict.fromkeys(notes)),
    )


def _type_of(mud: Mapping[str, Any], source: str) -> str:
    for key in ("model-name", "systeminfo"):
        value = mud.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    name = Path(source).stem
    return name[: -len("Mud")] if name.endswith("Mud") and len(name) > 3 else name


def _policies(reader: _Reader, mud: Mapping[str, Any]) -> dict[str, str]:
    """ACL name → the direction of the policy that uses it."""
    sides: dict[str, str] = {}
    for key, side in POLICIES.items():
        where = f"{MUD}/{key}"
        if key not in mud:
            raise reader.fail(where, "missing (RFC 8520 requires both device policies)")
        policy = reader.obj(mud[key], where)
        lists = reader.obj(policy.get("access-lists", {}), f"{where}/access-lists")
        for i, entry in enumerate(
            reader.items(lists.get("access-list", []), f"{where}/access-lists/access-list")
        ):
            at = f"{where}/access-lists/access-list[{i}]"
            name = reader.text(reader.obj(entry, at).get("name"), f"{at}/name")
            if sides.get(name, side) != side:
                raise reader.fail(at, f"access list {name!r} is in both device policies")
            sides[name] = side
    return sides


def _ace_rules(reader: _Reader, value: Any, side: str, where: str) -> Iterator[Rule]:
    ace = reader.obj(value, where)
    actions = reader.obj(ace.get("actions"), f"{where}/actions")
    forwarding = actions.get("forwarding")
    if forwarding in _DENY:
        reader.dropped["deny-ace"] += 1
        return
    if forwarding not in _ACCEPT:
        raise reader.fail(
            f"{where}/actions/forwarding", f"expected accept, drop or reject, got {forwarding!r}"
        )
    matches = reader.obj(ace.get("matches", {}), f"{where}/matches")
    at = f"{where}/matches"
    known = {"eth", "ipv4", "ipv6", "tcp", "udp", "icmp", MUD}
    for key in matches:
        if key in ("ingress-interface", "egress-interface"):
            reader.dropped["interface"] += 1
        elif key not in known:
            reader.dropped[f"unsupported:{key}"] += 1
    if MUD in matches:
        _mud_classes(reader, matches[MUD], f"{at}/{MUD}")
    if "eth" in matches:
        reader.obj(matches["eth"], f"{at}/eth")
        reader.dropped["ethernet"] += 1
    l3 = [key for key in ("ipv4", "ipv6") if key in matches]
    l4 = [key for key in ("tcp", "udp", "icmp") if key in matches]
    if len(l3) > 1 or len(l4) > 1:
        raise reader.fail(at, f"one network and one transport match at most, got {l3 + l4}")
    if not l3 and not l4:
        # Ethernet-only ACEs (ARP, EAPOL) and endpoint-only ones: non-IP frames are never
        # looked up by the switch, and an ACE of classes alone names no protocol.
        reader.dropped["non-ip-ace" if "eth" in matches else "no-protocol-ace"] += 1
        return
    proto = _protocol(reader, matches, l3, l4, at)
    if proto in (TCP, UDP):
        yield from _port_rules(reader, matches.get(l4[0], {}) if l4 else {}, proto, side, at, l4)
    elif proto is None:
        yield Rule(None, 0, PORT_MAX)
    else:
        if l4 == ["icmp"]:
            icmp = reader.obj(matches["icmp"], f"{at}/icmp")
            if icmp:
                reader.dropped["icmp-type"] += 1
        yield Rule(proto, 0, 0)


def _mud_classes(reader: _Reader, value: Any, where: str) -> None:
    classes = reader.obj(value, where)
    for key, item in classes.items():
        if key not in MUD_CLASSES:
            raise reader.fail(f"{where}/{key}", f"not a MUD class ({', '.join(MUD_CLASSES)})")
        if key == "local-networks" and item == []:
            reader.notes.append("local-networks: [] read as [null] (RFC 7951's empty value)")
        reader.dropped[key] += 1


def _protocol(
    reader: _Reader, matches: Mapping[str, Any], l3: Sequence[str], l4: Sequence[str], at: str
) -> int | None:
    implied = {"tcp": TCP, "udp": UDP}.get(l4[0]) if l4 else None
    proto: int | None = None
    if l3:
        family = l3[0]
        fields = reader.obj(matches[family], f"{at}/{family}")
        for key in fields:
            if key in _ENDPOINTS:
                reader.dropped[_ENDPOINTS[key]] += 1
            elif key != "protocol":
                reader.dropped["header-field"] += 1
        if "protocol" in fields:
            proto = reader.number(fields["protocol"], f"{at}/{family}/protocol", 255)
        if l4 == ["icmp"]:
            implied = ICMPV6 if family == "ipv6" else ICMP
    elif l4 == ["icmp"]:
        implied = ICMP
    if proto is not None and implied is not None and proto != implied:
        raise reader.fail(f"{at}/{l3[0]}/protocol", f"protocol {proto} but a {l4[0]} match")
    return proto if proto is not None else implied


def _port_rules(
    reader: _Reader, value: Any, proto: int, side: str, at: str, l4: Sequence[str]
) -> Iterator[Rule]:
    where = f"{at}/{l4[0]}" if l4 else at
    fields = reader.obj(value, where)
    for key in fields:
        if key == "ietf-mud:direction-initiated":
            if fields[key] not in _DIRECTIONS:
                raise reader.fail(
                    f"{where}/{key}", f"expected from-device or to-device, got {fields[key]!r}"
                )
        elif key not in _PORT_KEYS:
            reader.dropped["header-field"] += 1
    ports = {
        key: _port_ranges(reader, fields[key], f"{where}/{key}")
        for key in _PORT_KEYS
        if key in fields
    }
    if not ports:
        yield Rule(proto, 0, PORT_MAX)
        return
    if len(ports) == 2:
        # One connection's two ends: the service is its lower port, the other a client's.
        reader.dropped["client-port"] += 1
        lowest = {key: min(lo for lo, _ in ranges) for key, ranges in ports.items()}
        keep = min(_PORT_KEYS, key=lambda k: lowest[k])
        ports = {keep: ports[keep]}
    ((key, ranges),) = ports.items()
    remote = (side == "from-device") == (key == "destination-port")
    role: Role = "client" if remote else "server"
    for lo, hi in ranges:
        yield Rule(proto, lo, hi, role)


def _port_ranges(reader: _Reader, value: Any, where: str) -> list[tuple[int, int]]:
    """The port ranges of an RFC 8519 port match: `lower-port`/`upper-port`, or `operator`
    (eq by default, lte, gte, neq) with `port`."""
    match = reader.obj(value, where)
    if "lower-port" in match or "upper-port" in match:
        lo = reader.number(match.get("lower-port"), f"{where}/lower-port", PORT_MAX)
        hi = reader.number(match.get("upper-port"), f"{where}/upper-port", PORT_MAX)
        if lo > hi:
            raise reader.fail(where, f"lower-port {lo} above upper-port {hi}")
        return [(lo, hi)]
    port = reader.number(match.get("port"), f"{where}/port", PORT_MAX)
    operator = match.get("operator", "eq")
    if operator == "eq":
        return [(port, port)]
    if operator == "lte":
        return [(0, port)]
    if operator == "gte":
        return [(port, PORT_MAX)]
    if operator == "neq":
        return [r for r in ((0, port - 1), (port + 1, PORT_MAX)) if r[0] <= r[1]]
    raise reader.fail(f"{where}/operator", f"expected eq, lte, gte or neq, got {operator!r}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}"
    return f"the number {value}" if isinstance(value, int | float) else type(value).__name__
