"""lorakit: train image LoRAs locally."""

__version__ = "0.1.0"
