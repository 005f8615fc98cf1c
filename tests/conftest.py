
import pytest
import torch

# Tiny models run fastest on one thread, and one thread does not collapse when other processes
# share the two cores (OpenMP threads spin-wait and oversubscription made tiny forwards 100x slower).
torch.set_num_threads(1)


@pytest.fixture
def tiny_images():
    """16 smooth 3x8x8 images in [-1, 1] (coloured gradients), deterministic."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(16, 3, 2, 2, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=8, mode="bilinear", align_corners=False)
