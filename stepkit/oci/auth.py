"""Registry credentials as docker finds them, and the WWW-Authenticate challenges that ask for them.

Credentials come from `$HOME/.docker/config.json`: `credHelpers` for the registry, else
`credsStore`, else the `auths` entry (an `auth` of base64 user:password, or `username` and
`password`; `identitytoken` is an OAuth refresh token, `registrytoken` a ready bearer token).
Docker Hub answers to several keys; other registries to host[:port] with or without a scheme
and path, as docker's ConvertToHostname reads them. Every secret value read is registered with
stepkit.secret, so no output can show it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepkit import secret as secretreg
from stepkit import subproc
from stepkit.errors import CommandError, InputError, StepkitError
from stepkit.log import clean
from stepkit.oci.reference import DOCKER_HUB
from stepkit.secret import Secret
from stepkit.validate import shown

log = logging.getLogger(__name__)

HUB_SERVER = "https://index.docker.io/v1/"
# The keys docker reads Docker Hub's credentials under, in the order it prefers them.
HUB_KEYS = (HUB_SERVER, "index.docker.io", "docker.io", "registry-1.docker.io")
_HUB_HOSTS = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HELPER_TIMEOUT = 60.0
_CONFIG_MAX = 4 << 20
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Credentials:
    """What one registry's entry yields; `source` says where it came from (never the values)."""

    username: str
    password: Secret
    source: str
    identity_token: Secret | None = None
    registry_token: Secret | None = None

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password.reveal()}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @property
    def has_basic(self) -> bool:
        return bool(self.username) and bool(self.password)


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header (RFC 7235): a scheme and its parameters."""

    scheme: str  # lower-case
    params: dict[str, str] = field(default_factory=dict)  # names lower-case

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Every challenge in the given WWW-Authenticate header values; malformed parts end a value."""
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one(value))
    return out


def _parse_one(text: str) -> list[Challenge]:
    out: list[Challenge] = []
    pos, end = 0, len(text)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < end and text[pos] in chars:
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < end and text[pos] in _TCHAR:
            pos += 1
        return text[start:pos]

    def quoted() -> str | None:
        nonlocal pos
        pos += 1  # the opening quote
        chars: list[str] = []
        while pos < end:
            ch = text[pos]
            if ch == "\\" and pos + 1 < end:
                chars.append(text[pos + 1])
                pos += 2
            elif ch == '"':
                pos += 1
                return "".join(chars)
            else:
                chars.append(ch)
                pos += 1
        return None  # unterminated

    while pos < end:
        skip(" \t,")
        scheme = token()
        if not scheme:
            break
        challenge = Challenge(scheme.lower())
        out.append(challenge)
        skip(" \t")
        if not _looks_like_param(text, pos):
            # A token68 (`Negotiate abc==`) or nothing: no parameters worth keeping.
            while pos < end and text[pos] in _TOKEN68:
                pos += 1
            skip("= \t")
            if pos < end and text[pos] != ",":
                return out  # garbage: keep what was understood
            continue
        while True:
            skip(" \t")
            name = token()
            skip(" \t")
            pos += 1  # the "=" _looks_like_param saw
            skip(" \t")
            value = quoted() if pos < end and text[pos] == '"' else token()
            if value is None:
                return out
            challenge.params.setdefault(name.lower(), value)
            skip(" \t")
            if pos >= end:
                break
            if text[pos] != ",":
                return out
            skip(" \t,")
            if not _looks_like_param(text, pos):
                break  # the next challenge's scheme
    return out


def _looks_like_param(text: str, start: int) -> bool:
    """Whether text[start:] begins `name =` (an auth-param) rather than a token68 or a scheme."""
    pos = start
    while pos < len(text) and text[pos] in _TCHAR:
        pos += 1
    if pos == start:
        return False
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if text[pos : pos + 1] != "=":
        return False
    # A value must follow (a token or a quoted string); `abc=` then `,` or the end is token68.
    pos += 1
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos < len(text) and (text[pos] == '"' or text[pos] in _TCHAR)


def _hostname_of_key(key: str) -> str:
    """docker's ConvertToHostname: the key without scheme and path, lower-cased."""
    bare = key.strip()
    for prefix in ("http://", "https://"):
        if bare.lower().startswith(prefix):
            bare = bare[len(prefix) :]
    return bare.split("/", 1)[0].lower()


