"""Starts the reference server (`longrun serve`) for the session. The binary is $LONGRUN_BIN,
or target/debug/longrun of this repository (built with cargo when missing)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _binary() -> str:
    env = os.environ.get("LONGRUN_BIN")
    if env:
        return env
    path = ROOT / "target" / "debug" / "longrun"
    if not path.exists():
        subprocess.run(["cargo", "build", "-p", "longrun-cli"], cwd=ROOT, check=True)
    return str(path)


class Server:
    """A `longrun serve` process on a free loopback port (or where ``listen`` says)."""

    def __init__(self, *flags: str, listen: str = "127.0.0.1:0") -> None:
        self.proc = subprocess.Popen(
            [_binary(), "serve", "--store", "memory", "--listen", listen, *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("longrun listening on "):
                self.url = line.split()[-1].strip()
                break
        else:
            raise RuntimeError(f"the server exited ({self.proc.wait()}) before listening")
        # Keep reading stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def url(server: Server) -> str:
    return server.url


@pytest.fixture(scope="session")
def unix_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (``unix:///…``) of a server on a unix socket (spec §20.2)."""
    socket = tmp_path_factory.mktemp("unix") / "longrun.sock"
    s = Server(listen=f"unix:{socket}")
    assert s.url == f"unix://{socket}", s.url
    yield s.url
    s.stop()


@pytest.fixture(scope="session")
def fast_server() -> Iterator[Server]:
    """A server whose SSE retry hint is short, for tests that reconnect many times."""
    s = Server("--retry", "20ms")
    yield s
    s.stop()


#: The tokens of ``auth_server``: its tenant "py" has one for everything and one that only
#: reads; tenant "other" has one for everything.
TOKEN = "lrt_py_test_all"
READ_TOKEN = "lrt_py_test_read"
OTHER_TOKEN = "lrt_py_test_other"


def _hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with tenants (``--auth``), its file written as ``longrun token new`` says."""
    path = tmp_path_factory.mktemp("auth") / "tenants.toml"
    path.write_text(
        f"""[[tenant]]
name = "py"
[[tenant.token]]
hash = "{_hash(TOKEN)}"
scopes = ["submit", "read", "cancel"]
[[tenant.token]]
hash = "{_hash(READ_TOKEN)}"
scopes = ["read"]
[[tenant]]
name = "other"
[[tenant.token]]
hash = "{_hash(OTHER_TOKEN)}"
scopes = ["submit", "read", "cancel"]
"""
    )
    s = Server("--auth", str(path))
    yield s
    s.stop()


def pytest_report_header(config: pytest.Config) -> List[str]:
    return [f"python {sys.version.split()[0]}, longrun binary {_binary()}"]
