import torch
from hypothesis import settings

# Torch's first call of an op is slow; deadlines would make the property tests flaky.
settings.register_profile("torch_moo", deadline=None, max_examples=100)
settings.load_profile("torch_moo")
torch.set_num_threads(2)
