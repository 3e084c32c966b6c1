"""How stepkit runs git: a scrubbed environment, settings a repository can't override, quoted config values."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

# Variables a user or cluster may legitimately set for git in a build: how to reach the
# server. Everything else named GIT_* is dropped: GIT_DIR/GIT_WORK_TREE/GIT_INDEX_FILE
# would point git elsewhere, GIT_CONFIG_* would inject settings, GIT_TRACE_CURL and
# GIT_CURL_VERBOSE would log Authorization headers, GIT_ASKPASS would prompt.
_KEEP = frozenset(
    {
        "GIT_SSH_COMMAND",
        "GIT_SSH",
        "GIT_SSH_VARIANT",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_CONFIG_NOSYSTEM",
    }
)
_DROP = frozenset(
    {"SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY", "LANGUAGE", "LC_MESSAGES", "LANG"}
)

# Given with -c on every call: command-line settings win over the repository's own
# .git/config, so a planted fsmonitor, hooks path or recursion setting never runs.
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("advice.detachedHead", "false"),
    ("init.defaultBranch", "main"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)


def scrubbed_env(
    protocols: Iterable[str],
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment git runs in: no prompt, only the listed transports, C-locale messages."""
    source = os.environ if base is None else base
    env = {
        k: v
        for k, v in source.items()
        if not (k.startswith("GIT_") and k not in _KEEP) and k not in _DROP
    }
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            # Also restricts what submodules and redirects may use.
            "GIT_ALLOW_PROTOCOL": ":".join(sorted(protocols)),
            "GIT_PROTOCOL_FROM_USER": "0",
            # git's messages are parsed to tell an unknown revision from an auth failure.
            "LC_ALL": "C",
        }
    )
    if extra:
        env.update(extra)
    return env


def config_args(settings: Iterable[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for key, value in settings:
        out += ["-c", f"{key}={value}"]
    return out


def config_value(value: str) -> str:
    """A git config value in double quotes, so '#', ';' and spaces stay part of it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# What a credential helper prints for `get`, read from variables of the environment git
# runs in, so a password is never on a command line or in a file; `store` and `erase` are
# ignored, so a 401 never changes anything. ({n} is the login's index.)
_ENV_HELPER = (
    '!f() {{ if [ "$1" = get ]; then printf "username=%s\\npassword=%s\\n" '
    '"$STEPKIT_CREDENTIAL_USERNAME_{n}" "$STEPKIT_CREDENTIAL_PASSWORD_{n}"; fi; }}; f'
)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _with_path(url: str) -> str:
    # git matches a credential section against the url with every path byte but the
    # unreserved ones and '/' percent-encoded, and compares escapes literally.
    return _origin(url) + quote(unquote(urlsplit(url).path))


def credential_env(logins: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Environment that hands git each repository url's (username, password), and only there.

    `logins` maps a repository url without credentials to its login. Each gets a credential
    helper of its own, configured through GIT_CONFIG_COUNT (which git passes on to the git
    processes of submodules, and which no url character can break, as `-c` would break on an
    '='), for the url's scheme, host and port — or, when two urls of one server carry
    different logins, for each url's exact path. The helper list is reset for that scope
    first, so a stale credential from $HOME is not tried before it, while other servers keep
    theirs; and a server that asks for a password gets none of another server's logins.
    """
    by_origin: dict[str, list[str]] = {}
    for url in logins:
        by_origin.setdefault(_origin(url), []).append(url)
    scopes: list[tuple[str, tuple[str, str]]] = []
    for origin, urls in by_origin.items():
        if len({logins[u] for u in urls}) == 1:
            scopes.append((origin, logins[urls[0]]))
        else:
            # git applies every matching section in order: the longest path last, so it wins.
            scopes += sorted(((_with_path(u), logins[u]) for u in urls), key=lambda s: len(s[0]))
    env: dict[str, str] = {}
    for n, (scope, (username, password)) in enumerate(scopes):
        key = f"credential.{scope}.helper"
        env |= {
            f"GIT_CONFIG_KEY_{2 * n}": key,
            f"GIT_CONFIG_VALUE_{2 * n}": "",
            f"GIT_CONFIG_KEY_{2 * n + 1}": key,
            f"GIT_CONFIG_VALUE_{2 * n + 1}": _ENV_HELPER.format(n=n),
            f"STEPKIT_CREDENTIAL_USERNAME_{n}": username,
            f"STEPKIT_CREDENTIAL_PASSWORD_{n}": password,
        }
    if scopes:
        env["GIT_CONFIG_COUNT"] = str(2 * len(scopes))
    return env
