"""One redaction layer for everything the project echoes: config dumps, logs, error lines, MLflow params and tags.

Three kinds of secret are recognised:
- a field or variable whose *name* says it is secret (``secret_access_key``, ``AWS_SESSION_TOKEN``,
  ``MLFLOW_TRACKING_PASSWORD``...; see ``is_secret_name``): its value is replaced, whatever its type;
- the user:password part of a URL (``http://admin:pw@host``) and secret-looking query parameters;
- a value known to be secret (``register_secret``, and every secret-named environment variable of this process):
  it is masked wherever it appears in free text, such as an exception message from a library.

Everything that prints or records text calls ``redact_text`` / ``redact_obj`` / ``redact_argv``; logging goes
through ``RedactingFilter`` (``install_log_filter``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Iterable

MASK = "***"
_MIN_LEN = 4  # shorter known values are not masked in free text (too many false hits); names still are

_SECRET_NAME = re.compile(
    r"(secret|token|passw(or)?d|passwd|credential|private_key|api_key|apikey|access_key|auth)", re.IGNORECASE
)
# names that match the pattern but hold no secret
_NOT_SECRET = {"auth_mode", "ray_auth_mode", "author", "authors", "tokenizer"}

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:[^=&\s]*(?:token|signature|secret|password|credential|sig)[^=&\s]*)=)[^&\s'\"]+",
    re.IGNORECASE,
)
# key=value (overrides, argv, env dumps) and "key": "value" / 'key': 'value' (JSON, dict reprs) where the key
# names a secret; a bare "key: text" is prose (error messages) and is left alone
_KEY_VALUE = re.compile(
    r"(?P<key>(?:(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=)|(?:(?P<qk>[\"'])(?P<qname>[A-Za-z_][A-Za-z0-9_.\-]*)(?P=qk):\s*))"
    r"(?P<q>[\"']?)(?P<value>[^\s,'\"}\]]+)(?P=q)"
)

_lock = threading.Lock()
_known: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Whether a config key or environment variable name holds a secret (judged on its last dotted part)."""
    last = str(name).rsplit(".", 1)[-1].strip("\"' ")
    if last.lower() in _NOT_SECRET:
        return False
    return bool(_SECRET_NAME.search(last))


def register_secret(value: Any) -> None:
    """Remember a secret value so that it is masked wherever it shows up in text."""
    if value is None:
        return
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    s = str(value)
    if len(s) >= _MIN_LEN:
        with _lock:
            _known.add(s)


def _env_secrets() -> Iterable[str]:
    return [v for k, v in os.environ.items() if v and len(v) >= _MIN_LEN and is_secret_name(k)]


def known_secrets() -> list[str]:
    with _lock:
        vals = set(_known)
    vals.update(_env_secrets())
    # longest first, so a secret that contains another is masked whole
    return sorted(vals, key=len, reverse=True)


def redact_url(url: str) -> str:
    """``scheme://user:pw@host/...`` -> ``scheme://***@host/...``; secret query parameters masked."""
    return redact_text(url)


def _mask_key_value(m: re.Match) -> str:
    if not is_secret_name(m.group("name") or m.group("qname")) or m.group("value") in (
        MASK,
        "None",
        "null",
        "''",
        '""',
    ):
        return m.group(0)
    q = m.group("q")
    return f"{m.group('key')}{q}{MASK}{q}"


def redact_text(text: Any) -> str:
    """Mask every secret this module can recognise in free text."""
    s = str(text)
    if not s:
        return s
    for v in known_secrets():
        if v in s:
            s = s.replace(v, MASK)
    s = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", s)
    s = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{MASK}", s)
    s = _KEY_VALUE.sub(_mask_key_value, s)
    return s


def redact_obj(obj: Any, key: str = "") -> Any:
    """A copy of a nested dict/list with secret-named entries masked and every string passed through redact_text."""
    if key and is_secret_name(key) and obj not in (None, "", {}, []):
        if isinstance(obj, dict):
            return {k: MASK for k in obj}  # e.g. a secret-named section: keep its keys, hide every value
        return MASK
    if isinstance(obj, dict):
        return {k: redact_obj(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    if hasattr(obj, "get_secret_value"):
        return MASK
    return obj


def redact_env(env: dict[str, Any]) -> dict[str, Any]:
    """Environment variables with every value masked whose name is secret (``runtime_env.env_vars`` echoes)."""
    return {k: (MASK if is_secret_name(k) and v else redact_text(v)) for k, v in env.items()}


def redact_argv(args: Iterable[str]) -> list[str]:
    """Command-line words with ``secret.key=value`` values and URL credentials masked."""
    return [redact_text(a) for a in args]


def register_config_secrets(obj: Any, key: str = "") -> None:
    """Remember every secret value held by a (dumped) config, so later free text never shows it."""
    if hasattr(obj, "model_dump"):
        # a pydantic model: walk its fields with real values (SecretStr unwrapped)
        for name in type(obj).model_fields:
            register_config_secrets(getattr(obj, name), name)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            register_config_secrets(v, str(k) if not key or not is_secret_name(key) else key)
        return
    if isinstance(obj, (list, tuple)):
        for v in obj:
            register_config_secrets(v, key)
        return
    if key and is_secret_name(key):
        register_secret(obj)
    elif isinstance(obj, str):
        m = _URL_USERINFO.search(obj)
        if m:
            userinfo = m.group("userinfo")
            if ":" in userinfo:
                register_secret(userinfo.split(":", 1)[1])


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and formatted traceback) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to logging's own error path
            return True
        record.msg, record.args = redact_text(msg), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


_FILTER = RedactingFilter()


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Attach the redacting filter to every handler of ``logger`` (the root logger by default)."""
    lg = logger or logging.getLogger()
    for h in lg.handlers:
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


_installed = False


def install_log_redaction() -> None:
    """Mask secrets in every log record this process makes, whichever logger or handler it goes to.

    A record factory, not a handler filter: it also covers handlers that libraries (Ray, MLflow) add later.
    """
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to logging's own error path
            return record
        record.msg, record.args = redact_text(msg), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
