"""EngineManager: the engines of this node, their lifecycle and supervision.

Operations (start, stop, restart) are tasks; those on one engine run one at a
time, in the order asked (each holds the engine's lock), so concurrent
requests end in the state of the last one. A supervisor per running engine
polls /health and the process; a crash (or a server that stopped answering)
is restarted with exponential backoff up to the restart limit, then ERROR.

State with the node: SWITCHBOARD_HOME/engines/<model>/ holds `engine.pid`
(pid, start time, port: only while a process exists), `desired` (running or
stopped: what the node should bring back after a restart of this service),
and `engine.log`. A service that was killed adopts the engines it finds alive;
one whose model lost its engine is killed. A graceful shutdown stops the
engines but keeps `desired`, so the next start brings them back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

import httpx

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard.registry.v1 import registry_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_engine import commands, states
from switchboard_engine import logs as engine_logs
from switchboard_engine.feed import Changes
from switchboard_engine.process import EngineProcess, PidRecord
from switchboard_engine.registry_link import RegistryLink
from switchboard_engine.resources import GpuProbe, GpuView, admit
from switchboard_engine.settings import EngineSettings
from switchboard_engine.slot import Slot, free_port

log = logging.getLogger(__name__)
# Admission without a GPU requirement does not read NVML.
_NO_GPUS = GpuView(())


class StartFailed(Exception):
    """The engine did not become healthy; the message says why, with its log's tail."""


