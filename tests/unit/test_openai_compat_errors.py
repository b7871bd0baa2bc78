"""Upstreams that answer 200 with an error inside (DashScope does) are errors."""

from __future__ import annotations

import pytest

from switchboard_common.errors import SwitchboardError
from switchboard_provider.adapters.openai_compat import _raise_embedded_error


def test_error_in_a_200_body_is_an_upstream_error() -> None:
    body = {"error": {"code": "DataInspectionFailed", "message": "Input data may contain bad text"}}
    with pytest.raises(SwitchboardError) as err:
        _raise_embedded_error(body)
    assert err.value.reason_name == "UPSTREAM_ERROR"
    assert "Input data may contain" in err.value.message


@pytest.mark.parametrize("body", [{"choices": [], "error": None}, {"choices": []}, []])
def test_ordinary_bodies_pass(body: object) -> None:
    _raise_embedded_error(body)
