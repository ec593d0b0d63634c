"""A real ``redis-server`` (the Debian package ``redis-server``; ``.ci/run`` installs it) on
127.0.0.1 and a free port, for the tests of the limits and stored responses that replicas
share. Tests that need it are skipped when the program is missing."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port


class RedisServer:
    """``redis-server`` in the foreground, nothing saved to disk; :meth:`stop` and :meth:`start`
    again on the same port (a Redis outage and its return)."""

    def __init__(self, tmp: Path, port: int | None = None):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
        self.exe, self.tmp = exe, tmp
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            stdout=open(self.tmp / "redis.out", "ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.tmp / "redis.out").read_text()
                    raise AssertionError("redis-server did not start: " + log) from None
                time.sleep(0.05)
        client.close()

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()
