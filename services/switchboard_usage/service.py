"""UsageService. The pipeline behind it (outbox, Kafka, ClickHouse sink) is not
built yet: until it is, every RPC answers NOT_IMPLEMENTED and routers write
usage records to their structured log."""

from __future__ import annotations

import grpc

from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_common.unimplemented import fill_unimplemented

SERVICE = usage_pb2.DESCRIPTOR.services_by_name["UsageService"]


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    pass


fill_unimplemented(
    UsageServicer, SERVICE, "the usage pipeline (Kafka to ClickHouse) is not built yet"
)


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    # fill_unimplemented supplied the abstract methods, which mypy cannot see.
    servicer = UsageServicer()  # type: ignore[abstract]
    usage_pb2_grpc.add_UsageServiceServicer_to_server(servicer, server)
    return Mounted([SERVICE.full_name])
