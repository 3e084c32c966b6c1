"""ADVERSARIAL.md items 17-32 against `stepkit creds-init`, run as a user would, checked with git and ssh."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STEPKIT, Run, Secrets, assert_no_leak, run_stepkit, snapshot

HUB = "https://index.docker.io/v1/"
BASELINE_KEYS = {"credential.helper", "credential.https://github.com.username", "core.sshcommand"}


# --- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """ssh keys made once per session by the real ssh-keygen."""

    ed25519: str
    ed25519_pub: str
    ed25519_pass: str
    rsa_pem: str
    rsa_pem_pub: str
    rsa_pem_pass: str
    others: dict[str, tuple[str, str]]  # OpenSSH-format keys of every other type: (key, pub)


def _keygen(path: Path, *args: str) -> tuple[str, str]:
    subprocess.run(
        ["ssh-keygen", "-q", "-C", "stepkit-test", "-f", str(path), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path.read_text(), Path(f"{path}.pub").read_text().strip()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    ed, ed_pub = _keygen(d / "ed", "-t", "ed25519", "-N", "")
    ed_pass, _ = _keygen(d / "edpass", "-t", "ed25519", "-N", "passphrase")
    rsa, rsa_pub = _keygen(d / "rsa", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "")
    rsa_pass, _ = _keygen(d / "rsapass", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "passphrase")
    others = {
        "rsa": _keygen(d / "rsa-openssh", "-t", "rsa", "-b", "2048", "-N", ""),
        "ecdsa-256": _keygen(d / "ecdsa256", "-t", "ecdsa", "-b", "256", "-N", ""),
        "ecdsa-384": _keygen(d / "ecdsa384", "-t", "ecdsa", "-b", "384", "-N", ""),
        "ecdsa-521": _keygen(d / "ecdsa521", "-t", "ecdsa", "-b", "521", "-N", ""),
    }
    return Keys(ed, ed_pub, ed_pass, rsa, rsa_pub, rsa_pass, others)


def creds(
    secrets: Secrets, *args: str, env: Mapping[str, str] | None = None, fmt: str = "text"
) -> Run:
    """creds-init on the test's secrets; every run is searched for every secret value."""
    argv = ["creds-init", "--secrets-dir", str(secrets.root), *args]
    if fmt == "json":
        argv += ["--log-format", "json"]
    run = run_stepkit(*argv, env=env)
    assert_no_leak(run.output, secrets.values)
    if fmt == "json":
        assert_json_lines(run.stderr)
    return run


