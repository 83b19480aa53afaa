"""LoRA tools: verify, convert, resize, merge, extract (pure state_dict functions over the canonical form)."""
