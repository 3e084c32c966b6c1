"""Start-up benchmarks: `stepkit nop` and `creds-init` as median ratios against `python -c pass`."""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spawn import RSS_RUNS, Homes, Sample, alternate, check_run

ROOT = Path(__file__).resolve().parent.parent

# The kubelet's layout for a mounted secret: each key a symlink into `..data`, which
# points at a timestamped directory that holds the real files.
KUBELET_STAMP = "..2024_01_01_00_00_00.000000001"

GIT_SECRETS = 4
SSH_SECRETS = 3
DOCKER_SECRETS = 2


@dataclass(frozen=True)
class Bench:
    name: str
    argv: list[str]
    target: float | None
    note: str = ""
    # The interpreter of the candidate's own venv, run with `-c pass`.
    baseline: tuple[str, ...] = ()
    # Checks a finished candidate's HOME; returns what is missing, or "" when all is there.
    check_home: Callable[[Path], str] | None = None


@dataclass
class Result:
    name: str
    target: float | None
    note: str = ""
    baseline: list[Sample] = field(default_factory=list)
    candidate: list[Sample] = field(default_factory=list)
    baseline_rss_kib: list[int] = field(default_factory=list)
    candidate_rss_kib: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def ratios(self) -> list[float]:
        return [c.seconds / b.seconds for b, c in zip(self.baseline, self.candidate, strict=True)]

    @property
    def failures(self) -> int:
        return sum(1 for s in self.candidate if s.exit_code != 0)

    def summary(self) -> Summary:
        ratios = self.ratios
        p25, _, p75 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        ratio = statistics.median(ratios)
        return Summary(
            name=self.name,
            runs=len(ratios),
            baseline_ms=1000 * statistics.median(s.seconds for s in self.baseline),
            candidate_ms=1000 * statistics.median(s.seconds for s in self.candidate),
            ratio_median=ratio,
            ratio_p25=p25,
            ratio_p75=p75,
            target=self.target,
            over_target=self.target is not None and ratio > self.target,
            failed_runs=self.failures,
            baseline_maxrss_mib=statistics.median(self.baseline_rss_kib or [0]) / 1024,
            candidate_maxrss_mib=statistics.median(self.candidate_rss_kib or [0]) / 1024,
        )


@dataclass(frozen=True)
class Summary:
    """Medians of one benchmark; the ratio is the median of per-pair ratios, not of medians."""

    name: str
    runs: int
    baseline_ms: float
    candidate_ms: float
    ratio_median: float
    ratio_p25: float
    ratio_p75: float
    target: float | None
    over_target: bool
    failed_runs: int
    baseline_maxrss_mib: float
    candidate_maxrss_mib: float


def peak_rss_kib(argv: Sequence[str], env: dict[str, str]) -> int:
    """Peak memory of one run, through GNU time, in runs of its own that are not timed.

    A child of this process can't report its own peak: posix_spawn (vfork) and fork both
    start it in this interpreter's memory, and the kernel keeps that high-water mark in
    ru_maxrss across exec. GNU time is a small process, so its child's mark is the command's.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as out:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", out.name, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        text = out.read().strip().splitlines()
    if proc.returncode != 0 or not text:
        return 0
    return int(text[-1])


def child_env() -> dict[str, str]:
    """The parent's environment without anything that would steer Python or stepkit."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "STEPKIT_")) and k != "VIRTUAL_ENV"
    }


# pip 25.2 was the first whose console-script wrapper does without `import re` (older ones
# call re.sub on argv[0]: a few ms of every start-up, before stepkit's code runs). 23.0.1 is
# what Debian bookworm's `python3 -m venv` puts in a new venv.
OLD_PIP = "23.0.1"


def plain_venv(where: Path, pip: str | None) -> Path:
    """A venv with `pip install .` of this checkout, not editable, as a user installs it.

    pip is upgraded to the newest release (pip=None) or pinned, since pip writes the console
    script every start-up runs. The venv is kept between runs; stepkit is reinstalled each time.
    """
    python = where / "bin" / "python"

    def quiet(cmd: list[str]) -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)

    if not python.exists():
        quiet([sys.executable, "-m", "venv", str(where)])
    spec = "pip" if pip is None else f"pip=={pip}"
    pip_cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    quiet([*pip_cmd, "--upgrade", spec])
    quiet([*pip_cmd, str(ROOT)])
    quiet([*pip_cmd, "--force-reinstall", "--no-deps", str(ROOT)])
    return where / "bin"


def pip_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[1]


def editable_note(bindir: Path) -> str:
    """Say so when the venv holds an editable install: its finder runs in the baseline too."""
    found = sorted(bindir.parent.glob("lib/python*/site-packages/__editable__*.pth"))
    if not found:
        return ""
    return (
        f"note: {found[0].name} runs at every start-up of this venv, the baseline's too "
        "(about 8 ms here, importing pathlib, re and urllib.parse); an image's non-editable "
        "install starts faster, so the same command shows a higher ratio there."
    )


# --- secrets in the kubelet layout -------------------------------------------------------


