"""Push credentials, only from the config.json creds-init wrote ($DOCKER_CONFIG, else $HOME/.docker).

For a registry, in this order (docker's own, except that `auths` is still read when the
`credsStore` helper has nothing for the registry, since creds-init merges both):

1. `credHelpers[registry]`: the program `docker-credential-<name>`, asked with docker's
   credential-helper protocol (`get`, the server on stdin, JSON on stdout);
2. `credsStore`: the same for every registry;
3. `auths[registry]`: `auth` (base64 of user:password), `username`/`password`, or
   `identitytoken`.

Every secret found is masked before anything else runs. Nothing here prints a credential or
a helper's output.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builders.dockerbuild.reference import _HUB_ALIASES, DOCKER_HUB_KEY, Reference
from stepkit.builder import mask
from stepkit.errors import InputError, StepkitError
from stepkit.validate import shown

log = logging.getLogger("docker")

_HELPER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HELPER_TIMEOUT = 60.0
_NOT_FOUND = "credentials not found"


@dataclass(frozen=True)
class Credentials:
    """What the daemon is handed for one registry (as X-Registry-Auth)."""

    source: str  # where they came from, for the log: never a secret
    username: str = ""
    password: str = ""
    identitytoken: str = ""

    def auth_config(self, server: str) -> dict[str, str]:
        if self.identitytoken:
            return {"identitytoken": self.identitytoken, "serveraddress": server}
        return {"username": self.username, "password": self.password, "serveraddress": server}


def load_config(directory: Path) -> dict[str, Any]:
    """config.json in directory, {} when there is none; InputError when it is not a JSON object."""
    path = directory / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"docker config {path}: cannot read it ({exc})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise InputError(f"docker config {path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise InputError(f"docker config {path}: not a JSON object")
    return doc


def _identity(key: str) -> str:
    """The host an `auths` or `credHelpers` key names, as docker matches it."""
    bare = re.sub(r"^[a-z]+://", "", key.strip().lower()).split("/", 1)[0]
    return "docker.io" if bare in _HUB_ALIASES else bare


def find(config: dict[str, Any], ref: Reference, where: Path) -> Credentials | None:
    """The credentials config.json gives for ref's registry, or None (an anonymous push)."""
    host = ref.domain.lower()
    helpers = config.get("credHelpers") or {}
    if not isinstance(helpers, dict):
        raise InputError(f"docker config {where}: 'credHelpers' is not a JSON object")
    for key, name in helpers.items():
        if _identity(str(key)) == host:
            found = _from_helper(name, ref.registry_key, f"{where} credHelpers {shown(str(key))}")
            if found is None:
                raise StepkitError(
                    f"credential helper docker-credential-{name} has no credentials for "
                    f"{ref.registry_key} (named by credHelpers in {where})"
                )
            return found
    store = config.get("credsStore")
    if store:
        found = _from_helper(store, ref.registry_key, f"{where} credsStore")
        if found is not None:
            return found
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise InputError(f"docker config {where}: 'auths' is not a JSON object")
    for key, entry in auths.items():
        if _identity(str(key)) == host:
            return _from_entry(entry, f"{where} auths {shown(str(key))}")
    return None


def _from_entry(entry: Any, where: str) -> Credentials:
    if not isinstance(entry, dict):
        raise InputError(f"docker config {where}: entry is not a JSON object")
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(where, identitytoken=mask(token))
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        mask(auth)
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InputError(
                f"docker config {where}: field 'auth' is not base64 of user:password"
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InputError(
                f"docker config {where}: field 'auth' does not decode to user:password"
            )
        mask(decoded)
        return Credentials(where, username=user, password=mask(password))
    name, pw = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(pw, str) and name and pw:
        return Credentials(where, username=name, password=mask(pw))
    raise InputError(
        f"docker config {where}: entry has no auth, username/password or identitytoken"
    )


def _from_helper(name: Any, server: str, where: str) -> Credentials | None:
    """Ask docker-credential-<name> for server's credentials; None when it has none."""
    if not isinstance(name, str) or not _HELPER.fullmatch(name):
        raise InputError(
            f"docker config {where}: {shown(str(name))} is not a credential helper name"
        )
    program_name = f"docker-credential-{name}"
    program = shutil.which(program_name)
    if program is None:
        raise StepkitError(f"docker config {where} names {program_name}, which is not on PATH")
    try:
        # The server on stdin, the answer on stdout: neither is ever shown.
        proc = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StepkitError(
            f"{program_name} get did not answer in {HELPER_TIMEOUT:g} s (for {server})"
        ) from None
    except OSError as exc:
        raise StepkitError(f"{program_name} cannot run: {exc.strerror}") from None
    if proc.returncode != 0:
        if _NOT_FOUND in proc.stdout.decode("utf-8", "replace").lower():
            return None
        raise StepkitError(f"{program_name} get failed for {server} (exit {proc.returncode})")
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        raise StepkitError(f"{program_name} get answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise StepkitError(f"{program_name} get answered something that is not a JSON object")
    user, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        raise StepkitError(f"{program_name} get answered without Username and Secret")
    mask(secret)
    source = f"{program_name} ({where})"
    if user == "<token>":  # docker's convention: the secret is an identity token
        return Credentials(source, identitytoken=secret)
    return Credentials(source, username=user, password=secret)


__all__ = ["DOCKER_HUB_KEY", "Credentials", "find", "load_config"]
