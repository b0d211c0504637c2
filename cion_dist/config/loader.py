"""Load a job file, apply ``key.sub=value`` overrides, validate, and report errors by file and key path."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from cion_dist.config.job import Job
from cion_dist.errors import ConfigError


def _parse_override(item: str, source: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"{source}: override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{source}: override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str], source: str = "command line") -> dict:
    """Set nested keys from ``a.b.c=value`` strings; values are parsed as YAML scalars/lists."""
    for item in overrides:
        path, value = _parse_override(item, source)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source}: cannot set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid job configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def job_from_dict(data: dict, source: str = "<job>", overrides: Iterable[str] = ()) -> Job:
    data = apply_overrides(dict(data), overrides, source)
    try:
        return Job.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def read_yaml(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"job file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file must be a mapping of keys, got {type(data).__name__}")
    return data


def load_job(path: str, overrides: Iterable[str] = ()) -> Job:
    """Read ``path`` (YAML), apply overrides, validate. Errors name the file and the key path."""
    return job_from_dict(read_yaml(path), source=path, overrides=overrides)


def embedded_default(name: str = "demo") -> dict:
    """The job files shipped inside the package (used by ``cion demo`` on a machine without ``jobs/``)."""
    text = resources.files("cion_dist.defaults").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def load_default(name: str = "demo", overrides: Iterable[str] = (), extra: Optional[dict] = None) -> Job:
    data = embedded_default(name)
    if extra:
        data.update(extra)
    return job_from_dict(data, source=f"<embedded {name}.yaml>", overrides=overrides)
