"""train.distribution: two real worker processes on 127.0.0.1, and the chief rule."""

import json
import os
import re
import subprocess

import pytest

from pipeline.distribute import is_chief, process_of
from tests.conftest import BIN, FAST, ingest_and_prepare, make_dataset, write_params
from tests.servers import free_ports

WORKER_TIMEOUT = 180  # seconds; a worker whose peer died must not hang the suite


def test_every_process_has_a_place_the_chief_first():
    cluster = {"worker": ["w0:1", "w1:1"], "chief": ["c:1"]}
    assert process_of({"cluster": cluster, "task": {"type": "chief", "index": 0}}) == (
        ["c:1", "w0:1", "w1:1"], 0
    )  # fmt: skip
    assert process_of({"cluster": cluster, "task": {"type": "worker", "index": 1}})[1] == 2


def test_the_chief_is_the_chief_task_or_else_worker_zero():
    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief({"cluster": workers, "task": {"type": "worker", "index": 0}})
    assert not is_chief({"cluster": workers, "task": {"type": "worker", "index": 1}})
    with_chief = {**workers, "chief": ["c:1"]}
    assert is_chief({"cluster": with_chief, "task": {"type": "chief", "index": 0}})
    assert not is_chief({"cluster": with_chief, "task": {"type": "worker", "index": 0}})


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    params = write_params(root / "params.yaml", **FAST)
    return ingest_and_prepare(root, params, make_dataset(root / "raw", per_class=16))


def _train(folder, params, processed, env):
    command = [BIN / "imgpipe", "--params", params, "train", "--processed", processed,
               "--model-out", "out/model.keras", "--live-dir", "out/live"]  # fmt: skip
    folder.mkdir()
    return subprocess.Popen(
        command, cwd=folder, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_workers_train_together_and_only_the_chief_writes(processed, tmp_path, backend):
    params = write_params(tmp_path / "params.yaml", **{
        **FAST, "train": {**FAST["train"], "epochs": 2, "distribution": "multi_worker"}
    })  # fmt: skip
    base = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]}
    workers = [
        _train(tmp_path / f"worker{index}", params, processed, {"KERAS_BACKEND": backend,
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]  # fmt: skip
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=WORKER_TIMEOUT)[0])
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(outputs)

    digests = [re.search(r"\(weights (\w+)\)", output).group(1) for output in outputs]
    assert digests[0] == digests[1]  # synchronous training: the same final weights
    assert "saved sequential model" in outputs[0]
    assert "the chief writes the outputs" in outputs[1]
    chief = tmp_path / "worker0" / "out"
    assert (chief / "model.keras").is_file() and (chief / "model.labels.json").is_file()
    assert (chief / "live" / "metrics.json").is_file()
    ran_on = (chief / "live" / "params.yaml").read_text()
    assert f"backend: {backend}" in ran_on and "replicas: 2" in ran_on
    assert list((tmp_path / "worker1").iterdir()) == []  # the other worker wrote nothing


def test_multi_worker_without_tf_config_says_what_to_set(processed, tmp_path):
    params = write_params(tmp_path / "params.yaml", train={"distribution": "multi_worker"})
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    done = subprocess.run(
        [BIN / "imgpipe", "--params", params, "train", "--processed", processed,
         "--model-out", tmp_path / "m.keras", "--live-dir", tmp_path / "live"],
        env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "train.distribution = 'multi_worker' needs TF_CONFIG" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_mirrored_trains_on_every_local_device(processed, tmp_path, backend):
    params = write_params(tmp_path / "params.yaml", **{
        **FAST, "train": {**FAST["train"], "distribution": "mirrored"}
    })  # fmt: skip
    worker = _train(tmp_path / "run", params, processed, {"KERAS_BACKEND": backend})
    output = worker.communicate(timeout=WORKER_TIMEOUT)[0]
    assert worker.returncode == 0, output
    assert "saved sequential model" in output
    ran_on = (tmp_path / "run" / "out" / "live" / "params.yaml").read_text()
    assert f"backend: {backend}" in ran_on and "replicas: 1" in ran_on  # one CPU here


def test_a_backend_without_distribution_says_which_to_use(processed, tmp_path):
    params = write_params(tmp_path / "params.yaml", train={"distribution": "mirrored"})
    worker = _train(tmp_path / "run", params, processed, {"KERAS_BACKEND": "torch"})
    output = worker.communicate(timeout=WORKER_TIMEOUT)[0]
    assert worker.returncode == 1, output
    assert "train.distribution = 'mirrored' is not available on the torch backend" in output
    assert "use KERAS_BACKEND=tensorflow or jax" in output and "Traceback" not in output
    assert list((tmp_path / "run").iterdir()) == []