def write_secret(root: Path, name: str, data: dict[str, bytes]) -> None:
    secret = root / name
    real = secret / KUBELET_STAMP
    real.mkdir(parents=True)
    for key, value in data.items():
        (real / key).write_bytes(value)
        (real / key).chmod(0o644)
    (secret / "..data").symlink_to(KUBELET_STAMP)
    for key in data:
        (secret / key).symlink_to(f"..data/{key}")


def ssh_keygen(path: Path, *extra: str) -> tuple[bytes, bytes]:
    """A new key without passphrase: (private key file, public key line)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", "bench@stepkit", "-f", str(path), *extra],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path.read_bytes(), path.with_suffix(".pub").read_bytes()


def make_secrets(root: Path, keys: Path) -> tuple[list[str], list[str]]:
    """Write ten secrets (plus one PEM RSA key) and return the args for the two creds-init runs."""
    args: list[str] = []
    for i in range(GIT_SECRETS):
        write_secret(
            root, f"git{i}", {"username": b"git", "password": f"token-{i}-s3cret".encode()}
        )
        args += ["-basic-git", f"git{i}=https://git{i}.example.com"]

    _, host_pub = ssh_keygen(keys / "host_key", "-t", "ed25519")
    host_key = b" ".join(host_pub.split()[:2])
    ssh_args: list[str] = []
    for i in range(SSH_SECRETS):
        private, _ = ssh_keygen(keys / f"id_{i}", "-t", "ed25519")
        known = f"host{i}.example.com ".encode() + host_key + b"\n"
        write_secret(root, f"ssh{i}", {"ssh-privatekey": private, "known_hosts": known})
        ssh_args += ["-ssh-git", f"ssh{i}=host{i}.example.com"]

    pem, _ = ssh_keygen(keys / "id_pem", "-m", "PEM", "-t", "rsa", "-b", "2048")
    if not pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----"):
        raise SystemExit("ssh-keygen -m PEM did not write a PEM RSA key")
    last = SSH_SECRETS - 1
    known = f"host{last}.example.com ".encode() + host_key + b"\n"
    write_secret(root, "ssh-pem", {"ssh-privatekey": pem, "known_hosts": known})

    for i in range(DOCKER_SECRETS):
        write_secret(root, f"docker{i}", {"username": b"robot", "password": f"pw-{i}".encode()})
        args += ["-basic-docker", f"docker{i}=registry{i}.example.com"]

    auth = base64.b64encode(b"robot:config-pw").decode()
    config = {"auths": {"config.example.com": {"auth": auth}}}
    write_secret(root, "docker-config", {".dockerconfigjson": json.dumps(config).encode()})
    args += ["-docker-config", "docker-config"]

    common = ["--secrets-dir", str(root)]
    pem_args = [*ssh_args[: 2 * last], "-ssh-git", f"ssh-pem=host{last}.example.com"]
    return [*common, *args, *ssh_args], [*common, *args, *pem_args]


def creds_written(home: Path) -> str:
    wanted = [".gitconfig", ".git-credentials", ".ssh/config", ".ssh/known_hosts"]
    wanted.append(".docker/config.json")
    missing = [w for w in wanted if not (home / w).is_file()]
    return f"missing in $HOME: {', '.join(missing)}" if missing else ""


# --- measuring ---------------------------------------------------------------------------


def precheck(bench: Bench, env: dict[str, str], homes: Homes) -> str:
    """Run the candidate once with its output kept: a benchmark of a failing command is no benchmark."""
    home = homes.new()
    error = check_run(bench.argv, {**env, "HOME": str(home)})
    if error:
        return error
    if bench.check_home is not None:
        return bench.check_home(home)
    return ""


def measure(
    bench: Bench,
    baseline: list[str],
    env: dict[str, str],
    homes: Homes,
    *,
    runs: int,
    warmup: int,
) -> Result:
    result = Result(bench.name, bench.target, bench.note)
    result.error = precheck(bench, env, homes)
    if result.error:
        return result
    baseline = list(bench.baseline) or baseline
    result.baseline, result.candidate = alternate(
        baseline, bench.argv, env, homes, runs=runs, warmup=warmup
    )
    for _ in range(RSS_RUNS):
        result.baseline_rss_kib.append(peak_rss_kib(baseline, {**env, "HOME": str(homes.new())}))
        result.candidate_rss_kib.append(peak_rss_kib(bench.argv, {**env, "HOME": str(homes.new())}))
    if result.failures:
        result.error = f"{result.failures} of {runs} runs exited non-zero"
    return result


# --- reporting ---------------------------------------------------------------------------


def render(results: list[Result], baseline: str) -> str:
    header = (
        f"{'benchmark':<32} {'base ms':>8} {'cand ms':>8} {'ratio':>6} {'p25-p75':>11} "
        f"{'target':>7}  {'verdict':<12} {'RSS MiB base/cand':>18}"
    )
    lines = [f"baseline: {baseline}", header, "-" * len(header)]
    for r in results:
        if r.error and not r.candidate:
            lines.append(f"{r.name:<32} FAILED: {r.error}")
            continue
        s = r.summary()
        if r.error:
            verdict = "FAILED RUNS"
        elif s.target is None:
            verdict = "(no target)"
        else:
            verdict = "OVER TARGET" if s.over_target else "ok"
        target = "-" if s.target is None else f"<={s.target}"
        lines.append(
            f"{r.name:<32} {s.baseline_ms:>8.1f} {s.candidate_ms:>8.1f} {s.ratio_median:>6.2f} "
            f"{s.ratio_p25:>5.2f}-{s.ratio_p75:<5.2f} {target:>7}  {verdict:<12} "
            f"{s.baseline_maxrss_mib:>8.1f} / {s.candidate_maxrss_mib:<7.1f}"
        )
    lines.append("")
    for r in results:
        if r.error:
            lines.append(f"{r.name}: FAILED: {r.error}")
        elif r.candidate and r.target is not None:
            ratio = statistics.median(r.ratios)
            if ratio > r.target:
                lines.append(f"{r.name}: over target ({ratio:.2f} > {r.target})")
            else:
                lines.append(f"{r.name}: within target ({ratio:.2f} <= {r.target})")
        if r.note:
            lines.append(f"{r.name}: {r.note}")
    return "\n".join(lines)


def arg_parser(description: str | None) -> argparse.ArgumentParser:
    """--runs, --warmup and --json, the options every start-up benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--venv",
        metavar="DIR",
        help="measure the stepkit installed in this venv (e.g. .venv) instead of plain installs "
        "made in .bench/",
    )
    parser.add_argument("--runs", type=int, default=30, help="measured pairs per benchmark")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured pairs first")
    parser.add_argument("--json", metavar="FILE", help="also write raw samples and medians")
    return parser


