"""The SFTP drop point an `sftp` link pushes envelopes to, as the demo runs it: its own process.

A site that only offers SFTP gives the sending gateway an account on a server beside the
receiving gateway. The sender uploads each envelope as `.tmp-NAME` and renames it to NAME
(transfer/sftppush.py); the receiving gateway reads the directory as a ferry directory and never
writes there. On a real site that server is the site's OpenSSH; the demo must run on a machine
with only Python and PyPI, so it serves the same role with asyncssh (a project dependency),
hardened like the gateway's own drop server (gateways/sftp.py, whose algorithm lists it uses):
public-key login only, keys compared in constant time, the SFTP subsystem only (no shell, exec,
PTY, SCP or forwarding), no software version in the banner.

What an account can do is exactly what a pushing sender needs, over a virtual tree (nothing on
disk is ever named by the client): `/` holds one directory per link the account pushes on; in
one it may create `.tmp-<envelope name>` (never following a link), write and close it, rename
it to its final name (an envelope is never replaced; the heartbeat file is), and remove its own
temporary file. Nothing can be read back, listed, linked or made.

Run: ``python -m zonegate.gateways.demo_sftpdrop CONFIG`` (a JSON file written by `prepare`);
the bound port goes into the listen file, SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import posixpath
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.stream import SSHServerStreamSession
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..transfer.durable import fsync_dir, replace_durably, write_durably
from ..transfer.ferry import HEARTBEAT_FILE
from ..transfer.keys import generate_ssh_host_key
from .demo_links import DropPoint, LinkPlan
from .sftp import BANNER_VERSION, CIPHERS, KEX_ALGS, MACS

__all__ = ["DropPointConfig", "main", "prepare", "serve"]

log = logging.getLogger("zonegate.demo.sftpdrop")
#: What a sender may name: an envelope (ferry.final_name) or the heartbeat file.
_FINAL = re.compile(r"[0-9a-f]{32}(?:\.resend-[0-9]{1,20})?\.zge|" + re.escape(HEARTBEAT_FILE))
_TMP = ".tmp-"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


# -- setting up: keys, known_hosts, the drop points' configs -----------------------------------


def _write_identity(private: Path, comment: str) -> str:
    """A sending gateway's SSH login key (Ed25519, OpenSSH format, 0600); returns the public
    line for the drop point's account."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_durably(private, pem, mode=0o600)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public = f"{line.decode()} {comment}\n"
    write_durably(private.with_name(private.name + ".pub"), public.encode(), mode=0o644)
    return public.strip()


def prepare(plan: LinkPlan, max_file_size: int) -> list[Path]:
    """Host keys, the senders' login keys and known_hosts, and each drop point's config.

    Returns the config files, one per drop point, each to be run as its own process. A sender's
    known_hosts holds exactly the host keys of the drop points it pushes to.
    """
    keys = plan.root / "keys"
    identities: dict[str, str] = {}
    known: dict[str, list[str]] = {}
    configs = []
    for point in plan.drop_points.values():
        point.directory.mkdir(parents=True, exist_ok=True)
        host_key, host_pub = generate_ssh_host_key(point.directory, point.gateway)
        host_line = " ".join(host_pub.read_text().split()[:2])
        accounts = {}
        for sender, dirs in point.accounts.items():
            if sender not in identities:
                identities[sender] = _write_identity(keys / f"{sender}.ssh_id_ed25519", sender)
            known.setdefault(sender, []).append(f"[127.0.0.1]:{point.port} {host_line}")
            accounts[sender] = {
                "key": identities[sender],
                "dirs": {k: str(v) for k, v in dirs.items()},
            }
        config = {
            "name": f"{point.gateway} drop point",
            "host": "127.0.0.1",
            "port": point.port,
            "host_key": str(host_key),
            "listen_file": str(listen_file(point)),
            "max_file_size": max_file_size,
            "accounts": accounts,
        }
        path = point.directory / "droppoint.json"
        write_durably(path, json.dumps(config, indent=2).encode(), mode=0o600)
        configs.append(path)
    for sender, lines in known.items():
        write_durably(keys / f"{sender}.known_hosts", ("\n".join(lines) + "\n").encode())
    return configs


def listen_file(point: DropPoint) -> Path:
    """Where the running drop point says it listens (written once the port is bound)."""
    return point.directory / "listening.json"


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    key: bytes  # the SSH public key blob
    dirs: dict[str, Path]


