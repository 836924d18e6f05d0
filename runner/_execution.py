"""One execution in flight, as a non-blocking state machine the caller's loop drives.

    start ─> SPAWNING ──the zygote's reply──> RUNNING  (no reply: the start failed: FINISHED)
                                                 │
             RUNNING ──violation / cancel──> TERMINATING ──grace──> KILLING ─┐
                │  └──memory violation─────────────────────────> KILLING ─┤
                └──child exited──> sweep leftovers (TERM, grace, KILL) ────┴─> FINISHED

The owner waits on ``fds()`` with a timeout until ``deadline()``, then calls ``on_readable``
for each ready fd and ``on_time`` once. Nothing here blocks: the result and output pipes are
read without blocking, the kill protocol advances by deadlines, and the child's exit comes as
a record (wait status + rusage) from the zygote on a status pipe. A loop can therefore drive
many executions at once; ``runner.run`` drives one. The fork itself is asynchronous too: the
request goes to the zygote and the handle waits in SPAWNING for its reply (pid, pidfd, fork
time) like for any other event, so a loop never waits for a fork.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import math
import os
import pickle
import signal
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from runner import _enforcement
from runner._cgroup_v1 import CgroupV1
from runner._cgroup_v2 import CgroupV2
from runner._confinement import Confinement, Reading, proc_stat, split_cpu
from runner._errors import ForkServerError
from runner._forkserver import ForkServer, default_fork_server, is_open, reserve_standard_descriptors
from runner._messages import STATUS, ChildSpec, Exited, Message, Ok, Raised, Unreadable, from_wire
from runner._outcome import Ending, classify, exit_facts
from runner._owners import owner_token
from runner._records import Enforcement, Execution, Mechanism, Outcome, Sample, Usage
from runner._spec import ExecutionSpec
from runner._tree import COOKIE_VARIABLE, ProcessTree
from runner._watch import MemoryWatch
from runner._wire import FrameReader

if TYPE_CHECKING:
    from runner._sandboxing import Prepared
    from runner._throttle import DutyCycle

MAX_SAMPLES = 4096  # then the timeline halves its resolution
KILL_RECHECK = 0.005  # seconds between kill passes while a tree is dying
KILL_GIVE_UP = 30.0  # unkillable (D-state) processes: record them and stop waiting
RELEASE_GIVE_UP = 5.0  # a cgroup that stays busy this long is left behind, with a note
SPAWN_GIVE_UP = 30.0  # a fork server that has not answered by then is taken for dead
# A task may stop the fork server (SIGSTOP to its parent, as the same uid may): look whether it
# is stopped when a start has had no answer this long, and this often once the child has ended
# and its status, which the fork server sends, has not come (in time, it has: no look at all).
SPAWN_LOOK = 0.5
STATUS_LOOK = 0.02
_serial = itertools.count(1)


class Phase(enum.Enum):
    SPAWNING = "spawning"  # asked the zygote for the child; its reply has not come yet
    RUNNING = "running"
    TERMINATING = "terminating"  # SIGTERM sent, waiting out the grace period
    KILLING = "killing"  # SIGKILL until nothing is left
    RELEASING = "releasing"  # the tree is gone; the cgroup is being removed
    FINISHED = "finished"


class ExecutionHandle:
    """A started execution. Drive it with ``fds``/``deadline``/``on_readable``/``on_time``."""

    def __init__(
        self, spec: ExecutionSpec, *, fork_server: ForkServer | None = None, run_id: str | None = None
    ) -> None:
        reserve_standard_descriptors()  # before this run opens anything (its owner's lock, a socket)
        self.spec = spec
        self._server = fork_server
        self.id = run_id or new_execution_id()
        self.phase = Phase.SPAWNING
        self.execution: Execution | None = None
        self.pid: int | None = None
        self.pid_start_ticks: int | None = None  # with pid: identifies the child across pid reuse
        self._plan = _enforcement.plan_for(spec.limits, spec.enforcement)
        self._started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._fds: dict[int, str] = {}
        self._result = FrameReader()
        self._message: Message | None = None
        self._output = {"stdout": bytearray(), "stderr": bytearray()}
        self._dropped = {"stdout": 0, "stderr": 0}
        self._forwarding = {"stdout": spec.on_output is not None, "stderr": spec.on_output is not None}
        self._exit: Exited | None = None
        self._zygote_died = False
        # When to see whether the fork server is stopped: a start may go unanswered this long.
        self._next_server_look: float | None = self._t0 + SPAWN_LOOK
        self._pidfd: int | None = None
        self._violation: str | None = None
        self._cancelled = False
        self._leftovers = 0
        self._notes: list[str] = []
        self._timeline: list[Sample] = []
        self._sample_every = spec.sample_interval
        self._next_sample = _next_tick(self._t0 + spec.sample_interval, spec.sample_interval)
        self._wall_deadline = self._t0 + spec.limits.wall_time if spec.limits.wall_time else None
        self._kill_at: float | None = None
        self._kill_started: float | None = None
        self._next_kill_pass: float | None = None
        self._peak_sampled = 0
        self._peak_processes = 1
        self._refused = 0
        self._last: Reading | None = None
        self._throttle: DutyCycle | None = None
        if self._plan.duty_cycle and spec.limits.cpu_rate:
            from runner._throttle import DutyCycle  # here: only a cpu_rate without cgroups needs it

            self._throttle = DutyCycle(spec.limits.cpu_rate)
        self._watch = (  # no kernel holds memory to the limit: look sooner as it nears it
            MemoryWatch(spec.limits.memory, spec.sample_interval, self._t0)
            if "memory" in self._plan.watch and spec.limits.memory is not None
            else None
        )
        self._stopped = False
        self._confinement: Confinement | None = None
        self._usage_at_end: Usage | None = None
        self._release_by = 0.0
        self._reply: socket.socket | None = None  # the zygote answers here, once it has forked
        self._spawn_by = self._t0 + SPAWN_GIVE_UP
        self._sandbox: Prepared | None = None
        if spec.stdin is not None and not is_open(spec.stdin):
            closed = ValueError(f"stdin: {spec.stdin} is not an open file descriptor")
            self.execution = Execution.unstarted(spec.limits, closed, outcome=Outcome.CRASHED)
            self.phase = Phase.FINISHED
            return
        try:
            payload, imports = self._payload()
        except Exception as error:
            self._finish_early(error, "the call could not be pickled")
            return
        if spec.sandboxed is not None:
            # Here: a run without a sandbox need not load it (nor tempfile, shutil, pwd).
            from runner._sandboxing import SandboxUnavailable, prepare

            try:
                self._sandbox = prepare(
                    spec.sandboxed, os.environ if spec.env is None else spec.env, command=spec.is_command
                )
            except SandboxUnavailable as error:  # asked for and not possible: never run unconfined
                self.execution = Execution.unstarted(spec.limits, error, outcome=Outcome.CRASHED)
                self.phase = Phase.FINISHED
                return
        try:
            self._confinement = self._confine()
            self._spawn(payload, imports)
        except BaseException:
            # Nothing was started: give back all that was taken for it (cgroups, descriptors,
            # the sandbox's uid lease and work directory) before the error goes on.
            self._close_fds()
            self._remove_confinement()
            self._release_sandbox()
            self._sandbox = None
            raise

    # -- starting -------------------------------------------------------------------------

    def _payload(self) -> tuple[bytes | None, tuple[str, ...]]:
        # A seccomp filter is loaded through pyseccomp: the zygote imports it once, for all.
        sandbox = self.spec.sandboxed
        extra = ("pyseccomp",) if sandbox is not None and sandbox.seccomp else ()
        if self.spec.is_command:
            return None, extra
        from runner._payload import pickle_call  # cloudpickle: a command never needs it

        payload, imports = pickle_call(self.spec.target, tuple(self.spec.args), self.spec.kwargs)  # type: ignore[arg-type]
        return payload, (*imports, *extra)

    def _confine(self) -> Confinement:
        mode = self._plan.mode
        if mode is Enforcement.CGROUP2:
            return CgroupV2(self.id, self.spec.limits)
        if mode is Enforcement.CGROUP1:
            return CgroupV1(self.id, self.spec.limits)
        return ProcessTree(self.id)

    def _spawn(self, payload: bytes | None, imports: tuple[str, ...]) -> None:
        spec = self.spec
        assert self._confinement is not None
        sandbox = self._sandbox
        if sandbox is not None:
            self._notes.extend(sandbox.notes)
        child = ChildSpec(
            argv=spec.target if spec.is_command else None,  # type: ignore[arg-type]
            payload=payload,
            cwd=spec.cwd or (sandbox.workdir if sandbox is not None else None),
            rlimits=self._plan.rlimits,
            cgroup_procs=self._confinement.procs_files(),
            imports=imports,
            sandbox=sandbox.child_settings() if sandbox is not None else None,
        )
        result_r, result_w = os.pipe2(os.O_CLOEXEC)
        self._fds[result_r] = "result"
        theirs = [result_w]
        stdio = [spec.stdin if spec.stdin is not None else _devnull()]
        for name, fd in (("stdout", 1), ("stderr", 2)):
            if spec.capture:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                self._fds[read_end] = name
                theirs.append(write_end)
                stdio.append(write_end)
            else:
                stdio.append(fd)
        for fd in self._fds:
            os.set_blocking(fd, False)
        server = self._server_or_default()
        try:
            self._reply = server.submit(
                child,
                result_w,
                (stdio[0], stdio[1], stdio[2]),
                env=sandbox.env if sandbox is not None else spec.env,
                extra_env={COOKIE_VARIABLE: self.id},
            )
        finally:
            for fd in theirs:
                os.close(fd)
        self._fds[self._reply.fileno()] = "reply"

    def _take_reply(self) -> None:
        """The zygote's answer: the child exists (or it could not be forked)."""
        assert self._reply is not None and self._confinement is not None
        try:
            forked = ForkServer.reply(self._reply)
        except ForkServerError as error:
            self._start_failed(f"could not start: {error}")
            return
        if forked is None:
            return  # not yet
        self.pid, self._pidfd, forked_at = forked
        self._fds[self._pidfd] = "pidfd"  # readable once the child has exited
        self._next_server_look = None
        self._confinement.attach(self.pid, reaper=self._server_or_default().pid)
        stat = proc_stat(self.pid)
        self.pid_start_ticks = stat.start if stat is not None else None
        # The clock starts when the child was forked (the zygote says when): zygote start-up
        # and cgroup set-up are ours, and from then on its CPU time counts, so its wall time
        # covers the same span.
        now = time.monotonic()
        self._t0 = min(forked_at, now) if forked_at > 0 else now
        self._started_at = datetime.now(UTC) - timedelta(seconds=now - self._t0)
        # The first sample after one whole interval, then on the shared grid.
        self._next_sample = _next_tick(self._t0 + self._sample_every, self._sample_every)
        if self.spec.limits.wall_time:
            self._wall_deadline = self._t0 + self.spec.limits.wall_time
        self.phase = Phase.RUNNING
        if self._cancelled:  # cancelled while it was being forked
            self._terminate(now)

    def _start_failed(self, why: str) -> None:
        """No child came of the request (the fork failed, the zygote died or hung): kill what
        may have joined the cgroup, and end with the reason."""
        assert self._confinement is not None
        if self._reply is not None:
            self._close(self._reply.fileno())
        if not self._confinement.kill_all():
            for pid in self._confinement.members():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._close_fds()
        self._remove_confinement()
        record = Execution.unstarted(self.spec.limits, ForkServerError(why.removeprefix("could not start: ")),
                                     outcome=Outcome.CRASHED)  # fmt: skip
        self.execution = replace(record, notes=(*record.notes, *self._notes), sandbox=self._release_sandbox())
        self.phase = Phase.FINISHED

    def _server_or_default(self) -> ForkServer:
        return self._server or default_fork_server()

    # -- the owner's interface --------------------------------------------------------------

    @property
    def cgroups(self) -> list[str]:
        """The cgroup directories of this execution (empty without cgroups)."""
        paths = getattr(self._confinement, "paths", [])
        return list(paths)

    @property
    def last_reading(self) -> Reading | None:
        """The latest usage sample of the tree (``None`` before the first)."""
        return self._last

    @property
    def started_at(self) -> datetime:
        """When the child started (wall clock, UTC)."""
        return self._started_at

    @property
    def started(self) -> bool:
        """True once the child exists (its pid is known), or the start has failed."""
        return self.phase is not Phase.SPAWNING

    @property
    def done(self) -> bool:
        """True once the record is ready in ``execution``."""
        return self.phase is Phase.FINISHED

    def fds(self) -> list[int]:
        """Descriptors to wait on for reading."""
        return list(self._fds)

    def deadline(self) -> float | None:
        """The monotonic time by which ``on_time`` must be called, or ``None``."""
        exited = self._exit is not None or self._zygote_died
        if self.phase is Phase.FINISHED:
            return None
        own = self._own_deadline(exited)
        look = self._next_server_look
        return own if look is None else look if own is None else min(own, look)

    def _own_deadline(self, exited: bool) -> float | None:
        if self.phase is Phase.SPAWNING:
            return self._spawn_by
        if self.phase in (Phase.KILLING, Phase.RELEASING):
            return self._next_kill_pass
        if self.phase is Phase.TERMINATING:
            assert self._kill_at is not None
            return min(self._kill_at, self._next_kill_pass or self._kill_at) if exited else self._kill_at
        if exited:
            return time.monotonic()
        candidates = [self._next_sample]
        if self._watch is not None:
            candidates.append(self._watch.due)
        if self._wall_deadline is not None:
            candidates.append(self._wall_deadline)
        if self._throttle is not None and self._throttle.stopped_until is not None:
            candidates.append(self._throttle.stopped_until)
        return min(candidates)

    def on_readable(self, fd: int) -> None:
        """Consume what ``fd`` has to give."""
        kind = self._fds.get(fd)
        if kind == "reply":
            if self.phase is Phase.SPAWNING:
                self._take_reply()
            else:
                self._read_status()
        elif kind == "result":
            for frame in self._result.read_from(fd):
                self._take_message(frame)
            if self._result.eof:
                self._close(fd)
        elif kind in ("stdout", "stderr"):
            self._read_output(fd, kind)
        elif kind == "pidfd":  # the child has exited: its status should follow at once
            del self._fds[fd]  # the pidfd stays open (for signals) but is watched no longer
            if self._exit is None and not self._zygote_died:  # if it is late, look at the server
                self._next_server_look = time.monotonic() + STATUS_LOOK

    def on_time(self, now: float | None = None) -> None:
        """Advance sampling, limits, throttling and the kill protocol to ``now``."""
        now = time.monotonic() if now is None else now
        if self._next_server_look is not None and now >= self._next_server_look:
            self._look_at_fork_server(now)
        exited = self._exit is not None or self._zygote_died
        if self.phase is Phase.SPAWNING and now >= self._spawn_by:
            self._start_failed(f"could not start: the fork server did not answer within {SPAWN_GIVE_UP:.0f}s")
        if self.phase is Phase.RUNNING:
            if exited:
                self._sweep_leftovers(now)
            elif self._wall_deadline is not None and now >= self._wall_deadline:
                self._violate("wall_time", now)
            else:
                if now >= self._next_sample:
                    self._sample(now)
                elif self._watch is not None and now >= self._watch.due:
                    self._look(now)
                if self._throttle is not None and self.phase is Phase.RUNNING:
                    self._throttle_step(now)
        if self.phase is Phase.TERMINATING:
            assert self._kill_at is not None
            if now >= self._kill_at:
                self._begin_kill(now)
            elif exited and (self._next_kill_pass is None or now >= self._next_kill_pass):
                self._check_gone(now)
        if self.phase is Phase.KILLING and (self._next_kill_pass is None or now >= self._next_kill_pass):
            self._kill_pass(now)
        if self.phase is Phase.RELEASING and self._next_kill_pass is not None and now >= self._next_kill_pass:
            self._release(now)

    def _check_gone(self, now: float) -> None:
        """During the grace period: finish as soon as the whole tree has ended by itself."""
        assert self._confinement is not None
        remaining = self._confinement.members(thorough=True)
        if remaining:
            # Processes forked after the first stop signal never got it: tell them too.
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, self.spec.stop_signal)
            self._next_kill_pass = now + KILL_RECHECK * 2
        else:
            self._finish(now)

    def cancel(self) -> None:
        """Stop the execution: TERM, grace, KILL; its outcome becomes ``cancelled``."""
        if self.phase is Phase.SPAWNING:
            self._cancelled = True  # acted on when the child exists
            return
        if self.phase is not Phase.RUNNING or self._exit is not None:
            return
        self._cancelled = True
        self._terminate(time.monotonic())

    # -- reading --------------------------------------------------------------------------

    def _take_message(self, frame: bytes) -> None:
        if self._message is not None:
            return  # a descendant wrote to the inherited result pipe; the child's word stands
        try:
            self._message = from_wire(pickle.loads(frame))
        except Exception as error:
            self._message = Unreadable(f"{type(error).__name__}: {error}")

    def _read_status(self) -> None:
        """The child's exit status, which the zygote sends on the reply socket once it has
        reaped the child; the socket closing without it means the zygote died."""
        assert self._reply is not None
        try:
            data = self._reply.recv(STATUS.size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if len(data) == STATUS.size:
            self._exit = Exited.unpack(data)
        else:
            self._zygote_died = True
        self._close(self._reply.fileno())
        self._close_pidfd()

    def _read_output(self, fd: int, name: str) -> None:
        buffer = self._output[name]
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self._close(fd)
                return
            room = self.spec.output_cap - len(buffer)
            if room > 0:
                buffer += chunk[:room]
            self._dropped[name] += max(0, len(chunk) - max(room, 0))
            if self._forwarding[name]:
                self._forward(fd, name, chunk)
                if fd not in self._fds:
                    return

    def _forward(self, fd: int, name: str, chunk: bytes) -> None:
        """``on_output`` for ``chunk``; once it failed, it is not called again for this
        stream. Its failure is a note in the record, never the run's end: a broken callback
        does not leave the task unwatched. A reader gone (EPIPE: ``governor run --json | head``)
        closes the stream, so the task's next write there fails as a write to that reader
        itself would have: ``yes`` ends by SIGPIPE rather than run for ever, unread."""
        assert self.spec.on_output is not None
        try:
            self.spec.on_output(name, chunk)
        except Exception as error:
            self._forwarding[name] = False
            if isinstance(error, BrokenPipeError):
                self._close(fd)
                self._notes.append(f"{name}: its reader went away (on_output: {error}); it was closed")
            else:
                failure = f"{type(error).__name__}: {error}"
                self._notes.append(f"{name}: on_output failed ({failure}); the rest was kept, not passed on")

    def _close(self, fd: int) -> None:
        kind = self._fds.pop(fd, None)
        if kind == "reply" and self._reply is not None:
            self._reply.close()  # a socket object: closed through it, not its descriptor
            self._reply = None
        elif kind is not None:
            os.close(fd)

    def _close_fds(self) -> None:
        self._close_pidfd()
        for fd in list(self._fds):
            self._close(fd)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._fds.pop(self._pidfd, None)
            os.close(self._pidfd)
            self._pidfd = None

    # -- watching -------------------------------------------------------------------------

    def _sample(self, now: float) -> None:
        assert self._confinement is not None
        reading = self._confinement.read()
        self._next_sample = _next_tick(now, self._sample_every)
        # None: unreadable. No process, or none with a byte charged yet: the child has not
        # joined its cgroup yet (it moves itself in after the fork, which a slow host shows),
        # has only just joined, or has just ended: nothing to record.
        if reading is None or reading.processes == 0 or reading.memory_bytes == 0:
            if self._watch is not None:
                self._watch.due = self._next_sample
            return
        self._take(now, reading)
        self._timeline.append(
            Sample(round(now - self._t0, 6), reading.memory_bytes, reading.cpu_seconds, reading.processes)
        )
        if len(self._timeline) > MAX_SAMPLES:
            self._timeline = self._timeline[::2]
            self._sample_every *= 2
        limits, watch = self.spec.limits, self._plan.watch
        if "memory" in watch and limits.memory is not None and reading.memory_bytes > limits.memory:
            self._violate("memory", now)
        elif "cpu_time" in watch and limits.cpu_time is not None and reading.cpu_seconds > limits.cpu_time:
            self._violate("cpu_time", now)
        elif "pids" in watch and limits.pids is not None and reading.processes > limits.pids:
            self._violate("pids", now)
        elif limits.pids is not None and self._refused_forks():
            self._violate("pids", now)  # the kernel holds it, and it met the limit: stop it

    def _refused_forks(self) -> int:
        """Forks the kernel refused at the pids limit so far (kept: the cgroup goes first)."""
        assert self._confinement is not None
        self._refused = max(self._refused, self._confinement.refused_forks())
        return self._refused

    def _look(self, now: float) -> None:
        """A look at memory between samples (no timeline point): the watch asked for it."""
        assert self._confinement is not None and self._watch is not None
        reading = self._confinement.read()
        if reading is None:
            self._watch.due = _next_tick(now, self._sample_every)
            return
        self._take(now, reading)
        limit = self.spec.limits.memory
        if limit is not None and reading.memory_bytes > limit:
            self._violate("memory", now)

    def _take(self, now: float, reading: Reading) -> None:
        self._last = reading
        self._peak_sampled = max(self._peak_sampled, reading.memory_bytes)
        self._peak_processes = max(self._peak_processes, reading.processes)
        if self._watch is not None:
            self._watch.seen(now, reading.memory_bytes)

    def _throttle_step(self, now: float) -> None:
        assert self._throttle is not None and self._confinement is not None
        reading = (
            self._last if self._last is not None and now < self._next_sample else self._confinement.read()
        )
        if reading is None:
            return
        action = self._throttle.update(now, reading.cpu_seconds)
        if action == "stop":
            self._signal_members(signal.SIGSTOP)
            self._stopped = True
        elif action == "continue":
            self._signal_members(signal.SIGCONT)
            self._stopped = False

    # -- ending ---------------------------------------------------------------------------

    def _violate(self, limit: str, now: float) -> None:
        if self._violation is None and not self._cancelled:
            self._violation = limit
        if limit == "memory":  # a memory violator is not given time to grow further
            self._begin_kill(now)
        else:
            self._terminate(now)

    def _terminate(self, now: float) -> None:
        if self.phase is not Phase.RUNNING:
            return
        self._signal_members(self.spec.stop_signal)
        self._signal_members(signal.SIGCONT)  # stopped processes act on it only once continued
        self._stopped = False
        self.phase = Phase.TERMINATING
        self._kill_at = now + self.spec.kill_grace

    def _begin_kill(self, now: float) -> None:
        self.phase = Phase.KILLING
        self._kill_started = now
        self._kill_pass(now)

    def _kill_pass(self, now: float) -> None:
        assert self._confinement is not None
        exited = self._exit is not None or self._zygote_died
        if not self._confinement.kill_all():
            self._signal_members(signal.SIGKILL, thorough=True)
        survivors = self._confinement.members(thorough=True)
        if exited and not survivors:
            self._finish(now)
            return
        if self._kill_started is not None and now - self._kill_started > KILL_GIVE_UP and exited:
            self._notes.append(
                f"processes {survivors} survived SIGKILL for {KILL_GIVE_UP:.0f}s (uninterruptible?)"
            )
            self._finish(now)
            return
        self._next_kill_pass = now + KILL_RECHECK

    def _look_at_fork_server(self, now: float) -> None:
        """The fork server answers a start and sends the child's status once it has reaped it:
        a task that stopped it (SIGSTOP to its parent, as the same uid may) held back every
        start, its own status, and the run, past every limit. Asked while a start waits for an
        answer, and while an ended child's status has not come: a stopped server is continued."""
        spawning = self.phase is Phase.SPAWNING
        if not spawning and (self._exit is not None or self._zygote_died or self.phase is Phase.FINISHED):
            self._next_server_look = None
            return
        self._next_server_look = now + (SPAWN_LOOK if spawning else STATUS_LOOK)
        server = self._server_or_default().pid
        stat = proc_stat(server) if server is not None else None
        if server is None or stat is None or not stat.stopped:
            return
        os.kill(server, signal.SIGCONT)
        waited = "this run asked it to start the task" if spawning else "the task ended"
        note = f"the fork server had been stopped (SIGSTOP) when {waited}; it was continued"
        if note not in self._notes:
            self._notes.append(note)

    def _signal_members(self, signum: int, thorough: bool = False) -> None:
        assert self._confinement is not None
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # exited; its status is on the way
                signal.pidfd_send_signal(self._pidfd, signum)
        for pid in self._confinement.members(thorough=thorough):
            if pid == self.pid and self._pidfd is not None:
                continue
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue

    def _sweep_leftovers(self, now: float) -> None:
        """The child has exited; stop whatever it left running, then finish."""
        assert self._confinement is not None
        leftovers = self._confinement.members(thorough=True)
        if not leftovers:
            self._finish(now)
            return
        self._leftovers = len(leftovers)
        self._notes.append(f"{len(leftovers)} leftover process(es) were stopped after the child exited")
        self._terminate(now)

    def _finish(self, now: float) -> None:
        for fd, kind in list(self._fds.items()):
            if kind == "result":
                for frame in self._result.read_from(fd, budget=1 << 40):
                    self._take_message(frame)
            elif kind in ("stdout", "stderr"):
                self._read_output(fd, kind)
        self._close_fds()
        self._usage_at_end = self._usage(now)
        self._release_by = now + RELEASE_GIVE_UP
        self._release(now)

    def _release(self, now: float) -> None:
        """Remove the cgroup, then write the record. An emptied cgroup can stay busy for a
        moment while the kernel finishes with its last tasks: retry on a short deadline."""
        assert self._confinement is not None and self._usage_at_end is not None
        if not self._confinement.remove():
            if now < self._release_by:
                self.phase = Phase.RELEASING
                self._next_kill_pass = now + KILL_RECHECK
                return
            self._notes.append(f"the cgroup could not be removed within {RELEASE_GIVE_UP:.0f}s (still busy)")
        self.execution = self._record(self._usage_at_end, now)
        self.phase = Phase.FINISHED

    def _remove_confinement(self) -> None:
        if self._confinement is not None and not self._confinement.remove():
            self._notes.append("the cgroup could not be removed (still busy)")

    def _finish_early(self, error: Exception, note: str) -> None:
        now = time.monotonic()
        usage = Usage.zero()
        kind = type(error)
        self._message = Raised(None, f"{kind.__module__}.{kind.__qualname__}", f"{note}: {error}", "", False)
        self.execution = self._record(usage, now, outcome=Outcome.FAILED)
        self.phase = Phase.FINISHED

    # -- the record -----------------------------------------------------------------------

    def _usage(self, now: float) -> Usage:
        assert self._confinement is not None
        final = self._confinement.final_cpu()
        if self.spec.limits.pids is not None:
            self._refused_forks()  # while its cgroup is still there to say
        # The kernel's own peak of the cgroup is what its limit counts, spikes included; without
        # one, the larger of wait4's ru_maxrss (the top process's true peak) and the samples.
        exited = self._exit
        candidates = {"sampled": self._peak_sampled}
        if exited is not None:
            candidates["rusage"] = exited.maxrss_kib * 1024
        kernel_peak = self._confinement.peak_memory()
        if kernel_peak:
            candidates = {"cgroup": kernel_peak}
        # CPU: whichever account saw the most, taken whole (mixing one's user time with
        # another's system time would count some of it twice). wait4 covers the child and what
        # it waited for; the cgroup, every member, reaped or not.
        user = system = 0.0
        if exited is not None:
            user, system = exited.user, exited.system
        if final is not None and final[0] + final[1] > user + system:
            user, system = final
        if self._last is not None and self._last.cpu_seconds > user + system:
            user, system = split_cpu(self._last.cpu_seconds, user, system)  # the split we have, scaled
        source = max(candidates, key=lambda key: candidates[key])
        # The tree lived from the fork until its last process was gone: the reap of the child,
        # when it ended by itself and left nothing behind; else when the kill protocol saw the
        # tree empty. CPU time covers the same span.
        killed = self._violation is not None or self._cancelled
        end = now
        if exited is not None and exited.ended_at > 0 and not self._leftovers and not killed:
            end = exited.ended_at
        return Usage(
            peak_memory_bytes=candidates[source],
            cpu_user_seconds=user,
            cpu_system_seconds=system,
            wall_seconds=max(0.0, min(end, now) - self._t0),
            peak_processes=max(self._peak_processes, self._leftovers + 1),
            timeline=tuple(self._timeline),
            oom_kills=self._confinement.oom_kills(),
            cpu_throttled_seconds=(
                self._throttle.stopped_seconds
                if self._throttle is not None
                else self._confinement.throttled_seconds()
            ),
            memory_source=source,
            memory_high_events=self._confinement.memory_high_events(),
            stall_seconds=self._confinement.stall_seconds(),
            memory_overshoot_bound_bytes=self._overshoot_bound(candidates[source]),
            peak_rss_bytes=exited.maxrss_kib * 1024 if exited is not None and exited.maxrss_kib else None,
        )

    def _overshoot_bound(self, peak: int) -> int | None:
        """How far past its memory limit the tree could have gone unseen: none where the kernel
        holds it (a cgroup), what the watch's looks give where the supervisor does."""
        if self.spec.limits.memory is None:
            return None
        if self._watch is None:
            return 0
        return self._watch.bound_with(peak)

    def _record(self, usage: Usage, now: float, outcome: Outcome | None = None) -> Execution:
        exit_code, signum = exit_facts(self._exit)
        if isinstance(self._message, Raised):
            exit_code = None  # a callable that raised has its exception, not a process's status
        verdict = classify(
            Ending(
                is_command=self.spec.is_command,
                limits=self.spec.limits,
                message=self._message,
                exited=self._exit,
                zygote_died=self._zygote_died,
                cancelled=self._cancelled,
                violation=self._violation,
                usage=usage,
                memory_by_rlimit=self._plan.mechanisms.get("memory") is Mechanism.RLIMIT,
                stderr_tail=bytes(self._output["stderr"][-4096:]),
                processes_seen=self._last.processes if self._last is not None else None,
                refused_forks=self._refused,
            )
        )
        stdout = bytes(self._output["stdout"]) if self.spec.capture else None
        stderr = bytes(self._output["stderr"]) if self.spec.capture else None
        for name, dropped in self._dropped.items():
            if dropped:
                self._notes.append(
                    f"{name}: {dropped} bytes beyond the {self.spec.output_cap}-byte cap were dropped"
                )
        value = self._message.value if isinstance(self._message, Ok) else None
        sandbox = self._release_sandbox()
        return Execution(
            outcome=outcome or verdict.outcome,
            exit_code=exit_code,
            signal=signum,
            breached_limit=verdict.breached_limit,
            error=verdict.error,
            usage=usage,
            limits=self.spec.limits,
            enforcement={name: str(mechanism) for name, mechanism in self._plan.mechanisms.items()},
            unenforced=self._plan.unenforced,
            started_at=self._started_at,
            ended_at=datetime.now(UTC),
            pid=self.pid,
            result=value,
            stdout=stdout,
            stderr=stderr,
            notes=tuple(self._notes),
            sandbox=sandbox,
        )

    def _release_sandbox(self) -> dict[str, str] | None:
        """The run is over: give the sandbox's uid and work directory back; its report."""
        if self._sandbox is None:
            return None
        report = self._sandbox.report()
        self._sandbox.release()
        return report


_devnull_fd: tuple[int, int] | None = None  # (pid, fd): a forked copy of this process opens its own


def _devnull() -> int:
    """/dev/null, opened once per process: every child's stdin when it is given none (the
    zygote receives its own copy of the descriptor with each request)."""
    global _devnull_fd
    if _devnull_fd is None or _devnull_fd[0] != os.getpid():
        _devnull_fd = (os.getpid(), os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _devnull_fd[1]


def new_execution_id() -> str:
    """A fresh execution id, ``<pid>-<serial>-<owner token>``: unique across processes and pid
    reuse, and naming the supervisor that made it (``_owners``)."""
    return f"{os.getpid()}-{next(_serial)}-{owner_token()}"


def _next_tick(now: float, interval: float) -> float:
    """The next multiple of ``interval`` after ``now``: executions sampled at one interval
    share their ticks, so one wake-up of the owner's loop serves all of them."""
    return (math.floor(now / interval) + 1) * interval
