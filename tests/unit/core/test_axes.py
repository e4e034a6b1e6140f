from __future__ import annotations

import pytest

from harness.core.axes import Format, Layout, SaveVariant, parse_enum


def test_parse_enum_reads_known_values() -> None:
    assert parse_enum(Layout, "dp", "here") is Layout.DP


def test_parse_enum_names_place_value_and_choices() -> None:
    with pytest.raises(
        ValueError,
        match=r"f\.toml:x: unknown layout 'tp'; expected one of 'single', 'dp', 'ddp', 'fsdp2'",
    ):
        parse_enum(Layout, "tp", "f.toml:x")


@pytest.mark.parametrize(
    ("variant", "fmt"),
    [
        (SaveVariant.STATE_DICT, Format.WEIGHTS),
        (SaveVariant.MODULE_STATE_DICT, Format.WEIGHTS),
        (SaveVariant.BOUND_METHOD, Format.WEIGHTS),
        (SaveVariant.WHOLE, Format.WHOLE),
    ],
)
def test_save_variant_format(variant: SaveVariant, fmt: Format) -> None:
    assert variant.file_format is fmt