def assert_json_lines(stderr: str) -> list[dict[str, Any]]:
    entries = []
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict)
        assert {"level", "time", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def log_lines(run: Run, level: str) -> list[str]:
    """Messages of one level, from text or JSON log lines."""
    if run.stderr.startswith("{"):
        return [e["message"] for e in assert_json_lines(run.stderr) if e["level"] == level]
    return [line for line in run.stderr.splitlines() if f": {level}: " in line]


def assert_rejected(run: Run, *names: str, code: int = 2) -> str:
    """Exit code, exactly one error line, and that line names what is at fault."""
    assert run.returncode == code, run.output
    errors = log_lines(run, "error")
    assert len(errors) == 1, run.stderr
    for name in names:
        assert name in errors[0], errors[0]
    assert run.stdout == ""
    return errors[0]


def reject(
    secrets: Secrets,
    root: Path,
    *args: str,
    names: tuple[str, ...],
    fmt: str = "text",
    env: Mapping[str, str] | None = None,
) -> str:
    """A run that must fail with exit 2 and change nothing anywhere below root."""
    before = snapshot(root)
    run = creds(secrets, *args, fmt=fmt, env=env)
    line = assert_rejected(run, *names)
    assert snapshot(root) == before, "a rejected run changed files"
    return line


def tool_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def tool(home: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=tool_env(home),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def git_keys(home: Path) -> set[str]:
    proc = tool(home, "git", "config", "--global", "--name-only", "--list")
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def credential_fill(
    home: Path, host: str, path: str = "", protocol: str = "https"
) -> dict[str, str]:
    """What git's credential machinery hands out for a url; {} when it has nothing."""
    query = f"protocol={protocol}\nhost={host}\n" + (f"path={path}\n" if path else "") + "\n"
    proc = tool(home, "git", "credential", "fill", stdin=query)
    if proc.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def ssh_g(home: Path, host: str, *extra: str) -> dict[str, list[str]]:
    """`ssh -G` through the config creds-init wrote: what ssh would really use."""
    proc = tool(home, "ssh", "-G", "-F", str(home / ".ssh" / "config"), *extra, host)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key.lower(), []).append(value)
    return out


def assert_no_proxy(options: dict[str, list[str]]) -> None:
    assert options.get("proxycommand", ["none"]) == ["none"]
    assert "localcommand" not in options or options["localcommand"] == ["none"]


def assert_ssh_marker_absent(home: Path, marker: Path) -> None:
    """git over ssh through the written config: an injected command would create the marker.

    Loopback port 1 refuses at once; a named host would wait on DNS, which this machine lacks.
    """
    tool(home, "git", "ls-remote", "ssh://git@127.0.0.1:1/x")
    assert not marker.exists()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def docker_json(home: Path) -> dict[str, Any]:
    doc = json.loads((home / ".docker" / "config.json").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def baseline(secrets: Secrets, isolated_env: Path, keys: Keys) -> tuple[str, ...]:
    """A good run first, so a rejected run can be shown to leave what is there untouched."""
    secrets.add("gh", {"username": "bob", "password": "base-pw-1234"})
    secrets.add("deploy", {"ssh-privatekey": keys.ed25519})
    args = ("-basic-git", "gh=https://github.com", "-ssh-git", "deploy=github.com")
    run = creds(secrets, *args)
    assert run.returncode == 0, run.output
    assert git_keys(isolated_env) == BASELINE_KEYS
    return args


# --- 17: username/password injecting into .gitconfig -----------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("key", ["username", "password"])
def test_adv17_newline_in_basic_auth_injects_nothing(
    secrets: Secrets,
    tmp_path: Path,
    isolated_env: Path,
    baseline: tuple[str, ...],
    key: str,
    fmt: str,
) -> None:
    marker = tmp_path / "PWNED"
    evil = f"bob\n[core]\n\tsshCommand = touch {marker}\n[x]"
    values = {"username": "bob", "password": "evil-pw-1234", key: evil}
    secrets.add("evil", values, hidden=("username", "password") if key == "username" else (key,))
    line = reject(
        secrets,
        tmp_path,
        *baseline,
        "-basic-git",
        "evil=https://gitlab.com",
        fmt=fmt,
        names=("-basic-git evil", f"'{key}'", "control character"),
    )
    assert "sshCommand" not in line
    assert git_keys(isolated_env) == BASELINE_KEYS
    assert_ssh_marker_absent(isolated_env, marker)


# --- 18: one trailing newline -----------------------------------------------------------------


def test_adv18_single_trailing_newline_stripped_with_warning(
    secrets: Secrets, isolated_env: Path
) -> None:
    secrets.add("gh", {"username": "bob\n", "password": "echo-made-pw\n"})
    run = creds(secrets, "-basic-git", "gh=https://github.com", "-basic-docker", "gh=ghcr.io")
    assert run.returncode == 0, run.output
    warnings = log_lines(run, "warning")
    assert any("'username'" in w and "newline" in w for w in warnings), warnings
    assert any("'password'" in w and "newline" in w for w in warnings), warnings
    assert "github.com" not in run.output  # never the url
    got = credential_fill(isolated_env, "github.com")
    assert (got.get("username"), got.get("password")) == ("bob", "echo-made-pw")
    assert docker_json(isolated_env)["auths"]["ghcr.io"]["auth"] == b64("bob:echo-made-pw")


def test_adv18_only_one_newline_is_stripped(secrets: Secrets, tmp_path: Path) -> None:
    secrets.add("gh", {"username": "bob", "password": "two-newlines-pw\n\n"})
    reject(
        secrets,
        tmp_path,
        "-basic-git",
        "gh=https://github.com",
        names=("-basic-git gh", "'password'", "control character"),
    )


# --- 19: special characters round-trip ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_adv19_password_round_trips_through_git_credential_fill(
    secrets: Secrets, isolated_env: Path, fmt: str
) -> None:
    password = '@:/%#?+ "p\\w;=&é€日本'
    username = "bob+ci@example.com"
    secrets.add("gh", {"username": username, "password": password})
    run = creds(secrets, "-basic-git", "gh=https://github.com", fmt=fmt)
    assert run.returncode == 0, run.output
    store = (isolated_env / ".git-credentials").read_text().strip()
    userinfo = store.removeprefix("https://").rsplit("@", 1)[0]
    assert set(userinfo) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%-._~:"
    )
    assert store.endswith("@github.com")
    got = credential_fill(isolated_env, "github.com")
    assert got.get("username") == username
    assert got.get("password") == password


# --- 20: ProxyCommand through an ssh host -----------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "github.com\n    ProxyCommand touch {m}",
        "github.com\r\nProxyCommand touch {m}",
        "ssh://git@github.com\n  ProxyCommand touch {m}/org/repo",
        "ssh://git\nProxyCommand touch {m}@github.com/org/repo",
    ],
    ids=["lf", "crlf", "ssh-url-host", "ssh-url-user"],
)
def test_adv20_newline_in_ssh_host_rejected(
    secrets: Secrets,
    tmp_path: Path,
    isolated_env: Path,
    keys: Keys,
    baseline: tuple[str, ...],
    target: str,
) -> None:
    marker = tmp_path / "PWNED"
    line = reject(
        secrets,
        tmp_path,
        *baseline,
        "-ssh-git",
        "deploy=" + target.format(m=marker),
        names=("-ssh-git deploy", "control character"),
    )
    assert "\n" not in line
    for host in ("github.com", "127.0.0.1"):
        assert_no_proxy(ssh_g(isolated_env, host))
    assert_ssh_marker_absent(isolated_env, marker)


# --- 21: ssh pattern characters -----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["*", "!x", "a.com b.com", "a.com,b.com", "host%", '"quoted"', "gith?b.com", "ssh://*.com/o/r"],
)
def test_adv21_ssh_host_pattern_rejected(
    secrets: Secrets, tmp_path: Path, keys: Keys, target: str
) -> None:
    secrets.add("deploy", {"ssh-privatekey": keys.ed25519})
    reject(secrets, tmp_path, "-ssh-git", f"deploy={target}", names=("-ssh-git deploy", "host"))


# --- 22: git urlmatch wildcards -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://*.com", "https://*.*", "https://*.github.com", "https://github.*"]
)
def test_adv22_wildcard_url_rejected(secrets: Secrets, tmp_path: Path, url: str) -> None:
    secrets.add("gh", {"username": "bob", "password": "wild-pw-1234"})
    reject(secrets, tmp_path, "-basic-git", f"gh={url}", names=("-basic-git gh", "url"))


