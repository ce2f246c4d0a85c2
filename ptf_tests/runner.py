"""Run the PTF suite against a target switch in a network namespace of its own.

`python -m ptf_tests.runner --target refswitch|bmv2 --logs logs` (what `make ptf` runs, as
root): creates namespace `svcfp-ptf-<pid>` holding veth pairs veth0..veth(2N-1) (switch port N on
veth(2N), PTF port N on veth(2N+1)) and its own loopback for gRPC, starts the target switch in it,
waits for its P4Runtime port, runs `ptf` from the PTF environment in it (with the checkout on its
PYTHONPATH: the tests use the project's contract module and wire codec), prints
`N passed, N failed`, and always stops the switch it started (by PID) and deletes the namespace
it created (by name), which removes the veths with it.

Exit status: 0 every test passed; 1 a test failed or the run broke; 2 cannot run here (not root,
PTF environment missing); 77 the target is not available (no simple_switch_grpc, or no BMv2
JSON and no p4c to build it) — callers decide whether that is a skip.

PTF imports every file of its test directory, this one included, in the PTF environment: only
the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
TEST_DIR = Path(__file__).resolve().parent
DEFAULT_P4INFO = ROOT / "p4src" / "fingerprint.p4info.txtpb"
BUILD_DIR = ROOT / "p4src" / "build"
# p4c's BMv2 config for the default build, committed beside the P4Info.
DEFAULT_BMV2_JSON = ROOT / "p4src" / "fingerprint.json"
DEFAULT_PTF = ROOT / ".venv-ptf" / "bin" / "ptf"
GRPC_PORT = 9559
DEVICE_ID = 0
PORT_COUNT = 4
SWITCH_START_TIMEOUT_S = 30.0
PTF_TIMEOUT_S = 1200.0
STOP_TIMEOUT_S = 10.0

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN, EXIT_TARGET_MISSING = 0, 1, 2, 77


class RunnerError(Exception):
    """The suite could not be run; `status` is the exit status to report."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Results:
    """What one PTF run reported."""

    ran: int
    failures: int
    errors: int
    skipped: int
    outcomes: tuple[tuple[str, str], ...]

    @property
    def passed(self) -> int:
        """Tests that ran and neither failed, errored nor were skipped."""
        return self.ran - self.failures - self.errors - self.skipped

    @property
    def failed(self) -> int:
        """Failures and errors together."""
        return self.failures + self.errors

    def summary(self) -> str:
        """'N passed, N failed' (and skipped ones when there are any), as the runner prints it."""
        line = f"{self.passed} passed, {self.failed} failed"
        return f"{line}, {self.skipped} skipped" if self.skipped else line


_OUTCOME = re.compile(r"^(?P<test>[\w.]+) \.\.\. (?P<outcome>ok|FAIL|ERROR|skipped\b.*)$", re.M)
_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_COUNTS = re.compile(r"(failures|errors|skipped)=(\d+)")
_VERDICT = re.compile(r"^(OK|FAILED)\b(.*)$", re.M)


def parse_results(output: str) -> Results:
    """Counts from unittest's verbose output as PTF prints it. A run that never reached its
    summary (crash, import error) counts as one more error besides the outcomes it printed."""
    outcomes = tuple(
        (match["test"], match["outcome"].split()[0]) for match in _OUTCOME.finditer(output)
    )
    ran = _RAN.search(output)
    verdicts = list(_VERDICT.finditer(output))
    if ran is None or not verdicts:
        failures = sum(1 for _, outcome in outcomes if outcome == "FAIL")
        errors = sum(1 for _, outcome in outcomes if outcome == "ERROR")
        skipped = sum(1 for _, outcome in outcomes if outcome == "skipped")
        return Results(len(outcomes) + 1, failures, errors + 1, skipped, outcomes)
    counts = {name: int(value) for name, value in _COUNTS.findall(verdicts[-1].group(2))}
    return Results(
        int(ran.group(1)),
        counts.get("failures", 0),
        counts.get("errors", 0),
        counts.get("skipped", 0),
        outcomes,
    )


