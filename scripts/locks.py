#!/usr/bin/env python3
"""The pinned closures every environment is installed from, and the check that an environment matches them.

    .venv/bin/python scripts/locks.py           # rewrite every lock from the installed environment
    .venv/bin/python scripts/locks.py --check   # exit 1, naming each difference, if the venv or a lock drifted
    .venv/bin/python scripts/locks.py --check-venv   # the venv against requirements-dev.txt only (./dev setup)
    .venv/bin/python scripts/locks.py --check-venv --extra trainer   # ... against graft[trainer]'s lock
    ./dev upgrade                               # re-resolve from pyproject.toml in a scratch venv, rewrite every lock

Three locks, one resolution:
- requirements-dev.txt: everything `graft[dev]` needs, plus the installer and build backend (pip, setuptools).
  `./dev` installs the development and CI venv with it as pip constraints, so a fresh clone gets exactly the
  versions of the last green run, whatever the registry published since.
- docker/requirements-operator.txt, docker/requirements-trainer.txt: the images' subsets of the same
  resolution (`graft`, `graft[trainer]`), installed with --no-deps by the Dockerfile.

`./dev` installs one of two sets into .venv: `dev` for the tests (requirements-dev.txt), or only `trainer` for
`./dev graft` (the trainer lock plus the installer's pins): 0.9 GB and a quarter of the install time less for a
user who runs the demo and not the tests (bench/RESULTS.md, "Setup"). `--extra` names the set the venv is checked
against.

The closures are walked from the installed distributions' metadata with environment markers evaluated for
linux/x86_64 CPython 3.11, the platform of CI, the development machines and both images.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DEV_LOCK = REPO / "requirements-dev.txt"
#: lock file -> (root distribution, extras, extra distributions pinned beside its closure)
LOCKS = {
    DEV_LOCK: ("graft", {"dev"}, ("pip", "setuptools")),
    REPO / "docker" / "requirements-operator.txt": ("graft", set(), ()),
    REPO / "docker" / "requirements-trainer.txt": ("graft", {"trainer"}, ()),
}
PLATFORM = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.11",
}
#: Never pinned: the project itself (installed editable from the checkout).
UNPINNED = {"graft"}
#: The sets `./dev` installs into .venv (`pip install -e .[EXTRA]`) -> the lock that pins the set's closure.
VENV_LOCKS = {"dev": DEV_LOCK, "trainer": REPO / "docker" / "requirements-trainer.txt"}
#: Pinned in every venv though no lock but the dev lock names them: ./dev installs them first.
INSTALLER = ("pip", "setuptools")


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = {**default_environment(), **PLATFORM}
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}) | {""})


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """Every installed distribution `root[extras]` needs, canonical name -> installed version (root excluded).

    Raises LookupError naming the first needed distribution that is not installed."""
    seen: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    stack: list[tuple[str, set[str], str]] = [(root, extras, root)]
    while stack:
        name, wanted, needed_by = stack.pop()
        key = canonicalize_name(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | wanted
        if key not in versions:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                raise LookupError(f"{name} (needed by {needed_by}) is not installed") from None
            versions[key] = dist.version
            requires[key] = dist.requires or []
        for line in requires[key]:
            req = Requirement(line)
            if _applies(req, seen[key]):
                stack.append((req.name, set(req.extras), name))
    versions.pop(canonicalize_name(root), None)
    return versions


def wanted_pins(lock: Path) -> dict[str, str]:
    """What `lock` must pin, from the installed environment: canonical name -> version."""
    root, extras, extra_dists = LOCKS[lock]
    pins = closure(root, extras)
    for name in extra_dists:
        pins[canonicalize_name(name)] = metadata.version(name)
    return pins


def read_pins(lock: Path) -> dict[str, str]:
    """A lock file's pins: canonical name -> version."""
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def lock_text(lock: Path, pins: dict[str, str]) -> str:
    root, extras, extra_dists = LOCKS[lock]
    target = f"{root}[{','.join(sorted(extras))}]" if extras else root
    also = f", plus {' and '.join(extra_dists)}" if extra_dists else ""
    how = ("./dev installs the dev/CI venv with it as pip constraints" if lock == DEV_LOCK
           else "the Dockerfile installs it with --no-deps")
    lines = [
        f"# Generated by scripts/locks.py (./dev upgrade re-resolves): every distribution {target} needs{also},",
        f"# for linux/x86_64 CPython 3.11; {how}. Do not edit by hand.",
    ]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    return "\n".join(lines) + "\n"


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def venv_pins(lock: Path = DEV_LOCK) -> dict[str, str]:
    """What a venv installed from `lock` holds: its pins, and the installer's from the dev lock where it has none."""
    pins, dev = read_pins(lock), read_pins(DEV_LOCK)
    for name in INSTALLER:
        pins.setdefault(name, dev[name])
    return pins


