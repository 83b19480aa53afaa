"""`lorakit plan --card NAME`: the card table's names as users type them (planwalk)."""

from __future__ import annotations

import pytest

from lorakit.errors import ConfigError
from lorakit.train import cards


@pytest.mark.parametrize("typed,key", [("RTX4090", "rtx4090"), ("rtx 4090", "rtx4090"), (" H100 ", "h100"),
                                       ("RTX3060-12G", "rtx3060-12g"), ("rtx3060_12g", "rtx3060-12g"),
                                       ("NVIDIA GeForce RTX 4090", "rtx4090"), ("rtx4090", "rtx4090")])
def test_a_card_typed_with_other_case_spacing_or_its_full_name_is_the_tables(typed, key):
    assert cards.card(typed).key == key


def test_a_size_instead_of_a_card_points_to_memory_vram_gb():
    with pytest.raises(ConfigError) as exc:
        cards.card("24gb")
    assert str(exc.value).startswith("--card '24gb': not in lorakit's card table; choose one of h200, h100")
    assert str(exc.value).endswith("; for a card of 24 GiB lorakit does not know, set memory.vram_gb = 24 in the "
                                   "config instead")


def test_a_misspelt_card_is_refused_with_the_one_meant():
    with pytest.raises(ConfigError) as exc:
        cards.card("rtx4909")
    assert str(exc.value).endswith("(did you mean rtx4090?)")
    with pytest.raises(ConfigError):  # "rtx" alone is no one card
        cards.card("rtx")
