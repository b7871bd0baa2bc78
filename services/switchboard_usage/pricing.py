"""The usage service's price book: each record priced with its deployment's or
model's pricing at the registry version in force (switchboard_common.pricing)."""

from __future__ import annotations

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.config import SwitchboardConfig
from switchboard_common.pricing import price

__all__ = ["PriceBook", "price"]


class PriceBook:
    def __init__(self, config: SwitchboardConfig, version: int = 1) -> None:
        self.version = version
        self._pricing = {m.name: m.pricing for m in config.models}
        # A deployment's own prices win over its model's.
        self._deployments = {
            d.resolved_id(m.name): d.pricing
            for m in config.models
            for d in m.deployments
            if d.pricing
        }

    def price(self, record: usage_pb2.UsageRecord) -> events_pb2.UsageEvent:
        pricing = self._deployments.get(record.deployment_id) or self._pricing.get(record.model)
        event = price(record, pricing)
        event.pricing_version = self.version
        return event
