"""OpenAI's Responses API at /v1/responses, over any provider kind.

A thin mapping: input items (and the conversation a previous response left)
become ChatCompletionParams (responses_shapes), RouterService admits, routes,
retries and accounts the call as for /v1/chat/completions, and its answer or
chunks come back as a response object or as the typed events. Responses are
stored (unless "store": false) for their key only (response_store). Errors are
OpenAI's, as on the rest of /v1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import responses_pb2, responses_pb2_grpc, router_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.policy import current_caller
from switchboard_router.surfaces import responses_native, surface
from switchboard_router.surfaces import responses_shapes as shapes
from switchboard_router.surfaces.response_store import ResponseStore

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "openai_responses"


def _error(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
    return err.http_status, err.openai_body()


def _not_found(response_id: str) -> SwitchboardError:
    return SwitchboardError(
        R.ERROR_REASON_NOT_FOUND,
        f"No response found with id '{response_id}'.",
        param="response_id",
    )


@dataclass
class _Call:
    output_index: int
    item_id: str
    call_id: str
    name: str
    arguments: str = ""


@dataclass
class _Stream:
    """The typed events of one streamed response, from the chat chunks."""

    request: dict[str, Any]
    response_id: str
    sequence: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    text_item: str | None = None
    text: str = ""
    calls: dict[int, _Call] = field(default_factory=dict)
    finish: str | None = None
    usage: openai_pb2.Usage = field(default_factory=openai_pb2.Usage)

    def event(self, kind: str, **payload: Any) -> httpbody_pb2.HttpBody:
        body = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return surface.sse_event(kind, body)

    def begin(self) -> list[httpbody_pb2.HttpBody]:
        snapshot = shapes.response(self.request, self.response_id, "in_progress", [], None)
        return [
            self.event("response.created", response=snapshot),
            self.event("response.in_progress", response=snapshot),
        ]

    def _text_done(self) -> list[httpbody_pb2.HttpBody]:
        if self.text_item is None:
            return []
        item_id, index = self.text_item, len(self.output)
        item = shapes.message_item(item_id, self.text)
        self.output.append(item)
        self.text_item = None
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            self.event("response.output_text.done", **where, text=self.text, logprobs=[]),
            self.event("response.content_part.done", **where, part=item["content"][0]),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def _call_done(self, call: _Call) -> list[httpbody_pb2.HttpBody]:
        item = shapes.call_item(call.item_id, call.call_id, call.name, call.arguments)
        self.output.append(item)
        return [
            self.event(
                "response.function_call_arguments.done",
                item_id=call.item_id,
                output_index=call.output_index,
                name=call.name,
                arguments=call.arguments,
            ),
            self.event("response.output_item.done", output_index=call.output_index, item=item),
        ]

    def chunk(self, chunk: openai_pb2.ChatCompletionChunk) -> list[httpbody_pb2.HttpBody]:
        events: list[httpbody_pb2.HttpBody] = []
        if chunk.HasField("usage"):
            self.usage = chunk.usage
        for choice in chunk.choices[:1]:
            if choice.HasField("finish_reason"):
                self.finish = choice.finish_reason
            if choice.delta.content:
                events += self._text(choice.delta.content)
            for delta in choice.delta.tool_calls:
                events += self._call(delta)
        return events

    def _text(self, text: str) -> list[httpbody_pb2.HttpBody]:
        events = []
        if self.text_item is None:
            self.text_item, self.text = shapes.new_id("msg"), ""
            index = len(self.output)
            item = shapes.message_item(self.text_item, "", status="in_progress")
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events += [
                self.event("response.output_item.added", output_index=index, item=item),
                self.event(
                    "response.content_part.added",
                    item_id=self.text_item,
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]
        self.text += text
        events.append(
            self.event(
                "response.output_text.delta",
                item_id=self.text_item,
                output_index=len(self.output),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, delta: openai_pb2.ToolCallDelta) -> list[httpbody_pb2.HttpBody]:
        events = []
        call = self.calls.get(delta.index)
        if call is None:
            # A tool call starts: text before it is complete, as is the call before.
            events += self._text_done()
            for previous in self.calls.values():
                if previous.output_index == len(self.output):
                    events += self._call_done(previous)
            call = _Call(len(self.output), shapes.new_id("fc"), delta.id, delta.function.name)
            self.calls[delta.index] = call
            item = shapes.call_item(call.item_id, call.call_id, call.name, "", "in_progress")
            events.append(
                self.event("response.output_item.added", output_index=call.output_index, item=item)
            )
        if delta.function.arguments:
            call.arguments += delta.function.arguments
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=delta.function.arguments,
                )
            )
        return events

    def end(self) -> tuple[list[httpbody_pb2.HttpBody], dict[str, Any]]:
        events = self._text_done()
        for call in self.calls.values():
            if call.output_index == len(self.output):
                events += self._call_done(call)
        final = shapes.response(
            self.request,
            self.response_id,
            "completed",
            self.output,
            shapes.usage(self.usage),
            self.finish,
        )
        events.append(self.event("response.completed", response=final))
        return events, final


def _failed(
    stream: _Stream,
    passed: responses_native.NativeStream,
    natively: bool,
    code: str,
    message: str,
) -> httpbody_pb2.HttpBody:
    """The last event of a stream that failed after it started."""
    if natively:
        return passed.failed(code, message)
    failed = shapes.failed(stream.request, stream.response_id, stream.output, code, message)
    return stream.event("response.failed", response=failed)


@dataclass
class _Prepared:
    request: dict[str, Any]
    # This request's input items, each with an id (as input_items lists them).
    items: list[dict[str, Any]]
    params: openai_pb2.ChatCompletionParams
    # The chat messages the answer continues, for any provider...
    conversation: list[Any]
    # ...and the same conversation as Responses items, for native upstreams
    # (None when the response continued was stored without them).
    thread: list[dict[str, Any]] | None


class ResponsesServicer(responses_pb2_grpc.ResponsesServiceServicer):
    def __init__(self, router: RouterServicer, store: ResponseStore) -> None:
        self.router = router
        self.store = store

    async def _prepare(self, body: httpbody_pb2.HttpBody) -> _Prepared:
        request = surface.read_json(body)
        items = shapes.input_items(request)
        history: list[dict[str, Any]] = []
        thread: list[dict[str, Any]] | None = []
        previous_id = request.get("previous_response_id")
        if previous_id:
            previous = await self.store.get(current_caller().name, str(previous_id))
            if previous is None:
                raise _not_found(str(previous_id))
            history = previous["conversation"]
            thread = previous.get("items")
        params = shapes.chat_params(request, history, items)
        return _Prepared(
            request,
            items,
            params,
            [*history, *shapes.chat_messages(items)],
            None if thread is None else [*thread, *items],
        )

    async def _keep(
        self, call: _Prepared, response: dict[str, Any], output: list[dict[str, Any]] | None = None
    ) -> None:
        """Store the response as the caller got it, and the conversation with
        `output` as the upstream sent it (default: the response's own)."""
        if call.request.get("store", True) is False:
            return
        output = response["output"] if output is None else output
        record = {
            "response": response,
            "input_items": call.items,
            "conversation": [*call.conversation, *shapes.history_of(output)],
        }
        if call.thread is not None:
            record["items"] = [*call.thread, *output]
        await self.store.put(current_caller().name, response["id"], record)

    async def CreateResponse(
        self, request: responses_pb2.CreateResponseRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(_error):
            call = await self._prepare(request.body)
            offered = responses_native.offer(call.request, call.thread)
            answer = await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=call.params), context
            )
            response_id = shapes.new_id("resp")
            upstream = offered.take() if offered is not None else []
            if upstream:
                whole = responses_native.as_ours(upstream[-1], call.request, response_id)
                response = responses_native.shown(whole, call.request)
                output = whole["output"]
            else:
                choice = answer.choices[0] if answer.choices else openai_pb2.ChatCompletionChoice()
                response = shapes.response(
                    call.request,
                    response_id,
                    "completed",
                    shapes.output_items(answer),
                    shapes.usage(answer.usage),
                    choice.finish_reason,
                )
                output = response["output"]
            await self._keep(call, response, output)
            return surface.json_body(response)

    async def StreamResponse(
        self, request: responses_pb2.StreamResponseRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        with surface.rendered(_error):
            call = await self._prepare(request.body)
            offered = responses_native.offer(call.request, call.thread)
            call.params.stream_options.include_usage = True
            response_id = shapes.new_id("resp")
            # Rendered from the canonical chunks, or the native upstream's own events.
            stream = _Stream(call.request, response_id)
            passed = responses_native.NativeStream(call.request, response_id)
            started = natively = False
            try:
                async for response in self.router.StreamChatCompletion(
                    router_pb2.StreamChatCompletionRequest(params=call.params), context
                ):
                    upstream = offered.take() if offered is not None else []
                    if not started:
                        started, natively = True, bool(upstream)
                        for event in [] if natively else stream.begin():
                            yield event
                    for event in (
                        passed.events(upstream) if natively else stream.chunk(response.chunk)
                    ):
                        yield event
            except SwitchboardError as err:
                if not started:
                    raise
                # The status line is out: the failure is the last event.
                yield _failed(stream, passed, natively, err.reason_name, err.message)
                return
            if natively:
                if passed.final is None or passed.final_event is None:
                    yield passed.failed(
                        "ERROR_REASON_UPSTREAM_ERROR",
                        "the upstream ended the stream before the response was complete",
                    )
                    return
                final = responses_native.shown(passed.final, call.request)
                await self._keep(call, final, passed.final["output"])
                yield passed.final_event
                return
            if not started:
                for event in stream.begin():
                    yield event
            events, final = stream.end()
            await self._keep(call, final)
            for event in events:
                yield event

    async def _stored(self, response_id: str) -> dict[str, Any]:
        record = await self.store.get(current_caller().name, response_id)
        if record is None:
            raise _not_found(response_id)
        return record

    async def GetResponse(
        self, request: responses_pb2.GetResponseRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with surface.rendered(_error):
            return surface.json_body((await self._stored(request.response_id))["response"])

    async def DeleteResponse(
        self, request: responses_pb2.DeleteResponseRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with surface.rendered(_error):
            if not await self.store.delete(current_caller().name, request.response_id):
                raise _not_found(request.response_id)
            return surface.json_body(
                {"id": request.response_id, "object": "response.deleted", "deleted": True}
            )

    async def ListResponseInputItems(
        self, request: responses_pb2.ListResponseInputItemsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with surface.rendered(_error):
            items: list[dict[str, Any]] = (await self._stored(request.response_id))["input_items"]
            # OpenAI lists newest first unless asked otherwise.
            if request.order != "asc":
                items = items[::-1]
            if request.after:
                ids = [i["id"] for i in items]
                items = items[ids.index(request.after) + 1 :] if request.after in ids else []
            limit = request.limit if 0 < request.limit <= 100 else 20
            page = items[:limit]
            return surface.json_body(
                {
                    "object": "list",
                    "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(items) > limit,
                }
            )
