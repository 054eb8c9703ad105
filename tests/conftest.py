import os

import pytest
import torch
import torch.distributed as dist
from hypothesis import settings

from tests.helpers import OPTIMIZERS, free_port

# Torch's first call of an op is slow; deadlines would make the property tests flaky.
settings.register_profile("torch_moo", deadline=None, max_examples=100)
# CI: the same examples on every run, and a failure prints the blob that reproduces it.
settings.register_profile("ci", parent=settings.get_profile("torch_moo"), derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "torch_moo"))
torch.set_num_threads(2)


@pytest.fixture(params=sorted(OPTIMIZERS))
def method(request: pytest.FixtureRequest) -> str:
    """The name of each entry of :data:`tests.helpers.OPTIMIZERS` in turn."""
    return request.param


@pytest.fixture
def one_rank():
    """A one-rank gloo process group: FSDP2 holds the parameters as DTensors (one shard each) in this process."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