class DockerConfig:
    """The credentials of `$HOME/.docker/config.json` (or `path`), read once, on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._doc: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._doc is not None:
            return self._doc
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(_CONFIG_MAX + 1)
        except FileNotFoundError:
            self._doc = {}
            return self._doc
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read: {exc.strerror}") from None
        if len(raw) > _CONFIG_MAX:
            raise InputError(f"{self.path}: larger than {_CONFIG_MAX >> 20} MiB")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise InputError(f"{self.path}: not valid JSON") from None
        if not isinstance(doc, dict):
            raise InputError(f"{self.path}: not a JSON object")
        self._doc = doc
        return doc

    def credentials(self, registry: str) -> Credentials | None:
        """The credentials docker would use for `registry` (docker.io or host[:port]), or None."""
        doc = self._load()
        hub = registry == DOCKER_HUB
        keys = HUB_KEYS if hub else (registry,)
        server = HUB_SERVER if hub else registry
        helpers = doc.get("credHelpers")
        helper: Any = None
        if isinstance(helpers, dict):
            helper = next((helpers[k] for k in keys if k in helpers), None)
        if helper is None:
            helper = doc.get("credsStore") or None
        if helper is not None:
            found = self._from_helper(helper, server, registry)
            if found is not None:
                return found
        return self._from_auths(doc.get("auths"), registry, hub)

    def _from_auths(self, auths: Any, registry: str, hub: bool) -> Credentials | None:
        if auths is None:
            return None
        if not isinstance(auths, dict):
            raise InputError(f"{self.path}: 'auths' is not a JSON object")
        wanted = _HUB_HOSTS if hub else frozenset({registry.lower()})
        keys = (
            [k for k in HUB_KEYS if k in auths]
            if hub
            else ([registry] if registry in auths else [])
        )
        keys += [k for k in auths if k not in keys and _hostname_of_key(str(k)) in wanted]
        for key in keys:
            found = self._entry(auths[key], key)
            if found is not None:
                return found
        return None

    def _entry(self, entry: Any, key: str) -> Credentials | None:
        where = f"{self.path}: auths entry {shown(key)}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} is not a JSON object")
        username, password = entry.get("username", ""), entry.get("password", "")
        auth = entry.get("auth")
        if auth:
            if not isinstance(auth, str):
                raise InputError(f"{where}: 'auth' is not a string")
            try:
                decoded = base64.b64decode(auth.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise InputError(f"{where}: 'auth' is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InputError(f"{where}: 'auth' is not base64 of user:password")
        identity, token = entry.get("identitytoken"), entry.get("registrytoken")
        for name, value in (
            ("username", username),
            ("password", password),
            ("identitytoken", identity),
            ("registrytoken", token),
        ):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{where}: {name!r} is not a string")
        if not (password or identity or token):
            return None
        secretreg.register_pair(str(username), str(password))
        return Credentials(
            username=str(username),
            password=Secret(str(password)),
            source=f"{self.path} ({shown(key)})",
            identity_token=Secret(identity) if identity else None,
            registry_token=Secret(token) if token else None,
        )

    def _from_helper(self, name: Any, server: str, registry: str) -> Credentials | None:
        if not isinstance(name, str) or not _HELPER_NAME.fullmatch(name):
            raise InputError(f"{self.path}: credential helper for {registry} is not a helper name")
        program = f"docker-credential-{name}"
        path = shutil.which(program)
        if path is None:
            raise StepkitError(
                f"{self.path} names the credential helper {shown(name)} for {registry}, "
                f"but {program} is not on PATH"
            )
        try:
            proc = subproc.run([path, "get"], stdin=server, timeout=_HELPER_TIMEOUT, check=False)
        except CommandError as exc:
            raise StepkitError(f"{program} get for {registry}: {exc.message}") from None
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).strip()
            if "credentials not found" in text.lower():
                return None  # docker then goes on without credentials; we try `auths` first
            last = text.splitlines()[-1] if text else ""
            raise StepkitError(
                f"{program} get for {registry} exited {proc.returncode}: {clean(last)[:200]}"
            )
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            raise StepkitError(f"{program} get for {registry}: output is not JSON") from None
        if not isinstance(doc, dict):
            raise StepkitError(f"{program} get for {registry}: output is not a JSON object")
        username, value = doc.get("Username", ""), doc.get("Secret", "")
        if not isinstance(username, str) or not isinstance(value, str):
            raise StepkitError(f"{program} get for {registry}: Username/Secret are not strings")
        if not value:
            return None
        source = f"credential helper {program}"
        if username == "<token>":  # docker's marker: Secret is an identity token
            secretreg.register(value)
            return Credentials("", Secret(""), source, identity_token=Secret(value))
        secretreg.register_pair(username, value)
        return Credentials(username, Secret(value), source)
