"""`make test` and `make demo` on a bare machine: tools/system-deps.sh, which both run first,
installs Java 17 and nginx when missing and the user may (root, or sudo without a password),
else stops at once with the exact command to run.

The machine is simulated by PATH: a folder holding bash and env (the script's own needs)
and fakes of id, sudo, apt-get and java that record what they were asked to do. A fake
apt-get "installs" by writing the program into that folder, as the real one would."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "system-deps.sh"
MANUAL = "sudo apt-get update && sudo apt-get install -y --no-install-recommends"

JAVA = """#!/bin/bash
echo 'openjdk version "{version}" 2025-04-15' >&2
"""
# Records its arguments; `install` puts the packages' programs on PATH.
APT_GET = """#!/bin/bash
echo "apt-get $* (uid $(id -u), DEBIAN_FRONTEND=$DEBIAN_FRONTEND)" >> "{log}"
if [ "$1" = install ]; then
  for p in "$@"; do
    case "$p" in
      nginx) printf '#!/bin/bash\\n' > "{bin}/nginx"; {chmod} +x "{bin}/nginx" ;;
      tini) printf '#!/bin/bash\\n' > "{bin}/tini"; {chmod} +x "{bin}/tini" ;;
      openjdk-17-jre-headless) {cp} "{java17}" "{bin}/java"; {chmod} +x "{bin}/java" ;;
    esac
  done
fi
"""
# sudo -n: fails when a password would be asked ({password}), else runs as root.
SUDO = """#!/bin/bash
echo "sudo $*" >> "{log}"
[ "$1" = -n ] || exit 1
{password} && {{ echo "sudo: a password is required" >&2; exit 1; }}
shift
UID_OVERRIDE=0 "$@"
"""
ID = """#!/bin/bash
echo "${{UID_OVERRIDE:-{uid}}}"
"""


@dataclass
class Machine:
    root: Path
    bin: Path
    log: Path

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        # VISIONLINE_SBIN empty: no /usr/sbin/nginx of the real machine behind PATH.
        env = {"PATH": str(self.bin), "VISIONLINE_SBIN": "", "HOME": str(self.root)}
        return subprocess.run(
            list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=120
        )

    def deps(self, what: str = "make test") -> subprocess.CompletedProcess:
        return self.run(shutil.which("bash"), str(SCRIPT), what)

    @property
    def asked(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def machine(
    tmp_path: Path,
    *,
    uid: int = 0,
    sudo: str | None = None,  # None: no sudo; "nopasswd"; "password"
    java: str | None = "17.0.15",
    nginx: bool = False,
    tini: bool = True,
    apt: bool = True,
) -> Machine:
    bin_dir, log = tmp_path / "bin", tmp_path / "asked.log"
    bin_dir.mkdir()
    for tool in ("bash", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    _script(tmp_path / "java17", JAVA.format(version="17.0.15"))
    _script(bin_dir / "id", ID.format(uid=uid))
    if java:
        _script(bin_dir / "java", JAVA.format(version=java))
    if nginx:
        _script(bin_dir / "nginx", "#!/bin/bash\n")
    if tini:
        _script(bin_dir / "tini", "#!/bin/bash\n")
    if apt:
        _script(
            bin_dir / "apt-get",
            APT_GET.format(
                log=log,
                bin=bin_dir,
                java17=tmp_path / "java17",
                chmod=shutil.which("chmod"),
                cp=shutil.which("cp"),
            ),
        )
    if sudo:
        _script(
            bin_dir / "sudo",
            SUDO.format(log=log, password="true" if sudo == "password" else "false"),
        )
    return Machine(tmp_path, bin_dir, log)


def test_root_installs_nginx_when_missing(tmp_path):
    m = machine(tmp_path, uid=0)
    proc = m.deps()
    assert proc.returncode == 0, proc.stderr
    assert m.asked == [
        "apt-get update -qq (uid 0, DEBIAN_FRONTEND=noninteractive)",
        "apt-get install -y -qq --no-install-recommends nginx (uid 0, DEBIAN_FRONTEND=noninteractive)",
    ]
    assert "installing nginx (the serving front) for make test" in proc.stdout
    assert (m.bin / "nginx").exists()
    assert m.deps().stdout == "" and len(m.asked) == 2  # the second run finds it


def test_root_installs_tini_when_missing(tmp_path):
    """tini: the images' PID 1, under which the test cluster runs containers."""
    m = machine(tmp_path, uid=0, nginx=True, tini=False)
    proc = m.deps()
    assert proc.returncode == 0, proc.stderr
    assert m.asked[-1] == (
        "apt-get install -y -qq --no-install-recommends tini (uid 0, DEBIAN_FRONTEND=noninteractive)"
    )
    assert (m.bin / "tini").exists()