def extraneous(lock: Path = DEV_LOCK) -> list[str]:
    """Installed distributions a venv installed from `lock` does not hold (the project itself aside)."""
    return sorted(_installed().keys() - venv_pins(lock).keys() - UNPINNED)


def venv_problems(lock: Path = DEV_LOCK) -> list[str]:
    """How the installed environment differs from a venv installed from `lock`, one line each."""
    locked, installed = venv_pins(lock), _installed()
    out = []
    for name in sorted(locked):
        if name not in installed:
            out.append(f"{lock.name} pins {name}=={locked[name]}, which is not installed")
        elif installed[name] != locked[name]:
            out.append(f"{lock.name} pins {name}=={locked[name]}, but {installed[name]} is installed")
    out += [f"{name}=={installed[name]} is installed but not in {lock.name}" for name in extraneous(lock)]
    if out:
        which = " trainer" if lock == VENV_LOCKS["trainer"] else ""
        out.append(f"the venv is not the locked environment: run ./dev setup{which} to re-sync it")
    return out


def lock_problems(files: dict[Path, Path] | None = None) -> list[str]:
    """How each lock differs from its closure of the installed environment, one line each. `files` reads a
    lock's pins from another file (a test's copy) instead of the committed one."""
    out: list[str] = []
    for lock in LOCKS:
        rel = lock.relative_to(REPO)
        try:
            want = wanted_pins(lock)
        except LookupError as exc:
            out.append(f"{rel}: {exc}")
            continue
        path = (files or {}).get(lock, lock)
        have = read_pins(path) if path.exists() else {}
        found = [f"{rel}: {name} is pinned {have.get(name, '(not at all)')}, the environment has "
                 f"{want.get(name, '(no need of it)')}"
                 for name in sorted(have.keys() | want.keys()) if have.get(name) != want.get(name)]
        if found:
            out += [*found, f"{rel} is stale: run scripts/locks.py (or ./dev upgrade to re-resolve everything)"]
    return out


def write() -> None:
    for lock in LOCKS:
        text = lock_text(lock, wanted_pins(lock))
        if not lock.exists() or lock.read_text() != text:
            lock.write_text(text)
            print(f"wrote {lock.relative_to(REPO)}")


def _venv_lock(argv: list[str]) -> Path:
    """The lock of the set named by `--extra NAME` (dev when not given)."""
    if "--extra" not in argv:
        return DEV_LOCK
    i = argv.index("--extra") + 1
    if i >= len(argv) or argv[i] not in VENV_LOCKS:
        raise SystemExit(f"--extra: one of {', '.join(VENV_LOCKS)}")
    return VENV_LOCKS[argv[i]]


def main(argv: list[str]) -> int:
    lock = _venv_lock(argv)
    if "--extraneous" in argv:
        print(" ".join(extraneous(lock)))
        return 0
    if "--check-venv" in argv or "--check" in argv:
        # The venv first: while it is not the locked environment, the locks cannot be judged against it.
        found = venv_problems(lock) or (lock_problems() if "--check" in argv else [])
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
