"""Price resolution and validation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from deepserve.operator.metering import PriceError, PriceSheet

pytestmark = pytest.mark.unit

SHEET = {
    "currency": "EUR",
    "default": {"promptPerMillion": "0.50", "generatedPerMillion": "1.50", "perRequest": "0"},
    "models": {"prod/chat": {"generatedPerMillion": "2.00"}, "embed": {"promptPerMillion": "0.1"}},
    "accounts": {"acme": {"perRequest": "0.001", "generatedPerMillion": "9"}},
    "overrides": [{"account": "acme", "model": "prod/chat", "promptPerMillion": "0.40"}],
    "gpuHour": {"h100": "2.49"},
}


def test_most_specific_component_wins() -> None:
    sheet = PriceSheet.from_dict(SHEET)
    p = sheet.resolve("acme", "prod", "chat")
    assert (p.prompt_per_million, p.generated_per_million, p.per_request) == (
        Decimal("0.40"), Decimal("2.00"), Decimal("0.001"))
    assert p.currency == "EUR"
    other = sheet.resolve("globex", "dev", "embed")
    assert (other.prompt_per_million, other.generated_per_million) == (Decimal("0.1"),
                                                                       Decimal("1.50"))
    assert sheet.resolve("acme", "dev", "x").generated_per_million == Decimal("9")
    assert sheet.gpu_hour_price("h100") == Decimal("2.49")
    assert sheet.gpu_hour_price("unknown") == 0


def test_round_trip_is_canonical() -> None:
    sheet = PriceSheet.from_dict(SHEET)
    assert PriceSheet.from_dict(sheet.to_dict()) == sheet
    assert PriceSheet.from_dict(sheet.to_dict()).to_json() == sheet.to_json()


@pytest.mark.parametrize(("data", "field"), [
    ({"currency": "euro"}, "currency"),
    ({"default": {"perRequest": "-1"}}, "default.perRequest"),
    ({"models": {"m": {"promptPerMillion": "abc"}}}, "models.m.promptPerMillion"),
    ({"gpuHour": {"p": "NaN"}}, "gpuHour.p"),
    ({"accounts": {"a": {"perToken": "1"}}}, "accounts.a.perToken"),
    ({"overrides": [{"account": "a"}]}, "overrides[0]"),
])
def test_invalid_sheets_name_the_field(data, field) -> None:
    with pytest.raises(PriceError, match=f"^{field.replace('[', '.').replace(']', '.')}"):
        PriceSheet.from_dict(data)


def test_pool_prices_from_gpu_node_pools() -> None:
    pools = [{"metadata": {"name": "a100"}, "spec": {"pricePerGpuHour": 1.2, "currency": "EUR"}},
             {"metadata": {"name": "h100"}, "spec": {"pricePerGpuHour": 9, "currency": "EUR"}}]
    sheet = PriceSheet.from_dict(SHEET).with_pool_prices(pools)
    assert sheet.gpu_hour_price("a100") == Decimal("1.2")
    assert sheet.gpu_hour_price("h100") == Decimal("2.49")  # the sheet's own price wins
    with pytest.raises(PriceError, match="differs"):
        PriceSheet.from_dict(SHEET).with_pool_prices(
            [{"metadata": {"name": "x"}, "spec": {"pricePerGpuHour": 1, "currency": "USD"}}])
