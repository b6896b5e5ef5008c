"""zcachefs as a system service (issue 7): the systemd units, sd_notify readiness,
mounting through mount(8) / fstab / mount.fuse3, journal logging, make install.

Every mount is real and is unmounted in teardown. Mounts made through mount(8) live in
a private mount namespace (`MountNamespace`), so none can leak onto the host.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.support import mountinfo
from tests.support.mountinfo import MountInfo
from tests.support.mounting import Mount, force_unmount, is_fuse_mounted, mount_entry, wait_until
from zcachefs.options import parse_options, read_options_file

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "zcachefs@.service"
MOUNT_EXAMPLE = REPO / "systemd" / "srv-data.mount.example"
CONF_EXAMPLE = REPO / "systemd" / "zcachefs.conf.example"
DOCS = REPO / "docs" / "service.md"
UNIT_PROGRAM = "/usr/local/bin/zcachefs"  # the unit's ExecStart= (make install's PREFIX)
# The options of issue 7's fstab example: mount(8) and the daemon must both cope.
FSTAB_OPTIONS = "allow_other,nofail,_netdev,x-systemd.automount,x-systemd.requires=foo.service"
HELLO = "written in SOURCE\n"

needs_fuse = pytest.mark.skipif(shutil.which("fusermount3") is None,
                                reason="fuse3 is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (mount(8), tmpfs, mount namespaces)")


def program() -> str:
    """The `zcachefs` console script of the Python running the tests."""
    beside = Path(sys.executable).parent / "zcachefs"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("zcachefs")
    if found is None:
        pytest.skip("the zcachefs console script is not installed")
    return found


# -- reading the units ---------------------------------------------------------------

class _UnitParser(configparser.ConfigParser):
    """systemd's INI dialect, as far as our units use it (case-sensitive keys)."""

    def __init__(self) -> None:
        super().__init__(interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"),
                         strict=False)  # a repeated key adds up in systemd; here the last wins

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def read_unit(path: Path) -> _UnitParser:
    parser = _UnitParser()
    parser.read_string(path.read_text())
    return parser


def escape_path(path: str) -> str:
    """`systemd-escape --path PATH`: the instance name that stands for PATH."""
    text = "/".join(part for part in path.split("/") if part)
    if not text:
        return "-"
    out = []
    for i, byte in enumerate(text.encode()):
        ch = chr(byte)
        if ch == "/":
            out.append("-")
        elif byte < 0x80 and (ch.isalnum() or ch in ":_.") and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def exec_command(key: str, path: Path) -> list[str]:
    """The unit's ExecStart=/ExecStartPre= as systemd runs it for the instance of
    `path`: prefix characters dropped, words unquoted, the specifiers (%f %i %%) and
    `$$` expanded, and the program pointed at the zcachefs under test."""
    value = read_unit(UNIT)["Service"][key].lstrip("-@:+!")
    specifiers = {"f": str(path), "i": escape_path(str(path)), "%": "%"}
    words = [re.sub("%(.)", lambda m: specifiers[m.group(1)], word).replace("$$", "$")
             for word in shlex.split(value)]
    if words[0] == UNIT_PROGRAM:
        words[0] = program()
    return words


def docs_fstab_line() -> str:
    """The /etc/fstab example of docs/service.md."""
    match = re.search(r"^\s*(/srv/data\s+/srv/data\s+fuse\.zcachefs\s+\S+\s+0\s+0)\s*$",
                      DOCS.read_text(), re.MULTILINE)
    assert match, "docs/service.md has no '/srv/data /srv/data fuse.zcachefs ...' line"
    return match.group(1)


# -- the unit file itself ------------------------------------------------------------

# Settings that would break the service: a private mount namespace keeps the mount
# from propagating to the host; a device allow-list (also implied by ProtectClock=)
# denies /dev/fuse and mknod; setuid fusermount3 and users' setuid bits need the rest.
BREAKING_SETTINGS = {
    "PrivateMounts", "PrivateTmp", "PrivateDevices", "PrivateNetwork", "ProtectSystem",
    "ProtectHome", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "BindPaths",
    "BindReadOnlyPaths", "TemporaryFileSystem", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "MountFlags", "RootDirectory", "ProtectClock", "DevicePolicy",
    "DeviceAllow", "NoNewPrivileges", "RestrictSUIDSGID", "User", "DynamicUser",
}