def test_root_installs_java_17_and_nginx(tmp_path):
    m = machine(tmp_path, uid=0, java="11.0.2")  # Java 11 is not enough for TorchServe
    proc = m.deps("make demo")
    assert proc.returncode == 0, proc.stderr
    assert m.asked[-1].startswith(
        "apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless nginx "
    )
    assert "Java 17 (TorchServe) and nginx (the serving front) for make demo" in proc.stdout


def test_passwordless_sudo_installs_as_root(tmp_path):
    m = machine(tmp_path, uid=1000, sudo="nopasswd")
    proc = m.deps()
    assert proc.returncode == 0, proc.stderr
    assert m.asked[0] == "sudo -n true"
    assert m.asked[1].startswith("sudo -n env DEBIAN_FRONTEND=noninteractive bash -c")
    assert m.asked[2:] == [
        "apt-get update -qq (uid 0, DEBIAN_FRONTEND=noninteractive)",
        "apt-get install -y -qq --no-install-recommends nginx (uid 0, DEBIAN_FRONTEND=noninteractive)",
    ]


@pytest.mark.parametrize("sudo", ["password", None], ids=["sudo-asks-a-password", "no-sudo"])
def test_a_user_who_cannot_install_gets_the_exact_command(tmp_path, sudo):
    m = machine(tmp_path, uid=1000, sudo=sudo)
    proc = m.deps()
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "make test needs nginx (the serving front), and only root can install them. Run:",
        f"  {MANUAL} nginx",
        "then run make test again.",
    ]
    assert not any(line.startswith("apt-get") for line in m.asked)  # nothing attempted


def test_nothing_missing_does_nothing(tmp_path):
    m = machine(tmp_path, uid=1000, nginx=True)
    proc = m.deps()
    assert (proc.returncode, proc.stdout, proc.stderr, m.asked) == (0, "", "", [])


def test_a_machine_without_apt_get_is_told_what_to_install(tmp_path):
    m = machine(tmp_path, uid=0, java=None, apt=False)
    proc = m.deps()
    assert proc.returncode == 1
    assert "make test needs Java 17 (TorchServe) and nginx (the serving front)" in proc.stderr
    assert "openjdk-17-jre-headless nginx" in proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("goal", ["test", "demo"])
def test_make_stops_first_with_the_command(tmp_path, goal):
    """`make test` and `make demo` run the same step before anything else: a user who
    cannot install gets the command, and no venv is created."""
    m = machine(tmp_path, uid=1000)
    venv = tmp_path / "venv"
    # PYTHON=false: should make ever get past the step, nothing is built or run.
    proc = m.run(
        shutil.which("make"),
        "-C",
        str(REPO),
        goal,
        "PYTHON=false",
        f"VENV={venv}",
        f"TOOLS_VENV={tmp_path / 'tools-venv'}",
    )
    assert proc.returncode != 0
    assert f"make {goal} needs nginx (the serving front)" in proc.stderr
    assert f"  {MANUAL} nginx" in proc.stderr.splitlines()
    assert "venv" not in proc.stdout and not venv.exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_installs_as_root(tmp_path):
    m = machine(tmp_path, uid=0)
    proc = m.run(shutil.which("make"), "-s", "-C", str(REPO), "system-deps")
    assert proc.returncode == 0, proc.stderr
    assert m.asked[-1].startswith("apt-get install -y -qq --no-install-recommends nginx ")


def test_the_demo_config_requires_the_front():
    """`make demo` serves through nginx as the pod does, never silently without it."""
    from visionline.config import load_config

    assert load_config(REPO / "configs" / "digits.yaml").serve.local_front == "nginx"