def test_params(grpc_addr: str, p4info: Path, config: Path, device_id: int) -> str:
    """PTF's --test-params string, in the conventional parameter names."""
    return f"grpcaddr='{grpc_addr}';p4info='{p4info}';config='{config}';device_id={device_id}"


def ptf_command(
    ptf: Path,
    ports: int,
    params: str,
    log_file: Path,
    tests: Sequence[str] = (),
) -> list[str]:
    """The ptf invocation: PTF port N on veth(2N+1)."""
    interfaces = [arg for port in range(ports) for arg in ("-i", f"{port}@veth{2 * port + 1}")]
    return [
        str(ptf),
        "--test-dir",
        str(TEST_DIR),
        *interfaces,
        "--log-file",
        str(log_file),
        f"--test-params={params}",
        *tests,
    ]


def switch_command(
    bmv2: Path | None, ports: int, grpc_addr: str, device_id: int, log_file: Path
) -> list[str]:
    """The target switch's command line, as the testbed builds it: switch port N on veth(2N).

    `bmv2` is the simple_switch_grpc to run; None runs the reference switch in this interpreter.
    """
    # Only the main environment starts switches; PTF's never reaches these imports.
    from topology.launch import bmv2_command, refswitch_command

    interfaces = [(port, f"veth{2 * port}") for port in range(ports)]
    if bmv2 is None:
        flags = [arg for port, veth in interfaces for arg in ("-i", f"{port}@{veth}")]
        return refswitch_command(grpc_addr, device_id, log_file, flags)
    # The namespace is the switch's own, so BMv2's usual Thrift port cannot clash.
    return bmv2_command(str(bmv2), grpc_addr, device_id, 9090, log_file, interfaces)