def parse_args(
    argv: list[str] | None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    parser = parser or arg_parser(__doc__)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("ssh-keygen") is None:
        print("error: ssh-keygen is missing (Debian openssh-client)", file=sys.stderr)
        return 0
    old_bindir: Path | None = None
    if args.venv:
        bindir = Path(args.venv).absolute() / "bin"
    else:
        print("installing this checkout (pip install ., not editable) into .bench/ venvs ...")
        bindir = plain_venv(ROOT / ".bench" / "venv-pip-current", None)
        old_bindir = plain_venv(ROOT / ".bench" / f"venv-pip-{OLD_PIP}", OLD_PIP)
    python, stepkit = str(bindir / "python"), str(bindir / "stepkit")
    for exe in (python, stepkit):
        if not os.access(exe, os.X_OK):
            print(f"error: {exe} is missing", file=sys.stderr)
            return 0
    baseline = [python, "-c", "pass"]
    env = child_env()
    pip = pip_version(bindir)

    with tempfile.TemporaryDirectory(prefix="stepkit-bench-") as tmp:
        work = Path(tmp)
        (work / "keys").mkdir()
        (work / "homes").mkdir()
        creds_args, pem_args = make_secrets(work / "secrets", work / "keys")
        homes = Homes(work / "homes")
        benches = [
            Bench("stepkit nop", [stepkit, "nop"], 1.25, note=f"console script by pip {pip}"),
            Bench(
                "stepkit creds-init (10 secrets)",
                [stepkit, "creds-init", *creds_args],
                2.5,
                check_home=creds_written,
            ),
            Bench(
                "creds-init, one PEM RSA key",
                [stepkit, "creds-init", *pem_args],
                None,
                note="a PEM key is loaded by paramiko; reported, no target",
                check_home=creds_written,
            ),
        ]
        if old_bindir is not None:
            benches.append(
                Bench(
                    f"stepkit nop, pip {OLD_PIP} script",
                    [str(old_bindir / "stepkit"), "nop"],
                    None,
                    note=f"console script written by pip {OLD_PIP} (imports re); reported, "
                    "no target",
                    baseline=(str(old_bindir / "python"), "-c", "pass"),
                )
            )
        print(
            f"{args.runs} pairs per benchmark after {args.warmup} warm-up pairs; "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
            flush=True,
        )
        results = []
        for bench in benches:
            print(f"  measuring {bench.name} ...", flush=True)
            results.append(measure(bench, baseline, env, homes, runs=args.runs, warmup=args.warmup))

    print()
    print(render(results, " ".join(baseline)))
    note = editable_note(bindir)
    if note:
        print(note)

    if args.json:
        report = {
            "baseline": baseline,
            "pip": pip,
            "runs": args.runs,
            "warmup": args.warmup,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "editable_install": bool(editable_note(bindir)),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "benchmarks": [
                {
                    **(asdict(r.summary()) if r.candidate else {"name": r.name}),
                    "note": b.note,
                    "argv": b.argv,
                    "error": r.error,
                    "baseline_samples": [asdict(s) for s in r.baseline],
                    "candidate_samples": [asdict(s) for s in r.candidate],
                }
                for r, b in zip(results, benches, strict=True)
            ],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    # A benchmark reports; it does not gate.
    return 0


if __name__ == "__main__":
    sys.exit(main())
