"""Two machines sharing one project through real S3 (SeaweedFS) and SSH (OpenSSH) remotes.

Machine A ingests and prepares and pushes; machine B, a fresh clone with an
empty cache, fetches only what training needs, trains and evaluates, and pushes
back; both end with the same metrics. Each test runs against both servers.
"""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    BIN,
    dvc_env,
    image_bytes,
    new_project,
    ran_stages,
    snapshot,
    tmpfs,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path):
    """A clean HOME (no stray ssh known_hosts or dvc config) and a git identity."""
    home = tmp_path / "home"
    home.mkdir()
    return dvc_env(HOME=str(home))


def sh(env, cwd, *command, ok=True) -> subprocess.CompletedProcess:
    # A bounded wait: on a nearly full disk (782 MB free when seen) SeaweedFS registers no
    # volume and `dvc push` retries for ever, which would hang the run, not fail this test.
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def dvc(env, cwd, *args, ok=True) -> subprocess.CompletedProcess:
    return sh(env, cwd, BIN / "dvc", *args, ok=ok)


def configure_remote(env, clone, server) -> None:
    """Secrets go to .dvc/config.local only (what `--local` writes)."""
    for option, value in server.local.items():
        dvc(env, clone, "remote", "modify", "--local", "store", option, value)


@pytest.fixture
def machine_a(tmp_path, env, server):
    """Machine A: a new project with tracked raw images, a remote, and a shared git origin."""
    origin = tmp_path / "origin.git"
    sh(env, tmp_path, "git", "init", "-q", "--bare", "-b", "main", origin)
    a = new_project(tmp_path / "a")
    sh(env, a, "git", "init", "-q", "-b", "main")
    sh(env, a, "git", "remote", "add", "origin", origin)
    dvc(env, a, "init", "-q")
    dvc(env, a, "remote", "add", "-d", "store", server.url)
    for option, value in server.config.items():
        dvc(env, a, "remote", "modify", "store", option, value)
    dvc(env, a, "remote", "modify", "store", "verify", "true")  # re-hash what is pulled
    configure_remote(env, a, server)
    # The raw images are tracked by DVC; git ignores them.
    (a / ".gitignore").write_text((a / ".gitignore").read_text().replace("/data/raw/\n", ""))
    dvc(env, a, "add", "-q", "data/raw")
    return a, origin


def commit_and_push(env, clone, message) -> None:
    sh(env, clone, "git", "add", "-A")
    sh(env, clone, "git", "commit", "-qm", message)
    sh(env, clone, "git", "push", "-q", "origin", "main")
    dvc(env, clone, "push", "-q")


