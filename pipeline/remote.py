"""push and pull through DVC's own API, with failures that name the remote and say what went wrong.

DVC does the transfer; on a failure it raises only "N files failed to upload"
and logs each file's error, and an SSH server (SFTP) reports a full or
read-only disk only as "Failure". So the reason is taken from DVC's log of the
failed transfers and, for "Failure", from the server's file system itself.
"""

import contextlib
import errno
import logging
import posixpath
import re
from typing import NamedTuple

from pipeline.errors import PipelineError


class Reason(NamedTuple):
    """What went wrong on a remote, and what to do about it."""

    what: str
    step: str


FULL = Reason("no space left on the remote", "free space there")
DENIED = Reason("permission denied", "check what the credentials in .dvc/config.local may do")
READ_ONLY = Reason(
    "the remote's file system is read-only", "make it writable, or push to another remote"
)
REASONS = {  # by the errno behind a failure
    errno.ENOSPC: FULL,
    errno.EDQUOT: FULL,
    errno.EACCES: DENIED,
    errno.EPERM: DENIED,
    errno.EROFS: READ_ONLY,
    errno.ENOENT: Reason("no such file or folder on the remote", "check its url in .dvc/config"),
}
UNREACHABLE = Reason(
    "",
    "check that the server is running and reachable from here, the remote's url in "
    ".dvc/config, and its credentials in .dvc/config.local",
)
SFTP_FAILURE = 4  # SSH_FX_FAILURE: OpenSSH's answer to a full and a read-only disk alike
ST_RDONLY = 1  # statvfs flag: mounted read-only


def transfer(direction: str, targets: list[str], remote: str | None):
    """Run `dvc push` or `dvc pull` on `targets` (all when empty); returns DVC's result."""
    from dvc.exceptions import NoOutputOrStageError, OutputNotFoundError
    from dvc.repo import Repo

    repo = Repo()
    try:
        name = remote or repo.config["core"].get("remote")
        if not name:
            raise PipelineError(
                "no DVC remote is set; add one with `dvc remote add -d NAME URL` "
                "(README: Two machines)"
            )
        settings = repo.config["remote"].get(name)
        if settings is None:
            raise PipelineError(f"there is no remote named '{name}'; `dvc remote list` shows them")
        try:  # before any transfer, so a wrong name is not mistaken for a remote's failure
            for target in targets:
                repo.stage.collect_granular(target)
        except (NoOutputOrStageError, OutputNotFoundError) as error:
            raise PipelineError(
                f"{direction}: no such target: {error}; name DVC-tracked paths or stages "
                "(`dvc status` and `dvc stage list` show them)"
            ) from None
        failures = _Failures()
        try:
            with failures.recorded():
                return getattr(repo, direction)(targets=list(targets) or None, remote=name)
        except Exception as error:  # Whatever the transport raised, said with what it was.
            where = settings["url"]
            if "endpointurl" in settings:
                where += f" at {settings['endpointurl']}"
            cause = failures.first or error
            words = " ".join(str(cause).split())[:300] or type(cause).__name__
            reason = _reason(cause, repo, name, failures.objects)
            said = f"{reason.what} (the server said: {words})" if reason.what else words
            raise PipelineError(
                f"{direction} {'to' if direction == 'push' else 'from'} remote '{name}' "
                f"({where}) failed: {said}; {reason.step}, then run the command again"
            ) from None
    finally:
        repo.close()


class _Failures(logging.Handler):
    """The first error DVC logs for an object it failed to transfer, and those objects.
    While recording, they are not printed too: the one-line error sums them up."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.first: BaseException | None = None
        self.objects: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if found := re.match(r"failed to transfer '([0-9a-f]+)", record.getMessage()):
            self.objects.append(found[1])
        if record.exc_info and self.first is None:
            self.first = record.exc_info[1]

    @contextlib.contextmanager
    def recorded(self):
        logger = logging.getLogger("dvc_data.hashfile.transfer")
        logger.addHandler(self)
        logger.propagate = False  # DVC's console handlers are on "dvc_data"
        try:
            yield
        finally:
            logger.propagate = True
            logger.removeHandler(self)


def _reason(error: BaseException, repo, remote: str, objects: list[str]) -> Reason:
    """What the error or its causes say went wrong; else that the server may be unreachable."""
    cause = error
    while cause is not None:
        if isinstance(cause, PermissionError):  # s3fs's AccessDenied, SFTP's permission denied
            return DENIED
        if isinstance(cause, OSError) and cause.errno in REASONS:
            return REASONS[cause.errno]
        if (
            type(cause).__module__.startswith("asyncssh")
            and getattr(cause, "code", 0) == SFTP_FAILURE
        ):
            return _ssh_disk(repo, remote, objects)
        cause = cause.__cause__ or cause.__context__
    return UNREACHABLE


def _ssh_disk(repo, remote: str, objects: list[str]) -> Reason:
    """Ask an SSH remote's file system (OpenSSH's statvfs extension) whether it is read-only
    or has less space free than an object that failed to upload needs."""
    from asyncssh import SFTPNoSuchFile
    from fsspec.asyn import sync

    odb = repo.cloud.get_remote_odb(remote)
    ssh = odb.fs.fs  # sshfs' file system, which keeps its SFTP channels in a pool

    async def statvfs(path: str):
        async with ssh._pool.get() as channel:
            return await channel.statvfs(path)

    path = odb.path
    while True:
        try:
            disk = sync(ssh.loop, statvfs, path)
            break
        except SFTPNoSuchFile:  # not made yet (a read-only disk never had it): its parent's
            if path == (path := posixpath.dirname(path)):
                return UNREACHABLE
        except Exception:  # a server without the extension: say what is known
            return UNREACHABLE
    if disk.flags & ST_RDONLY:
        return READ_ONLY
    free = disk.bavail * disk.frsize
    local = repo.cache.local
    needed = max((local.fs.size(local.oid_to_path(oid)) for oid in objects), default=0)
    if free < needed:
        return Reason(f"{FULL.what} ({free:,} bytes free, {needed:,} for one file)", FULL.step)
    return UNREACHABLE