def test_unit_settings() -> None:
    unit = read_unit(UNIT)
    section, service = unit["Unit"], unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert shlex.split(service["ExecStart"]) == [
        UNIT_PROGRAM, "-f", "--options-file", "/etc/zcachefs/%i.conf", "%f", "%f"]
    assert service["ExecStartPre"].startswith("-")  # a failure must not stop the start
    assert int(service["LimitNOFILE"]) >= 65536
    assert section["RequiresMountsFor"] == "%f"
    assert {"local-fs.target", "remote-fs.target", "network-online.target"} <= set(
        section["After"].split())
    assert "network-online.target" in section["Wants"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert not BREAKING_SETTINGS & set(service), "the service would break (see the unit)"


def test_config_example_is_valid() -> None:
    text = CONF_EXAMPLE.read_text()
    assert parse_options(read_options_file(text)) == parse_options([])  # all commented out
    offered = re.findall(r"^#(\w+(?:=\S+)?)$", text, re.MULTILINE)
    assert {"allow_other", "threads", "debug"} <= {item.split("=")[0] for item in offered}
    opts = parse_options(read_options_file("\n".join(offered)))  # each one valid
    assert opts.allow_other and opts.read_only and opts.debug


def test_docs_show_the_shipped_mount_unit() -> None:
    docs = DOCS.read_text()
    example = read_unit(MOUNT_EXAMPLE)
    for section in example.sections():
        for key, value in example[section].items():
            assert f"{key}={value}" in docs, f"docs/service.md lacks [{section}] {key}={value}"


@pytest.mark.parametrize("path", ["/srv/data", "/srv/my data", "/srv/data-2/x", "/.hidden"])
def test_instance_names(path: str) -> None:
    """The docs' escaping (and the tests' `escape_path`) match systemd-escape; %f
    (the unescaped instance) gives back the path."""
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape is not installed (WITH_SYSTEMD=1 scripts/install-deps)")
    escaped = subprocess.run([tool, "--path", path], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert escaped == escape_path(path)
    unescaped = subprocess.run([tool, "--unescape", "--path", escaped], capture_output=True,
                               text=True, check=True).stdout.strip()
    assert unescaped == path


# -- systemd-analyze verify ----------------------------------------------------------

def verify_problems(unit_file: Path, name_part: str) -> list[str]:
    """What `systemd-analyze verify` says about `unit_file` (lines naming other units,
    e.g. the host's own, are not ours to judge). Warnings do not change its exit
    status, so they count as problems too."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed "
                    "(CI installs it: WITH_SYSTEMD=1 scripts/install-deps)")
    proc = subprocess.run([tool, "verify", "--man=no", str(unit_file)],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    problems = [line for line in lines if name_part in line]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}: {lines}")
    return problems


def unit_copy(directory: Path, name: str) -> Path:
    """The unit under another file name, its ExecStart= program pointed at the zcachefs
    under test: verify insists that the program exists, and /usr/local/bin/zcachefs
    exists only after `make install`."""
    text = UNIT.read_text()
    assert f"ExecStart={UNIT_PROGRAM} " in text
    directory.mkdir(exist_ok=True)
    copy = directory / name
    copy.write_text(text.replace(f"ExecStart={UNIT_PROGRAM} ", f"ExecStart={program()} "))
    return copy


@pytest.mark.parametrize("name", ["zcachefs@.service", "zcachefs@srv-data.service",
                                  r"zcachefs@srv-my\x20data.service"])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    """The template (verify picks an instance itself) and instances of it."""
    assert verify_problems(unit_copy(tmp_path / "units", name), "zcachefs@") == []


def test_verify_check_is_not_vacuous(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path / "units", "zcachefs@.service")
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failur"))
    assert verify_problems(unit, "zcachefs@")


def test_mount_unit_example_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "srv-data.mount"  # verify checks the name against Where=
    shutil.copyfile(MOUNT_EXAMPLE, unit)
    assert verify_problems(unit, "srv-data") == []


# -- sd_notify -----------------------------------------------------------------------

class NotifyListener:
    """The service manager's end of $NOTIFY_SOCKET. It learns each sender's PID
    (SO_PASSCRED): with NotifyAccess=main only the main process may notify."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if abstract:
            name = f"zcachefs-test-notify-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:  # a short directory: socket paths are limited to 107 bytes
            self.tmpdir = tempfile.TemporaryDirectory(prefix="zcachefs-notify-")
            self.address = os.path.join(self.tmpdir.name, "notify")
            self.sock.bind(self.address)
        self.received: list[str] = []

    def receive(self, proc: subprocess.Popen[bytes], want: str) -> int:
        """Wait for a datagram holding the line `want`; returns the sender's PID."""
        deadline = time.monotonic() + 60  # a guard against hanging, not a time limit
        while time.monotonic() < deadline:
            exited = proc.poll() is not None
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
                message = data.decode(errors="replace")
                self.received.append(message)
                if want in message.split("\n"):
                    return self._sender(ancdata)
            elif exited:
                break
        raise AssertionError(f"no {want} from the daemon (received {self.received}, "
                             f"exit status {proc.poll()})")

    def drain(self) -> list[str]:
        """Every message that has arrived (without waiting), lines split."""
        while select.select([self.sock], [], [], 0)[0]:
            self.received.append(self.sock.recv(4096).decode(errors="replace"))
        return [line for m in self.received for line in m.split("\n")]

    @staticmethod
    def _sender(ancdata: list[tuple[int, int, bytes]]) -> int:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", data[:12])
                return int(pid)
        raise AssertionError("no sender credentials")

    def close(self) -> None:
        self.sock.close()
        if self.tmpdir is not None:
            self.tmpdir.cleanup()


@needs_fuse
@pytest.mark.parametrize("how", ["path-socket", "abstract-socket", "unit-commands"])
def test_notify_ready_then_stopping(tmp_path: Path, how: str) -> None:
    """READY=1 comes from the daemon's PID once the mount is live and serving;
    SIGTERM (systemctl stop) brings STOPPING=1, exit status 0 and no mount. With
    "unit-commands" the daemon runs as the unit's ExecStartPre=/ExecStart= say, over
    its own SOURCE."""
    src = tmp_path / "src"
    src.mkdir()
    mnt = src if how == "unit-commands" else tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    (src / "hello.txt").write_text(HELLO)
    if how == "unit-commands":
        assert subprocess.run(exec_command("ExecStartPre", mnt), check=False).returncode == 0
        args = exec_command("ExecStart", mnt)
    else:
        args = [sys.executable, "-m", "zcachefs", "-f", str(src), str(mnt)]
    listener = NotifyListener(abstract=how == "abstract-socket")
    mount = Mount(src, mnt, log=tmp_path / "daemon.log")
    try:
        with open(mount.log, "ab") as log:
            mount.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log,
                                          env={**os.environ, "NOTIFY_SOCKET": listener.address})
        assert listener.receive(mount.proc, "READY=1") == mount.pid, mount.read_log()
        assert is_fuse_mounted(mnt)
        assert (mnt / "hello.txt").read_text() == HELLO
        mount.proc.send_signal(signal.SIGTERM)
        assert listener.receive(mount.proc, "STOPPING=1") == mount.pid
        assert mount.proc.wait(timeout=60) == 0, mount.read_log()
        assert not is_fuse_mounted(mnt)
    finally:
        mount.stop()
        listener.close()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except OSError:
        return True


# Runs `zcachefs SOURCE MNT` (forking) as a child subreaper, so the daemon the parent
# leaves behind becomes its child: SIGTERM goes to it the moment the parent exits 0,
# and its exit status can be read. Prints JSON [parent status, daemon pid, status].
SUBREAPER = r"""
import ctypes, json, os, signal, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
parent = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
status = parent.wait()
with open(f"/proc/self/task/{os.getpid()}/children") as f:
    orphans = [int(p) for p in f.read().split()]
for pid in orphans:
    os.kill(pid, signal.SIGTERM)
results = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in orphans]
json.dump([status, orphans, results], sys.stdout)
"""


@needs_fuse
@pytest.mark.parametrize("mode", ["foreground-ready", "daemon-ready", "daemon-parent-exit"])
def test_sigterm_the_instant_the_daemon_is_ready(tmp_path: Path, mode: str) -> None:
    """systemctl stop (or restart) right after a start: SIGTERM sent the moment READY=1
    arrives, or the moment the forking parent exits 0, still ends in STOPPING=1, a
    clean unmount and exit status 0, three times out of three."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "hello.txt").write_text(HELLO)
    foreground = mode == "foreground-ready"
    for attempt in range(3):
        listener = NotifyListener(abstract=False)
        mount = Mount(src, mnt, log=tmp_path / f"daemon{attempt}.log")
        env = {**os.environ, "NOTIFY_SOCKET": listener.address}
        zcachefs = [sys.executable, "-m", "zcachefs", *(["-f"] if foreground else []),
                    str(src), str(mnt)]
        try:
            if mode == "daemon-parent-exit":
                res = subprocess.run([sys.executable, "-c", SUBREAPER, *zcachefs], env=env,
                                     capture_output=True, text=True, timeout=120)
                status, pids, results = json.loads(res.stdout)
                assert status == 0 and len(pids) == 1, res
                assert results == [0], res
                assert "STOPPING=1" in listener.drain(), (listener.received, res)
            else:
                with open(mount.log, "ab") as log:
                    mount.proc = subprocess.Popen(zcachefs, stdin=subprocess.DEVNULL,
                                                  stdout=log, stderr=log, env=env)
                daemon_pid = listener.receive(mount.proc, "READY=1")
                os.kill(daemon_pid, signal.SIGTERM)
                if foreground:
                    assert listener.receive(mount.proc, "STOPPING=1") == daemon_pid
                    assert mount.proc.wait(timeout=60) == 0, mount.read_log()
                    assert "received SIGTERM, unmounting" in mount.read_log()
                else:
                    assert mount.proc.wait(timeout=60) == 0, mount.read_log()
                    assert listener.receive(_Running(daemon_pid), "STOPPING=1") == daemon_pid
                    assert wait_until(lambda: _gone(daemon_pid), 60)  # noqa: B023
            assert wait_until(lambda: not is_fuse_mounted(mnt), 10), mount.read_log()
        finally:
            mount.stop()
            listener.close()


class _Running:
    """A stand-in for Popen.poll() for a process that is not our child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        return 0 if _gone(self.pid) else None


def top_fstype(path: Path) -> str | None:
    entry = mount_entry(path)
    return None if entry is None else entry[1]


@needs_fuse
@needs_root
def test_exec_start_pre_detaches_only_a_dead_zcachefs_mount(tmp_path: Path) -> None:
    """After a crash the unit clears the dead mount, but never the file system below:
    as root, a bare `fusermount3 -uz DIR` would unmount the disk mounted at DIR."""
    data = tmp_path / "data"
    data.mkdir()
    clear_stale = exec_command("ExecStartPre", data)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "zcachefs-test", str(data)],
                   check=True)
    try:
        (data / "disk.txt").write_text("on the disk\n")
        assert subprocess.run(clear_stale, check=False).returncode == 0
        assert top_fstype(data) == "tmpfs"

        daemon = Mount(data, data, log=tmp_path / "daemon.log").start()
        try:
            assert daemon.proc is not None
            os.kill(daemon.pid, signal.SIGKILL)  # crash: the mount stays, dead
            daemon.proc.wait()
            assert is_fuse_mounted(data)
            assert subprocess.run(clear_stale, check=False).returncode == 0
            assert top_fstype(data) == "tmpfs"
            assert (data / "disk.txt").read_text() == "on the disk\n"
            assert subprocess.run(clear_stale, check=False).returncode == 0
            assert top_fstype(data) == "tmpfs"
        finally:
            daemon.stop()
    finally:
        force_unmount(data)
        while top_fstype(data) == "tmpfs":
            subprocess.run(["umount", str(data)], check=True)