def test_adv22_credentials_not_returned_for_lookalike_hosts(
    secrets: Secrets, isolated_env: Path
) -> None:
    secrets.add("gh", {"username": "bob", "password": "exact-host-pw"})
    run = creds(secrets, "-basic-git", "gh=https://github.com")
    assert run.returncode == 0, run.output
    assert credential_fill(isolated_env, "github.com").get("password") == "exact-host-pw"
    for host in ("github.com.evil.net", "evilgithub.com", "api.github.com", "github.com:8443"):
        assert "password" not in credential_fill(isolated_env, host), host
    assert "password" not in credential_fill(isolated_env, "github.com", protocol="http")


# --- 23: quotes, brackets and backslashes in urls -----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        'https://x"]\n[core]\n\tsshCommand = touch {m}',
        'https://x"]',
        "https://x\\",
        "https://x]/",
        'https://github.com/a"b',
        "https://github.com/a\\b",
        "https://github.com/a]b",
    ],
)
def test_adv23_url_with_quote_bracket_backslash_rejected(
    secrets: Secrets, tmp_path: Path, isolated_env: Path, baseline: tuple[str, ...], url: str
) -> None:
    marker = tmp_path / "PWNED"
    secrets.add("evil", {"username": "bob", "password": "quote-pw-1234"})
    reject(
        secrets,
        tmp_path,
        *baseline,
        "-basic-git",
        "evil=" + url.format(m=marker),
        names=("-basic-git evil",),
    )
    assert git_keys(isolated_env) == BASELINE_KEYS
    assert_ssh_marker_absent(isolated_env, marker)


# --- 24: ports and hosts ----------------------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "99999", "22x", "", "022", "-1", "\uff12\uff12"])
@pytest.mark.parametrize("flag", ["-ssh-git", "-basic-git"])
def test_adv24_bad_port_rejected(
    secrets: Secrets, tmp_path: Path, keys: Keys, flag: str, port: str
) -> None:
    secrets.add(
        "s", {"username": "bob", "password": "port-pw-1234", "ssh-privatekey": keys.ed25519}
    )
    target = f"git.example:{port}" if flag == "-ssh-git" else f"https://git.example:{port}/org/r"
    line = reject(secrets, tmp_path, flag, f"s={target}", names=(f"{flag} s",))
    assert any(word in line for word in ("port", "host", "url")), line


def test_adv24_ipv6_host_port_consistent(secrets: Secrets, isolated_env: Path, keys: Keys) -> None:
    secrets.add("v6", {"ssh-privatekey": keys.ed25519})
    secrets.add("repo", {"ssh-privatekey": keys.ed25519})
    secrets.add("web", {"username": "bob", "password": "v6-pw-1234"})
    run = creds(
        secrets,
        "-ssh-git",
        "v6=[::1]:22",
        "-ssh-git",
        "repo=ssh://git@[::1]:2222/org/repo",
        "-basic-git",
        "web=https://[::1]:8443",
    )
    assert run.returncode == 0, run.output
    options = ssh_g(isolated_env, "::1")
    assert options["hostname"] == ["::1"]
    assert options["port"] == ["22"]
    assert options["identityfile"] == [str(isolated_env / ".ssh" / "id_v6")]
    # The repository's url is rewritten to an alias whose ssh settings keep host and port.
    rewrites = tool(isolated_env, "git", "config", "--global", "--get-regexp", r"^url\.").stdout
    pairs = [line.partition(" ")[::2] for line in rewrites.splitlines()]
    # No scp-like "git@[::1]:org/repo" form: it cannot carry the port.
    assert [source for _, source in pairs] == ["ssh://git@[::1]:2222/org/repo"]
    alias_url = pairs[0][0]
    alias = alias_url.removeprefix("url.ssh://git@").split("/", 1)[0]
    options = ssh_g(isolated_env, alias)
    assert (options["hostname"], options["port"]) == (["::1"], ["2222"])
    assert options["identityfile"] == [str(isolated_env / ".ssh" / "id_repo")]
    assert credential_fill(isolated_env, "[::1]:8443").get("password") == "v6-pw-1234"


def test_adv24_punycode_host_accepted(secrets: Secrets, isolated_env: Path, keys: Keys) -> None:
    secrets.add("idn", {"ssh-privatekey": keys.ed25519})
    secrets.add("web", {"username": "bob", "password": "puny-pw-1234"})
    run = creds(
        secrets,
        "-ssh-git",
        "idn=xn--bcher-kva.example",
        "-basic-git",
        "web=https://xn--bcher-kva.example",
    )
    assert run.returncode == 0, run.output
    options = ssh_g(isolated_env, "xn--bcher-kva.example")
    assert options["hostname"] == ["xn--bcher-kva.example"]
    assert options["stricthostkeychecking"] == ["accept-new"]
    assert credential_fill(isolated_env, "xn--bcher-kva.example").get("password") == "puny-pw-1234"


@pytest.mark.parametrize(
    ("flag", "target"),
    [
        ("-ssh-git", "bücher.example"),
        ("-ssh-git", "bücher.example:2222"),
        ("-ssh-git", "ssh://git@bücher.example/org/repo"),
        ("-basic-git", "https://bücher.example/org/repo"),
    ],
)
def test_adv24_idn_host_rejected_naming_idna_form(
    secrets: Secrets, tmp_path: Path, keys: Keys, flag: str, target: str
) -> None:
    secrets.add("s", {"username": "bob", "password": "idn-pw-1234", "ssh-privatekey": keys.ed25519})
    reject(
        secrets, tmp_path, flag, f"s={target}", names=(f"{flag} s", "IDNA", "xn--bcher-kva.example")
    )


# --- 25: ssh private keys ---------------------------------------------------------------------


