import pytest
import torch


@pytest.fixture(autouse=True)
def nan_filled_empty_tensors():
    """torch.empty hands out NaN-filled memory in the kernel tests: a kernel that reads memory nobody wrote then
    fails here, not only when the allocator's leftovers happen to be NaN (the mLSTM backward's padding rows once
    did, found by chance in CI)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[2]
