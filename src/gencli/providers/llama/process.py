"""The parent's side of the local model's runner processes (:mod:`.worker`).

One runner process per model file and use (``"gen"``: generations and token counts,
``"embed"``: embeddings), started on first use and kept until the model is unloaded. An
:class:`Exchange` is one request to a runner: it sends the request, reads the runner's
messages up to the last one, and turns the runner's death into :class:`RunnerCrashed`
naming the cause (the signal; for SIGILL, the CPU instructions and how to rebuild). The
runner that died is forgotten, so the next request starts a fresh one, and every other
model keeps running in its own process.

A portable llama.cpp build ships one CPU variant per x86-64 level and the runner loads
the best one this CPU advertises; when that one dies of SIGILL before any output (a CPU,
often a virtual machine, that advertises an instruction it cannot run), the variant is
remembered as unusable here (in memory and in ``$XDG_CACHE_HOME/gencli/llama-cpu.json``,
keyed by the CPU and the library) and the request is sent again to a runner on the next
variant, with one warning line.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from gencli.core.errors import ConfigError, GencliError, RunnerCrashed, UsageError, warn

REBUILD = (
    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON' "
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"
)
TERMINAL = frozenset({"done", "end", "error", "count", "embed"})
DRAIN_SECONDS = 30.0  # a cancelled runner that does not finish its request by then is killed
STOP_SECONDS = 2.0  # a runner asked to stop that has not exited by then is killed


# -- CPU variants that fault here ------------------------------------------------------------
class Variants:
    """The CPU variants that died of SIGILL on this machine: excluded from later runners."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bad: set[str] | None = None  # read from the cache file on first use
        self.file: Path | None = None
        self.key = ""

    def _load(self) -> set[str]:
        if self.bad is None:
            self.bad = set()
            cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            self.file = Path(cache) / "gencli" / "llama-cpu.json"
            self.key = _fingerprint()
            try:
                data = json.loads(self.file.read_text())
                if isinstance(data, dict) and isinstance(data.get(self.key), list):
                    self.bad.update(str(v) for v in data[self.key])
            except (OSError, ValueError):
                pass
        return self.bad

    def excluded(self) -> set[str]:
        with self.lock:
            return set(self._load())

    def mark(self, variant: str) -> None:
        with self.lock:
            bad = self._load()
            bad.add(variant)
            if self.file is None:
                return
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                try:
                    data = json.loads(self.file.read_text())
                    data = data if isinstance(data, dict) else {}
                except (OSError, ValueError):
                    data = {}
                data[self.key] = sorted(bad)
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1) + "\n")
                tmp.replace(self.file)
            except OSError:
                pass  # remembered for this process only


def _fingerprint() -> str:
    """This CPU (its model and flags) and the llama.cpp library in use, as a short key."""
    from gencli.providers.llama.worker import library_dir

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    cpu += line
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        pass
    lib = library_dir()
    stamp = ""
    if lib is not None:
        try:
            stamp = f"{lib}:{(lib / 'libllama.so').stat().st_mtime_ns}"
        except OSError:
            stamp = str(lib)
    return hashlib.sha256(f"{cpu}\0{stamp}".encode()).hexdigest()[:16]


VARIANTS = Variants()


# -- one runner process ----------------------------------------------------------------------
def runner_env(environ: Mapping[str, str], excluded: Iterable[str]) -> dict[str, str]:
    """A runner's environment: this process's, the CPU variants to skip, and llama.cpp's OpenMP
    threads told to sleep at once when they wait (``OMP_WAIT_POLICY=passive``) unless the
    environment says otherwise. Spinning threads (OpenMP's default) gained nothing on a quiet
    machine and cost half the first answer's time on a busy one (bench/README.md, "OpenMP")."""
    env = dict(environ)
    env["GENCLI_LLAMA_EXCLUDE"] = ",".join(sorted(excluded))
    env.setdefault("OMP_WAIT_POLICY", "passive")
    return env


class Worker:
    """A running ``gencli.providers.llama.worker`` process."""

    def __init__(self) -> None:
        env = runner_env(os.environ, VARIANTS.excluded())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gencli.providers.llama.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.tail: deque[str] = deque(maxlen=6)  # the last lines it printed on stderr
        self.variant: str | None = None
        self.loaded = False
        self._write = threading.Lock()
        threading.Thread(target=self._stderr, args=(self.proc.stderr,), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr(self, stream: IO[bytes]) -> None:
        try:
            while line := stream.readline(4096):
                text = line.decode("utf-8", "replace").strip()
                if text:
                    self.tail.append(text[:300])
        except (OSError, ValueError):
            pass

    def send(self, msg: dict[str, Any]) -> None:
        data = orjson.dumps(msg) + b"\n"
        with self._write:
            try:
                self.stdin.write(data)
                self.stdin.flush()
            except (OSError, ValueError):
                pass  # it died: the next read says why

    def read(self) -> list[Any]:
        """The runner's next message; :class:`RunnerCrashed` when it died."""
        while True:
            line = self.stdout.readline()
            if not line:
                raise self.crash()
            msg: list[Any] = orjson.loads(line)
            if msg[0] == "ready":
                self.variant = msg[1]
                continue
            if msg[0] == "loaded":
                self.loaded = True
            return msg

    def crash(self) -> RunnerCrashed:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:  # closed its stdout but lives on: end it
            self.proc.kill()
            code = self.proc.wait()
        threading.Event().wait(0.05)  # let the stderr reader take the last lines
        return RunnerCrashed(crash_message(code, self.variant, list(self.tail)), code)

    def stop(self) -> None:
        """End the process (its memory goes back to the system); waits briefly."""
        try:
            self.stdin.close()  # the runner exits at the end of its stdin
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError):
                pass

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass


