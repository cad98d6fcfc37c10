"""Environment overrides, for the paths of secret files only.

The configuration file is the single source of every setting. The one exception: a secret
(a key, a token) is often mounted by the platform (a systemd credential, a Kubernetes or
Docker secret) at a path only known at deploy time, so its *path* may come from a TL_*_FILE
variable listed here. Nothing else is read from the environment: no variable can change the
TEE, the policy, the inputs or the command. An unlisted TL_*_FILE variable is refused (it is
most likely a typo of a listed one, and silently ignoring it would use another secret).

Each feature that owns a secret reads its key with `_Section.secret_path(key, base)`, which
consults this table; the table is the documented list (docs/configuration.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from loader.errors import ConfigError

# environment variable -> the configuration key (dotted) whose value it replaces
SECRET_FILE_ENV: dict[str, str] = {
    "TL_ACCOUNT_KEY_FILE": "publish.evm.account_key_file",
}
_BY_KEY = {key: env for env, key in SECRET_FILE_ENV.items()}
_OVERRIDE_LIKE = re.compile(r"TL_[A-Z0-9_]*_FILE")


def env_name(key: str) -> str:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"{key}: not a secret-file key; add it to SECRET_FILE_ENV") from None


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse override-like variables that are not in the list, and relative override paths."""
    for name in sorted(environ):
        if not _OVERRIDE_LIKE.fullmatch(name):
            continue
        if name not in SECRET_FILE_ENV:
            raise ConfigError(
                f"environment: {name}: not a recognised override; only {', '.join(sorted(SECRET_FILE_ENV))}"
                " may override configuration (paths of secret files)"
            )
        value = environ[name]
        if not value.startswith("/"):
            raise ConfigError(f"environment: {name}: expected an absolute path, found {value!r}")


def override(key: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The override for a secret-file key, or None; raises ConfigError on a bad value."""
    name = env_name(key)
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        return None
    if not value.startswith("/"):
        raise ConfigError(f"environment: {name}: expected an absolute path, found {value!r}")
    return value


def active(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The overrides in effect: configuration key -> path."""
    env = os.environ if environ is None else environ
    return {key: env[name] for name, key in SECRET_FILE_ENV.items() if name in env}
