"""docker's side of creds-init: `~/.docker/config.json`, merged from every docker secret (SPEC §1).

Merge order: an existing config.json, then `.dockercfg` secrets, then `.dockerconfigjson`
secrets, then `-basic-docker`; a later entry wins for the same registry, with a warning.
Docker Hub's many spellings are one registry. `identitytoken` and other fields are kept;
`credsStore` / `credHelpers` make docker run a program named by the secret, so they are
kept only for helper names on the allowlist.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from stepkit import secret as secretreg
from stepkit.errors import InputError
from stepkit.validate import has_control, shown

log = logging.getLogger(__name__)

DOCKER_HUB = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_HELPER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SECRET_FIELDS = ("password", "auth", "identitytoken", "registrytoken")


def registry_key(name: str) -> tuple[str, str]:
    """(identity, key to write): identity is what docker matches on, the host without scheme or path."""
    bare = re.sub(r"^[a-z]+://", "", name.strip().lower()).split("/", 1)[0]
    if bare in _HUB_ALIASES:
        return "docker.io", DOCKER_HUB
    return bare, name


class DockerConfig:
    def __init__(self, existing: dict[str, Any] | None, helpers: Iterable[str]) -> None:
        self.doc: dict[str, Any] = dict(existing or {})
        auths = self.doc.get("auths", {})
        self.auths: dict[str, dict[str, Any]] = dict(auths) if isinstance(auths, dict) else {}
        self.owners: dict[str, str] = {}  # identity -> where its entry came from
        for key in self.auths:
            self.owners[registry_key(key)[0]] = "the existing config.json"
        self.allowed = frozenset(helpers)

    def _put(self, registry: str, entry: dict[str, Any], source: str) -> None:
        identity, key = registry_key(registry)
        if identity in self.owners:
            old_source = self.owners[identity]
            log.warning(
                "docker registry %s: credentials from %s replace those from %s",
                shown(key),
                source,
                old_source,
            )
        # An existing config.json may spell one registry twice ("docker.io" and the v1 URL):
        # leave none of the old spellings beside the new entry.
        for stale in [k for k in self.auths if registry_key(k)[0] == identity]:
            del self.auths[stale]
        self.auths[key] = entry
        self.owners[identity] = source

    def add_basic(self, registry: str, username: str, password: str, source: str) -> None:
        auth = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        secretreg.register(auth)
        self._put(registry, {"username": username, "password": password, "auth": auth}, source)

    def _entry(self, registry: str, raw: Any, source: str) -> dict[str, Any]:
        where = f"{source} registry {shown(registry)}"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: entry is not a JSON object")
        entry = dict(raw)
        for name in _SECRET_FIELDS:
            value = entry.get(name)
            if value is not None and not isinstance(value, str):
                raise InputError(f"{where}: field '{name}' is not a string")
            if value:
                secretreg.register(value)
        auth = entry.get("auth")
        if auth:
            try:
                decoded = base64.b64decode(auth, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise InputError(f"{where}: field 'auth' is not base64 of user:password") from None
            secretreg.register(decoded)
            user, sep, password = decoded.partition(":")
            if not sep:
                raise InputError(f"{where}: field 'auth' does not decode to user:password")
            secretreg.register(password)
        elif entry.get("username") and entry.get("password"):
            user, password = str(entry["username"]), str(entry["password"])
            entry["auth"] = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            secretreg.register(entry["auth"])
        elif not entry.get("identitytoken") and not entry.get("registrytoken"):
            raise InputError(f"{where}: entry has no auth, username/password or identitytoken")
        return entry

    def add_json(self, text: str, source: str, *, legacy: bool) -> None:
        """A `.dockerconfigjson` document, or a `.dockercfg` one (legacy layout or the new one)."""
        try:
            doc = json.loads(text)
        except ValueError:
            raise InputError(f"{source}: not valid JSON") from None
        if not isinstance(doc, dict):
            raise InputError(f"{source}: not a JSON object")
        if legacy and "auths" not in doc:
            doc = {"auths": doc}  # .dockercfg: the registry map is the whole document
        auths = doc.get("auths", {})
        if not isinstance(auths, dict):
            raise InputError(f"{source}: 'auths' is not a JSON object")
        for registry, raw in auths.items():
            if has_control(registry) or not registry.strip():
                raise InputError(f"{source}: a registry name is empty or holds a control character")
            self._put(registry, self._entry(registry, raw, source), source)
        self._helpers(doc, source)
        for name, value in doc.items():
            if name not in ("auths", "credsStore", "credHelpers"):
                self.doc[name] = value

    def _helpers(self, doc: dict[str, Any], source: str) -> None:
        store = doc.get("credsStore")
        if store is not None and self._allowed(store, source, "credsStore"):
            self.doc["credsStore"] = store
        helpers = doc.get("credHelpers")
        if helpers is None:
            return
        if not isinstance(helpers, dict):
            raise InputError(f"{source}: 'credHelpers' is not a JSON object")
        kept = dict(self.doc.get("credHelpers") or {})
        for registry, helper in helpers.items():
            if has_control(str(registry)):
                raise InputError(f"{source}: a credHelpers registry holds a control character")
            if self._allowed(helper, source, f"credHelpers {shown(str(registry))}"):
                kept[registry] = helper
        if kept:
            self.doc["credHelpers"] = kept

    def _allowed(self, helper: Any, source: str, what: str) -> bool:
        if not isinstance(helper, str) or not _HELPER.fullmatch(helper):
            raise InputError(f"{source}: {what} is not a credential helper name")
        if helper in self.allowed:
            return True
        log.warning(
            "%s: %s names helper %s, which is not allowed (--allow-cred-helper); dropped",
            source,
            what,
            shown(helper),
        )
        return False

    def render(self) -> str:
        doc = dict(self.doc)
        doc["auths"] = self.auths
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"
