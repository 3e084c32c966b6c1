"""The images' Python packages: a hash-pinned lock, and the wheels an offline image build installs.

The images install stepkit and its runtime dependencies (pyproject.toml's
[project].dependencies, no extras) with `pip install --no-index --require-hashes`, from wheels
put into the build context on the host: a build step reaches no package index.

    python images/wheels.py lock         # resolve the newest allowed releases; rewrite the locks
    python images/wheels.py check        # exit 1 when the lock no longer fits pyproject.toml
    python images/wheels.py context DIR  # stepkit's wheel + the locked wheels -> DIR (the context)

`lock` resolves once per architecture the images support (CPython 3.11, manylinux, x86_64 and
aarch64) through `pip install --dry-run --report`, and records each release with the sha256 of
every wheel those platforms install, so one requirements.lock serves both. pip.lock pins the
pip that runs the install inside the build; it runs from its wheel and never lands in the image.

`lock` and `context` need the package index (PyPI, or $PIP_INDEX_URL). Local pip config files,
find-links and extra indexes are ignored: the lock holds only files the index serves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCK = HERE / "requirements.lock"
PIP_LOCK = HERE / "pip.lock"
# Each extra's packages on top of LOCK: the layer its helper image adds to stepkit-base
# (gcs: stepkit-gcs-fetcher, oci: stepkit-image-fetcher, docker: stepkit-docker).
EXTRA_LOCKS = {
    "gcs": HERE / "requirements-gcs.lock",
    "oci": HERE / "requirements-oci.lock",
    "docker": HERE / "requirements-docker.lock",
}

PYTHON_VERSION = "3.11"
ABIS = ("cp311", "abi3", "none")
ARCHES = ("x86_64", "aarch64")
# The oldest glibc among the supported bases: Debian bookworm's 2.36.
GLIBC_MINORS = range(36, 16, -1)


def platforms(arch: str) -> list[str]:
    """pip --platform values for one architecture, most specific first."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in GLIBC_MINORS]
    return [*tags, f"manylinux2014_{arch}", "any"]


def target_args(arch: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for abi in ABIS:
        args += ["--abi", abi]
    for tag in platforms(arch):
        args += ["--platform", tag]
    return args


def host_arch() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if arch not in ARCHES:
        raise SystemExit(f"no locked wheels for {machine}; the images support {', '.join(ARCHES)}")
    return arch


def pip_env() -> dict[str, str]:
    """The caller's environment without pip config that could add files the index does not serve."""
    keep = ("PIP_INDEX_URL", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_CLIENT_CERT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], env=pip_env(), check=True)


def runtime_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [str(req) for req in project["dependencies"]]


