"""The LyCORIS key names of the LoRA variants (issue 23), without torch: what the file readers (registry, inspect,
verify, the layouts) need to tell a LoHa/LoKr/DoRA module apart. The maths is :mod:`lorakit.lora.variants`."""

from __future__ import annotations

ALGOS = ("loha", "lokr", "dora")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LYCORIS_SUFFIXES = tuple("." + k for k in LOHA_KEYS + ("hada_t1", "hada_t2") + LOKR_KEYS) + (".dora_scale",)


def algo_of_keys(names) -> str:
    """"loha", "lokr", "dora" or "lora" from a module's LyCORIS suffixes."""
    names = set(names)
    if names & set(LOHA_KEYS):
        return "loha"
    if names & set(LOKR_KEYS):
        return "lokr"
    return "dora" if "dora_scale" in names else "lora"
