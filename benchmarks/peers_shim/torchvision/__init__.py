"""Stand-in for torchvision (benchmarks/peers_shim/README.md): only ``torchvision.transforms``."""
__version__ = "0.0.0+lorakit-peers-shim"
from . import transforms  # noqa: E402,F401
