"""How stepkit runs git: a scrubbed environment, settings a repository can't override, quoted config values."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

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
