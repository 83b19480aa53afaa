"""Errors lorakit raises for bad input: one clear line naming the file or config key and what to do."""


class LorakitError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigError(LorakitError):
    """A config value or key is wrong (the message starts with the key path)."""


class DataError(LorakitError):
    """The dataset cannot be used (the message names the file or folder)."""


class ModelLoadError(LorakitError):
    """A model file cannot be loaded (the message names the file)."""


class TrainingError(LorakitError):
    """Training stopped for a reason the user must act on (NaN, out of memory, disk full, stall)."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; the message names the last complete checkpoint (or says there is none)."""
