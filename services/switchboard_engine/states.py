"""The engine lifecycle as a table of allowed transitions, and the task records
that asynchronous operations report through."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import TypeAlias

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.ids import uuid7

S = pb.EngineState
State: TypeAlias = pb.EngineState.ValueType

CREATED = pb.ENGINE_STATE_CREATED
STARTING = pb.ENGINE_STATE_STARTING
RUNNING = pb.ENGINE_STATE_RUNNING
STOPPING = pb.ENGINE_STATE_STOPPING
STOPPED = pb.ENGINE_STATE_STOPPED
ERROR = pb.ENGINE_STATE_ERROR

# created -> starting -> running -> stopping -> stopped, and error with a reason.
# running -> starting is a crash being recovered (or a health check that kept
# failing); starting -> starting is the next restart attempt.
ALLOWED: dict[State, frozenset[State]] = {
    CREATED: frozenset({STARTING}),
    STARTING: frozenset({STARTING, RUNNING, STOPPING, ERROR}),
    RUNNING: frozenset({STARTING, STOPPING, ERROR}),
    STOPPING: frozenset({STOPPED, ERROR}),
    STOPPED: frozenset({STARTING}),
    ERROR: frozenset({STARTING, STOPPING, STOPPED}),
}
# Counted against max_concurrent_models.
ACTIVE = frozenset({STARTING, RUNNING})


def state_name(state: State) -> str:
    return S.Name(state).removeprefix("ENGINE_STATE_").lower()


class InvalidTransition(Exception):
    def __init__(self, current: State, new: State) -> None:
        super().__init__(f"an engine cannot go from {state_name(current)} to {state_name(new)}")


def check_transition(current: State, new: State) -> None:
    if new not in ALLOWED.get(current, frozenset()):
        raise InvalidTransition(current, new)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Tasks:
    """The latest operations, by id (older ones are forgotten past `keep`)."""

    def __init__(self, keep: int = 1000) -> None:
        self._tasks: OrderedDict[str, pb.Task] = OrderedDict()
        self._keep = keep

    def create(self, engine: str, kind: pb.TaskKind.ValueType) -> pb.Task:
        task = pb.Task(id=uuid7(), engine=engine, kind=kind, state=pb.TASK_STATE_PENDING)
        task.create_time.FromDatetime(now())
        self._tasks[task.id] = task
        while len(self._tasks) > self._keep:
            self._tasks.popitem(last=False)
        return task

    def get(self, task_id: str) -> pb.Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise SwitchboardError(
                R.ERROR_REASON_NOT_FOUND, f"no task {task_id!r} on this node", param="id"
            )
        return task

    @staticmethod
    def finish(task: pb.Task, engine_state: State, error: str = "") -> None:
        task.state = pb.TASK_STATE_FAILED if error else pb.TASK_STATE_SUCCEEDED
        task.error = error
        task.engine_state = engine_state
        task.end_time.FromDatetime(now())
