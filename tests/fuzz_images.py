"""Mutated JPEG, PNG, GIF and WebP bytes through ingest's decoding core.

Run by tests/test_hostile_images.py in its own interpreter, under a hard
address-space limit; every input must end accepted (pixels of the configured
shape) or quarantined (a one-line reason), within the per-file deadline.
"""

import io
import resource
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.ingest.decode import decode_bytes
from pipeline.params import Ingest

SETTINGS = Ingest(
    image_size=(32, 32), color_mode="rgb", resize="stretch", resample="bilinear",
    max_pixels=4_000_000, decode_seconds=60,
)  # fmt: skip
SEEDS = []
for fmt, mode in [("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("WEBP", "RGB"), ("PNG", "L")]:
    rng = np.random.default_rng(len(SEEDS))
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    SEEDS.append(buffer.getvalue())

MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "truncate", "insert", "delete", "repeat"]),
    st.floats(0, 1),  # where, as a fraction of the length
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, mutations) -> bytes:
    for kind, where, value in mutations:
        at = int(where * len(data))
        if kind == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ value[0]]) + data[at + 1 :]
        elif kind == "set":
            data = data[:at] + value + data[at + len(value) :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + value + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(value) :]
        elif kind == "repeat":
            data = data[:at] + data[at : at + 64] * value[0] + data[at:]
    return data


@settings(
    max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 400,
    deadline=timedelta(seconds=5),  # the time bound per file
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def fuzz(seed, mutations):
    result = decode_bytes(mutate(seed, mutations), SETTINGS)
    if result.reason is None:
        assert len(result.pixels) == 32 * 32 * 3
    else:
        assert result.reason and "\n" not in result.reason
        assert "MemoryError" not in result.reason


if __name__ == "__main__":
    limit = 1536 * 2**20  # a decoder that tried to allocate more would fail here, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    fuzz()
    # VmHWM, not ru_maxrss: the latter carries over the parent's peak across exec.
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    peak_kib = int(status["VmHWM"].split()[0])
    print(f"fuzzed; peak memory {peak_kib / 1024:.0f} MiB")
