"""The WebSocket monitor's pieces: the client messages it accepts, the
credentials it admits with, and the document's shapes of what it sends."""

from __future__ import annotations

import json

import pytest
from google.protobuf import timestamp_pb2
from websockets.datastructures import Headers
from websockets.http11 import Request

from switchboard.engine.v1 import engine_pb2
from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard_gpu import monitor_feed
from switchboard_gpu.monitor_ws import METHOD, BadMessage, credentials, message, parse


def test_the_method_is_the_declared_rpc() -> None:
    assert METHOD == "/switchboard.gpu.v1.GpuService/WatchMonitor"


@pytest.mark.parametrize(
    ("frame", "wanted"),
    [
        (
            '{"action": "subscribe", "events": ["model_status", "system_alerts"]}',
            ("subscribe", ["model_status", "system_alerts"]),
        ),
        (
            '{"action": "subscribe"}',
            ("subscribe", ["model_status", "gpu_metrics", "system_alerts"]),
        ),
        ('{"action": "unsubscribe"}', ("unsubscribe", [])),
        ('{"action": "ping"}', ("ping", [])),
    ],
)
def test_good_messages(frame: str, wanted: tuple[str, list[str]]) -> None:
    assert parse(frame) == wanted


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{}", 1003),
        ("nope", 1007),
        ('"subscribe"', 1007),
        ('{"action": "watch"}', 4400),
        ('{"action": "subscribe", "events": ["gpu_metrics", 3]}', 4400),
    ],
)
def test_bad_messages_name_their_close_code(frame: str | bytes, code: int) -> None:
    with pytest.raises(BadMessage) as bad:
        parse(frame)
    assert bad.value.code == code
    assert len(bad.value.reason.encode()) <= 123  # a close frame's reason limit


def _request(path: str, **headers: str) -> Request:
    return Request(path, Headers(headers))


def test_credentials_from_headers_or_the_token_query() -> None:
    assert credentials(_request("/ws/monitor", Authorization="Bearer k1")) == [
        ("authorization", "Bearer k1")
    ]
    assert credentials(_request("/ws/monitor", **{"X-API-Key": "k2"})) == [("x-api-key", "k2")]
    assert credentials(_request("/ws/monitor?token=eyJ.a.b")) == [
        ("authorization", "Bearer eyJ.a.b")
    ]
    # A header wins over the query; nothing is nothing.
    assert credentials(_request("/ws/monitor?token=q", Authorization="Bearer h")) == [
        ("authorization", "Bearer h")
    ]
    assert credentials(_request("/ws/monitor")) == []


def _at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500_000_000)


def test_the_documents_shapes() -> None:
    engine = engine_pb2.Engine(name="model-123", state=engine_pb2.ENGINE_STATE_RUNNING)
    engine.state_time.CopyFrom(_at(1704110400))
    update = monitor_feed.model_status(engine_pb2.WatchEnginesResponse(engine=engine))
    sent = json.loads(message(monitor_feed._response(update)))
    assert sent == {
        "type": "model_status_update",
        "data": {
            "model_id": "model-123",
            "status": "running",
            "health": "healthy",
            "timestamp": "2024-01-01T12:00:00Z",
        },
    }

    status = gpu_pb2.NodeStatus(hostname="n1")
    status.sample_time.CopyFrom(_at(1704110400))
    status.devices.add(
        index=0, uuid="GPU-0", utilization_gpu_percent=0.0, memory_used_mib=12288
    )  # no temperature: NVML did not give it
    [reading] = monitor_feed.gpu_metrics(status)
    sent = json.loads(message(monitor_feed._response(reading)))
    assert sent == {
        "type": "gpu_metrics_update",
        "data": {
            "gpu_id": 0,
            "utilization": 0.0,
            "memory_used": 12288,
            "timestamp": "2024-01-01T12:00:00Z",
            "gpu_uuid": "GPU-0",
            "hostname": "n1",
        },
    }

    alert = gpu_pb2.GpuAlert(
        alert_id="alert-456",
        rule_name="slow",
        metric="response_time",
        model="m",
        severity=registry_pb2.SEVERITY_WARNING,
        state=gpu_pb2.ALERT_STATE_FIRING,
        message="response_time 2.5 > 2 on model m for 0s",
        value=2.5,
        threshold=2.0,
        hostname="n1",
    )
    alert.time.CopyFrom(_at(1704110400))
    sent = json.loads(message(monitor_feed._response(monitor_feed.system_alert(alert))))
    assert sent["type"] == "system_alert"
    assert sent["data"] == {
        "alert_id": "alert-456",
        "severity": "warning",
        "message": "response_time 2.5 > 2 on model m for 0s",
        "timestamp": "2024-01-01T12:00:00Z",
        "state": "firing",
        "rule": "slow",
        "metric": "response_time",
        "value": 2.5,
        "threshold": 2.0,
        "model": "m",
        "hostname": "n1",
    }
