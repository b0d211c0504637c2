"""Load a job file, apply ``key.sub=value`` overrides, validate, and report errors by file and key path.

Relative paths in a job file resolve against the job file's folder, so a job runs the same from any working
directory (``jobs/ingest.yaml`` saying ``output: ../cion-out`` means the project's ``cion-out``); relative paths
given as command-line overrides resolve against the working directory, as a shell user expects. Only the keys in
``PATH_KEYS`` are paths; URIs (``s3://``, ``models:/``, ``sqlite:///``...), ``latest`` and empty values are left as
they are. ``embed.model`` and ``evaluate.model`` also take names (``resnet50``, ``init:vit_small``): there a value
is a path only when it contains a ``/`` or ends in a file suffix.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from cion_dist.config.job import Job
from cion_dist.errors import ConfigError
from cion_dist.redact import is_secret_name, redact_text, register_config_secrets

ENV_PREFIX = "CION__"  # CION__STORAGE__SECRET_ACCESS_KEY=... sets storage.secret_access_key (how secrets reach a job)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error instead of the last one winning."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # SafeLoader reports unhashable keys itself
        if key in seen:
            raise ConfigError(
                f"{loader.name}: line {key_node.start_mark.line + 1}: key {key!r} appears twice in one section "
                f"(first on line {seen[key] + 1}); the second would silently replace the first"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def safe_load_unique(stream, name: str = "<yaml>") -> Any:
    loader = _UniqueKeyLoader(stream)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


PATH_KEYS = (
    "output",
    "synth.out",
    "ingest.manifest",
    "ingest.detector.model_uri",
    "embed.input",
    "embed.model",
    "embed.weights",
    "correlate.input",
    "correlate.ground_truth",
    "pretrain.input",
    "pretrain.pretrained",
    "pretrain.storage_path",
    "evaluate.dataset",
    "evaluate.model",
)
_NAME_OR_PATH = ("embed.model", "evaluate.model")
_FILE_SUFFIXES = (".onnx", ".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".parquet")


def _is_relative_path(key: str, value) -> bool:
    if not isinstance(value, str) or not value.strip() or value == "latest":
        return False
    if ":" in value.split("/", 1)[0] or os.path.isabs(value) or value.startswith("~"):
        return False  # a URI scheme (s3://, models:/, init:...), an absolute or home path
    if key in _NAME_OR_PATH:
        return "/" in value or value.endswith(_FILE_SUFFIXES)
    return True


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


def resolve_paths(data: dict, base: str) -> dict:
    """Rewrite the relative paths under ``PATH_KEYS`` as ``base``-relative absolute paths (in place)."""
    for key in PATH_KEYS:
        value = _get(data, key)
        if _is_relative_path(key, value):
            _set(data, key, os.path.normpath(os.path.join(os.path.abspath(base), os.path.expanduser(value))))
    return data


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


def apply_overrides(
    data: dict, overrides: Iterable[str], source: str = "command line", base: Optional[str] = None
) -> dict:
    """Set nested keys from ``a.b.c=value`` strings; values are parsed as YAML scalars/lists.

    With ``base``, a relative path given for one of ``PATH_KEYS`` resolves against that folder.
    """
    for item in overrides:
        path, value = _parse_override(item, source)
        if base is not None and ".".join(path) in PATH_KEYS and _is_relative_path(".".join(path), value):
            value = os.path.normpath(os.path.join(os.path.abspath(base), value))
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
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        secret = any(is_secret_name(str(p)) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
        got = e.get("input")
        if secret:
            # never echo what was given for a secret, whatever YAML made of it (int, bool, date, list)
            shown = (
                f" (got a value of type {type(got).__name__}; secret values are not shown)" if got is not None else ""
            )
            msg = msg if e["type"] != "string_type" else "must be a string (quote it in YAML: '...')"
        elif e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict):
            shown = ""
        else:
            shown = f" (got {got!r})"
        lines.append(f"  {loc}: {redact_text(msg + shown)}")
    return "\n".join(lines)


def env_overrides(environ: Optional[dict] = None) -> list[str]:
    """``CION__SECTION__KEY=value`` variables as ``section.key=value`` overrides (lower-cased keys).

    ``cion submit`` moves secret overrides here, so they reach the job through its runtime environment instead of
    the command line that Ray records and prints.
    """
    env = os.environ if environ is None else environ
    out = []
    for k, v in sorted(env.items()):
        if k.startswith(ENV_PREFIX) and len(k) > len(ENV_PREFIX):
            key = ".".join(p.lower() for p in k[len(ENV_PREFIX) :].split("__"))
            out.append(f"{key}={v}")
    return out


def job_from_dict(
    data: dict, source: str = "<job>", overrides: Iterable[str] = (), override_base: Optional[str] = None
) -> Job:
    overrides = list(overrides)
    env = env_overrides()
    data = apply_overrides(dict(data), env, "environment (CION__*)", base=override_base) if env else dict(data)
    data = apply_overrides(data, overrides, source, base=override_base)
    register_config_secrets(data)
    try:
        job = Job.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    register_config_secrets(job)
    return job


def read_yaml(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"job file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = safe_load_unique(f, path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file must be a mapping of keys, got {type(data).__name__}")
    return data


def load_job(path: str, overrides: Iterable[str] = ()) -> Job:
    """Read ``path`` (YAML), apply overrides, validate. Errors name the file and the key path.

    Relative paths in the file resolve against its folder, those in ``overrides`` against the working directory.
    """
    data = resolve_paths(read_yaml(path), os.path.dirname(os.path.abspath(path)))
    return job_from_dict(data, source=path, overrides=overrides, override_base=os.getcwd())


def embedded_default(name: str = "demo") -> dict:
    """The job files shipped inside the package (used by ``cion demo`` on a machine without ``jobs/``)."""
    text = resources.files("cion_dist.defaults").joinpath(f"{name}.yaml").read_text()
    return safe_load_unique(text, f"<embedded {name}.yaml>")


def load_default(name: str = "demo", overrides: Iterable[str] = (), extra: Optional[dict] = None) -> Job:
    data = embedded_default(name)
    if extra:
        data.update(extra)
    return job_from_dict(data, source=f"<embedded {name}.yaml>", overrides=overrides)
