import pytest

from logo_train.config import SynthConfig


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
