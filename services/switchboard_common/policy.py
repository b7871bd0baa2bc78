"""Who may call what. Each RPC declares its access in the protos (the method
option `switchboard.common.v1.access`); one interceptor, installed by
switchboard_common.server for every service, enforces it. Handlers never check
credentials: they read the caller the interceptor admitted (`current_caller()`).

- PUBLIC: anyone.
- CLIENT: a client key or the admin key; with no keys configured at all (local
  development) no key is needed.
- ADMIN: the admin key (SWITCHBOARD_ADMIN_KEY); refused while it is unset.
- A login token (switchboard_common.tokens) counts as the key it names: an
  admin token as the admin key, a client token as that client key.
- INTERNAL: other services only. The edge never routes to these; a call that
  came through it (edge.lua marks every request it forwards) is refused.
- No option: refused, so a new RPC cannot forget to declare its policy.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from switchboard.common.v1 import access_pb2
from switchboard_common.config import KeyConfig
from switchboard_common.credentials import digest, presented_key
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.keys import KeyTable, missing_key
from switchboard_common.tokens import Claims, looks_like_token, signing_key, verify

Access: TypeAlias = access_pb2.Access.ValueType
A = access_pb2.Access
Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]

# Set by deploy/envoy/edge.lua on every request the edge forwards (replacing
# whatever a client sent): INTERNAL methods refuse calls that carry it.
EDGE_HEADER = "x-switchboard-edge"
# Every server also mounts these; they are not ours to annotate, and the edge
# never routes to them (orchestrators and grpcurl call them directly).
STANDARD_SERVICES = frozenset(
    {health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"}
)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True)
class Caller:
    """Who the interceptor let in. `key` is the client key's config (its model
    allow-list and limits); None for the admin, for internal and public calls,
    and on an open edge (no keys configured)."""

    admin: bool = False
    key: KeyConfig | None = None

    @property
    def name(self) -> str:
        """What usage rows call this caller: the key's name, "" otherwise."""
        return self.key.name if self.key is not None else ""

    @property
    def sees_all(self) -> bool:
        """Whether reads of usage cover every key, or only this key's own."""
        return self.key is None