def extra_requirements(extra: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [str(req) for req in project["optional-dependencies"][extra]]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------------------------
# lock
# --------------------------------------------------------------------------------------------


def resolve(requirements: list[str], arch: str) -> list[tuple[str, str, str, str]]:
    """What pip would install for these requirements on arch: (name, version, file, sha256)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip(
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--report",
            str(report),
            *target_args(arch),
            *requirements,
        )
        data = json.loads(report.read_text())
    return [
        (
            item["metadata"]["name"],
            item["metadata"]["version"],
            item["download_info"]["url"].rsplit("/", 1)[-1],
            item["download_info"]["archive_info"]["hashes"]["sha256"],
        )
        for item in data["install"]
    ]


def render(requirements: list[str], title: str, *, beside: dict[str, str] | None = None) -> str:
    """Resolve for every architecture and render one lock file; the versions must agree.

    With `beside` (another lock's pins), the packages it pins are left out, and must resolve
    to the versions it pins: the two locks install into one environment.
    """
    versions: dict[str, str] = {}
    hashes: dict[str, dict[str, str]] = {}  # name -> file name -> sha256
    for arch in ARCHES:
        for name, version, filename, digest in resolve(requirements, arch):
            key = canonical(name)
            if versions.setdefault(key, version) != version:
                raise SystemExit(f"{key}: {versions[key]} on one architecture, {version} on {arch}")
            hashes.setdefault(key, {})[filename] = digest
    for key, version in (beside or {}).items():
        if key in versions and versions.pop(key) != version:
            raise SystemExit(f"{key}: the other lock pins {version}; run `make images-lock`")
    lines = [
        f"# {title}",
        "# Generated by `python images/wheels.py lock` (make images-lock); do not edit by hand.",
        f"# Input: {', '.join(requirements)}",
        f"# For CPython {PYTHON_VERSION}, manylinux (glibc 2.17 to 2.36 wheels),"
        f" {' and '.join(ARCHES)}; wheels only.",
        "",
    ]
    for key in sorted(versions):
        # Ordered by file name, so a re-lock that changes nothing rewrites the same bytes.
        digests = [hashes[key][f] for f in sorted(hashes[key])]
        lines.append(f"{key}=={versions[key]} \\")
        lines += [f"    --hash=sha256:{d}" + (" \\" if d != digests[-1] else "") for d in digests]
    return "\n".join(lines) + "\n"


def lock() -> int:
    requirements = runtime_requirements()
    LOCK.write_text(
        render(requirements, "stepkit's runtime dependencies, as the images install them.")
    )
    PIP_LOCK.write_text(render(["pip"], "The pip that runs the install inside the image build."))
    for extra, path in EXTRA_LOCKS.items():
        path.write_text(lock_extra(extra))
    written = (LOCK, PIP_LOCK, *EXTRA_LOCKS.values())
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in written)}")
    return 0


def lock_extra(extra: str) -> str:
    """The lock of one extra: what it needs that requirements.lock does not pin already."""
    return render(
        [*runtime_requirements(), *extra_requirements(extra)],
        f"stepkit[{extra}]'s packages that requirements.lock lacks.",
        beside=pins(LOCK),
    )


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def check() -> int:
    """Does the lock pin every runtime requirement at a version the requirement allows?"""
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

    failures = []
    pinned = pins(LOCK)
    wanted = runtime_requirements()
    for extra, path in EXTRA_LOCKS.items():
        pinned |= pins(path) if path.exists() else {}
        wanted += extra_requirements(extra)
    for text in wanted:
        req = Requirement(text)
        version = pinned.get(canonical(req.name))
        if version is None or not req.specifier.contains(Version(version), prereleases=True):
            failures.append(f"{text} (the lock has {version or 'nothing'})")
    if failures:
        print("the image locks do not satisfy pyproject.toml:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        print("run: make images-lock", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------------------------


def source_tree(dest: Path) -> None:
    """The files git would commit (tracked, plus untracked but not ignored) copied to dest.

    Building from a copy keeps setuptools' build/ directory, stale modules included, out of
    the wheel, and the wheel holds what the working tree holds, committed or not.
    """
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for raw in listing.split(b"\0"):
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        src = ROOT / rel
        if not src.exists():  # deleted in the working tree, not yet in the index
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)


def source_date_epoch() -> str:
    """The mtime of every wheel entry: fixed, so the wheel changes only when its files do.

    pip ignores these times; a commit's time would change the wheel, and so rebuild the
    image, with every commit.
    """
    return os.environ.get("SOURCE_DATE_EPOCH", "315532800")  # 1980-01-01, the oldest a zip holds


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def context(out: Path, arch: str) -> int:
    """Fill out (replaced whole) with every file the image build's COPY takes."""
    if check():
        return 1
    out = out.resolve()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as src:
        source_tree(Path(src))
        env_epoch = source_date_epoch()
        # pip builds in an isolated environment with the build backend pyproject.toml names;
        # its chatter (setuptools' deprecation banners) is shown only when the build fails.
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp), src],
            env={**os.environ, "SOURCE_DATE_EPOCH": env_epoch},
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            sys.stderr.write(built.stdout + built.stderr)
            raise SystemExit(f"building stepkit's wheel failed (exit {built.returncode})")
    (wheel,) = tmp.glob("stepkit-*.whl")
    version = wheel.name.split("-")[1]
    # stepkit itself is hash-pinned too: --require-hashes needs every requirement pinned.
    (tmp / "stepkit.req").write_text(f"stepkit=={version} --hash=sha256:{sha256(wheel)}\n")
    for lock_file in (LOCK, PIP_LOCK, *EXTRA_LOCKS.values()):
        pip(
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--dest",
            str(tmp),
            *target_args(arch),
            "-r",
            str(lock_file),
        )
        shutil.copy2(lock_file, tmp / lock_file.name)
    # The base image's ssh wrapper (see the file) goes in from the same context.
    shutil.copy2(HERE / "ssh", tmp / "ssh")
    # The extras share some pins (urllib3 is in both): each wheel file once.
    unique = set(pins(LOCK).items()) | set(pins(PIP_LOCK).items())
    for path in EXTRA_LOCKS.values():
        unique |= set(pins(path).items())
    expected = len(unique) + 1
    found = sorted(p.name for p in tmp.glob("*.whl"))
    if len(found) != expected:
        raise SystemExit(f"expected {expected} wheels in {tmp}, found {len(found)}: {found}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"{out}: {len(found)} wheels for {arch}, stepkit {version}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "lock", help="resolve and rewrite requirements.lock, pip.lock and each extra's lock"
    )
    sub.add_parser("check", help="verify the locks against pyproject.toml")
    ctx = sub.add_parser("context", help="build the image build context")
    ctx.add_argument("dir", type=Path)
    ctx.add_argument("--arch", default=None, help=f"one of {', '.join(ARCHES)} (default: host)")
    args = parser.parse_args()
    if args.command == "lock":
        return lock()
    if args.command == "check":
        return check()
    return context(args.dir, args.arch or host_arch())


if __name__ == "__main__":
    sys.exit(main())