def crash_message(code: int, variant: str | None, tail: list[str]) -> str:
    """One line naming why a runner died and what to do."""
    said = f" (llama.cpp said: {tail[-1]})" if tail else ""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGILL:
            where = f" in its '{variant}' CPU kernels" if variant else ""
            fix = (
                "no other CPU variant of this build runs here"
                if variant
                else f"rebuild it for any x86-64 CPU (runtime CPU dispatch): {REBUILD}"
            )
            cause = (
                f"SIGILL (illegal instruction){where}: llama.cpp uses CPU instructions this machine "
                f"cannot run (it was built for another CPU); {fix}"
            )
        elif -code == signal.SIGKILL:
            cause = "SIGKILL (often the kernel's out-of-memory killer: the model needs more memory than is free)"
        elif -code == signal.SIGABRT:
            cause = f"SIGABRT (llama.cpp aborted){said}"
        elif -code in (signal.SIGSEGV, signal.SIGBUS):
            cause = f"{name} (a crash in llama.cpp, or a damaged model file){said}"
        else:
            cause = name
        how = f"was killed by {cause}"
    else:
        how = f"exited with status {code}{said}"
    return f"the local model's runner process {how}; the next request starts a new one"


# -- the runners of this process -------------------------------------------------------------
_RUNNERS: dict[tuple[str, str], Worker] = {}
_LOCK = threading.Lock()


def runner(path: Path, use: str) -> Worker:
    """The live runner for ``path`` and ``use`` ("gen" or "embed"), started if need be."""
    key = (str(path), use)
    with _LOCK:
        w = _RUNNERS.get(key)
        if w is not None and w.alive():
            return w
        if w is not None:
            w.stop()
        w = _RUNNERS[key] = Worker()
        return w


def forget(path: Path, use: str, worker: Worker) -> None:
    with _LOCK:
        if _RUNNERS.get((str(path), use)) is worker:
            del _RUNNERS[(str(path), use)]


def stop(path: Path, use: str) -> bool:
    """End the runner of ``path`` (True if one had loaded the model)."""
    with _LOCK:
        w = _RUNNERS.pop((str(path), use), None)
    if w is None:
        return False
    loaded = w.loaded and w.alive()
    w.stop()
    return loaded


def loaded(path: Path, use: str = "gen") -> bool:
    with _LOCK:
        w = _RUNNERS.get((str(path), use))
    return w is not None and w.loaded and w.alive()


def pids() -> dict[tuple[str, str], int]:
    """The runner processes alive (for diagnostics and tests)."""
    with _LOCK:
        return {k: w.pid for k, w in _RUNNERS.items() if w.alive()}


class Exchange:
    """One request to the runner of a model file: ``start()``, then ``next()`` for each of its
    messages until a terminal one; ``cancel()`` from any thread; ``drain()`` waits until the
    runner is done with it (killing it past :data:`DRAIN_SECONDS`)."""

    def __init__(self, path: Path, use: str, request: dict[str, Any]):
        self.path = path
        self.use = use
        self.request = request
        self.worker: Worker | None = None
        self.open = False  # sent, and its last message not read yet
        self.output = False  # text went out: a crash now is never retried

    def start(self) -> None:
        self.worker = runner(self.path, self.use)
        self.worker.send(self.request)
        self.open = True

    def next(self, retry: bool = True) -> list[Any]:
        """The next message (the last one closes the exchange); a runner's SIGILL in a CPU
        variant before any output is retried on the next variant when ``retry``."""
        while True:
            assert self.worker is not None
            try:
                msg = self.worker.read()
            except RunnerCrashed as crash:
                self.open = False
                worker = self.worker
                forget(self.path, self.use, worker)
                if retry and crash.returncode == -signal.SIGILL and worker.variant and not self.output:
                    VARIANTS.mark(worker.variant)
                    warn(
                        f"llama.cpp's '{worker.variant}' CPU kernels died of SIGILL on this machine (it "
                        f"advertises instructions it cannot run); using the next CPU variant from now on"
                    )
                    self.start()
                    continue
                raise
            kind = msg[0]
            if kind in TERMINAL:
                self.open = False
                if kind == "error":
                    raise UsageError(msg[2], msg[3]) if msg[1] == "usage" else ConfigError(msg[2])
            elif kind == "text" or kind == "logprobs":
                self.output = True
            return msg

    def cancel(self) -> None:
        if self.open and self.worker is not None:
            self.worker.send({"op": "cancel"})

    def drain(self) -> None:
        """Read what the runner still sends for this request (after a cancel)."""
        if not self.open or self.worker is None:
            return
        worker = self.worker
        timer = threading.Timer(DRAIN_SECONDS, worker.kill)
        timer.daemon = True
        timer.start()
        try:
            while self.open:
                self.next(retry=False)
        except GencliError:
            pass
        finally:
            timer.cancel()
            self.open = False
