"""The SFTP drop server: the `sftp` agent, one account per sending system, write-only drop boxes.

Why a virtual file system instead of asyncssh's `chroot`: that jail maps paths but still follows
links inside it, and shows whatever the directory holds. Here nothing on disk is ever named by
the client: an account sees `/` (its allowed flows, as empty directories) and can do exactly one
thing, create a file in one of them. The bytes go into `outbox/<flow>/tmp/` under a name we
choose (opened O_EXCL|O_NOFOLLOW relative to a directory descriptor opened O_NOFOLLOW); only
when the client sends CLOSE for the handle is the file fsynced and linked into `new/` under its
name, which is the Maildir rule the ingest agent already trusts, so everything after that is the
directory-ingest code path. A connection that drops, or an SFTP session that ends, with a handle
still open removes its temporary file and leaves only an audit record.

Hardening, as an attacker on the internet would probe: public-key authentication only (keys
compared in constant time), no shell, exec, PTY, X11, agent or port forwarding, no SCP, the SFTP
subsystem only; no software version in the banner; a login timeout and a cap on connections;
strict key exchange (asyncssh >= 2.14.2 does the Terrapin countermeasure) with only modern
algorithms; every refused request audited with the account and a clear reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hmac
import json
import logging
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.stream import SSHServerStreamSession

from ..transfer.durable import replace_durably
from ..transfer.ids import new_message_id
from ..transfer.names import name_problem
from ..zones.config import SftpAccount, SftpServer
from .agent import AgentContext, FailClosed
from .ingest import outbox_dirs

__all__ = ["SftpAgent", "listen_file"]

log = logging.getLogger("zonegate.sftp")

#: What the server says it is: the protocol needs a software name, the attacker needs no version.
BANNER_VERSION = "zonegate"
KEX_ALGS = ["curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256"]
CIPHERS = ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
#: Completed uploads a session remembers for `stat` (paramiko confirms an upload's size).
_REMEMBERED = 256
_NAME_WAIT = 10.0


def listen_file(spool_root: Path) -> Path:
    """Where the running agent writes the address it listens on (port 0 picks one)."""
    return Path(spool_root) / "state" / "sftp-listen.json"


def _public_blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def _shown(text: str | bytes, limit: int = 200) -> str:
    """A client-chosen string made safe for an audit record: printable, bounded, no PEM armour."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return text.replace("-----BEGIN", "-----begin").replace("PRIVATE KEY", "private key")