def test_two_machines_share_data_model_and_metrics(tmp_path, env, server, machine_a):
    a, origin = machine_a
    assert ran_stages(dvc(env, a, "repro", "prepare").stdout) == ["ingest", "prepare"]
    commit_and_push(env, a, "data v1, prepared")
    assert "secret" not in (a / ".dvc" / "config").read_text()

    # Machine B: a fresh clone, an empty cache; it fetches only what training needs.
    b = tmp_path / "b"
    sh(env, tmp_path, "git", "clone", "-q", origin, b)
    configure_remote(env, b, server)
    pulled = sh(env, b, BIN / "imgpipe", "pull", "data/processed").stdout
    assert int(pulled.split()[1]) > 0, pulled  # "pull: N files downloaded"; it always said 0
    assert not (b / "data" / "raw").exists()
    assert not (b / "data" / "interim" / "images").exists()
    raw_listing = yaml.safe_load((b / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    cached = {p.parent.name + p.name for p in (b / ".dvc" / "cache").rglob("*") if p.is_file()}
    assert raw_listing not in cached  # not even the raw folder's listing was fetched
    repro = dvc(env, b, "repro", "--allow-missing").stdout
    assert ran_stages(repro) == ["train", "evaluate"]
    commit_and_push(env, b, "trained on B")

    sh(env, a, "git", "pull", "-q", "origin", "main")
    dvc(env, a, "pull", "-q")
    shown = [json.loads(dvc(env, m, "metrics", "show", "--json").stdout) for m in (a, b)]
    assert shown[0] == shown[1]
    assert "results/evaluate/metrics.json" in json.dumps(shown[0])

    # Growth: A adds images and pushes a new version; B gets it and sees the change.
    v1 = snapshot(a / "data" / "raw")
    for index in range(5):
        (a / "data" / "raw" / "dark" / f"new{index}.png").write_bytes(
            image_bytes(30, f"grown {index}")
        )
    dvc(env, a, "add", "-q", "data/raw")
    dvc(env, a, "repro")
    commit_and_push(env, a, "data v2")
    sh(env, b, "git", "pull", "-q", "origin", "main")
    dvc(env, b, "pull", "-q", "data/processed")
    diff = json.loads(sh(env, b, BIN / "imgpipe", "diff", "HEAD~2", "HEAD", "--json").stdout)
    assert diff["dark"]["added"] == 5 and diff["total"]["moved"] == 0

    # Going back to B's commit (data v1 and all it made): the old data, byte for byte.
    sh(env, a, "git", "checkout", "-q", "HEAD~1")
    dvc(env, a, "checkout")
    assert snapshot(a / "data" / "raw") == v1


def test_a_push_to_a_stopped_server_fails_then_completes(tmp_path, env, server, machine_a):
    a, _ = machine_a
    sh(env, a, "git", "add", "-A")
    sh(env, a, "git", "commit", "-qm", "raw data")
    server.stop()
    failed = sh(env, a, BIN / "imgpipe", "push", ok=False)
    assert failed.returncode == 1
    message = failed.stderr.strip()
    assert message.startswith(f"Error: push to remote 'store' ({server.url}")
    assert "check that the server is running" in message and "\n" not in message
    server.start()
    assert "files uploaded" in sh(env, a, BIN / "imgpipe", "push").stdout
    status = dvc(env, a, "status", "--cloud", "--json").stdout
    assert json.loads(status) == {}  # nothing missing on the remote


def test_an_object_corrupted_on_the_remote_is_detected_on_pull(tmp_path, env, server, machine_a):
    a, origin = machine_a
    commit_and_push(env, a, "raw data")
    corrupt_one_object(server, a)
    b = tmp_path / "b"
    sh(env, tmp_path, "git", "clone", "-q", origin, b)
    configure_remote(env, b, server)
    pulled = dvc(env, b, "pull", ok=False)
    assert pulled.returncode != 0
    assert "corrupt" in (pulled.stdout + pulled.stderr).lower()


def corrupt_one_object(server, a) -> None:
    """Overwrite one image's object on the remote, as a failing disk or a bad copy would."""
    cache = next(p for p in (a / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()
                 and not p.name.endswith(".dir"))  # fmt: skip
    key = f"files/md5/{cache.parent.name}/{cache.name}"
    if server.url.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(
            key=server.local["access_key_id"],
            secret=server.local["secret_access_key"],
            client_kwargs={"endpoint_url": server.config["endpointurl"]},
        )
        fs.pipe(f"dvc/store/{key}", b"not the image any more")
    else:
        (server.folder / key).write_bytes(b"not the image any more")


def remote_files(server) -> list[str]:
    return sorted(str(p) for p in server.folder.rglob("*") if p.is_file())


def torn_objects(server) -> list[str]:
    """Files on the remote that are not whole DVC objects (files/md5/ab/cdef... whose md5
    is abcdef...): partial uploads, temporary files."""
    return [
        path
        for path in remote_files(server)
        if hashlib.md5(Path(path).read_bytes()).hexdigest()
        != "".join(Path(path).relative_to(server.folder / "files" / "md5").parts)
    ]


def failed_push(env, clone, *targets) -> str:
    sh(env, clone, "git", "add", "-A")
    sh(env, clone, "git", "commit", "-qm", "raw data")
    failed = sh(env, clone, BIN / "imgpipe", "push", *targets, ok=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    message = failed.stderr.strip()
    assert "\n" not in message
    return message


@pytest.mark.parametrize("server", ["ssh"], indirect=True)
def test_a_push_to_a_full_remote_says_there_is_no_space_and_leaves_nothing(
    tmp_path, env, server, machine_a
):
    # Before: "4 files failed to upload; check that the server is running ...". OpenSSH
    # says only "Failure": the server's file system tells the rest.
    a, _ = machine_a
    with tmpfs(server.folder, "size=64k"):  # the images take about 170 kB
        message = failed_push(env, a)
        assert remote_files(server) and torn_objects(server) == []  # what fitted is whole
    assert message.startswith(
        f"Error: push to remote 'store' ({server.url}) failed: no space left on the remote ("
    )
    assert "bytes free" in message and message.endswith(
        "free space there, then run the command again"
    )


@pytest.mark.parametrize("server", ["ssh"], indirect=True)
def test_a_push_to_a_read_only_remote_says_so(tmp_path, env, server, machine_a):
    a, _ = machine_a
    with tmpfs(server.folder, "ro"):
        message = failed_push(env, a)
        assert remote_files(server) == []
    assert "failed: the remote's file system is read-only (the server said: " in message
    assert "make it writable, or push to another remote" in message


@pytest.mark.parametrize("server", ["s3-read-only"], indirect=True)
def test_a_push_with_credentials_that_may_not_write_says_permission_denied(
    tmp_path, env, server, machine_a
):
    a, _ = machine_a
    message = failed_push(env, a)
    assert message.startswith(
        f"Error: push to remote 'store' ({server.url} at {server.config['endpointurl']}) "
        "failed: permission denied (the server said: Access Denied.)"
    )
    assert "check what the credentials in .dvc/config.local may do" in message
    assert "check that the server is running" not in message


@pytest.mark.parametrize("server", ["ssh"], indirect=True)
def test_a_push_of_a_target_that_does_not_exist_names_it(tmp_path, env, server, machine_a):
    a, _ = machine_a
    message = failed_push(env, a, "data/nonesuch")
    assert message.startswith("Error: push: no such target: 'data/nonesuch' does not exist")
    assert "check that the server is running" not in message
