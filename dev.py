#!/usr/bin/env python3
"""certgate's project tasks. Needs only Python >= 3.11 and pip.

    python3 dev.py demo [--serve]   # set up, then run the end-to-end demo
    python3 dev.py setup            # set up for development and tests only
    python3 dev.py bench            # set up, then the benchmarks
    python3 dev.py bench-e2e [--quick|--smoke] [--json F] [--profile]
                                    # set up, then the end-to-end benchmark (real servers)
    python3 dev.py bench-scale [--sizes 1000,100000,1000000] [--json F]
                                    # set up, then the many-tenants benchmark (SQLite store)

The test suite is `bash .ci/run` (set-up, ruff, mypy --strict, pytest).

Set-up is a virtual environment in .venv with certgate installed in editable
mode; it is redone when pyproject.toml changes. Debian packages the tests
use (curl, nginx, haproxy, caddy, apache2, postgresql) are installed with
apt-get when missing and running as root.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
DEBIAN_PACKAGES = {  # command -> package
    "curl": "curl",
    # real proxies for the end-to-end tests behind an edge (tests/test_proxies_*.py)
    "nginx": "nginx",
    "haproxy": "haproxy",
    "caddy": "caddy",
    "apache2": "apache2",
}
POSTGRES_BINARIES = "/usr/lib/postgresql/*/bin/postgres"
"""Where Debian's ``postgresql`` package puts the server (not on PATH): the
tests start their own cluster with initdb (tests/pg_server.py)."""


def sh(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def ensure_venv(extra: str) -> None:
    stamp = VENV / f".certgate-{extra}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    sh(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f".[{extra}]")
    stamp.write_text(digest)


def ensure_debian_packages() -> None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [pkg for cmd, pkg in DEBIAN_PACKAGES.items() if shutil.which(cmd, path=path) is None]
    if not glob.glob(POSTGRES_BINARIES):
        missing.append("postgresql")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            f"!!! cannot install {missing} (not root or no apt-get): tests needing them will SKIP",
            flush=True,
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    # Packages are installed for their binaries only: the tests start each proxy
    # (and PostgreSQL, in a temporary cluster) on loopback with a configuration
    # of their own. policy-rc.d keeps the packages' services from starting (and
    # taking port 80, or 5432 with a cluster of their own) at install time.
    policy = Path("/usr/sbin/policy-rc.d")
    placed = not policy.exists()
    if placed:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)
    finally:
        if placed:
            policy.unlink()


def setup(args: list[str]) -> int:
    """Everything the test suite needs: .venv with the dev extra, Debian packages."""
    ensure_venv("dev")
    ensure_debian_packages()
    return 0


def demo(args: list[str]) -> int:
    ensure_venv("demo")
    return sh(PY, ROOT / "examples" / "demo.py", *args, check=False)


def bench(args: list[str]) -> int:
    ensure_venv("dev")
    return sh(PY, ROOT / "bench" / "bench_gate.py", *args, check=False)


def bench_e2e(args: list[str]) -> int:
    ensure_venv("dev")
    return sh(PY, ROOT / "bench" / "bench_e2e.py", *args, check=False)


def bench_scale(args: list[str]) -> int:
    ensure_venv("dev")
    return sh(PY, ROOT / "bench" / "bench_scale.py", *args, check=False)


def main() -> int:
    tasks = {
        "setup": setup,
        "demo": demo,
        "bench": bench,
        "bench-e2e": bench_e2e,
        "bench-scale": bench_scale,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in tasks:
        print(__doc__)
        return 2
    try:
        return tasks[sys.argv[1]](sys.argv[2:])
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
