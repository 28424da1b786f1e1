"""The Debian package: build it, inspect it, install it, run it, purge it.

``dpkg-buildpackage -us -uc -b`` runs on a copy of the working tree (the
Python dependencies come from PyPI, as on any build machine). The .deb is
then inspected without installing it (control fields, conffiles, files, the
systemd unit through ``systemd-analyze verify``), installed for real with
``dpkg -i`` (this test needs root, as in CI on a throwaway machine), the
daemon is started from the installed venv as the ``switchd`` user the way the
unit starts it, and the package is purged.

Needs, from Debian: build-essential (dpkg-dev), debhelper, dh-virtualenv,
python3-venv, python3-dev and systemd (for systemd-analyze). It never skips:
a missing tool is a failure.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV = "/opt/venvs/switchd"
STATE = "/var/lib/switchd"
CONF = "/etc/switchd/switchd.ini"
UNIT_DIRS = ("lib/systemd/system", "usr/lib/systemd/system")
BUILD_TIMEOUT = 20 * 60
# Left in the state directory while the test has the package installed, so
# that a run killed half-way can be cleaned up by the next one, while a
# switchd installed by someone else is never purged by this test.
MARKER = Path(STATE) / ".installed-by-test_debian_package"

# Not copied into the build tree: VCS data, build output, caches, state.
SKIP_NAMES = {
    ".git",
    "build",
    "dist",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    "_trial_temp",
    "switchd-state",
    "dropin.cache",
}
SKIP_IN_DEBIAN = {"switchd", ".debhelper", "files", "debhelper-build-stamp"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in SKIP_NAMES or n.endswith((".egg-info", ".pyc"))}
    if Path(directory).resolve() == ROOT / "debian":
        skipped |= {n for n in names if n in SKIP_IN_DEBIAN or n.endswith((".substvars", ".log"))}
    if Path(directory).resolve() == ROOT / "bench":
        skipped |= {"results"} & set(names)
    return skipped


def _clean_env() -> dict[str, str]:
    """The environment for dpkg tools: no virtualenv or pyenv leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV", "SWITCHD_"))}
    path = [p for p in env.get("PATH", "").split(":") if p and ".pyenv" not in p and "/.venv/" not in p]
    env["PATH"] = ":".join(path + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    env["LC_ALL"] = "C.UTF-8"
    env.pop("DEB_BUILD_OPTIONS", None)
    return env


def run(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(args),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kwargs.pop("env", _clean_env()),
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def _installed_version() -> str | None:
    result = run("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "switchd", check=False)
    if result.returncode != 0 or not result.stdout.startswith(("ii", "iU", "iF", "rc", "iH", "hi")):
        return None
    return result.stdout.split()[-1] if result.stdout.split()[0] != "rc" else "config-files"


def _purge() -> None:
    run("dpkg", "--purge", "switchd", timeout=300)


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """Build the package once for the whole module; return the .deb."""
    for tool in ("dpkg-buildpackage", "dh", "dh_virtualenv", "systemd-analyze", "setpriv"):
        assert shutil.which(tool, path=_clean_env()["PATH"]), (
            f"{tool} is missing: apt-get install build-essential debhelper dh-virtualenv "
            "python3-venv python3-dev systemd"
        )
    top = tmp_path_factory.mktemp("deb")
    source = top / "switchd"
    shutil.copytree(ROOT, source, ignore=_ignore, symlinks=True)
    started = time.monotonic()
    result = run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=source, timeout=BUILD_TIMEOUT, check=False)
    elapsed = time.monotonic() - started
    (top / "build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (
        f"dpkg-buildpackage failed after {elapsed:.0f} s (log: {top / 'build.log'})\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
    )
    print(f"\ndpkg-buildpackage took {elapsed:.0f} s")
    debs = glob.glob(str(top / "switchd_*.deb"))
    assert len(debs) == 1, debs
    return Path(debs[0])


@pytest.fixture(scope="module")
def tree(deb, tmp_path_factory) -> Path:
    """The package's files, extracted (not installed)."""
    root = tmp_path_factory.mktemp("extracted")
    run("dpkg-deb", "-x", str(deb), str(root))
    return root


def _unit_path(root: Path) -> Path:
    for d in UNIT_DIRS:
        if (root / d / "switchd.service").exists():
            return root / d / "switchd.service"
    raise AssertionError(f"no switchd.service under {root} in {UNIT_DIRS}")


def _unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (unit files repeat keys)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def _listening_sections(ini: str) -> list[str]:
    """Sections of an INI file with a ``listen`` key, set or commented out."""
    sections, section = [], None
    for line in ini.splitlines():
        match = re.match(r"\s*\[([^\]]+)\]", line)
        if match:
            section = match.group(1).strip()
        elif section and re.match(r"[#;]?\s*listen\s*=", line) and section not in sections:
            sections.append(section)
    return sections


def test_control_fields(deb):
    info = run("dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture", "Depends").stdout
    fields = dict(line.split(": ", 1) for line in info.splitlines())
    assert fields["Package"] == "switchd"
    assert fields["Version"] == "0.1.0-1"
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert fields["Architecture"] == arch
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "adduser" in depends
    python = [d for d in depends if d.startswith("python3 (>=")]
    assert python, depends
    minimum = tuple(int(x) for x in re.search(r">= ([\d.]+)", python[0]).group(1).split(".")[:2])
    assert minimum >= (3, 10)
    # The venv is tied to the build's Python minor version.
    assert any(d.startswith("python3 (<<") for d in depends), depends
    # The whole description is there.
    assert "Description:" in run("dpkg-deb", "-I", str(deb)).stdout


def test_conffiles_and_maintainer_scripts(deb, tmp_path):
    control = tmp_path / "DEBIAN"
    run("dpkg-deb", "-e", str(deb), str(control))
    assert (control / "conffiles").read_text().split() == [CONF]
    postinst = (control / "postinst").read_text()
    assert "adduser" in postinst and "--system" in postinst
    assert "deb-systemd-helper" in postinst  # dh_installsystemd enables the unit
    postrm = (control / "postrm").read_text()
    assert re.search(r"purge\)\s.*?rm -rf /var/lib/switchd", postrm, re.DOTALL) or "rm -rf /var/lib/switchd" in postrm


def test_files_in_the_package(deb):
    listing = run("dpkg-deb", "-c", str(deb)).stdout.splitlines()
    entries = {}
    for line in listing:
        # perms owner size date time path [-> target]
        parts = line.split(None, 5)
        path = parts[5].split(" -> ")[0]
        entries[path.lstrip(".").rstrip("/") or "/"] = line
    assert CONF in entries
    assert any(f"/{d}/switchd.service" in entries for d in UNIT_DIRS)
    assert "/usr/bin/switchctl" in entries
    assert entries["/usr/bin/switchctl"].startswith("l")
    assert entries["/usr/bin/switchctl"].endswith(f"-> {VENV}/bin/switchctl")
    assert f"{VENV}/bin/twistd" in entries
    assert STATE in entries
    assert "/usr/share/doc/switchd/copyright" in entries
    assert any(p.startswith("/usr/share/doc/switchd/operations.rst") for p in entries)
    plugins = [p for p in entries if re.fullmatch(rf"{VENV}/lib/python3\.\d+/site-packages/twisted/plugins/switchd_plugin\.py", p)]
    assert plugins, "the twistd plugin is not in the venv's twisted/plugins/"
    assert any(re.fullmatch(rf"{VENV}/lib/python3\.\d+/site-packages/switchd/tap\.py", p) for p in entries)
    # Not an editable install: no .pth or egg-link pointing at a source tree.
    assert not [p for p in entries if p.endswith((".egg-link", "__editable__.switchd-0.1.0.pth"))]
    # Written at run time by postinst, not shipped.
    assert not [p for p in entries if p.endswith("dropin.cache")]


def test_venv_does_not_point_at_the_build_tree(tree, deb):
    build_dir = str(deb.parent / "switchd")
    bins = tree / VENV.lstrip("/") / "bin"
    for path in [*bins.iterdir(), tree / VENV.lstrip("/") / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        assert build_dir not in text, path
        if text.startswith("#!"):
            assert text.splitlines()[0] in (f"#!{VENV}/bin/python", f"#!{VENV}/bin/python3"), path
    assert os.readlink(bins / "python3") == "/usr/bin/python3"


def test_config_is_the_sample_with_the_state_dir_set(tree, deb):
    sample = (deb.parent / "switchd" / "etc" / "switchd.ini").read_text().splitlines()
    shipped = (tree / CONF.lstrip("/")).read_text().splitlines()
    assert len(shipped) == len(sample)
    changed = [(a, b) for a, b in zip(sample, shipped) if a != b]
    assert len(changed) == 1, changed
    assert re.fullmatch(r"[#;]?\s*state_dir\s*=.*", changed[0][0])
    assert changed[0][1] == f"state_dir = {STATE}"
    example = tree / "usr/share/doc/switchd/examples/switchd.ini"
    assert example.read_text().splitlines() == sample


def test_unit_file_settings(tree):
    settings = _unit_settings(_unit_path(tree).read_text())

    def one(key: str) -> str:
        values = settings.get(f"Service.{key}")
        assert values and len(values) == 1, (key, values)
        return values[0]

    assert one("Type") == "simple"
    assert one("User") == "switchd"
    exec_start = one("ExecStart").split()
    assert exec_start[0] == f"{VENV}/bin/twistd"
    assert exec_start[1] in ("-n", "--nodaemon")
    assert "--pidfile=" in exec_start
    assert "--logfile=-" in exec_start or ("-l" in exec_start and exec_start[exec_start.index("-l") + 1] == "-")
    assert exec_start[-3:] == ["switchd", "-c", CONF]
    assert one("Restart") == "on-failure"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ReadWritePaths") == STATE
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one("ProtectKernelTunables") == "yes"
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert int(one("LimitNOFILE")) >= 65536
    assert settings["Install.WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify_on_the_extracted_unit(tree):
    """Offline, against the extracted tree as root directory: the unit parses
    without a single warning and its ExecStart binary exists there."""
    unit_dir = _unit_path(tree).parent
    # Targets the unit refers to (multi-user, network-online, ...) come from
    # the host's systemd.
    for d in UNIT_DIRS:
        for target in glob.glob(f"/{d}/*.target"):
            dest = unit_dir / os.path.basename(target)
            if not dest.exists():
                shutil.copy(target, dest)
    unit = "/" + str(_unit_path(tree).relative_to(tree))
    result = run("systemd-analyze", "verify", "--man=no", f"--root={tree}", unit, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_twistd_in_the_extracted_venv_lists_the_plugin(tree):
    """The venv's python is a symlink to /usr/bin/python3 and finds its own
    pyvenv.cfg, so the extracted venv runs before installation."""
    venv = tree / VENV.lstrip("/")
    out = run(str(venv / "bin" / "python"), "-B", str(venv / "bin" / "twistd"), "--help").stdout
    assert re.search(r"^\s+switchd\s+Carrier-grade", out, re.MULTILINE), out


@pytest.fixture(scope="module")
def installed(deb):
    """dpkg -i the package; dpkg --purge it afterwards."""
    assert os.geteuid() == 0, "this test installs the package: run it as root (CI does)"
    version = _installed_version()
    if version is not None:
        assert MARKER.exists(), (
            f"switchd {version} is installed on this machine and was not installed by this test; "
            "it would be purged with its data: 'dpkg --purge switchd' first"
        )
        _purge()
    result = run("dpkg", "-i", str(deb), timeout=600)
    MARKER.touch()
    try:
        yield result
    finally:
        _purge()


def test_install_run_and_purge(installed):
    # The user, the state directory and the configuration.
    pw = run("getent", "passwd", "switchd").stdout.strip().split(":")
    assert pw[5] == STATE and pw[6] in ("/usr/sbin/nologin", "/bin/false")
    assert int(pw[2]) < 1000, "not a system user"
    st = os.stat(STATE)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid) == (int(pw[2]), int(pw[3]))
    assert run("getent", "group", "switchd").stdout.split(":")[2] == pw[3]
    assert os.stat(CONF).st_gid == int(pw[3])
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "switchd").stdout
    assert CONF in conffiles
    assert os.path.realpath("/usr/bin/switchctl") == f"{VENV}/bin/switchctl"
    assert os.access("/usr/bin/switchctl", os.X_OK)
    plugin_cache = glob.glob(f"{VENV}/lib/python3.*/site-packages/twisted/plugins/dropin.cache")
    assert plugin_cache, "postinst did not write Twisted's plugin cache"

    # The installed unit, against the real root.
    unit = next(f"/{d}/switchd.service" for d in UNIT_DIRS if os.path.exists(f"/{d}/switchd.service"))
    result = run("systemd-analyze", "verify", "--man=no", unit, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr

    switchctl = ("setpriv", "--reuid=switchd", "--regid=switchd", "--init-groups", "--", "/usr/bin/switchctl")
    run(*switchctl, "--version")

    # The daemon, as the unit starts it, as the switchd user. setpriv execs
    # twistd (runuser would stay as its parent and turn SIGTERM into its own
    # death by signal), so the exit status seen here is twistd's own.
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "SWITCHD_API_LISTEN": "tcp:0:interface=127.0.0.1",
    }
    # Other listeners (SIP on 5060...) are turned off: only the API is
    # checked here, and the machine may have those ports in use.
    for section in _listening_sections(Path(CONF).read_text()):
        if section != "api":
            env[f"SWITCHD_{section.upper()}_LISTEN"] = ""
    proc = subprocess.Popen(
        [
            "setpriv", "--reuid=switchd", "--regid=switchd", "--init-groups", "--",
            f"{VENV}/bin/twistd", "-n", "--pidfile=", "--logfile=-", "switchd", "-c", CONF,
        ],
        cwd=STATE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    port = None
    try:
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"\[api\] listening on \S+ \(\w+ \S+ port (\d+)\)", "".join(log))
            if match:
                port = int(match.group(1))
            else:
                time.sleep(0.1)
        assert port is not None, "the daemon did not log '[api] listening on':\n" + "".join(log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
            assert json.load(response)["status"] == "ok"
        # switchctl, as the administrator runs it, sees the daemon healthy.
        health = run(*switchctl, "-c", CONF, "health", "--api-url", f"http://127.0.0.1:{port}", env=env)
        assert "api: ok" in health.stdout, health.stdout
        key = Path(STATE) / "admin-api-key"
        st = os.stat(key)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == int(pw[2])
        assert os.stat(Path(STATE) / "switchd.sqlite3").st_uid == int(pw[2])
    finally:
        # SIGTERM, as systemd stops the unit: a clean shutdown.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
    text = "".join(log)
    # twistd stops its reactor, then ends itself with the signal it got;
    # systemd counts death by SIGTERM as a clean exit (no restart).
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "Received SIGTERM, shutting down." in text, text
    assert "Server Shut Down." in text, text
    assert "Traceback" not in text, text
    assert "Unable to write to plugin cache" not in text, text

    # Purge: the state, the configuration and the venv go; the account stays.
    _purge()
    assert _installed_version() is None
    for path in (STATE, "/etc/switchd", VENV, "/usr/bin/switchctl"):
        assert not os.path.lexists(path), path
    assert not any(os.path.exists(f"/{d}/switchd.service") for d in UNIT_DIRS)
    assert not os.path.lexists("/etc/systemd/system/multi-user.target.wants/switchd.service")
