"""Node.js and tests/node's npm packages (pinned in its package-lock.json), for the tests.

Installed there by the first test that needs them. Without Node.js and npm those tests
are skipped, unless ONWARD_REQUIRE_NODE=1 is set (as CI does), which makes a missing
Node.js a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

NODE_DIR = Path(__file__).parent / "node"
INSTALL_STAMP = NODE_DIR / "node_modules" / ".onward-installed"
#: mjml 5's dependencies (juice -> cheerio -> undici 7) need Node.js 20.18 or newer.
MIN_NODE = (20, 18)
HOW_TO_RUN = (
    "install Node.js {}.{}+ and npm; the tests then install tests/node's packages "
    "themselves (npm ci)".format(*MIN_NODE)
)


@dataclass(frozen=True)
class NodeTools:
    node: str

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run node (without its own deprecation chatter) in tests/node."""
        return subprocess.run(
            [self.node, "--no-warnings", *args],
            cwd=NODE_DIR,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            check=False,
        )


def _missing_node(reason: str) -> NoReturn:
    message = f"{reason}: {HOW_TO_RUN}"
    if os.environ.get("ONWARD_REQUIRE_NODE") == "1":
        pytest.fail(f"{message} (ONWARD_REQUIRE_NODE=1 asks for these checks)")
    pytest.skip(message)


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = NODE_DIR / name
        digest.update(path.read_bytes() if path.exists() else b"-")
    return digest.hexdigest()


def install_node_tools() -> NodeTools:
    """Node.js, with tests/node's packages installed (again whenever the lock file changes)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing_node("Node.js and npm are not on PATH")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    found = re.match(r"v(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_NODE:
        _missing_node(f"Node.js {version} is too old")

    wanted = _lock_digest()
    if not (INSTALL_STAMP.exists() and INSTALL_STAMP.read_text() == wanted):
        has_lock = (NODE_DIR / "package-lock.json").exists()
        command = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund"]
        command.append("--ignore-scripts")  # nothing here needs an install script
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=NODE_DIR, capture_output=True, text=True, timeout=600, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm {' '.join(command[1:])}` in tests/node took over 10 minutes")
        if done.returncode != 0:
            output = "\n".join(f"{done.stdout}\n{done.stderr}".strip().splitlines()[-60:])
            pytest.fail(
                f"`npm {' '.join(command[1:])}` in tests/node failed "
                f"(exit {done.returncode}), its last lines:\n{output}"
            )
        INSTALL_STAMP.write_text(wanted)
        print(f"\ninstalled tests/node's packages in {time.monotonic() - started:.1f} s")
    return NodeTools(node)
