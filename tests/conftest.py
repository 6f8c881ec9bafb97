import os
import tempfile

import numpy as np
import pytest
import torch

# Triton kernels run in Triton's CPU interpreter where there is no GPU. The variable must be set
# before triton compiles anything, hence here, before any test module imports peakknn's kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Measured ceilings (peakknn.perfmodel) are cached in a fresh directory, not the user's cache.
os.environ.setdefault("PEAKKNN_CACHE_DIR", tempfile.mkdtemp(prefix="peakknn-test-cache-"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
