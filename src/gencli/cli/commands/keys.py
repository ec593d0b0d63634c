"""gencli keys: issue, list and revoke the keys people and tools send to ``gencli serve``
(the keys file is described in :mod:`gencli.config.keys`)."""

from __future__ import annotations

import json
import sys

from gencli.config import keys
from gencli.config.keys import KeyRecord, KeysError


def _models(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    if not names:
        raise KeysError("--models: name at least one model (comma-separated), or leave it out for every model")
    return names


def add(name: str, rpm: int | None, tpm: int | None, models: str | None, keys_file: str | None) -> None:
    if not keys.NAME.match(name):
        raise KeysError(
            f"NAME {name[:80]!r}: use 1-64 letters, digits, '.', '_', '@' or '-' (start with one of the first two)"
        )
    for flag, value in (("--rpm", rpm), ("--tpm", tpm)):
        if value is not None and not 1 <= value <= keys.MAX_LIMIT:
            raise KeysError(f"{flag} must be from 1 to {keys.MAX_LIMIT} (leave it out for no limit)")
    path, _ = keys.resolve_path(keys_file)
    records = keys.load(path)
    if any(r.name == name for r in records):
        raise KeysError(f"a key named {name!r} exists already in {path}; revoke it first or choose another name")
    key_id, key = keys.new_key()
    while any(r.id == key_id for r in records):  # pragma: no cover - 48 random bits
        key_id, key = keys.new_key()
    record = KeyRecord(name, key_id, keys.digest(key), rpm, tpm, _models(models), keys.created_now())
    keys.save(path, [*records, record])
    sys.stdout.write(key + "\n")
    sys.stdout.flush()
    limits = ", ".join(
        [
            f"{rpm} requests/min" if rpm else "no request limit",
            f"{tpm} tokens/min" if tpm else "no token limit",
            "models: " + ", ".join(record.models) if record.models else "every model",
        ]
    )
    sys.stderr.write(f"added key {name!r} to {path} ({limits}); it is shown only now: keep it somewhere safe\n")
    if record.models:
        _note_unknown(record.models)


def _note_unknown(models: tuple[str, ...]) -> None:
    """A note for --models names the registry here does not know (the server may use another models.json)."""
    from gencli.config.registry import Registry
    from gencli.core.errors import GencliError

    try:
        registry = Registry.load()
    except GencliError:
        return
    unknown = [m for m in models if m not in registry.models]
    if unknown:
        where = registry.source or "the built-in models"
        sys.stderr.write(
            f"note: not in {where}: {', '.join(unknown)}; the key can use them only on a server whose "
            "models.json has them\n"
        )


def list_(as_json: bool, keys_file: str | None) -> None:
    path, _ = keys.resolve_path(keys_file)
    records = keys.load(path)
    if as_json:
        items = [
            {
                "name": r.name,
                "id": r.id,
                "rpm": r.rpm,
                "tpm": r.tpm,
                "models": list(r.models) if r.models is not None else None,
                "created": r.created,
            }
            for r in records
        ]
        sys.stdout.write(json.dumps({"file": str(path), "keys": items}, indent=2) + "\n")
        return
    if not records:
        sys.stdout.write(f"no keys in {path}; add one with: gencli keys add NAME --rpm N --tpm N --models a,b\n")
        return
    head = ("NAME", "ID", "RPM", "TPM", "MODELS", "CREATED")
    rows = [
        (
            r.name,
            r.id,
            str(r.rpm) if r.rpm else "-",
            str(r.tpm) if r.tpm else "-",
            ",".join(r.models) if r.models else "*",
            r.created or "-",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row)).rstrip() for row in [head, *rows]]
    sys.stdout.write("\n".join(lines) + f"\n\nin {path} (keys are stored hashed and never shown again)\n")


def revoke(name: str, keys_file: str | None) -> None:
    path, _ = keys.resolve_path(keys_file)
    records = keys.load(path)
    kept = [r for r in records if r.name != name]
    if len(kept) == len(records):
        names = ", ".join(r.name for r in records) or "none"
        raise KeysError(f"no key named {name[:80]!r} in {path} (its keys: {names})")
    keys.save(path, kept)
    sys.stdout.write(f"revoked key {name!r} (a running gencli serve stops accepting it within a second or two)\n")
