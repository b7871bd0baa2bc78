"""Kafka topics of GPU history, shared by their producer (the gpu service) and
their consumer (the usage service's gpu sink). Payloads are in
protos/switchboard/gpu/v1/events.proto; a new payload version gets a new topic."""

from __future__ import annotations

# GpuSampleEvent, keyed by hostname, so one node's samples stay in order.
SAMPLES_TOPIC = "switchboard.gpu.samples.v1"
# GpuAlertEvent, keyed by alert_id, so an alert's resolution follows its firing.
ALERTS_TOPIC = "switchboard.gpu.alerts.v1"
GPU_TOPICS = (SAMPLES_TOPIC, ALERTS_TOPIC)