class EngineManager:
    def __init__(self, settings: EngineSettings, link: RegistryLink, gpus: GpuProbe) -> None:
        self.settings = settings
        # From the environment: what cleared registry settings return to.
        self._started = settings
        self.link = link
        self.gpus = gpus
        self.tasks = states.Tasks()
        self.slots: dict[str, Slot] = {}
        self.changes = Changes(lambda: self.settings.node)
        self._background: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=settings.health_timeout_s)

    def follow(self, settings: registry_pb2.ServiceSettings) -> None:
        """The registry's max_concurrent_models and default_model_timeout (seed
        004's config), live: the next admission and the next start use them."""
        self.settings = replace(
            self._started,
            max_concurrent_models=settings.max_concurrent_models
            if settings.HasField("max_concurrent_models")
            else self._started.max_concurrent_models,
            start_timeout_s=float(settings.default_model_timeout_s)
            if settings.HasField("default_model_timeout_s")
            else self._started.start_timeout_s,
        )

    # -- engines -------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        found = self.slots.get(name)
        if found is None:
            raise SwitchboardError(
                R.ERROR_REASON_NOT_FOUND,
                f"no engine {name!r} on node {self.settings.node!r}",
                param="name",
            )
        return found

    def upsert(self, name: str, config: cfg.EngineConfig) -> Slot:
        """Add an engine, or give a known one its newest config (used from its next start)."""
        slot = self.slots.get(name)
        if slot is None:
            slot = Slot(name, config, self.settings.home / "engines" / name, self.changes.changed)
            self.slots[name] = slot
            self.changes.changed(slot)
        else:
            slot.config = config
        return slot

    async def refresh(self, name: str | None = None) -> None:
        """Take configs from the registry (changes there apply from an engine's
        next start). With the registry away, the configs held are used."""
        try:
            if name is None:
                models = await self.link.engine_models()
            else:
                found = await self.link.get_model(name)
                models = [found] if found is not None and self.link.runs_here(found) else []
        except SwitchboardError as err:
            log.warning(
                "registry unreachable; engine configs not refreshed",
                extra=log_fields(error=err.message),
            )
            return
        for model in models:
            self.upsert(model.name, model.engine)

    def active_count(self, besides: Slot | None = None) -> int:
        return sum(1 for s in self.slots.values() if s is not besides and s.state in states.ACTIVE)

    # -- operations ----------------------------------------------------------

    async def submit(
        self, name: str, kind: pb.TaskKind.ValueType, *, force: bool = False, timeout_s: float = 0
    ) -> pb.Task:
        """Check what can be checked at once, then run the operation as a task."""
        slot = self.slot(name)
        if kind in (pb.TASK_KIND_START, pb.TASK_KIND_RESTART):
            await self.refresh(name)
            self._binary(slot.config.framework)
            commands.check_model_path(slot.config)
            if slot.state not in states.ACTIVE:
                await self._admit(slot)
        elif slot.launching is not None and slot.state == states.STARTING:
            # A stop wins over a start still waiting for /health.
            slot.launching.cancel()
        task = self.tasks.create(name, kind)
        slot.task_id = task.id
        self.spawn(self._run(slot, task, force, timeout_s or self.settings.stop_timeout_s))
        return task

    def spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _admit(self, slot: Slot) -> None:
        admit(
            slot.config,
            active=self.active_count(besides=slot),
            max_models=self.settings.max_concurrent_models,
            node=self.settings.node,
            gpus=await self.gpus.read() if slot.config.resources.gpu_memory_mib else _NO_GPUS,
        )

    async def _run(self, slot: Slot, task: pb.Task, force: bool, timeout_s: float) -> None:
        async with slot.lock:
            task.state = pb.TASK_STATE_RUNNING
            try:
                if task.kind in (pb.TASK_KIND_STOP, pb.TASK_KIND_RESTART):
                    await self._stop(slot, force=force, timeout_s=timeout_s)
                if task.kind in (pb.TASK_KIND_START, pb.TASK_KIND_RESTART):
                    await self._start(slot)
            except (StartFailed, SwitchboardError) as exc:
                message = exc.message if isinstance(exc, SwitchboardError) else str(exc)
                states.Tasks.finish(task, slot.state, message)
                return
            except Exception as exc:
                log.exception("engine operation failed", extra=log_fields(engine=slot.name))
                states.Tasks.finish(task, slot.state, f"internal error: {exc}")
                return
            states.Tasks.finish(task, slot.state)

    async def _start(self, slot: Slot) -> None:
        if slot.state == states.RUNNING and slot.alive():
            return  # already what was asked
        await self._cancel_supervisor(slot)
        if slot.process is not None:  # a half-started or failed one: start clean
            await self._terminate(slot, force=True, timeout_s=0)
        await self._admit(slot)
        slot.restart_count = slot.attempts = 0
        slot.write_desired("running")
        self._set(slot, states.STARTING, "launching")
        # Its own task, so that a stop asked for meanwhile can cut it short (submit).
        slot.launching = asyncio.ensure_future(self._launch_and_wait(slot))
        try:
            await slot.launching
        except StartFailed as exc:
            self._set(slot, states.ERROR, str(exc))
            raise
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this operation itself is cancelled (shutdown)
            await self._terminate(slot, force=True, timeout_s=0)
            self._set(slot, states.ERROR, "a stop was asked for while it started")
            raise StartFailed("cut short: a stop was asked for while it started") from None
        finally:
            slot.launching = None
        await self._running(slot)

    async def _stop(self, slot: Slot, *, force: bool, timeout_s: float) -> None:
        await self._cancel_supervisor(slot)
        slot.write_desired("stopped")
        if slot.process is None:
            if slot.state in (states.ERROR, states.STARTING):
                self._set(slot, states.STOPPED, "stopped")
            return
        self._set(slot, states.STOPPING, "force" if force else f"SIGTERM, {timeout_s:g} s grace")
        await self._withdraw(slot)
        how = await self._terminate(slot, force=force, timeout_s=timeout_s)
        self._set(slot, states.STOPPED, f"stopped ({how})")

    async def _terminate(self, slot: Slot, *, force: bool, timeout_s: float) -> str:
        process = slot.process
        how = "not running"
        if process is not None:
            how = await process.terminate(timeout_s, force=force)
        slot.forget_process()
        return how

    def _set(self, slot: Slot, state: states.State, reason: str) -> None:
        if slot.state != state:
            states.check_transition(slot.state, state)
        slot.set_state(state, reason)
        log.info(
            "engine state",
            extra=log_fields(engine=slot.name, state=states.state_name(state), reason=reason[:200]),
        )

    # -- launching and health ----------------------------------------------

    def _binary(self, framework: int) -> Path:
        return commands.binary(
            framework, llama_server=self.settings.llama_server, vllm=self.settings.vllm_bin
        )

    async def _launch_and_wait(self, slot: Slot) -> None:
        config = slot.config
        binary = self._binary(config.framework)
        port = free_port(self.settings.bind_host)
        launch = commands.command(
            config, name=slot.name, host=self.settings.bind_host, port=port, binary_path=binary
        )
        engine_logs.rotate_if_needed(slot.log_path)
        slot.mark_launch(launch.argv)
        process = EngineProcess.spawn(launch, slot.log_path, port)
        slot.adopt_process(process)
        timeout_s = config.start_timeout_s or self.settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            status = process.exit_status()
            if status is not None:
                slot.forget_process()
                raise StartFailed(f"the engine {status} while starting\n{slot.log_tail()}")
            if await self.healthy(slot):
                return
            if time.monotonic() >= deadline:
                await self._terminate(slot, force=True, timeout_s=0)
                raise StartFailed(
                    f"the engine did not become healthy within {timeout_s:g} s\n{slot.log_tail()}"
                )
            await asyncio.sleep(self.settings.start_poll_s)

    async def healthy(self, slot: Slot) -> bool:
        try:
            reply = await self._http.get(f"{slot.local_url}{commands.HEALTH_PATH}")
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    async def _running(self, slot: Slot, reason: str = "healthy") -> None:
        """The engine answers: route to it (RUNNING once routable), and watch it."""
        problem = await self._register(slot)
        slot.healthy_since = time.monotonic()
        self._set(
            slot, states.RUNNING, f"{reason}; not yet routable: {problem}" if problem else reason
        )
        if slot.supervisor is None:
            slot.supervisor = asyncio.create_task(self._supervise(slot), name=f"engine-{slot.name}")

    async def _register(self, slot: Slot) -> str:
        """Register the deployment; what went wrong, or "" (the supervisor retries)."""
        base_url = f"http://{self.settings.advertise_host}:{slot.port}/v1"
        gpu = slot.config.gpus[0] if slot.config.gpus else ""
        try:
            slot.deployment_id = await self.link.register(slot.name, base_url, gpu)
        except SwitchboardError as err:
            slot.registered = False
            log.warning(
                "engine not registered", extra=log_fields(engine=slot.name, error=err.message)
            )
            return err.message
        slot.registered = True
        return ""

    async def _withdraw(self, slot: Slot) -> None:
        try:
            await self.link.withdraw(slot.name)
        except SwitchboardError as err:
            log.warning(
                "engine deployment not withdrawn",
                extra=log_fields(engine=slot.name, error=err.message),
            )
        slot.registered = False
        slot.deployment_id = ""

    # -- supervision -----------------------------------------------------------

    async def _cancel_supervisor(self, slot: Slot) -> None:
        task, slot.supervisor = slot.supervisor, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self, slot: Slot) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            engine_logs.rotate_if_needed(slot.log_path)
            process = slot.process
            if process is None:
                return
            status = process.exit_status()
            if status is None:
                if await self.healthy(slot):
                    failures = 0
                    if not slot.registered and not await self._register(slot):
                        slot.set_state(states.RUNNING, "healthy")
                    continue
                failures += 1
                if failures < self.settings.unhealthy_after:
                    continue
                status = f"stopped answering {commands.HEALTH_PATH}"
                await process.terminate(0, force=True)
            async with slot.lock:
                if slot.process is not process:
                    return  # an operation replaced it meanwhile
                if not await self._recover(slot, status):
                    return
            failures = 0

    async def _recover(self, slot: Slot, status: str) -> bool:
        """Bring a crashed engine back, with backoff; False once it is ERROR."""
        # Nobody may see it running once the crash is recorded: state first.
        slot.forget_process()
        self._set(slot, states.STARTING, f"{status}; withdrawing its deployment")
        slot.last_crash = f"{status} at {states.now().isoformat(timespec='seconds')}"
        log.warning("engine crashed", extra=log_fields(engine=slot.name, status=status))
        await self._withdraw(slot)
        limit = self.settings.restart_limit
        if time.monotonic() - slot.healthy_since >= self.settings.stable_after_s:
            slot.attempts = 0  # it ran well for a while: a new run of crashes
        while slot.attempts < limit:
            slot.attempts += 1
            slot.restart_count += 1
            attempt = slot.attempts
            self._set(slot, states.STARTING, f"{status}; restarting (attempt {attempt} of {limit})")
            await asyncio.sleep(self.settings.backoff_s(attempt))
            try:
                await self._launch_and_wait(slot)
            except StartFailed as exc:
                status = str(exc).splitlines()[0]
                continue
            await self._running(slot, "healthy after a crash")
            return True
        self._set(
            slot,
            states.ERROR,
            f"crashed {slot.attempts + 1} times in a row (restart limit {limit}); last: {status}\n"
            f"{slot.log_tail()}",
        )
        return False

    # -- this service's own start and stop -------------------------------------

    async def recover_node(self) -> None:
        """After this service (re)starts: adopt the engines still alive that the
        registry still has, kill the others, and bring back those that should run."""
        root = self.settings.home / "engines"
        dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
        for path in dirs:
            name = path.name
            slot = self.slots.get(name)
            record = PidRecord.load(path / "engine.pid")
            process = EngineProcess.adopt(record) if record else None
            if slot is None:
                if process is not None:
                    log.warning(
                        "killing an engine whose model lost its engine config",
                        extra=log_fields(engine=name, pid=process.pid),
                    )
                    await process.terminate(0, force=True)
                    with contextlib.suppress(SwitchboardError):
                        await self.link.withdraw(name)
                (path / "engine.pid").unlink(missing_ok=True)
                continue
            if process is not None and slot.read_desired() == "stopped":
                # Killed while stopping it: finish the stop.
                await process.terminate(self.settings.stop_timeout_s)
                slot.forget_process()
                self.spawn(self._withdraw(slot))
            elif process is not None:
                slot.adopt_process(process)
                self._set(slot, states.STARTING, "adopted after the engine service restarted")
                self.spawn(self._adopt(slot))
            elif slot.read_desired() == "running":
                slot.forget_process()
                self.spawn(self._bring_back(slot))
            else:
                slot.forget_process()
                self.spawn(self._withdraw(slot))

    async def _adopt(self, slot: Slot) -> None:
        async with slot.lock:
            deadline = time.monotonic() + self.settings.start_timeout_s
            while slot.alive() and time.monotonic() < deadline:
                if await self.healthy(slot):
                    await self._running(slot)
                    return
                await asyncio.sleep(self.settings.start_poll_s)
            process = slot.process
            if process is not None:
                await process.terminate(0, force=True)
            await self._recover(slot, "not healthy after adoption")

    async def _bring_back(self, slot: Slot) -> None:
        try:
            await self.submit(slot.name, pb.TASK_KIND_START)
        except SwitchboardError as err:
            slot.set_state(states.ERROR, f"could not be started again: {err.message}")

    async def remove(self, name: str) -> None:
        """Stop the engine (if it runs) and forget it on this node."""
        slot = self.slot(name)
        async with slot.lock:
            await self._stop(slot, force=False, timeout_s=self.settings.stop_timeout_s)
            await self._withdraw(slot)
            slot.remove_files()
            self.slots.pop(name, None)
        self.changes.changed(slot, deleted=True)

    async def shutdown(self) -> None:
        """This service stops: stop the engines (together: the stack and the
        kubelet give it a grace period), keeping what they should be."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

        async def stop(slot: Slot) -> None:
            await self._cancel_supervisor(slot)
            if slot.process is not None:
                with contextlib.suppress(TimeoutError, SwitchboardError):
                    await asyncio.wait_for(self._withdraw(slot), 3.0)
                await self._terminate(slot, force=False, timeout_s=self.settings.stop_timeout_s)

        await asyncio.gather(*(stop(s) for s in list(self.slots.values())))
        await self._http.aclose()