def _no_key_line(output: str, key: str) -> None:
    for line in key.splitlines():
        if line and not line.startswith("-----"):
            assert line.strip() not in output, "a line of the key appeared in the output"


@pytest.mark.parametrize("shape", ["no-final-newline", "crlf", "crlf-no-final", "blank-lines"])
def test_adv25_key_normalised_so_ssh_loads_it(
    secrets: Secrets, isolated_env: Path, keys: Keys, shape: str
) -> None:
    text = {
        "no-final-newline": keys.ed25519.rstrip("\n"),
        "crlf": keys.ed25519.replace("\n", "\r\n"),
        "crlf-no-final": keys.ed25519.replace("\n", "\r\n").rstrip("\r\n"),
        "blank-lines": "\n\n" + keys.ed25519 + "\n\n",
    }[shape]
    secrets.add("deploy", {"ssh-privatekey": text})
    run = creds(secrets, "-ssh-git", "deploy=github.com")
    assert run.returncode == 0, run.output
    path = isolated_env / ".ssh" / "id_deploy"
    assert path.read_bytes().endswith(b"\n") and b"\r" not in path.read_bytes()
    proc = tool(isolated_env, "ssh-keygen", "-y", "-f", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == keys.ed25519_pub.split()[:2]


@pytest.mark.parametrize("kind", ["rsa", "ecdsa-256", "ecdsa-384", "ecdsa-521"])
def test_adv25_openssh_key_types_accepted(
    secrets: Secrets, isolated_env: Path, keys: Keys, kind: str
) -> None:
    key, pub = keys.others[kind]
    secrets.add("deploy", {"ssh-privatekey": key.rstrip("\n")})
    run = creds(secrets, "-ssh-git", "deploy=github.com")
    assert run.returncode == 0, run.output
    proc = tool(isolated_env, "ssh-keygen", "-y", "-f", str(isolated_env / ".ssh" / "id_deploy"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == pub.split()[:2]


def test_adv25_pem_rsa_key_accepted(secrets: Secrets, isolated_env: Path, keys: Keys) -> None:
    secrets.add("deploy", {"ssh-privatekey": keys.rsa_pem.replace("\n", "\r\n")})
    run = creds(secrets, "-ssh-git", "deploy=github.com")
    assert run.returncode == 0, run.output
    proc = tool(isolated_env, "ssh-keygen", "-y", "-f", str(isolated_env / ".ssh" / "id_deploy"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == keys.rsa_pem_pub.split()[:2]


def _truncated(key: str) -> str:
    lines = key.splitlines()
    return "\n".join(lines[:2] + lines[3:]) + "\n"


def _tampered(key: str, offset: int) -> str:
    """The key with one bit of its decoded container flipped, re-wrapped as ssh-keygen writes it."""
    lines = key.strip().splitlines()
    blob = bytearray(base64.b64decode("".join(lines[1:-1])))
    blob[offset] ^= 1
    body = base64.b64encode(bytes(blob)).decode()
    wrapped = [body[i : i + 70] for i in range(0, len(body), 70)]
    return "\n".join([lines[0], *wrapped, lines[-1]]) + "\n"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage", "not a private key"),
        ("public", "not a private key"),
        ("truncated", "not a valid"),
        ("public-length", "not a valid"),  # ed25519 container offsets, as ssh-keygen -y fails
        ("public-bytes", "not a valid"),
        ("checkint", "not a valid"),
        ("private-half", "not a valid"),
        ("bad-base64", "not a valid"),
        ("no-end", "not a valid"),
        ("openssh-passphrase", "passphrase"),
        ("pem-passphrase", "passphrase"),
        ("pem-garbage", "not a valid"),
    ],
)
def test_adv25_bad_key_rejected_without_key_bytes(
    secrets: Secrets, tmp_path: Path, keys: Keys, case: str, message: str
) -> None:
    ed = keys.ed25519
    text = {
        "garbage": "this is not a key, it is a password: hunter2-hunter2\n",
        "public": keys.ed25519_pub,
        "truncated": _truncated(ed),
        "public-length": _tampered(ed, 60),
        "public-bytes": _tampered(ed, 70),
        "checkint": _tampered(ed, 100),
        "private-half": _tampered(ed, 150),
        "bad-base64": ed.replace(ed.splitlines()[2], ed.splitlines()[2][:-4] + "!!!!"),
        "no-end": "\n".join(ed.splitlines()[:-1]),
        "openssh-passphrase": keys.ed25519_pass,
        "pem-passphrase": keys.rsa_pem_pass,
        "pem-garbage": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAzzzzzzzzzzzzzz\n"
        "-----END RSA PRIVATE KEY-----\n",
    }[case]
    secrets.add("deploy", {"ssh-privatekey": text})
    before = snapshot(tmp_path)
    run = creds(secrets, "-ssh-git", "deploy=github.com", "--log-format", "json")
    line = assert_rejected(run, "-ssh-git deploy", "ssh-privatekey", message)
    assert snapshot(tmp_path) == before
    assert "\n" not in line
    _no_key_line(run.output, text)


# --- 26: no known_hosts -------------------------------------------------------------------------


def test_adv26_accept_new_only_for_the_host_without_known_hosts(
    secrets: Secrets, isolated_env: Path, keys: Keys
) -> None:
    known = f"github.com {keys.ed25519_pub}\n"
    secrets.add("withkh", {"ssh-privatekey": keys.ed25519, "known_hosts": known})
    secrets.add("nokh", {"ssh-privatekey": keys.ed25519})
    run = creds(
        secrets, "-ssh-git", "withkh=github.com", "-ssh-git", "nokh=git.internal:2222", fmt="json"
    )
    assert run.returncode == 0, run.output
    warnings = log_lines(run, "warning")
    assert len(warnings) == 1 and "-ssh-git nokh" in warnings[0]
    assert "known_hosts" in warnings[0] and "accept-new" in warnings[0]
    assert ssh_g(isolated_env, "git.internal")["stricthostkeychecking"] == ["accept-new"]
    # ssh -G prints StrictHostKeyChecking yes as "true".
    assert ssh_g(isolated_env, "github.com")["stricthostkeychecking"] == ["true"]
    for other in ("gitlab.com", "127.0.0.1", "git.internal.evil.net"):
        value = ssh_g(isolated_env, other)["stricthostkeychecking"]
        assert value not in (["accept-new"], ["no"], ["false"]), other
    known_file = isolated_env / ".ssh" / "known_hosts"
    assert known_file.read_text() == known
    found = tool(isolated_env, "ssh-keygen", "-F", "github.com", "-f", str(known_file))
    assert found.returncode == 0 and keys.ed25519_pub.split()[1] in found.stdout


@pytest.mark.parametrize(
    "how",
    [
        "--require-known-hosts",
        "-require-known-hosts",
        "--require-known-hosts=true",
        "-require-known-hosts=1",
        "STEPKIT_REQUIRE_KNOWN_HOSTS",
    ],
)
def test_adv26_require_known_hosts_fails_closed(
    secrets: Secrets, tmp_path: Path, keys: Keys, how: str
) -> None:
    secrets.add(
        "withkh", {"ssh-privatekey": keys.ed25519, "known_hosts": "github.com " + keys.ed25519_pub}
    )
    secrets.add("nokh", {"ssh-privatekey": keys.ed25519})
    args = ("-ssh-git", "withkh=github.com", "-ssh-git", "nokh=git.internal")
    env = {how: "1"} if how.startswith("STEPKIT") else None
    flag = () if env else (how,)
    reject(
        secrets,
        tmp_path,
        *args,
        *flag,
        env=env,
        names=("-ssh-git nokh", "known_hosts", "--require-known-hosts"),
    )


@pytest.mark.parametrize("how", ["--require-known-hosts=false", "-require-known-hosts=0"])
def test_adv26_require_known_hosts_false_on_the_command_line_wins(
    secrets: Secrets, isolated_env: Path, keys: Keys, how: str
) -> None:
    """A Go bool flag takes =false too, and the command line wins over the environment."""
    secrets.add("nokh", {"ssh-privatekey": keys.ed25519})
    run = creds(
        secrets, "-ssh-git", "nokh=git.internal", how, env={"STEPKIT_REQUIRE_KNOWN_HOSTS": "1"}
    )
    assert run.returncode == 0, run.output
    assert ssh_g(isolated_env, "git.internal")["stricthostkeychecking"] == ["accept-new"]


def test_adv26_require_known_hosts_passes_with_known_hosts(
    secrets: Secrets, isolated_env: Path, keys: Keys
) -> None:
    secrets.add(
        "withkh", {"ssh-privatekey": keys.ed25519, "known_hosts": "github.com " + keys.ed25519_pub}
    )
    run = creds(secrets, "-ssh-git", "withkh=github.com", "--require-known-hosts")
    assert run.returncode == 0, run.output
    assert log_lines(run, "warning") == []
    assert ssh_g(isolated_env, "github.com")["stricthostkeychecking"] == ["true"]


# --- 27: secret names used in file names -------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "x\n", "..", "X"])
@pytest.mark.parametrize(
    "flag", ["-ssh-git", "-basic-git", "-basic-docker", "-docker-config", "-docker-cfg"]
)
def test_adv27_secret_name_rejected(
    secrets: Secrets, tmp_path: Path, keys: Keys, flag: str, name: str
) -> None:
    # Complete secrets where these names lead (all inside tmp_path), so that only the name
    # check stands between them and a key file named id_<secret>.
    auth = json.dumps({"auths": {"reg.example": {"auth": b64("u:decoy-docker-pw")}}})
    for decoy in ("../x", "a/b", "x\n"):
        secrets.add(
            decoy,
            {
                "username": "bob",
                "password": "decoy-pw-1234",
                "ssh-privatekey": keys.ed25519,
                ".dockerconfigjson": auth,
                ".dockercfg": auth,
            },
        )
    value = {
        "-ssh-git": f"{name}=github.com",
        "-basic-git": f"{name}=https://github.com",
        "-basic-docker": f"{name}=ghcr.io",
    }.get(flag, name)
    reject(secrets, tmp_path, flag, value, names=(flag, "secret name"))


# --- 28: symlinks in $HOME ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "planted",
    [".ssh", ".ssh/config", ".docker/config.json", ".docker", ".gitconfig", ".ssh/id_deploy"],
)
def test_adv28_symlink_in_home_refused(
    secrets: Secrets, tmp_path: Path, isolated_env: Path, keys: Keys, planted: str
) -> None:
    secrets.add("gh", {"username": "bob", "password": "link-pw-1234"})
    secrets.add("deploy", {"ssh-privatekey": keys.ed25519})
    is_dir = planted in (".ssh", ".docker")
    victim = tmp_path / "victim"
    if is_dir:
        victim.mkdir()
        (victim / "keep").write_text("original\n")
    else:
        victim.write_text('{"original": true}\n')
    link = isolated_env / planted
    link.parent.mkdir(mode=0o700, exist_ok=True)
    link.symlink_to(victim)
    before_home = snapshot(isolated_env)
    before_victim = (
        snapshot(victim) if is_dir else {"": (victim.stat().st_mode, victim.read_bytes())}
    )
    run = creds(
        secrets,
        "-basic-git",
        "gh=https://github.com",
        "-ssh-git",
        "deploy=github.com",
        "-basic-docker",
        "gh=ghcr.io",
    )
    assert_rejected(run, f"$HOME/{planted}", "symbolic link")
    assert snapshot(isolated_env) == before_home  # not even .gitconfig
    after_victim = (
        snapshot(victim) if is_dir else {"": (victim.stat().st_mode, victim.read_bytes())}
    )
    assert after_victim == before_victim


# --- 29: umask 000 ------------------------------------------------------------------------------


def run_with_umask0(*args: str, home: Path) -> Run:
    proc = subprocess.run(
        ["sh", "-c", 'umask 000; exec "$0" "$@"', STEPKIT, *args],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("home_state", ["fresh", "existing-loose"])
def test_adv29_umask_000_gives_0700_dirs_and_0600_files(
    secrets: Secrets, tmp_path: Path, keys: Keys, home_state: str
) -> None:
    secrets.add("gh", {"username": "bob", "password": "umask-pw-1234"})
    secrets.add(
        "deploy", {"ssh-privatekey": keys.ed25519, "known_hosts": "github.com " + keys.ed25519_pub}
    )
    secrets.add(
        "dc", {".dockerconfigjson": json.dumps({"auths": {"quay.io": {"auth": b64("u:umask-dc")}}})}
    )
    home = tmp_path / "newhome"
    if home_state == "existing-loose":
        for sub in ("", ".ssh", ".docker"):
            (home / sub).mkdir(exist_ok=True)
            (home / sub).chmod(0o777)
        (home / ".docker" / "config.json").write_text("{}")
        (home / ".docker" / "config.json").chmod(0o666)
    run = run_with_umask0(
        "creds-init",
        "--secrets-dir",
        str(secrets.root),
        "-basic-git",
        "gh=https://github.com",
        "-ssh-git",
        "deploy=github.com",
        "-basic-docker",
        "gh=ghcr.io",
        "-docker-config",
        "dc",
        home=home,
    )
    assert_no_leak(run.output, secrets.values)
    assert run.returncode == 0, run.output
    written = list(home.rglob("*"))
    assert {p.relative_to(home).as_posix() for p in written} >= {
        ".gitconfig",
        ".git-credentials",
        ".ssh",
        ".ssh/id_deploy",
        ".ssh/config",
        ".ssh/known_hosts",
        ".docker",
        ".docker/config.json",
    }
    if home_state == "fresh":
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in written:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        else:
            assert stat.S_ISREG(path.lstat().st_mode)
            assert mode == 0o600, path


# --- 30: credential helpers ---------------------------------------------------------------------


def _helper_config() -> str:
    return json.dumps(
        {
            "auths": {"registry.example": {"identitytoken": "id-token-secret-1234"}},
            "credsStore": "desktop",
            "credHelpers": {
                "gcr.io": "gcr",
                "1234.dkr.ecr.us-east-1.amazonaws.com": "ecr-login",
                "evil.example": "evil",
            },
        }
    )


def test_adv30_only_allowlisted_cred_helpers_kept(secrets: Secrets, isolated_env: Path) -> None:
    secrets.add("dc", {".dockerconfigjson": _helper_config()}, hidden=(".dockerconfigjson",))
    secrets.values.append("id-token-secret-1234")
    run = creds(secrets, "-docker-config", "dc", fmt="json")
    assert run.returncode == 0, run.output
    doc = docker_json(isolated_env)
    assert "credsStore" not in doc
    assert doc["credHelpers"] == {
        "gcr.io": "gcr",
        "1234.dkr.ecr.us-east-1.amazonaws.com": "ecr-login",
    }
    assert doc["auths"]["registry.example"] == {"identitytoken": "id-token-secret-1234"}
    warnings = log_lines(run, "warning")
    assert any("credsStore" in w and "desktop" in w for w in warnings), warnings
    assert any("evil.example" in w and "evil" in w for w in warnings), warnings


@pytest.mark.parametrize(
    "how",
    [
        "--allow-cred-helper desktop --allow-cred-helper evil",
        "-allow-cred-helper=desktop -allow-cred-helper=evil",
        "env",
    ],
)
def test_adv30_allow_cred_helper_adds_names(secrets: Secrets, isolated_env: Path, how: str) -> None:
    secrets.add("dc", {".dockerconfigjson": _helper_config()})
    secrets.values.append("id-token-secret-1234")
    env = {"STEPKIT_ALLOW_CRED_HELPERS": "desktop evil"} if how == "env" else None
    args = () if env else tuple(how.split())
    run = creds(secrets, "-docker-config", "dc", *args, env=env)
    assert run.returncode == 0, run.output
    doc = docker_json(isolated_env)
    assert doc["credsStore"] == "desktop"
    assert doc["credHelpers"]["evil.example"] == "evil"
    assert doc["credHelpers"]["gcr.io"] == "gcr"
    assert doc["auths"]["registry.example"]["identitytoken"] == "id-token-secret-1234"
    assert log_lines(run, "warning") == []


@pytest.mark.parametrize(
    "doc",
    [
        {"credsStore": "../../bin/sh"},
        {"credsStore": "desktop; touch PWNED"},
        {"credsStore": 7},
        {"credHelpers": {"gcr.io": "/usr/bin/evil"}},
        {"credHelpers": ["gcr"]},
    ],
)
def test_adv30_helper_that_is_no_helper_name_rejected(
    secrets: Secrets, tmp_path: Path, doc: dict[str, Any]
) -> None:
    secrets.add("dc", {".dockerconfigjson": json.dumps({"auths": {}, **doc})})
    reject(
        secrets,
        tmp_path,
        "-docker-config",
        "dc",
        "--allow-cred-helper",
        "desktop",
        names=("-docker-config dc", "cred"),
    )


# --- 31: Docker Hub's spellings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sources", "winner"),
    [
        (("existing", "cfg", "config", "basic"), "basic"),
        (("existing", "cfg", "config"), "config"),
        (("existing", "cfg"), "cfg"),
        (("cfg", "config", "basic"), "basic"),
        (("existing", "basic"), "basic"),
    ],
)
def test_adv31_docker_hub_spellings_merge_into_one_entry(
    secrets: Secrets, isolated_env: Path, sources: tuple[str, ...], winner: str
) -> None:
    users = {s: f"user-{s}" for s in ("existing", "cfg", "config", "basic")}
    pw = {s: f"hub-pw-{s}-1234" for s in users}
    args: list[str] = []
    if "existing" in sources:
        existing: dict[str, Any] = {
            "auths": {
                "index.docker.io": {"auth": b64(f"{users['existing']}:{pw['existing']}")},
                "docker.io": {"auth": b64(f"{users['existing']}:{pw['existing']}")},
                "ghcr.io": {"auth": b64("ghuser:ghcr-existing-pw")},
            },
            "proxies": {"default": {"httpProxy": "http://proxy.example:3128"}},
            "detachKeys": "ctrl-e,e",
        }
        (isolated_env / ".docker").mkdir(mode=0o700)
        (isolated_env / ".docker" / "config.json").write_text(json.dumps(existing))
        secrets.values += [pw["existing"], "ghcr-existing-pw"]
    if "cfg" in sources:
        legacy = {
            "docker.io": {"auth": b64(f"{users['cfg']}:{pw['cfg']}"), "email": "c@example.com"}
        }
        secrets.add("cfg", {".dockercfg": json.dumps(legacy)})
        args += ["-docker-cfg", "cfg"]
        secrets.values.append(pw["cfg"])
    if "config" in sources:
        modern = {"auths": {HUB: {"username": users["config"], "password": pw["config"]}}}
        secrets.add("config", {".dockerconfigjson": json.dumps(modern)})
        args += ["-docker-config", "config"]
        secrets.values.append(pw["config"])
    if "basic" in sources:
        secrets.add("basic", {"username": users["basic"], "password": pw["basic"]})
        args += ["-basic-docker", "basic=index.docker.io"]
    run = creds(secrets, *args)
    assert run.returncode == 0, run.output
    doc = docker_json(isolated_env)
    hub = [k for k in doc["auths"] if "docker.io" in k]
    assert hub == [HUB], doc["auths"].keys()
    entry = doc["auths"][HUB]
    assert base64.b64decode(entry["auth"]).decode() == f"{users[winner]}:{pw[winner]}"
    assert len(log_lines(run, "warning")) == len(sources) - 1
    assert all("replace" in w for w in log_lines(run, "warning"))
    if "existing" in sources:
        assert doc["auths"]["ghcr.io"] == {"auth": b64("ghuser:ghcr-existing-pw")}
        assert doc["proxies"] == {"default": {"httpProxy": "http://proxy.example:3128"}}
        assert doc["detachKeys"] == "ctrl-e,e"


# --- 32: broken docker secrets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "text", "what"),
    [
        ("-docker-config", '{"auths": {"reg.example": {"auth": "c2VjcmV0', "not valid JSON"),
        ("-docker-cfg", "not json at all: supersecret-value", "not valid JSON"),
        ("-docker-config", '["supersecret-value"]', "not a JSON object"),
        ("-docker-config", '{"auths": {"reg.example": {"auth": "not*base64!secret"}}}', "base64"),
        ("-docker-cfg", '{"reg.example": {"auth": "not*base64!secret"}}', "base64"),
        (
            "-docker-config",
            '{"auths": {"reg.example": {"auth": "' + b64("nocolonsecret") + '"}}}',
            "user:password",
        ),
        ("-docker-config", '{"auths": {"reg.example": "supersecret-value"}}', "not a JSON object"),
        ("-docker-config", '{"auths": {"reg.example": {"password": 12345678}}}', "'password'"),
        ("-docker-config", '{"auths": {"reg.example": {"email": "a@b.c"}}}', "no auth"),
        ("-docker-config", '{"auths": ["supersecret-value"]}', "'auths'"),
    ],
)
def test_adv32_broken_docker_secret_rejected_naming_secret(
    secrets: Secrets, tmp_path: Path, flag: str, text: str, what: str
) -> None:
    key = ".dockerconfigjson" if flag == "-docker-config" else ".dockercfg"
    secrets.add("dc", {key: text})
    secrets.values += ["supersecret-value", "nocolonsecret", "not*base64!secret"]
    line = reject(secrets, tmp_path, flag, "dc", names=(f"{flag} dc", what))
    assert "c2VjcmV0" not in line


def test_adv32_legacy_dockercfg_converted_into_auths(secrets: Secrets, isolated_env: Path) -> None:
    legacy = {
        "https://registry.example/v1/": {
            "auth": b64("leg:legacy-pw-1234"),
            "email": "l@example.com",
        },
        "quay.io": {"username": "q", "password": "quay-pw-1234"},
    }
    secrets.add("old", {".dockercfg": json.dumps(legacy)})
    secrets.values += ["legacy-pw-1234", "quay-pw-1234"]
    run = creds(secrets, "-docker-cfg", "old")
    assert run.returncode == 0, run.output
    doc = docker_json(isolated_env)
    assert set(doc) == {"auths"}
    assert doc["auths"]["https://registry.example/v1/"] == legacy["https://registry.example/v1/"]
    assert doc["auths"]["quay.io"]["auth"] == b64("q:quay-pw-1234")


def test_adv32_existing_config_json_not_json_rejected(
    secrets: Secrets, tmp_path: Path, isolated_env: Path
) -> None:
    (isolated_env / ".docker").mkdir(mode=0o700)
    (isolated_env / ".docker" / "config.json").write_text(
        '{"auths": {"x": {"auth": "existing-secret'
    )
    secrets.values.append("existing-secret")
    reject(secrets, tmp_path, names=("$HOME/.docker/config.json", "not valid JSON"))


# --- flag spellings (SPEC §1) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-basic-git=gh=https://a.example", "-ssh-git=deploy=a.example"],
        ["-basic-git", "gh=https://a.example", "-ssh-git", "deploy=a.example"],
        ["--basic-git=gh=https://a.example", "--ssh-git=deploy=a.example"],
        ["--basic-git", "gh=https://a.example", "--ssh-git", "deploy=a.example"],
    ],
    ids=["single-eq", "single-space", "double-eq", "double-space"],
)
def test_flags_every_go_spelling(
    secrets: Secrets, isolated_env: Path, keys: Keys, argv: list[str]
) -> None:
    secrets.add("gh", {"username": "bob", "password": "spell-pw-1234"})
    secrets.add("deploy", {"ssh-privatekey": keys.ed25519})
    run = creds(secrets, *argv)
    assert run.returncode == 0, run.output
    assert credential_fill(isolated_env, "a.example").get("password") == "spell-pw-1234"
    assert ssh_g(isolated_env, "a.example")["identityfile"] == [
        str(isolated_env / ".ssh" / "id_deploy")
    ]


