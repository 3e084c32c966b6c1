"""Git repository urls and ref names, checked so that no user value can become a git option or transport.

Shared by git-init and the git-push builder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from stepkit import validate
from stepkit.errors import InputError
from stepkit.secret import REDACTED, Secret
from stepkit.validate import has_control, shown

_SSH_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]*\]|[^:/\[\]]+):(?P<path>.*)$")


@dataclass(frozen=True)
class RepoUrl:
    """A repository url that passed every check; `url` holds no credentials."""

    url: str
    scheme: str  # https, http, ssh, git, file
    host: str
    username: str | None = None  # from an https url with embedded credentials
    password: Secret | None = None


def reject_controls(flag: str, what: str, value: str) -> None:
    if has_control(value) or any(ch.isspace() for ch in value):
        raise InputError(f"{flag}: {what} {shown(value)} holds a space or control character")


def _masked(value: str) -> str:
    """The url as an error may show it, user info hidden; computed before the url is parsed.

    A malformed url must not put its password in the error either, and a password with an
    unencoded "/", "#" or "?" ends the authority early, so everything up to the last "@" is
    taken as user info. A lone https user name is hidden too: that is how tokens are passed.
    """
    scheme, sep, rest = value.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not sep or not at:
        return value
    if ":" in userinfo:
        return f"{scheme}://{userinfo.partition(':')[0]}:{REDACTED}@{after}"
    if scheme.lower() in ("ssh", "git+ssh", "ssh+git", "git"):
        return value  # "git@" is a login name, not a secret
    return f"{scheme}://{REDACTED}@{after}"


def parse_url(value: str, *, allow_http: bool, allow_local: bool, flag: str = "-url") -> RepoUrl:
    """Check a repository url: allowed scheme, a real host, no option-like part, no control byte."""
    if not value:
        raise InputError(f"{flag} is required")
    # From here on `value` is what messages show, `original` what is parsed.
    original, value = value, _masked(value)
    reject_controls(flag, "url", value)
    if has_control(original) or any(ch.isspace() for ch in original):
        raise InputError(
            f"{flag}: the url's user name or password holds a space or control character"
        )
    if value.startswith("-"):
        raise InputError(f"{flag}: url must not start with '-'")
    if "::" in value.split("/", 1)[0] or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", value):
        raise InputError(
            f"{flag}: url {shown(value)} names a git remote helper (<transport>::), which is not allowed"
        )
    if "://" not in value:
        scp = _SCP.match(value)
        if scp and not value.startswith(("/", ".")) and "/" not in value.split(":", 1)[0]:
            return _ssh(flag, scp.group("user"), scp.group("host"), None, scp.group("path"), value)
        if not allow_local:
            raise InputError(
                f"{flag}: url {shown(value)} is a local path; local repositories need --allow-local"
            )
        return RepoUrl(str(Path(value).absolute()), "file", "")
    try:
        parts = urlsplit(original)
    except ValueError:  # an unbalanced "[" of an IPv6 host, for one
        raise InputError(f"{flag}: url {shown(value)} is not a valid url") from None
    scheme = parts.scheme.lower()
    if scheme in ("git+ssh", "ssh+git"):
        scheme = "ssh"
    if scheme == "file":
        if not allow_local:
            raise InputError(f"{flag}: file:// urls need --allow-local")
        if original != value:
            raise InputError(f"{flag}: a file:// url cannot carry a user name or password")
        return RepoUrl(value, "file", "")
    if scheme not in ("https", "http", "ssh", "git"):
        raise InputError(
            f"{flag}: url scheme {shown(parts.scheme)} is not one of https, http, ssh, git"
        )
    if scheme == "http" and not allow_http:
        raise InputError(
            f"{flag}: plain http:// sends the repository unprotected; pass --allow-http to allow it"
        )
    if parts.query or parts.fragment or "#" in value or "?" in value:
        raise InputError(f"{flag}: url {shown(value)} must not have a query or fragment")
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo, hostport = "", netloc
    try:
        raw_port = parts.port  # raises for a port that is not a number
    except ValueError:
        raise InputError(f"{flag}: url {shown(value)} has an invalid port") from None
    hostname = (
        hostport.rsplit(":", 1)[0] if not hostport.startswith("[") else hostport.split("]")[0] + "]"
    )
    host = validate.host(hostname, flag)
    if hostport.endswith(":") or (raw_port is not None and not 1 <= raw_port <= 65535):
        raise InputError(f"{flag}: url {shown(value)} has an invalid port")
    path = parts.path
    decoded = unquote(path)
    if has_control(decoded) or "\\" in decoded:
        raise InputError(f"{flag}: url path holds an encoded control character or backslash")
    if not path or path == "/":
        raise InputError(f"{flag}: url {shown(value)} names no repository")
    # A decoded CR or LF in a user name or password would reach git's credential protocol
    # as a line of its own (CVE-2020-5260, CVE-2024-52006).
    if has_control(unquote(userinfo)):
        raise InputError(
            f"{flag}: the url's user name or password holds an encoded control character"
        )
    if scheme == "ssh":
        if ":" in userinfo:
            raise InputError(
                f"{flag}: an ssh url cannot carry a password; give an ssh key with creds-init (-ssh-git)"
            )
        user = unquote(userinfo) if userinfo else None
        return _ssh(flag, user, hostname, raw_port, path, value)
    port = f":{raw_port}" if raw_port is not None else ""
    clean_url = f"{scheme}://{validate.host_for_url(host)}{port}{path}"
    if userinfo:
        user, sep, password = userinfo.partition(":")
        if not sep:
            raise InputError(
                f"{flag}: url has a user name but no password; give credentials with creds-init"
            )
        secret = Secret(unquote(password))
        return RepoUrl(clean_url, scheme, host, unquote(user), secret)
    return RepoUrl(clean_url, scheme, host)


def _ssh(
    flag: str, user: str | None, hostname: str, port: int | None, path: str, original: str
) -> RepoUrl:
    host = validate.host(hostname, flag)
    if user is not None and not _SSH_USER.match(user):
        raise InputError(f"{flag}: ssh user {shown(user)} is not a plain user name")
    bare = path.lstrip("/")
    if not bare or bare.startswith("-") or path.startswith("-"):
        raise InputError(
            f"{flag}: url {shown(original)} has an empty or option-like repository path"
        )
    at = f"{user}@" if user else ""
    p = f":{port}" if port else ""
    return RepoUrl(
        f"ssh://{at}{validate.host_for_url(host)}{p}/{bare}"
        if port or path.startswith("/")
        else original,
        "ssh",
        host,
    )


def check_ref_name(flag: str, name: str, *, pattern: bool = False) -> None:
    """git check-ref-format's rules, so a revision can only ever be read as a ref or object name."""
    bad = (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "@{" in name
        or "//" in name
        or name == "@"
        or any(ch in name for ch in "\\~^:?[" + ("" if pattern else "*"))
        or any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))
        or (pattern and name.count("*") > 1)
    )
    if bad:
        raise InputError(f"{flag}: {shown(name)} is not a valid git ref name")
