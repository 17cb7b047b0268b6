"""scp.* configuration: the shipped file, environment overrides, per calling AE options."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config
from bridge.scp.server import all_visible_statuses, settings_for

SHIPPED = Path(__file__).resolve().parent.parent / "config.yaml"


def test_shipped_config_serves_the_mwl_on_11112() -> None:
    scp = load_config(SHIPPED, {}).scp
    assert (scp.enabled, scp.host, scp.port, scp.ae_title) == \
        (True, "127.0.0.1", 11112, "BRIDGE_MWL")


def test_per_calling_ae_options_from_the_environment() -> None:
    scp = load_config(SHIPPED, {
        "BRIDGE_SCP__ALLOWED_CALLING_AES": "CT01, MR02",
        "BRIDGE_SCP__CALLING_AES__CT01__MAX_ANSWERS": "50",
        "BRIDGE_SCP__CALLING_AES__CT01__RESPONSE_CHARSET": "ISO_IR 100",
        "BRIDGE_SCP__CALLING_AES__CT01__VISIBLE_STATUSES": "SCHEDULED,STARTED",
    }).scp
    assert scp.allowed_calling_aes == ["CT01", "MR02"]
    ct01 = settings_for(scp, "CT01 ")  # padded, and the env lowered the name: still CT01
    assert (ct01.max_answers, ct01.charset) == (50, "ISO_IR 100")
    assert ct01.visible == {"SCHEDULED", "STARTED"}
    mr02 = settings_for(scp, "MR02")  # the defaults
    assert (mr02.max_answers, mr02.charset, mr02.visible) == (0, "", {"SCHEDULED", "ARRIVED"})
    assert all_visible_statuses(scp) == {"SCHEDULED", "ARRIVED", "STARTED"}


@pytest.mark.parametrize(("env", "message"), [
    ({"BRIDGE_SCP__RESPONSE_CHARSET": "LATIN1"}, "scp.response_charset"),
    ({"BRIDGE_SCP__VISIBLE_STATUSES": "SCHEDULED,DONE"}, "scp.visible_statuses"),
    ({"BRIDGE_SCP__MAX_ANSWERS": "-1"}, "scp.max_answers"),
    # Each association is two threads: a limit nobody could reach is no limit.
    ({"BRIDGE_SCP__MAX_ASSOCIATIONS": "100000000"}, "scp.max_associations"),
    ({"BRIDGE_SCP__MAX_ASSOCIATIONS_PER_PEER": "0"}, "scp.max_associations_per_peer"),
    ({"BRIDGE_SCP__ACSE_TIMEOUT": "0"}, "scp.acse_timeout"),
    ({"BRIDGE_SCP__NETWORK_TIMEOUT": ".inf"}, "scp.network_timeout"),
    ({"BRIDGE_SCP__MAX_QUERY_SECONDS": "-1"}, "scp.max_query_seconds"),
])
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SHIPPED, env)


def test_hardening_defaults_are_short() -> None:
    scp = load_config(SHIPPED, {}).scp
    assert scp.acse_timeout <= 10 and scp.network_timeout <= 60
    assert scp.max_query_seconds <= 10
    assert scp.max_associations_per_peer < scp.max_associations <= 1000
