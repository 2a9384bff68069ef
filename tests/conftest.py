import os
import sys

# Tests run on the CPU in float32 whatever machine they are on; matmul precision must be full for 1e-4 parity.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
from oracle import FAMILIES, make_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """name -> (directory, torch model), saved once per session."""
    made = {}

    def get(name):
        if name not in made:
            d = tmp_path_factory.mktemp(name)
            made[name] = (d, make_hf_model(name, d))
        return made[name]

    return get


ALL_FAMILIES = list(FAMILIES)
