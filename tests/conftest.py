import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread everywhere (this process and the subprocesses tests start): tiny models gain nothing from more, two
# threads per process oversubscribe a 2-core machine when a test runs two processes, and a fixed thread count keeps
# float reductions identical between runs (the golden-loss and exact-resume tests compare to 1e-6).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def synthetic_corpus(tmp_path):
    from helpers import synthetic_prepared

    return synthetic_prepared(tmp_path / "prepared")
