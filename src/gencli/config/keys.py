"""Keys for people and tools (``gencli keys``), and the file that holds them.

The keys file is JSON Lines: one key per line, a JSON object
``{"name", "id", "sha256", "rpm", "tpm", "models", "created"}``; blank lines are skipped. Its
default place is ``$XDG_CONFIG_HOME/gencli/keys.jsonl`` (``~/.config/gencli/keys.jsonl``);
``--keys-file PATH`` or ``GENCLI_KEYS_FILE`` names another. ``gencli keys add`` writes it
(private, 0600, replaced atomically) and ``gencli serve`` reads it at start and again when it
changes (checked at most once a second), so ``gencli keys revoke`` takes effect on a running
server.

A key is ``gk_<id>_<secret>``: ``id`` is 12 hex digits that find the key's line, ``secret``
256 random bits. The file keeps only the SHA-256 of the whole key (a hash of a high-entropy
secret needs no slow KDF), compared in constant time; the key itself is printed once, by
``gencli keys add``, and never again.

``rpm``/``tpm``: requests and tokens (prompt + completion) per minute, null for no limit;
``models``: the registry names the key may use, null for every model.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gencli.core.errors import GencliError

PREFIX = "gk"
_PREFIX = PREFIX.encode()
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_ID = re.compile(r"^[0-9a-f]{12}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_LIMIT = 10**12
RELOAD_EVERY = 1.0  # seconds between checks of the file for changes


class KeysError(GencliError):
    """The keys file cannot be read, is malformed, or a ``gencli keys`` argument is wrong."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    id: str
    sha256: str
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] | None = None
    created: str = ""

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def line(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "id": self.id,
                "sha256": self.sha256,
                "rpm": self.rpm,
                "tpm": self.tpm,
                "models": list(self.models) if self.models is not None else None,
                "created": self.created,
            },
            separators=(",", ":"),
        )


def default_path(env: Mapping[str, str] | None = None) -> Path:
    source: Mapping[str, str] = os.environ if env is None else env
    base = source.get("XDG_CONFIG_HOME", "")
    home = source.get("HOME", "")
    root = Path(base) if base and os.path.isabs(base) else (Path(home) if home else Path.home()) / ".config"
    return root / "gencli" / "keys.jsonl"


def resolve_path(flag: str | None, env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The keys file's path and whether it was named (a flag or ``GENCLI_KEYS_FILE``) rather
    than the default; a named file must exist for ``gencli serve``."""
    source: Mapping[str, str] = os.environ if env is None else env
    if flag:
        return Path(flag).expanduser(), True
    named = (source.get("GENCLI_KEYS_FILE") or "").strip()
    if named:
        return Path(named).expanduser(), True
    return default_path(source), False


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> tuple[str, str]:
    """(id, key): a fresh key ``gk_<id>_<secret>``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def _limit(value: Any, what: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise KeysError(f"{where}: {what} must be a whole number from 1 to {MAX_LIMIT} or null")
    return value


def parse_record(obj: Any, where: str) -> KeyRecord:
    if not isinstance(obj, dict):
        raise KeysError(f"{where}: each line must be a JSON object (a key)")
    name = obj.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise KeysError(f"{where}: name must be 1-64 letters, digits, '.', '_', '@' or '-'")
    key_id, sha = obj.get("id"), obj.get("sha256")
    if not isinstance(key_id, str) or not _ID.match(key_id):
        raise KeysError(f"{where}: id must be 12 lower-case hex digits")
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise KeysError(f"{where}: sha256 must be 64 lower-case hex digits")
    models = obj.get("models")
    if models is not None:
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise KeysError(f"{where}: models must be a non-empty array of model names, or null for every model")
        models = tuple(models)
    created = obj.get("created", "")
    unknown = sorted(set(obj) - {"name", "id", "sha256", "rpm", "tpm", "models", "created"})
    if unknown:
        raise KeysError(f"{where}: unknown field {unknown[0]!r} (name, id, sha256, rpm, tpm, models, created)")
    return KeyRecord(
        name,
        key_id,
        sha,
        _limit(obj.get("rpm"), "rpm", where),
        _limit(obj.get("tpm"), "tpm", where),
        models,
        created if isinstance(created, str) else "",
    )


def parse(text: str, source: str) -> list[KeyRecord]:
    """The keys of a keys file's text; a bad line is a :class:`KeysError` naming the file and line."""
    records: list[KeyRecord] = []
    names: dict[str, int] = {}
    ids: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KeysError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove it") from None
        record = parse_record(obj, where)
        if record.name in names:
            raise KeysError(f"{where}: the name {record.name!r} is also on line {names[record.name]}")
        if record.id in ids:
            raise KeysError(f"{where}: the id {record.id!r} is also on line {ids[record.id]}")
        names[record.name], ids[record.id] = number, number
        records.append(record)
    return records


def load(path: Path) -> list[KeyRecord]:
    """The keys in ``path`` (missing: none)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeysError(f"cannot read the keys file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise KeysError(f"{path} line {line}: not UTF-8 text") from None
    return parse(text, str(path))


def save(path: Path, records: list[KeyRecord]) -> None:
    """Write ``records`` to ``path`` atomically, readable by its owner only."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(r.line() + "\n" for r in records))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise KeysError(f"cannot write the keys file {path}: {exc.strerror or exc}") from None


def created_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Keyring:
    """The keys of a keys file as ``gencli serve`` checks them: :meth:`find` a presented key
    (constant-time comparison of its SHA-256); the file is read again when it changes
    (checked at most once a second; a file that became malformed keeps the keys loaded
    before and says so on stderr)."""

    def __init__(self, path: Path, records: list[KeyRecord] | None = None):
        self.path = path
        self._by_id: dict[str, KeyRecord] = {}
        self._index: dict[bytes, tuple[KeyRecord, bytes]] = {}  # the id (bytes) -> (record, its SHA-256 as raw bytes)
        self._stamp: tuple[int, int] | None = None
        self._checked = time.monotonic()
        if records is None:
            records = load(path)
        self._set(records)
        self._stamp = self._stat()

    def _set(self, records: list[KeyRecord]) -> None:
        self._by_id = {r.id: r for r in records}
        self._index = {r.id.encode(): (r, bytes.fromhex(r.sha256)) for r in records}

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def records(self) -> list[KeyRecord]:
        return list(self._by_id.values())

    def refresh(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._checked < RELOAD_EVERY:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        try:
            records = load(self.path)
        except KeysError as exc:
            sys.stderr.write(f"gencli serve: {exc}; keeping the keys loaded before\n")
            self._stamp = stamp
            return
        self._stamp = stamp
        self._set(records)
        sys.stderr.write(f"gencli serve: keys file {self.path} reloaded ({len(records)} keys)\n")
        sys.stderr.flush()

    def find(self, key: bytes) -> KeyRecord | None:
        """The record of a presented key, or None."""
        if time.monotonic() - self._checked >= RELOAD_EVERY:
            self.refresh()
        parts = key.split(b"_", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            return None
        found = self._index.get(parts[1])
        if found is None:
            return None
        # the raw digests, compared in constant time (no hex string made per request)
        if hmac.compare_digest(hashlib.sha256(key).digest(), found[1]):
            return found[0]
        return None