def test_flags_env_vars_space_separated(secrets: Secrets, isolated_env: Path, keys: Keys) -> None:
    secrets.add("a", {"username": "ann", "password": "env-pw-a-1234"})
    secrets.add("b", {"username": "ben", "password": "env-pw-b-1234"})
    secrets.add("k1", {"ssh-privatekey": keys.ed25519})
    secrets.add("k2", {"ssh-privatekey": keys.rsa_pem})
    secrets.add(
        "dc",
        {".dockerconfigjson": json.dumps({"auths": {"quay.io": {"auth": b64("q:env-dc-pw")}}})},
    )
    secrets.add("cfg", {".dockercfg": json.dumps({"old.example": {"auth": b64("o:env-cfg-pw")}})})
    secrets.values += ["env-dc-pw", "env-cfg-pw"]
    env = {
        "STEPKIT_SECRETS_DIR": str(secrets.root),
        "STEPKIT_BASIC_GIT": "a=https://a.example b=https://b.example",
        "STEPKIT_SSH_GIT": "k1=one.example k2=two.example:2222",
        "STEPKIT_BASIC_DOCKER": "a=ghcr.io b=registry.example:5000",
        "STEPKIT_DOCKER_CONFIG_SECRETS": "dc",
        "STEPKIT_DOCKER_CFG_SECRETS": "cfg",
        "STEPKIT_LOG_FORMAT": "json",
    }
    run = run_stepkit("creds-init", env=env)
    assert_no_leak(run.output, secrets.values)
    assert_json_lines(run.stderr)
    assert run.returncode == 0, run.output
    assert credential_fill(isolated_env, "a.example").get("password") == "env-pw-a-1234"
    assert credential_fill(isolated_env, "b.example").get("password") == "env-pw-b-1234"
    assert ssh_g(isolated_env, "two.example")["port"] == ["2222"]
    assert ssh_g(isolated_env, "one.example")["identityfile"] == [
        str(isolated_env / ".ssh" / "id_k1")
    ]
    assert set(docker_json(isolated_env)["auths"]) == {
        "ghcr.io",
        "registry.example:5000",
        "quay.io",
        "old.example",
    }