class Refused(asyncssh.SFTPError):
    """A request refused by policy: the message goes to the client and into the audit log."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.reason = reason


def _denied(reason: str) -> Refused:
    return Refused(asyncssh.FX_PERMISSION_DENIED, reason)


@dataclass
class _Upload:
    """One file being written: its descriptor in tmp/, where it goes, how big it is so far."""

    flow: str
    name: str
    vpath: str
    tmp_dir: int
    tmp_name: str
    fd: int
    size: int = 0
    failed: str | None = None


@dataclass
class _Quota:
    """Bytes each account has dropped today (UTC), kept in the spool's state directory."""

    path: Path
    day: str = ""
    used: dict[str, int] = field(default_factory=dict)

    def load(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            raw = json.loads(self.path.read_bytes())
            self.day = str(raw["day"])
            self.used = {str(k): int(v) for k, v in raw["used"].items()}
        self._roll()

    def _roll(self) -> None:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        if today != self.day:
            self.day, self.used = today, {}

    def today(self, account: str) -> int:
        self._roll()
        return self.used.get(account, 0)

    def add(self, account: str, size: int) -> None:
        self._roll()
        self.used[account] = self.used.get(account, 0) + size
        data = json.dumps({"day": self.day, "used": self.used}).encode()
        replace_durably(self.path, data)


class SftpAgent:
    """Serves the drop server until the agent is told to stop."""

    def __init__(self, ctx: AgentContext) -> None:
        if ctx.config.sftp is None:
            raise ValueError("this gateway's config has no sftp section")
        self.ctx = ctx
        self.cfg: SftpServer = ctx.config.sftp
        self.accounts: dict[str, SftpAccount] = {a.name: a for a in self.cfg.accounts}
        self.blobs = {
            a.name: [_public_blob(k) for k in a.authorized_keys] for a in self.cfg.accounts
        }
        self.in_flight: dict[str, list[_Upload]] = {a: [] for a in self.accounts}
        self.quota = _Quota(ctx.spool.dir("state") / "sftp-quota.json")
        self.quota.load()
        self.connections = 0
        for account in self.cfg.accounts:
            for flow in account.flows:
                for d in outbox_dirs(ctx.config.outbox, flow):
                    d.mkdir(parents=True, exist_ok=True)

    # -- running ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.ctx.record("agent-started", outcome="info")
            asyncio.run(self._serve())
            self.ctx.record("agent-stopped", outcome="info")
        except FailClosed:
            return

    async def _serve(self) -> None:
        host_key = asyncssh.read_private_key(str(self.cfg.host_key))
        server = await asyncssh.listen(
            self.cfg.listen.host,
            self.cfg.listen.port,
            server_host_keys=[host_key],
            server_factory=lambda: _Server(self),
            server_version=BANNER_VERSION,
            login_timeout=self.cfg.login_timeout,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            allow_scp=False,
            kex_algs=KEX_ALGS,
            encryption_algs=CIPHERS,
            mac_algs=MACS,
            compression_algs=["none"],
            keepalive_interval=30,
            keepalive_count_max=3,
            config=[],
        )
        port = server.sockets[0].getsockname()[1]
        listen = {"host": self.cfg.listen.host, "port": port, "pid": os.getpid()}
        replace_durably(listen_file(self.ctx.spool.root), json.dumps(listen).encode())
        log.info("SFTP drop server listening on %s:%s", self.cfg.listen.host, port)
        try:
            while not self.ctx.stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            server.close()
            await server.wait_closed()

    # -- audit ----------------------------------------------------------------------------
    def audit(
        self,
        event: str,
        account: str | None,
        *,
        outcome: str,
        reason: str | None = None,
        message: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        who = {"system": _shown(account, 63)} if account else None
        try:
            self.ctx.audit.append(
                event, message=message, outcome=outcome, reason=reason, who=who, **extra
            )
        except Exception as e:  # AuditWriteError or a refused field: fail closed
            self.ctx.failed = True
            self.ctx.stop.set()
            log.critical("audit log cannot be written, stopping the SFTP server: %s", e)
            raise FailClosed(str(e)) from e
        self.ctx.metrics.audit_records.inc()

    def refuse(self, account: str | None, request: str, reason: str, **extra: Any) -> None:
        self.audit("request-refused", account, outcome="refused", reason=reason,
                   request=request, **extra)  # fmt: skip
        self.ctx.metrics.rejections.labels("sftp", "sftp", request).inc()


class _Server(asyncssh.SSHServer):
    """One SSH connection: authentication and what the client may open."""

    def __init__(self, agent: SftpAgent) -> None:
        self.agent = agent
        self.conn: asyncssh.SSHServerConnection | None = None
        self.username = ""
        self.account: SftpAccount | None = None
        self.peer = ""
        self.counted = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        if self.agent.connections >= self.agent.cfg.max_connections:
            self.agent.refuse(None, "connection", "too many connections", peer=self.peer)
            conn.close()
            return
        self.agent.connections += 1
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.agent.connections -= 1
        if self.account is None:
            reason = "no accepted public key before the connection ended"
            if exc is not None:
                reason += f" ({_shown(str(exc), 100)})"
            self.agent.audit(
                "login-refused",
                None,
                outcome="refused",
                reason=reason,
                user=_shown(self.username, 63),
                peer=self.peer,
            )

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True  # every user must authenticate; no method is ever skipped

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
        blobs = self.agent.blobs.get(username)
        # Compare against something even for an unknown user, so timing does not tell.
        candidates = blobs if blobs else [b"\0" * len(offered)]
        match = False
        for blob in candidates:
            match |= hmac.compare_digest(blob, offered)
        return match and blobs is not None

    def auth_completed(self) -> None:
        self.account = self.agent.accounts[self.username]
        self.agent.audit("login", self.account.name, outcome="ok", peer=self.peer)

    def session_requested(self) -> SSHServerStreamSession:
        return _Session(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:  # fmt: skip
        self._refuse("port-forward", f"direct-tcpip to {_shown(dest_host, 63)}:{dest_port}")
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._refuse("port-forward", f"tcpip-forward on {_shown(listen_host, 63)}:{listen_port}")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._refuse("port-forward", "direct-streamlocal (a Unix socket)")
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self._refuse("port-forward", "streamlocal-forward (a Unix socket)")
        return False

    def _refuse(self, request: str, what: str) -> None:
        name = self.account.name if self.account else None
        self.agent.refuse(name, request, f"{what} refused: this server only accepts SFTP uploads")


class _Session(SSHServerStreamSession):  # type: ignore[misc]
    """A session channel: the SFTP subsystem and nothing else, refusals audited."""

    def __init__(self, server: _Server) -> None:
        super().__init__(None, self._sftp, 3, False)
        self.server = server

    def _sftp(self, chan: asyncssh.SSHServerChannel) -> _Sftp:
        assert self.server.account is not None
        return _Sftp(chan, self.server.agent, self.server.account)

    def _refuse(self, request: str, what: str) -> bool:
        self.server._refuse(request, what)
        return False

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return self._refuse("pty", "a terminal (PTY)")

    def shell_requested(self) -> bool:
        return self._refuse("shell", "a shell")

    def exec_requested(self, command: str) -> bool:
        kind = "scp" if command.strip().startswith("scp") else "exec"
        return self._refuse(kind, f"running a command ({_shown(command, 60)})")

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == "sftp":
            return True
        return self._refuse("subsystem", f"the subsystem {_shown(subsystem, 40)!r}")


def _dir_attrs() -> asyncssh.SFTPAttrs:
    return asyncssh.SFTPAttrs(
        type=asyncssh.FILEXFER_TYPE_DIRECTORY, permissions=0o40300, size=0, uid=0, gid=0,
        mtime=int(time.time()), atime=int(time.time()),
    )  # fmt: skip


def _file_attrs(size: int) -> asyncssh.SFTPAttrs:
    return asyncssh.SFTPAttrs(
        type=asyncssh.FILEXFER_TYPE_REGULAR, permissions=0o100600, size=size, uid=0, gid=0,
        mtime=int(time.time()), atime=int(time.time()),
    )  # fmt: skip


class _Sftp(asyncssh.SFTPServer):
    """One account's SFTP session over a virtual tree: `/`, `/<flow>`, `/<flow>/<name>`."""

    def __init__(self, chan: asyncssh.SSHServerChannel, agent: SftpAgent, account: SftpAccount):
        super().__init__(chan)
        self.agent = agent
        self.account = account
        self.open_uploads: list[_Upload] = []
        self.completed: dict[str, int] = {}

    # -- paths ----------------------------------------------------------------------------
    def _refuse(
        self, request: str, reason: str, code: int = asyncssh.FX_PERMISSION_DENIED
    ) -> Refused:
        self.agent.refuse(self.account.name, request, reason)
        return Refused(code, reason)

    def _parts(self, path: bytes, request: str) -> list[str]:
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise self._refuse(request, "the path is not valid UTF-8") from None
        if "\0" in text:
            raise self._refuse(request, "the path holds a NUL character")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(request, f"'..' in {_shown(text)!r}: paths cannot leave the jail")
        if len(parts) > 2:
            raise self._refuse(request, f"{_shown(text)!r}: there are no subdirectories here")
        if parts and parts[0] not in self.account.flows:
            raise self._refuse(
                request,
                f"{_shown(parts[0])!r} is not a flow this account may use "
                f"(it may use: {', '.join(self.account.flows)})",
            )
        return parts

    def realpath(self, path: bytes) -> bytes:
        # Only a name computation: '..' clamps at the root of the jail, nothing is opened.
        return posixpath.normpath(b"/" + path).replace(b"//", b"/")

    def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        parts = self._parts(path, "stat")
        if len(parts) < 2:
            return _dir_attrs()
        vpath = "/".join(parts)
        for up in self.open_uploads:
            if up.vpath == vpath:
                return _file_attrs(up.size)
        if vpath in self.completed:
            return _file_attrs(self.completed[vpath])
        raise asyncssh.SFTPNoSuchFile(f"{_shown(vpath)!r} does not exist (the drop box shows none)")

    lstat = stat

    def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        assert isinstance(file_obj, _Upload)
        return _file_attrs(file_obj.size)

    async def scandir(self, path: bytes):  # type: ignore[override]
        parts = self._parts(path, "list")
        yield asyncssh.SFTPName(b".", attrs=_dir_attrs())
        yield asyncssh.SFTPName(b"..", attrs=_dir_attrs())
        if not parts:
            for flow in self.account.flows:
                yield asyncssh.SFTPName(flow.encode(), attrs=_dir_attrs())
        elif len(parts) == 2:
            raise asyncssh.SFTPNoSuchFile("not a directory")
        # a flow's directory is a write-only drop box: it lists nothing, not even our files

    # -- uploads --------------------------------------------------------------------------
    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _Upload:
        if pflags & asyncssh.FXF_READ or not pflags & asyncssh.FXF_WRITE:
            raise self._refuse("read", "the drop box is write-only: files cannot be read back")
        parts = self._parts(path, "open")
        if len(parts) != 2:
            raise self._refuse("open", "upload into a flow's directory, e.g. /<flow>/<name>")
        flow, name = parts
        if problem := name_problem(name):
            raise self._refuse("open", f"bad file name: {problem}")
        if "-----BEGIN" in name or "PRIVATE KEY" in name:
            raise self._refuse("open", "bad file name: it looks like key material")
        account = self.account
        flying = self.agent.in_flight[account.name]
        if len(flying) >= account.max_in_flight:
            raise self._refuse(
                "open", f"{len(flying)} files in flight; this account may have "
                f"{account.max_in_flight} at once", asyncssh.FX_FAILURE,
            )  # fmt: skip
        if self.agent.quota.today(account.name) >= account.bytes_per_day:
            raise self._refuse(
                "open", f"the daily limit of {account.bytes_per_day} bytes is used up",
                asyncssh.FX_FAILURE,
            )  # fmt: skip
        tmp, _new = outbox_dirs(self.agent.ctx.config.outbox, flow)
        tmp_dir = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        tmp_name = f"{new_message_id()}.sftp"
        try:
            fd = os.open(
                tmp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=tmp_dir,
            )
        except OSError:
            os.close(tmp_dir)
            raise
        upload = _Upload(flow, name, f"{flow}/{name}", tmp_dir, tmp_name, fd)
        flying.append(upload)
        self.open_uploads.append(upload)
        return upload

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, _Upload)
        up = file_obj
        if up.failed:
            raise Refused(asyncssh.FX_FAILURE, up.failed)
        end = offset + len(data)
        account = self.account
        if end > account.max_file_size:
            up.failed = f"the file is over this account's limit of {account.max_file_size} bytes"
            self._discard(up, "too-large", up.failed)
            raise Refused(asyncssh.FX_FAILURE, up.failed)
        flying = sum(u.size for u in self.agent.in_flight[account.name] if u is not up)
        if self.agent.quota.today(account.name) + flying + end > account.bytes_per_day:
            up.failed = f"the daily limit of {account.bytes_per_day} bytes would be exceeded"
            self._discard(up, "bytes-per-day", up.failed)
            raise Refused(asyncssh.FX_FAILURE, up.failed)
        try:
            os.pwrite(up.fd, data, offset)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Say so plainly, keep nothing of the half-written file, and let monitoring see it.
            up.failed = "the gateway's disk is full: the upload was not kept; retry later"
            self.agent.ctx.metrics.disk_full.set(1)
            self._discard(up, "disk-full", up.failed)
            raise Refused(asyncssh.FX_FAILURE, up.failed) from None
        up.size = max(up.size, end)
        return len(data)

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        raise self._refuse("read", "the drop box is write-only: files cannot be read back")

    def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Upload)
        if file_obj.fd >= 0:
            os.fsync(file_obj.fd)

    def close(self, file_obj: object) -> Any:
        assert isinstance(file_obj, _Upload)
        # asyncssh calls close() both for the client's CLOSE and, when the session ends, for
        # every handle still open. Only the first may turn an upload into a message: anything
        # but a CLOSE from the client discards the file (an unknown caller fails closed).
        from_client = sys._getframe(1).f_code.co_name == "_process_close"
        if not from_client:
            self._discard(
                file_obj, "upload-aborted", "the session ended before the file was closed"
            )
            return None
        return self._commit(file_obj)

    async def _commit(self, up: _Upload) -> None:
        if up.failed:
            self._forget(up)
            raise Refused(asyncssh.FX_FAILURE, up.failed)
        _tmp, new = outbox_dirs(self.agent.ctx.config.outbox, up.flow)
        try:
            os.fsync(up.fd)
            os.close(up.fd)
            up.fd = -1
            new_dir = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                deadline = time.monotonic() + _NAME_WAIT
                while True:
                    try:
                        os.link(up.tmp_name, up.name, src_dir_fd=up.tmp_dir, dst_dir_fd=new_dir,
                                follow_symlinks=False)  # fmt: skip
                        break
                    except FileExistsError:
                        # a file of that name waits to be claimed: wait, never overwrite it
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
                os.fsync(new_dir)
            finally:
                os.close(new_dir)
        except OSError as e:
            reason = "a file of that name is still waiting to be claimed; retry later"
            if e.errno != errno.EEXIST:
                reason = f"cannot store the file: {e.strerror}"
            self._discard(up, "upload-failed", reason)
            raise Refused(asyncssh.FX_FAILURE, reason) from None
        self._forget(up)
        self.agent.ctx.metrics.disk_full.set(0)
        self.agent.quota.add(self.account.name, up.size)
        self.agent.audit(
            "received",
            self.account.name,
            outcome="ok",
            message={"flow": up.flow, "name": _shown(up.name, 255), "size": up.size,
                     "path": f"new/{_shown(up.name, 255)}", "system": self.account.name},
        )  # fmt: skip
        self.agent.ctx.metrics.messages.labels(up.flow, "sftp", "received").inc()
        self.agent.ctx.metrics.bytes.labels(up.flow, "sftp").inc(up.size)
        self.completed[up.vpath] = up.size
        while len(self.completed) > _REMEMBERED:
            self.completed.pop(next(iter(self.completed)))

    def _forget(self, up: _Upload) -> None:
        """Close and remove the temporary file (if still there) and drop the handle's state."""
        if up.fd >= 0:
            os.close(up.fd)
            up.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(up.tmp_name, dir_fd=up.tmp_dir)
        with contextlib.suppress(OSError):
            os.fsync(up.tmp_dir)
        if up.tmp_dir >= 0:
            os.close(up.tmp_dir)
            up.tmp_dir = -1
        flying = self.agent.in_flight[self.account.name]
        if up in flying:
            flying.remove(up)
        if up in self.open_uploads:
            self.open_uploads.remove(up)

    def _discard(self, up: _Upload, code: str, reason: str) -> None:
        """Remove a refused or abandoned upload; the audit record is all that remains."""
        if up.tmp_dir < 0:
            return
        size = up.size
        self._forget(up)
        self.agent.audit(
            "upload-aborted",
            self.account.name,
            outcome="refused",
            reason=f"{code}: {reason}",
            message={"flow": up.flow, "name": _shown(up.name, 255), "size": size,
                     "system": self.account.name},
        )  # fmt: skip
        self.agent.ctx.metrics.rejections.labels(up.flow, "sftp", code).inc()

    def exit(self) -> None:
        for up in list(self.open_uploads):
            self._discard(up, "upload-aborted", "the session ended before the file was closed")

    # -- everything else is refused -------------------------------------------------------
    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._parts(path, "setstat")  # times and modes are not kept: accepted and ignored

    lsetstat = setstat

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        return None

    def remove(self, path: bytes) -> None:
        raise self._refuse("remove", "files cannot be removed from the drop box")

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise self._refuse("mkdir", "directories cannot be created in the drop box")

    def rmdir(self, path: bytes) -> None:
        raise self._refuse("rmdir", "directories cannot be removed from the drop box")

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._refuse("rename", "files cannot be renamed in the drop box")

    posix_rename = rename

    def readlink(self, path: bytes) -> bytes:
        raise self._refuse("readlink", "there are no links in the drop box")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._refuse("symlink", "symbolic links cannot be created in the drop box")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._refuse("link", "hard links cannot be created in the drop box")

    def statvfs(self, path: bytes) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")

    def fstatvfs(self, file_obj: object) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")

    def lock(self, file_obj: object, offset: int, length: int, flags: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not supported")

    def unlock(self, file_obj: object, offset: int, length: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not supported")
