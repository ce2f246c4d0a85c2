"""An environment in which some commands and Python modules are not installed, to run the
README's commands as on a fresh clone where Debian's mininet and tcpreplay are absent.

Commands are hidden by a PATH of links to every other program; modules by a `sitecustomize`
that makes importing them fail as if they were not installed. As a script it runs a command
there: `python -m tests.support.absent make test`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

# What the network modes need and a fresh Debian machine lacks.
COMMANDS = frozenset({"mnexec", "mn", "tcpreplay"})
MODULES = frozenset({"mininet"})
_BLOCKER = '''"""The modules named in SVCFP_ABSENT_MODULES fail to import, as if not installed."""
import os
import sys

_ABSENT = set(filter(None, os.environ.get("SVCFP_ABSENT_MODULES", "").split(",")))


class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Absent())
'''


def environment_without(
    folder: Path,
    commands: Iterable[str] = COMMANDS,
    modules: Iterable[str] = MODULES,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment variables (from `base`, default this process's) under which `commands` are
    not on PATH and `modules` cannot be imported; links and the blocker are made in `folder`."""
    env = dict(os.environ if base is None else base)
    hidden = set(commands)
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for entry in env.get("PATH", "").split(os.pathsep):
        directory = Path(entry)
        if not entry or not directory.is_dir():
            continue
        for program in directory.iterdir():
            link = bin_dir / program.name
            if program.name in hidden or link.exists() or not os.access(program, os.X_OK):
                continue
            link.symlink_to(program)
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCKER)
    env["PATH"] = str(bin_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["SVCFP_ABSENT_MODULES"] = ",".join(sorted(set(modules)))
    return env


def main(argv: list[str]) -> int:
    """Run `argv` without mininet and tcpreplay; its exit status."""
    if not argv:
        print("usage: python -m tests.support.absent COMMAND [ARG...]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="svcfp-absent-") as folder:
        env = environment_without(Path(folder))
        print(f"running {' '.join(argv)!r} without {', '.join(sorted(COMMANDS | MODULES))}")
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