def _run(command: Sequence[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RunnerError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def in_namespace(name: str, command: Sequence[str]) -> list[str]:
    """`command` run inside network namespace `name`."""
    return ["ip", "netns", "exec", name, *command]


@contextmanager
def namespace(name: str, ports: int) -> Iterator[str]:
    """A network namespace with `ports` veth pairs and loopback up, IPv6 off (router
    solicitations would otherwise reach the switch and its counters); deleted on exit."""
    _run(["ip", "netns", "add", name])
    try:
        for key in ("all", "default"):
            _run(in_namespace(name, ["sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1"]))
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        for port in range(ports):
            switch_side, ptf_side = f"veth{2 * port}", f"veth{2 * port + 1}"
            pair = ["link", "add", switch_side, "type", "veth", "peer", "name", ptf_side]
            _run(["ip", "-n", name, *pair])
            for interface in (switch_side, ptf_side):
                _run(
                    in_namespace(
                        name,
                        ["sysctl", "-q", "-w", f"net.ipv6.conf.{interface}.disable_ipv6=1"],
                    )
                )
                _run(["ip", "-n", name, "link", "set", interface, "up"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextmanager
def started(command: Sequence[str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process writing to `output`; stopped on exit (SIGTERM, then SIGKILL), by its PID only."""
    with output.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_for_grpc(
    netns: str, port: int, switch: subprocess.Popen[bytes], switch_output: Path
) -> None:
    """Until the switch accepts TCP connections on its gRPC port inside the namespace."""
    probe = in_namespace(
        netns,
        [
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()",
        ],
    )
    deadline = time.monotonic() + SWITCH_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if switch.poll() is not None:
            tail = switch_output.read_text(errors="replace")[-2000:]
            raise RunnerError(f"the switch exited with status {switch.returncode}:\n{tail}")
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.3)
    raise RunnerError(f"the switch did not open port {port} within {SWITCH_START_TIMEOUT_S} s")


def placeholder_device_config(build_dir: Path) -> Path:
    """The device config handed to the reference switch, which ignores its content; p4runtime-
    shell's FwdPipeConfig needs a file."""
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / "refswitch-device-config.json"
    # Written aside and renamed: another run may be reading it right now.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text('{"target": "svcfp reference switch", "program": "fingerprint.p4"}\n')
    partial.replace(path)
    return path


def bmv2_json(path: Path, p4info: Path) -> Path:
    """The compiled BMv2 config, built with p4c now if it is missing and p4c is available."""
    if path.is_file():
        return path
    p4c = shutil.which("p4c")
    if p4c is None:
        raise RunnerError(
            f"skipped: {path} not found and p4c not found on PATH to build it",
            EXIT_TARGET_MISSING,
        )
    # Only the main environment runs the suite; PTF's never reaches these imports.
    from controller.base.errors import SvcfpError
    from controller.p4rt.build import compile_p4

    try:
        build = compile_p4(Path(p4c), ROOT / "p4src" / "fingerprint.p4", path.parent)
    except SvcfpError as exc:
        raise RunnerError(str(exc)) from exc
    if build.p4info.read_text() != p4info.read_text():
        raise RunnerError(f"{build.p4info} differs from {p4info}: run `make build`")
    return build.bmv2_json


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Set up, run the suite, report, tear down; returns the exit status."""
    if os.geteuid() != 0:
        raise RunnerError("must run as root (network namespaces, veth pairs)", EXIT_CANNOT_RUN)
    if not args.ptf.is_file():
        raise RunnerError(f"{args.ptf} not found: run `make venv-ptf`", EXIT_CANNOT_RUN)
    logs = Path(args.logs).resolve() / f"ptf-{args.target}"
    logs.mkdir(parents=True, exist_ok=True)
    p4info = args.p4info.resolve()
    bmv2: Path | None = None
    if args.target == "refswitch":
        config = placeholder_device_config(BUILD_DIR / "ptf")
    else:
        found = shutil.which("simple_switch_grpc")
        if found is None:
            raise RunnerError("skipped: simple_switch_grpc not found on PATH", EXIT_TARGET_MISSING)
        bmv2 = Path(found)
        config = bmv2_json(args.bmv2_json.resolve(), p4info)

    grpc_addr = f"127.0.0.1:{GRPC_PORT}"
    netns = f"svcfp-ptf-{os.getpid()}"
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with namespace(netns, args.ports):
            switch = switch_command(bmv2, args.ports, grpc_addr, DEVICE_ID, logs / "switch.log")
            switch_output = logs / "switch.out"
            with started(in_namespace(netns, switch), switch_output) as process:
                wait_for_grpc(netns, GRPC_PORT, process, switch_output)
                command = ptf_command(
                    args.ptf,
                    args.ports,
                    test_params(grpc_addr, p4info, config.resolve(), DEVICE_ID),
                    logs / "ptf.log",
                    args.tests,
                )
                output = run_ptf(in_namespace(netns, command), logs / "ptf.out")
    finally:
        signal.signal(signal.SIGTERM, previous)
    results = parse_results(output)
    for test, outcome in results.outcomes:
        if outcome != "ok":
            print(f"{outcome}: {test}")
    print(results.summary())
    print(f"logs: {logs}")
    return EXIT_PASSED if results.failed == 0 and results.ran > 0 else EXIT_FAILED


def ptf_environment() -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH, so the suite imports
    the project's `controller.base` modules as they are in this checkout."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_ptf(command: Sequence[str], output_file: Path) -> str:
    """Run ptf, echoing and saving its output; killed (by PID) after PTF_TIMEOUT_S."""
    lines: list[str] = []
    with output_file.open("w") as sink:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ptf_environment(),
        )
        watchdog = threading.Timer(PTF_TIMEOUT_S, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                sink.write(line)
                sink.flush()
                print(line, end="", flush=True)
            process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode == -signal.SIGKILL:
        raise RunnerError(f"ptf did not finish within {PTF_TIMEOUT_S} s")
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ptf_tests.runner",
        description="Run the PTF suite against a switch in a network namespace of its own.",
    )
    parser.add_argument("--target", choices=["refswitch", "bmv2"], default="refswitch")
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="log directory")
    parser.add_argument("--ports", type=int, default=PORT_COUNT, help="switch ports to wire")
    parser.add_argument("--p4info", type=Path, default=DEFAULT_P4INFO)
    parser.add_argument("--bmv2-json", type=Path, default=DEFAULT_BMV2_JSON)
    parser.add_argument("--ptf", type=Path, default=DEFAULT_PTF, help="ptf executable")
    parser.add_argument("tests", nargs="*", help="PTF test names (default: all)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except RunnerError as exc:
        print(f"ptf runner: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("ptf runner: interrupted; cleaned up", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
