import os
import sys

import pytest

from logo_train.config import SynthConfig

_EXIT = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Exit with the tests' status once pytest has reported, skipping the interpreter's
    teardown: after a whole run (many local Ray sessions, torch and pyarrow threads in one
    process) that teardown was seen to die of SIGSEGV after "224 passed" (2026-12-01), which
    would turn a green suite into a failed `make test`. Everything the run writes is written
    by then; only native libraries' exit handlers are skipped."""
    status = config.stash.get(_EXIT, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


@pytest.fixture
def tiny_synth() -> SynthConfig:
    """A few hundred 32 px images: enough for counts and noise checks, fast to render."""
    return SynthConfig(
        image_size=32,
        images_per_class=60,
        imbalance_ratio=6.0,
        val_per_class=2,
        test_per_class=2,
        noise_rate=0.2,
        seed=3,
    )