@dataclass(frozen=True)
class DropPointConfig:
    name: str
    host: str
    port: int
    host_key: Path
    listen_file: Path
    max_file_size: int
    accounts: dict[str, Account]

    @classmethod
    def load(cls, path: Path) -> DropPointConfig:
        """Read the config `prepare` wrote; ValueError says which field is wrong."""
        raw = json.loads(path.read_text())
        try:
            accounts = {
                str(name): Account(
                    str(name),
                    base64.b64decode(str(a["key"]).split()[1], validate=True),
                    {str(k): Path(v) for k, v in a["dirs"].items()},
                )
                for name, a in raw["accounts"].items()
            }
            return cls(
                str(raw["name"]),
                str(raw["host"]),
                int(raw["port"]),
                Path(raw["host_key"]),
                Path(raw["listen_file"]),
                int(raw["max_file_size"]),
                accounts,
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: bad drop point config ({type(e).__name__}: {e})") from None


def _denied(reason: str) -> asyncssh.SFTPError:
    log.warning("refused: %s", reason)
    return asyncssh.SFTPPermissionDenied(reason)


def _attrs(kind: int, mode: int, size: int) -> asyncssh.SFTPAttrs:
    now = int(time.time())
    return asyncssh.SFTPAttrs(
        type=kind, permissions=mode, size=size, uid=0, gid=0, mtime=now, atime=now
    )


@dataclass
class _Upload:
    directory: str
    name: str
    dir_fd: int
    fd: int
    size: int = 0


class _Server(asyncssh.SSHServer):
    """One connection: public-key authentication against the accounts, sessions for SFTP."""

    def __init__(self, config: DropPointConfig) -> None:
        self.config = config
        self.conn: asyncssh.SSHServerConnection | None = None
        self.account: Account | None = None
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"

    def begin_auth(self, username: str) -> bool:
        return True  # every user authenticates; no method is ever skipped

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        offered = key.public_data
        account = self.config.accounts.get(username)
        # compare against something even for an unknown user, so timing does not tell
        expected = account.key if account else b"\0" * len(offered)
        ok = hmac.compare_digest(expected, offered) and account is not None
        if not ok:
            log.warning(
                "login refused for %r from %s: key not authorised", username[:64], self.peer
            )
        return ok

    def auth_completed(self) -> None:
        # the account is the user name asyncssh authenticated, never one merely asked about
        assert self.conn is not None
        self.account = self.config.accounts[self.conn.get_extra_info("username")]
        log.info("login %s from %s", self.account.name, self.peer)

    def session_requested(self) -> SSHServerStreamSession:
        return _Session(self)

    def connection_requested(self, *args: Any) -> bool:
        log.warning("port forwarding refused (%s)", self.peer)
        return False

    def server_requested(self, *args: Any) -> bool:
        log.warning("remote forwarding refused (%s)", self.peer)
        return False

    def unix_connection_requested(self, *args: Any) -> bool:
        return False

    def unix_server_requested(self, *args: Any) -> bool:
        return False


class _Session(SSHServerStreamSession):  # type: ignore[misc]
    """A session channel that accepts the SFTP subsystem and nothing else."""

    def __init__(self, server: _Server) -> None:
        super().__init__(None, self._sftp, 3, False)
        self.server = server

    def _sftp(self, chan: asyncssh.SSHServerChannel) -> _DropBox:
        assert self.server.account is not None
        return _DropBox(chan, self.server.account, self.server.config.max_file_size)

    def pty_requested(self, *args: Any) -> bool:
        return False

    def shell_requested(self) -> bool:
        log.warning("shell refused")
        return False

    def exec_requested(self, command: str) -> bool:
        log.warning("exec refused")
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"


class _DropBox(asyncssh.SFTPServer):
    """One account's view: `/`, `/<dir>`, and in each the names a pushing sender uses."""

    def __init__(self, chan: asyncssh.SSHServerChannel, account: Account, limit: int) -> None:
        super().__init__(chan)
        self.account = account
        self.limit = limit
        self.uploads: list[_Upload] = []

    def _split(self, path: bytes) -> tuple[str | None, str | None]:
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise _denied("the path is not valid UTF-8") from None
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if "\0" in text or ".." in parts or len(parts) > 2:
            raise _denied(f"{text[:80]!r}: no such place in this drop point")
        if parts and parts[0] not in self.account.dirs:
            raise _denied(f"{parts[0][:80]!r} is not a directory of {self.account.name}")
        return (parts[0] if parts else None), (parts[1] if len(parts) > 1 else None)

    def _file(self, path: bytes, temporary: bool) -> tuple[str, str]:
        directory, name = self._split(path)
        if directory is None or name is None:
            raise _denied("expected /<directory>/<file>")
        final = name.removeprefix(_TMP) if temporary else name
        if (temporary and not name.startswith(_TMP)) or not _FINAL.fullmatch(final):
            what = "a temporary name .tmp-<envelope>" if temporary else "an envelope name"
            raise _denied(f"{name[:80]!r} is not {what}")
        return directory, name

    def _dir_fd(self, directory: str) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(self.account.dirs[directory], flags)

    # -- what a sender does ---------------------------------------------------------------
    def realpath(self, path: bytes) -> bytes:
        return posixpath.normpath(b"/" + path).replace(b"//", b"/")

    def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        directory, name = self._split(path)
        if name is None:
            return _attrs(asyncssh.FILEXFER_TYPE_DIRECTORY, 0o40300, 0)
        for up in self.uploads:
            if (up.directory, up.name) == (directory, name):
                return _attrs(asyncssh.FILEXFER_TYPE_REGULAR, 0o100600, up.size)
        raise asyncssh.SFTPNoSuchFile("the drop point shows no files")

    lstat = stat

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _Upload:
        if pflags & asyncssh.FXF_READ or not pflags & asyncssh.FXF_WRITE:
            raise _denied("files cannot be read back from a drop point")
        directory, name = self._file(path, temporary=True)
        dir_fd = self._dir_fd(directory)
        try:
            fd = os.open(name, _FLAGS, 0o600, dir_fd=dir_fd)
        except OSError:
            os.close(dir_fd)
            raise
        up = _Upload(directory, name, dir_fd, fd)
        self.uploads.append(up)
        return up

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, _Upload)
        if offset + len(data) > self.limit:
            raise asyncssh.SFTPFailure(f"over this drop point's limit of {self.limit} bytes")
        os.pwrite(file_obj.fd, data, offset)
        file_obj.size = max(file_obj.size, offset + len(data))
        return len(data)

    def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Upload)
        os.fsync(file_obj.fd)

    def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        assert isinstance(file_obj, _Upload)
        return _attrs(asyncssh.FILEXFER_TYPE_REGULAR, 0o100600, file_obj.size)

    def close(self, file_obj: object) -> None:
        """Durable before the rename that makes it visible: fsync, then close. (Also called for
        handles still open when a session ends: the partial file keeps its temporary name,
        which the reader ignores, and the sender's retry truncates it.)"""
        assert isinstance(file_obj, _Upload)
        with contextlib.suppress(OSError):
            os.fsync(file_obj.fd)
        os.close(file_obj.fd)
        os.close(file_obj.dir_fd)
        if file_obj in self.uploads:
            self.uploads.remove(file_obj)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        old_dir, old = self._file(oldpath, temporary=True)
        new_dir, new = self._file(newpath, temporary=False)
        if old_dir != new_dir or old != _TMP + new:
            raise _denied("a temporary file is only renamed to its own final name")
        dir_fd = self._dir_fd(old_dir)
        try:
            if new == HEARTBEAT_FILE:
                os.rename(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                try:  # link, then unlink: an envelope already there is never replaced
                    os.link(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                except FileExistsError:
                    raise _denied(f"{new} is already there; envelopes are never replaced") from None
                os.unlink(old, dir_fd=dir_fd)
                log.info("%s dropped %s/%s", self.account.name, old_dir, new)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    rename = posix_rename

    def remove(self, path: bytes) -> None:
        directory, name = self._file(path, temporary=True)
        dir_fd = self._dir_fd(directory)
        try:
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def exit(self) -> None:
        for up in list(self.uploads):
            self.close(up)

    # -- everything else is refused ---------------------------------------------------------
    def open56(self, *args: Any) -> Any:
        raise asyncssh.SFTPOpUnsupported("SFTP version 3 only")

    def read(self, *args: Any) -> bytes:
        raise _denied("files cannot be read back from a drop point")

    async def scandir(self, path: bytes):  # type: ignore[override]
        raise _denied("a drop point lists nothing")
        yield  # pragma: no cover - makes this an async generator

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        """Accepted and ignored (OpenSSH's `put` sets the mode of what it uploads): every
        dropped file is 0600, owned by the drop point, whatever the client asks."""
        return None

    def setstat(self, *args: Any) -> None:
        raise _denied("attributes cannot be changed")

    lsetstat = setstat

    def mkdir(self, *args: Any) -> None:
        raise _denied("directories cannot be made")

    def rmdir(self, *args: Any) -> None:
        raise _denied("directories cannot be removed")

    def readlink(self, *args: Any) -> bytes:
        raise _denied("there are no links")

    def symlink(self, *args: Any) -> None:
        raise _denied("links cannot be made")

    link = symlink

    def statvfs(self, *args: Any) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")

    fstatvfs = statvfs

    def lock(self, *args: Any) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not supported")

    unlock = lock


async def serve(config: DropPointConfig, stop: asyncio.Event) -> None:
    """Listen until `stop` is set; the bound port goes into the config's listen file."""
    server = await asyncssh.listen(
        config.host,
        config.port,
        server_host_keys=[asyncssh.read_private_key(str(config.host_key))],
        server_factory=lambda: _Server(config),
        server_version=BANNER_VERSION,
        login_timeout=10,
        allow_pty=False,
        x11_forwarding=False,
        agent_forwarding=False,
        allow_scp=False,
        kex_algs=KEX_ALGS,
        encryption_algs=CIPHERS,
        mac_algs=MACS,
        compression_algs=["none"],
        config=[],
    )
    port = server.sockets[0].getsockname()[1]
    listen = {"host": config.host, "port": port, "pid": os.getpid()}
    replace_durably(config.listen_file, json.dumps(listen).encode())
    fsync_dir(config.listen_file.parent)
    log.info("%s listening on %s:%s", config.name, config.host, port)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m zonegate.gateways.demo_sftpdrop CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = DropPointConfig.load(Path(args[0]))
    except (OSError, ValueError) as e:
        print(f"demo_sftpdrop: {e}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
