import os
import tempfile

import pytest
import torch

# torch.compile's on-disk caches are keyed on the Python code, not on the C++ schemas of custom
# ops: a cache left by an older build of lenetx could replay calls with an outdated signature.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lenetx-inductor-"))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