# -- mount(8), fstab and .mount units ------------------------------------------------

class MountNamespace:
    """A mount namespace of the tests' own, in which /usr/local/bin holds just our
    `zcachefs`.

    mount(8) clears PATH, so mount.fuse3 finds `zcachefs` only in the shell's default
    search path, which is where `make install` puts it. Instead of installing into the
    host, the tests run mount(8) in this namespace: host mounts propagate in, its own
    never out. `close` unmounts, ends the daemons mount.fuse3 left in it and with them
    the namespace.
    """

    def __init__(self, tmp: Path) -> None:
        bindir = tmp / "ns-bin"
        bindir.mkdir()
        (bindir / "zcachefs").symlink_to(program())
        self.targets: list[Path] = []
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
             'mount --bind "$1" /usr/local/bin && exec sleep infinity', "sh", str(bindir)])
        ready = wait_until(lambda: self.holder.poll() is not None or self._comm() == "sleep")
        if not ready or self.holder.poll() is not None:
            self.close()
            raise RuntimeError("could not set up a private mount namespace")
        self.ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        assert self.ns != os.readlink("/proc/self/ns/mnt")

    def _comm(self) -> str:
        try:
            return Path(f"/proc/{self.holder.pid}/comm").read_text().strip()
        except OSError:
            return ""

    def run(self, args: list[str], env: dict[str, str] | None = None,
            stderr: int | IO[bytes] = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *args],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                              timeout=120, check=False)

    def mount(self, args: list[str], target: Path, env: dict[str, str] | None = None,
              stderr: int | IO[bytes] = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        self.targets.append(target)  # before mounting: cleaned up even if this fails
        return self.run(args, env=env, stderr=stderr)

    def entry(self, target: Path) -> MountInfo | None:
        return mountinfo.top(target, f"/proc/{self.holder.pid}/mountinfo")

    def processes(self) -> list[int]:
        """Live processes in the namespace besides the holder: the daemons."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == self.holder.pid:
                continue
            try:
                if os.readlink(f"/proc/{name}/ns/mnt") == self.ns:
                    pids.append(int(name))
            except OSError:  # gone, or a zombie
                continue
        return pids

    def close(self) -> None:
        if self.holder.poll() is None:
            for target in reversed(self.targets):
                entry = self.entry(target)
                if entry is not None and entry.fstype.startswith("fuse"):
                    self.run(["fusermount3", "-uz", str(target)])
            wait_until(lambda: not self.processes())
            for pid in self.processes():
                os.kill(pid, signal.SIGKILL)
            self.holder.kill()
        self.holder.wait()


@pytest.fixture
def mount_ns(tmp_path: Path) -> Iterator[MountNamespace]:
    for tool in ("unshare", "nsenter", "mount.fuse3"):
        if shutil.which(tool) is None and not Path("/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed")
    if not Path("/usr/local/bin").is_dir():
        pytest.skip("no /usr/local/bin to stand in for")
    ns = MountNamespace(tmp_path)
    try:
        yield ns
    finally:
        ns.close()


def check_live(ns: MountNamespace, source: Path, target: Path) -> None:
    entry = ns.entry(target)
    assert entry is not None and entry.fstype == "fuse.zcachefs", entry
    assert entry.source == str(source)
    assert "allow_other" in entry.super_options  # the daemon got it from mount(8)
    read = ns.run(["cat", str(target / "hello.txt")])
    assert (read.returncode, read.stdout) == (0, HELLO), read.stderr


def check_gone(ns: MountNamespace, target: Path) -> None:
    """The mount is gone and so is the daemon (it exits on unmount)."""
    entry = ns.entry(target)
    assert entry is None or not entry.fstype.startswith("fuse"), entry
    assert wait_until(lambda: not ns.processes()), "the daemon outlived its mount"


@needs_fuse
@needs_root
def test_mount_t_fuse_zcachefs(mount_ns: MountNamespace, tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "hello.txt").write_text(HELLO)
    done = mount_ns.mount(["mount", "-t", "fuse.zcachefs", str(src), str(mnt),
                           "-o", FSTAB_OPTIONS], mnt)
    assert done.returncode == 0, done.stderr
    check_live(mount_ns, src, mnt)
    done = mount_ns.run(["fusermount3", "-u", str(mnt)])
    assert done.returncode == 0, done.stderr
    check_gone(mount_ns, mnt)


@needs_fuse
@needs_root
@pytest.mark.parametrize("how", ["docs-fstab-line", "issue-fstab-line", "mount-unit"])
def test_fstab_lines_and_mount_unit(mount_ns: MountNamespace, tmp_path: Path,
                                    how: str) -> None:
    """docs/service.md's fstab line and one with the issue's options (both through
    `mount -T FSTAB`), and the shipped .mount example, run as systemd runs a mount
    unit; unmounted with umount(8)."""
    src = tmp_path / "data"
    src.mkdir()
    mnt = tmp_path / "mnt" if how == "issue-fstab-line" else src
    mnt.mkdir(exist_ok=True)
    (src / "hello.txt").write_text(HELLO)
    fstab = tmp_path / "fstab"
    if how == "docs-fstab-line":  # over itself, like the docs
        fstab.write_text(docs_fstab_line().replace("/srv/data", str(src)) + "\n")
        args = ["mount", "-T", str(fstab), str(mnt)]
    elif how == "issue-fstab-line":  # x-systemd.automount wants a separate SOURCE
        fstab.write_text(f"# test\n{src}\t{mnt}\tfuse.zcachefs\t{FSTAB_OPTIONS}\t0 0\n")
        args = ["mount", "-T", str(fstab), str(mnt)]
    else:
        unit = read_unit(MOUNT_EXAMPLE)["Mount"]
        assert unit["What"] == unit["Where"] == "/srv/data"
        args = ["mount", str(src), str(mnt), "-t", unit["Type"], "-o", unit["Options"]]
    done = mount_ns.mount(args, mnt)
    assert done.returncode == 0, done.stderr
    check_live(mount_ns, src, mnt)
    done = mount_ns.run(["umount", str(mnt)])
    assert done.returncode == 0, done.stderr
    check_gone(mount_ns, mnt)


# -- journal logging -----------------------------------------------------------------

PRIORITY_LINE = re.compile(r"<[0-7]>\S")


def journal_stream(path: Path) -> dict[str, str]:
    """$JOURNAL_STREAM naming `path` as systemd names a service's stderr stream."""
    path.touch()
    st = path.stat()
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@needs_fuse
@pytest.mark.parametrize("matching", [True, False])
def test_journal_priority_prefixes(tmp_path: Path, matching: bool) -> None:
    """Under the journal (JOURNAL_STREAM names the daemon's stderr) every line starts
    with a <N> priority; otherwise (the variable names another file) none does."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "hello.txt").write_text(HELLO)
    log = tmp_path / "stderr.log"
    env = journal_stream(log if matching else tmp_path / "elsewhere")
    daemon = Mount(src, mnt, log=log, env=env, extra_args=["-d"])
    try:
        daemon.start()
        assert (mnt / "hello.txt").read_text() == HELLO
    finally:
        status = daemon.stop()
    assert status == 0
    lines = log.read_text().splitlines()
    assert lines
    if matching:
        assert [line for line in lines if not PRIORITY_LINE.match(line)] == []
        assert any(line.startswith("<6>zcachefs.mount: mounted ") for line in lines)
        assert any(line.startswith("<7>") for line in lines)
    else:
        assert not any(PRIORITY_LINE.match(line) for line in lines)
        assert any("zcachefs.mount: mounted " in line for line in lines)


@needs_fuse
@needs_root
def test_journal_stream_through_mount_helper(mount_ns: MountNamespace,
                                             tmp_path: Path) -> None:
    """A daemon started by mount(8) (as a .mount unit or a systemd fstab mount does)
    keeps logging to the journal stream it inherited, with priorities, after it has
    detached."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "hello.txt").write_text(HELLO)
    log = tmp_path / "stderr.log"
    env = {**os.environ, **journal_stream(log)}
    with open(log, "ab") as stderr:
        done = mount_ns.mount(["mount", "-t", "fuse.zcachefs", str(src), str(mnt),
                               "-o", "allow_other"], mnt, env=env, stderr=stderr)
    assert done.returncode == 0, log.read_text()
    check_live(mount_ns, src, mnt)
    assert mount_ns.run(["umount", str(mnt)]).returncode == 0
    check_gone(mount_ns, mnt)
    lines = log.read_text().splitlines()
    assert [line for line in lines if not PRIORITY_LINE.match(line)] == []
    assert any(line.startswith("<6>zcachefs.mount: mounted ") for line in lines)
    assert any(line.startswith("<6>zcachefs.mount: unmounted ") for line in lines)


# -- make install / uninstall --------------------------------------------------------

MAKE_VARIABLES = ("DESTDIR", "PREFIX", "BINDIR", "LIBDIR", "UNITDIR", "CONFDIR",
                  "PIP_FLAGS", "PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_symlink() or not p.is_dir())


@pytest.mark.parametrize("prefix", ["/usr/local", "/opt/zcachefs"])
def test_make_install_and_uninstall(tmp_path: Path, prefix: str) -> None:
    """Into a DESTDIR staging tree, from a copy of the source tree (pip builds in
    place). --no-deps: the dependencies are those of the running Python already."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    tree, stage = tmp_path / "tree", tmp_path / "stage"
    shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "*.egg-info", "__pycache__", ".*_cache", "tests",
        "results"))
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}

    def run_make(target: str) -> None:
        done = subprocess.run(
            [make, "-C", str(tree), target, f"DESTDIR={stage}", f"PREFIX={prefix}",
             f"PYTHON={sys.executable}", "PIP_FLAGS=--no-deps"],
            capture_output=True, text=True, env=env, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr

    run_make("install")
    run_make("install")  # again: replaces the installed tree
    launcher = stage / prefix.lstrip("/") / "bin" / "zcachefs"
    libdir = stage / prefix.lstrip("/") / "lib" / "zcachefs"
    unit = stage / "etc" / "systemd" / "system" / "zcachefs@.service"
    conf_dir = stage / "etc" / "zcachefs"
    assert unit.read_text() == UNIT.read_text().replace(UNIT_PROGRAM, f"{prefix}/bin/zcachefs")
    assert (conf_dir / "zcachefs.conf.example").read_bytes() == CONF_EXAMPLE.read_bytes()
    assert (libdir / "zcachefs" / "cli.py").is_file()
    assert launcher.stat().st_mode & 0o777 == 0o755
    text = launcher.read_text()
    assert text.splitlines()[0] == f"#!{sys.executable} -I"
    assert f'"{prefix}/lib/zcachefs"' in text

    # The launcher runs the package from LIBDIR (here: pointed at the staged one).
    staged = tmp_path / "zcachefs-staged"
    staged.write_text(text.replace(f'"{prefix}/lib/zcachefs"', repr(str(libdir))))
    staged.chmod(0o755)
    done = subprocess.run([str(staged), "--version"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stdout.startswith("zcachefs "), done.stderr
    where = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(libdir)!r}); import zcachefs; "
         "print(zcachefs.__file__)"], capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(libdir))

    # uninstall removes exactly what install put, and keeps the admin's own config.
    user_conf = conf_dir / "srv-data.conf"
    user_conf.write_text("allow_other\n")
    run_make("uninstall")
    assert files_under(stage) == [user_conf]
    user_conf.unlink()
    run_make("uninstall")
    assert files_under(stage) == []
    assert not conf_dir.exists()
