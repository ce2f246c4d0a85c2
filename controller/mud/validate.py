"""Validation of MUD documents against the YANG modules of RFC 8520 and RFC 8519.

The data model is built by yangson (a maintained YANG library for JSON instance data) from the
IETF modules as the RFCs publish them — ietf-mud@2019-01-28, ietf-acldns@2019-01-28,
ietf-access-control-list@2019-03-04, ietf-packet-fields@2019-03-04, ietf-ethertypes@2019-03-04
and what they import — which pyang installs with itself (share/yang/modules/ietf). Validation
checks the structure (containers, lists, keys, choices), every leaf's type and pattern,
mandatory leaves and the leafrefs from the device policies to the ACLs; an error names the file
and the element's instance path.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from controller.base.errors import InputError

# (module, revision, namespace, implemented); features of ietf-access-control-list on.
MODULES = (
    ("ietf-mud", "2019-01-28", "urn:ietf:params:xml:ns:yang:ietf-mud", True),
    ("ietf-acldns", "2019-01-28", "urn:ietf:params:xml:ns:yang:ietf-acldns", True),
    (
        "ietf-access-control-list",
        "2019-03-04",
        "urn:ietf:params:xml:ns:yang:ietf-access-control-list",
        True,
    ),
    ("ietf-interfaces", "2018-02-20", "urn:ietf:params:xml:ns:yang:ietf-interfaces", True),
    ("ietf-packet-fields", "2019-03-04", "urn:ietf:params:xml:ns:yang:ietf-packet-fields", False),
    ("ietf-ethertypes", "2019-03-04", "urn:ietf:params:xml:ns:yang:ietf-ethertypes", False),
    ("ietf-inet-types", "2013-07-15", "urn:ietf:params:xml:ns:yang:ietf-inet-types", False),
    ("ietf-yang-types", "2013-07-15", "urn:ietf:params:xml:ns:yang:ietf-yang-types", False),
)
ACL_FEATURES = (
    "match-on-eth",
    "match-on-ipv4",
    "match-on-ipv6",
    "match-on-tcp",
    "match-on-udp",
    "match-on-icmp",
    "eth",
    "ipv4",
    "ipv6",
    "mixed-eth-ipv4",
    "mixed-eth-ipv6",
    "mixed-eth-ipv4-ipv6",
)


def module_folder() -> Path:
    """The folder holding the IETF YANG modules pyang installed."""
    try:
        files = metadata.files("pyang") or []
    except metadata.PackageNotFoundError:
        raise InputError(
            "validating MUD files needs pyang's YANG modules: pip install pyang"
        ) from None
    for entry in files:
        if entry.name == "ietf-mud.yang":
            return Path(str(entry.locate())).resolve().parent
    raise InputError("pyang is installed without its IETF YANG modules (ietf-mud.yang)")


def yang_library() -> dict[str, Any]:
    """The YANG library (RFC 7895) describing the modules a MUD document uses."""
    modules = []
    for name, revision, namespace, implemented in MODULES:
        entry: dict[str, Any] = {
            "name": name,
            "revision": revision,
            "namespace": namespace,
            "conformance-type": "implement" if implemented else "import",
        }
        if name == "ietf-access-control-list":
            entry["feature"] = list(ACL_FEATURES)
        modules.append(entry)
    return {"ietf-yang-library:modules-state": {"module-set-id": "svcfp-mud", "module": modules}}


@cache
def _data_model() -> Any:
    from yangson import DataModel

    folder = module_folder()
    try:
        return DataModel(json.dumps(yang_library()), [str(folder)])
    except Exception as exc:  # yangson raises many unrelated classes for a broken module set
        raise InputError(f"cannot build the RFC 8520 data model from {folder}: {exc}") from exc


def validate_mud(document: Any, source: str) -> None:
    """Refuse a document that is not valid RFC 8520 / RFC 8519 JSON: an `InputError` naming
    `source`, the element's path and what is wrong."""
    from yangson.enumerations import ContentType
    from yangson.exceptions import YangsonException

    model = _data_model()
    try:
        instance = model.from_raw(document)
        instance.validate(ctype=ContentType.all)
    except YangsonException as exc:
        raise InputError(f"{source}: not valid RFC 8520 JSON: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    """yangson's message with the element first: `/path: problem`."""
    text = str(exc)
    if text.startswith("{") and "}" in text:
        where, _, rest = text[1:].partition("}")
        return f"{where}: {rest.strip()}"
    if text.startswith("/") and type(exc).__name__ == "RawMemberError":
        return f"{text}: not defined by the RFC 8520 / RFC 8519 modules"
    return f"{type(exc).__name__}: {text}"
