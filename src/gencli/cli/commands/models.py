"""gencli models: the registry, whether each model is ready, what it can do and its context window."""

from __future__ import annotations

import json
import sys
from typing import Any

from gencli.config.registry import Registry, context_length


def run(as_json: bool, models_path: str | None) -> None:
    registry = Registry.load(models_path)
    default = registry.default_name()
    rows: list[dict[str, Any]] = []
    for entry in registry.models.values():
        missing = registry.missing_key(entry)
        rows.append(
            {
                "name": entry.name,
                "provider": entry.provider,
                "model": entry.model or entry.path or "",
                "ready": missing is None,
                "missing": missing,
                "default": entry.name == default,
                "capabilities": entry.capabilities,
                "context_length": context_length(entry),
                "fallbacks": entry.fallbacks,
                "deployments": [d.deployment for d in entry.deployments],
                **({"prices": entry.prices} if entry.prices else {}),
            }
        )
    source = str(registry.source) if registry.source else "built-in models"
    if as_json:
        sys.stdout.write(json.dumps({"source": source, "default": default, "models": rows}, indent=2) + "\n")
        return
    widths = [max(len(r[k]) for r in rows) for k in ("name", "provider", "model")]
    widths = [max(w, len(h)) for w, h in zip(widths, ("NAME", "PROVIDER", "MODEL"), strict=True)]
    widths[0] += 2  # room for the default marker
    lines = [f"{'NAME':<{widths[0]}}  {'PROVIDER':<{widths[1]}}  {'MODEL':<{widths[2]}}  STATUS"]
    for r in rows:
        status = "ready" if r["ready"] else (r["missing"] if " " in r["missing"] else f"set {r['missing']}")
        name = r["name"] + (" *" if r["default"] else "")
        lines.append(f"{name:<{widths[0]}}  {r['provider']:<{widths[1]}}  {r['model']:<{widths[2]}}  {status}")
    lines.append("")
    lines.append(f"models from {source}; * marks the default")
    sys.stdout.write("\n".join(lines) + "\n")
