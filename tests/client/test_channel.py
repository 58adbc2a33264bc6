"""Channel options: retry service config, message limits, call settings."""

import json

import pytest
from rnnserve.client import _channel


def _options(retries):
    return dict(_channel.channel_options(retries))


def test_retry_policy_covers_every_service():
    config = json.loads(_options(3)["grpc.service_config"])
    (method_config,) = config["methodConfig"]
    services = {name["service"] for name in method_config["name"]}
    assert services == {
        "rnnserve.v1.GenerationService",
        "rnnserve.v1.ClassificationService",
        "rnnserve.v1.ModelService",
        "grpc.health.v1.Health",
    }
    policy = method_config["retryPolicy"]
    assert policy["maxAttempts"] == 4
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {"initialBackoff", "maxBackoff", "backoffMultiplier"} <= set(policy)
    assert _options(3)["grpc.enable_retries"] == 1


def test_no_retries_means_no_policy():
    config = json.loads(_options(0)["grpc.service_config"])
    assert "retryPolicy" not in config["methodConfig"][0]
    assert _options(0)["grpc.enable_retries"] == 0


def test_attempts_are_capped_like_grpc_does():
    config = _channel.service_config(100)
    assert config["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 5


def test_negative_retries_rejected():
    with pytest.raises(ValueError, match="retries"):
        _channel.service_config(-1)


def test_message_limits_raised_above_grpc_default():
    options = _options(3)
    assert options["grpc.max_receive_message_length"] > 4 * 1024 * 1024
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"]


def test_call_settings():
    settings = _channel.CallSettings.build(5.0, {"Authorization": "Bearer t"})
    assert settings.kwargs() == {"timeout": 5.0, "metadata": (("authorization", "Bearer t"),)}
    assert settings.kwargs(1.5)["timeout"] == 1.5
    assert _channel.CallSettings.build(None, [("k", "v")]).kwargs()["timeout"] is None
    assert _channel.CallSettings.build(1.0, None).kwargs()["metadata"] is None
    with pytest.raises(ValueError, match="timeout"):
        _channel.CallSettings.build(0, None)


@pytest.mark.parametrize("client_class", ["Client", "AsyncClient"])
def test_clients_reject_bad_settings_at_once(client_class):
    import rnnserve.client

    cls = getattr(rnnserve.client, client_class)
    with pytest.raises(ValueError, match="retries"):
        cls("127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        cls("127.0.0.1:1", timeout=-1)


def test_calls_are_balanced_round_robin_over_every_address():
    config = json.loads(_options(0)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