def test_flags_url_with_equals_sign_split_on_first(secrets: Secrets, isolated_env: Path) -> None:
    secrets.add("gh", {"username": "bob", "password": "equals-pw-1234"})
    run = creds(secrets, "-basic-git=gh=https://git.example/org/repo=x")
    assert run.returncode == 0, run.output
    for path in ("org/repo=x", "org/repo=x.git"):
        got = credential_fill(isolated_env, "git.example", path=path)
        assert got.get("password") == "equals-pw-1234", path
    assert "password" not in credential_fill(isolated_env, "git.example", path="org/other")


def test_adv25_dsa_key_rejected_with_the_reason(
    secrets: Secrets, isolated_env: Path, tmp_path: Path
) -> None:
    key, _ = _keygen(tmp_path / "dsa", "-t", "dsa", "-N", "")
    secrets.add("deploy", {"ssh-privatekey": key})
    run = creds(secrets, "-ssh-git", "deploy=github.com")
    line = assert_rejected(run, "-ssh-git deploy", "ssh-dss", "DSA")
    _no_key_line(line, key)
    assert not (isolated_env / ".ssh").exists()


def test_ssh_empty_port_says_so(secrets: Secrets, isolated_env: Path, keys: Keys) -> None:
    secrets.add("deploy", {"ssh-privatekey": keys.ed25519})
    for value in ("deploy=github.com:", "deploy=[::1]:"):
        assert "empty port" in assert_rejected(creds(secrets, "-ssh-git", value), "-ssh-git deploy")
