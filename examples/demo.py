"""`make demo`: creds-init on example secrets, then git, ssh and docker asked which credentials they now use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STEPKIT = str(Path(sys.executable).with_name("stepkit"))


def mount_secret(root: Path, name: str, keys: dict[str, str]) -> None:
    """Lay a secret out as the kubelet does: `<key> -> ..data/<key>`, `..data -> ..<timestamp>`."""
    stamp = root / name / "..2026_11_27_12_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in keys.items():
        (stamp / key).write_text(value)
        (root / name / key).symlink_to(Path("..data") / key)
    (root / name / "..data").symlink_to(stamp.name)


def show(title: str, argv: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    print(f"\n$ {' '.join(argv)}    # {title}")
    proc = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, check=False)
    out = proc.stdout.strip()
    return out


def fetch_source(work: Path, env: dict[str, str], token: str) -> int:
    """The next init container: git-init fetches a repository over HTTP with Basic auth."""
    # The demo borrows the test suite's real git server (git http-backend behind Basic auth).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.peers import GitHttpServer, make_bare, make_repo

    shas = make_repo(work / "app-src", commits=3, branches=["release"])
    make_bare(work / "app-src", work / "srv" / "org" / "app.git")
    workspace = work / "workspace"
    workspace.mkdir()
    with GitHttpServer(work / "srv", {"": ("octocat", token)}) as server:
        # creds-init again, now naming this server: in a pod it would be one run.
        secrets = work / "secrets"
        proc = subprocess.run(
            [
                STEPKIT,
                "creds-init",
                f"-basic-git=github-token={server.url}",
                f"--secrets-dir={secrets}",
            ],
            env=env,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            return proc.returncode
        term = work / "termination-log"
        url = server.url_for("org/app.git")
        print(
            f"\n$ cd workspace && stepkit git-init -url {url} -revision release -path src --allow-http \\"
        )
        print(f"      -terminationMessagePath {term.name}    # a Build's source.git")
        proc = subprocess.run(
            [
                STEPKIT,
                "git-init",
                f"-url={url}",
                "-revision=release",
                "-path=src",
                "--allow-http",
                f"-terminationMessagePath={term}",
            ],
            env=env,
            cwd=workspace,
            check=False,
        )
        if proc.returncode != 0:
            return proc.returncode
        print("\n$ git -C src log --oneline --decorate -2    # what the next step finds")
        log = subprocess.run(
            ["git", "-C", str(workspace / "src"), "log", "--oneline", "--decorate", "-2"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        print("\n".join("  " + line for line in log.stdout.splitlines()))
        print(f"  (the release branch's tip is {shas['refs/heads/release'][:7]})")
        print(f"\n$ cat {term.name}    # the result Kubernetes reports")
        print("  " + term.read_text())
    return 0


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    work = Path(tempfile.mkdtemp(prefix="stepkit-demo-"))
    try:
        secrets, home = work / "secrets", work / "builder-home"
        secrets.mkdir()
        token = "demo-token-" + os.urandom(6).hex()
        mount_secret(secrets, "github-token", {"username": "octocat", "password": token + "\n"})
        keydir = work / "keygen"
        keydir.mkdir()
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "deploy",
                "-f",
                str(keydir / "id"),
            ],
            check=True,
        )
        hostkey = (keydir / "id.pub").read_text().split()[:2]  # stands in for github.com's host key
        mount_secret(
            secrets,
            "deploy-key",
            {
                "ssh-privatekey": (keydir / "id").read_text(),
                "known_hosts": f"github.com {hostkey[0]} {hostkey[1]}\n",
            },
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }
        argv = [
            STEPKIT,
            "creds-init",
            "-basic-git=github-token=https://github.com",
            "-ssh-git=deploy-key=github.com",
            "-basic-docker=github-token=ghcr.io",
            f"--secrets-dir={secrets}",
        ]
        print("Secrets mounted as Kubernetes does, under", secrets)
        print(f"\n$ HOME={home} stepkit creds-init -basic-git=github-token=https://github.com \\")
        print(
            "      -ssh-git=deploy-key=github.com -basic-docker=github-token=ghcr.io --secrets-dir=..."
        )
        proc = subprocess.run(argv, env=env, check=False)
        if proc.returncode != 0:
            print("creds-init failed", file=sys.stderr)
            return proc.returncode
        print("\nFiles written:")
        for path in sorted(home.rglob("*")):
            print(f"  {oct(path.stat().st_mode & 0o777)}  {path.relative_to(home)}")

        out = show(
            "git asks its credential helper",
            ["git", "credential", "fill"],
            env,
            stdin="protocol=https\nhost=github.com\n\n",
        )
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "password":
                same = (
                    "the secret's token, trailing newline stripped" if value == token else "WRONG"
                )
                line = f"password=<{len(value)} characters: {same}>"
            print("  " + line)

        out = show("what git reads from ~/.gitconfig", ["git", "config", "--global", "--list"], env)
        print("\n".join("  " + line for line in out.splitlines()))

        ssh_config = str(home / ".ssh" / "config")
        out = show(
            "what ssh will do for github.com", ["ssh", "-G", "-F", ssh_config, "github.com"], env
        )
        wanted = (
            "hostname ",
            "port ",
            "identityfile ",
            "stricthostkeychecking ",
            "userknownhostsfile ",
        )
        print("\n".join("  " + line for line in out.splitlines() if line.startswith(wanted)))

        import docker.auth

        config = docker.auth.load_config(str(home / ".docker" / "config.json"))
        auth = docker.auth.resolve_authconfig(config, "ghcr.io") or {}
        print(
            "\n$ python -c 'docker.auth.resolve_authconfig(...)'    # what a docker client sends to ghcr.io"
        )
        print(
            f"  username={auth.get('username')}  password matches the secret: {auth.get('password') == token}"
        )
        return fetch_source(work, env, token)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
