"""Family packages that live only under tests/ (registered through LORAKIT_FAMILIES; see docs/families.md)."""
