"""Keep the user's terminal readable: drop third-party notices that are known to be noise in lorakit's use.

Only exact, understood messages are filtered (everything else from diffusers/transformers still shows):
- diffusers' "There are modules in X that should be kept in float32: []" (an empty list: nothing to keep);
- transformers' "`CLIPImageProcessor` requires torchvision" (lorakit never processes images with CLIP);
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" (4-bit CPU kernels are unused).
"""

from __future__ import annotations

import logging

NOISE = ("should be kept in float32: []", "requires torchvision (not installed)", "gemm_4bit_forward")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def quiet_third_party() -> None:
    """Install the filters on diffusers', transformers' and bitsandbytes' loggers and handlers (idempotent)."""
    drop = _DropNoise()
    try:  # make the libraries set up their own handlers now, so the filter reaches them
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.get_logger("diffusers")
        tlog.get_logger("transformers")
    except ImportError:
        pass
    for name in ("diffusers", "transformers", "bitsandbytes"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(drop)
        for handler in logger.handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(drop)
    root = logging.getLogger()
    for handler in root.handlers + [logging.lastResort]:
        if handler is not None and not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(drop)
