"""Start a real fastpage server process for a test module and wait until /health answers 200."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

import fastpage

# The server process imports the same fastpage as the tests (an installed wheel or PYTHONPATH=python).
FASTPAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastpage.__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(module_args: list[str], log_path, env: dict[str, str] | None = None,
                   startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Runs `python -m <module_args> --host 127.0.0.1 --port <free>`; yields the base URL and
    terminates the process afterwards. A process that exits early fails with its log's tail."""
    port = free_port()
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([FASTPAGE_PARENT, os.environ.get("PYTHONPATH", "")])
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", *module_args, "--host", "127.0.0.1", "--port", str(port)],
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                with open(log_path) as log:
                    raise RuntimeError(f"server exited with {proc.returncode}: {log.read()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy in {startup_timeout_s:.0f} s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