ANONYMOUS = Caller()
ADMIN = Caller(admin=True)
_caller: ContextVar[Caller] = ContextVar("switchboard_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the RPC being handled (ANONYMOUS outside one)."""
    return _caller.get()


def method_access(full_method: str) -> Access:
    """The declared access of "/package.Service/Method"; UNSPECIFIED when the
    method declares none (or is not in this process's descriptor pool)."""
    service, _, method = full_method.lstrip("/").partition("/")
    if service in STANDARD_SERVICES:
        return A.ACCESS_PUBLIC
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return A.ACCESS_UNSPECIFIED
    access: Access = descriptor.GetOptions().Extensions[access_pb2.access]
    return access


def service_accesses(service_name: str) -> dict[str, Access]:
    """Method name → declared access, for one fully qualified service."""
    service = descriptor_pool.Default().FindServiceByName(service_name)
    return {m.name: m.GetOptions().Extensions[access_pb2.access] for m in service.methods}


# A refusal as the API of `method` renders errors: (full method, error) → error.
Refusal = Callable[[str, SwitchboardError], SwitchboardError]


def _as_is(method: str, err: SwitchboardError) -> SwitchboardError:
    return err


class AccessPolicy(grpc.aio.ServerInterceptor):
    """The one place credentials are checked. `keys` is the client key table
    (a service with CLIENT methods mounts one, kept current from the registry)."""

    def __init__(self, admin_key: str | None, keys: KeyTable | None = None) -> None:
        self.refusal: Refusal = _as_is
        self._admin_digest = digest(admin_key) if admin_key else None
        self._token_key = signing_key(admin_key) if admin_key else None
        self.keys = keys
        self._cache: dict[str, Access] = {}

    def mount(
        self,
        service_names: Sequence[str],
        keys: KeyTable | None,
        refusal: Refusal | None = None,
    ) -> None:
        """Take the key table a service's setup built; a service that serves
        CLIENT methods must build one (else no client key could ever pass)."""
        self.keys = keys
        if refusal is not None:
            self.refusal = refusal
        if keys is not None:
            return
        for name in service_names:
            if name in STANDARD_SERVICES:
                continue
            client = [m for m, a in service_accesses(name).items() if a == A.ACCESS_CLIENT]
            if client:
                raise RuntimeError(
                    f"{name} serves CLIENT methods ({', '.join(client)}) but mounted no "
                    "key table: pass Mounted(keys=KeyTable()) and keep it current"
                )

    def admit(self, full_method: str, metadata: Metadata) -> Caller:
        access = self._cache.get(full_method)
        if access is None:
            access = self._cache[full_method] = method_access(full_method)
        if access == A.ACCESS_PUBLIC:
            return ANONYMOUS
        metadata = tuple(metadata)
        if access == A.ACCESS_CLIENT:
            return self._client(metadata)
        if access == A.ACCESS_ADMIN:
            return self._admin(metadata)
        if access == A.ACCESS_INTERNAL:
            if any(name == EDGE_HEADER for name, _ in metadata):
                raise SwitchboardError(
                    R.ERROR_REASON_PERMISSION_DENIED,
                    "This method is internal to Switchboard and not served at the edge.",
                )
            return ANONYMOUS
        raise SwitchboardError(
            R.ERROR_REASON_PERMISSION_DENIED,
            "This method declares no access policy, so it is refused.",
            metadata={"method": full_method},
        )

    def expiry(self, metadata: Metadata) -> int | None:
        """When the login token presented stops being accepted (Unix seconds);
        None for a key, which does not expire. For connections that outlive
        the call that admitted them."""
        presented = presented_key(tuple(metadata))
        if not presented or not looks_like_token(presented) or self._token_key is None:
            return None
        claims = verify(self._token_key, presented)
        return claims.expires_at if claims is not None else None

    def _is_admin(self, presented: str) -> bool:
        return self._admin_digest is not None and hmac.compare_digest(
            digest(presented), self._admin_digest
        )

    def _token(self, presented: str) -> Claims:
        claims = verify(self._token_key, presented) if self._token_key else None
        if claims is None:
            raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid or expired token.")
        return claims

    def _client(self, metadata: Metadata) -> Caller:
        presented = presented_key(metadata)
        if presented and self._is_admin(presented):
            return ADMIN
        keys = self.keys
        if presented and looks_like_token(presented):
            claims = self._token(presented)
            if claims.admin:
                return ADMIN
            if keys is None or keys.open:
                return ANONYMOUS
            named = keys.named(claims.key_name)
            if named is None:  # the key was removed since the token was issued
                raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid or expired token.")
            return Caller(key=named)
        if keys is None or keys.open:
            # No keys configured: the edge is open (local development).
            return ANONYMOUS
        if not presented:
            raise missing_key()
        found = keys.find(presented)
        if found is None:
            raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid API key.")
        return Caller(key=found)

    def _admin(self, metadata: Metadata) -> Caller:
        if self._admin_digest is None:
            raise SwitchboardError(
                R.ERROR_REASON_PERMISSION_DENIED,
                "the admin API is off: set SWITCHBOARD_ADMIN_KEY to enable it",
            )
        presented = presented_key(metadata)
        if not presented:
            raise SwitchboardError(
                R.ERROR_REASON_MISSING_API_KEY,
                "This route needs the admin key: send 'Authorization: Bearer <admin key>'.",
            )
        if looks_like_token(presented) and self._token(presented).admin:
            return ADMIN
        if not self._is_admin(presented):
            # A client key gets the same answer as a wrong key: an admin route
            # does not say whether a key is valid elsewhere.
            raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid admin key.")
        return ADMIN

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def admit(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
            try:
                return self.admit(method, context.invocation_metadata() or ())
            except SwitchboardError as err:
                # In the shape of the API the call came through (a seed API's own).
                raise self.refusal(method, err) from None

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(admit, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(admit, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _guard_unary(admit, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(admit, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


Admit = Callable[[grpc.aio.ServicerContext[Any, Any]], Caller]


def _guard_unary(admit: Admit, behavior: Any) -> Any:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = _caller.set(admit(context))
        try:
            return await behavior(request, context)
        finally:
            _caller.reset(token)

    return wrapper


def _guard_stream(admit: Admit, behavior: Any) -> Any:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        token = _caller.set(admit(context))
        try:
            async for response in behavior(request, context):
                yield response
        finally:
            # A generator closed from another context cannot reset; its
            # context ends with the call anyway.
            with contextlib.suppress(ValueError):
                _caller.reset(token)

    return wrapper
