"""Test-wide settings: one torch thread, no Hub, a private HF cache."""

import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lorakit-hf-"))
# compiled blocks of the test suite's tiny models go to a cache of their own, never the user's (issue 28)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "lorakit-test-inductor")

import torch  # noqa: E402

torch.set_num_threads(1)
