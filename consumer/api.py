"""The plugin API: a custom consumer is a `Consumer` and a few decorated async functions.

    from consumer.api import Consumer

    app = Consumer("track-status")

    @app.on("live.TrackStatus")
    async def show(message):
        print(message.seq, message.data["data"]["Message"])

    if __name__ == "__main__":
        app.run()

Run it with `python -m consumer run my_consumer.py` (or `python my_consumer.py`).
Every consumer gets the same command line (--broker, --token, --from,
--durable, --on-error), reconnects by itself, stops cleanly on Ctrl-C, and
reports what it handled on exit. Each pattern is one subscription with its
own task: handlers of one pattern see messages one at a time, in order, and
a slow handler slows only its subscription, through flow control.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import difflib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from broker import cli
from broker.client import Batch, Client, Message, Subscription
from broker.errors import ConfigError, ProtocolError
from broker.limits import LogThrottle
from broker.server.routing import pattern_matches, validate_pattern

log = logging.getLogger("slipstream.consumer")

HINT_AFTER_S = 2.0  # an idle pattern matching no topic, but close to some, gets one warning
HINT_TOPICS = 10_000  # topics looked at for that hint (one STATS page)
HandlerFn = Callable[[Message], Awaitable[None]]
BatchHandlerFn = Callable[[Batch], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]
Lifespan = Callable[[], AsyncIterator[None]]
OnError = Literal["skip", "stop"]


class HandlerFailed(Exception):
    """--on-error stop: a handler raised, so the consumer stops (exit code 1)."""


class Fatal(Exception):
    """Raise from a handler (or call `Consumer.fail`) to stop with exit 1, whatever
    --on-error says: for failures no later message can fix (a database that
    cannot be written)."""


class _Stop(Exception):
    """Consumer.stop() was called: unwinds the subscription tasks."""


@dataclass
class Handler:
    pattern: str
    function: Callable[[Any], Awaitable[None]]  # a HandlerFn, or a BatchHandlerFn
    auto_ack: bool = True
    batches: bool = False  # the function takes a Batch (a run of one topic), not a Message
    subscription: Subscription | None = None
    handled: int = 0
    failed: int = 0

    @property
    def name(self) -> str:
        return getattr(self.function, "__name__", "handler")


class Consumer:
    """A named consumer: its handlers, its hooks and its command line."""

    def __init__(self, name: str, description: str = "", start: str = "new",
                 durable: bool = True) -> None:
        self.name = name
        self.description = description
        self.default_start = start  # --from's default: "new", or "earliest" for whole state
        self.takes_durable = durable  # False: no --durable (it rebuilds from earliest)
        self.handlers: list[Handler] = []
        self.args = argparse.Namespace()  # the parsed command line, once running
        self.client: Client | None = None
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._lifespans: list[Lifespan] = []
        # Background work (a web server's refresher, a periodic publish): run in the
        # consumer's TaskGroup beside the handlers, so a failure stops the consumer.
        self._background: list[tuple[Coroutine[Any, Any, None], str]] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._argument_hooks: list[Callable[[argparse.ArgumentParser], None]] = []
        self._stopping: asyncio.Event | None = None
        self._subscribed: asyncio.Event | None = None
        self._failure: HandlerFailed | None = None
        self._stdout_gone = False
        # One handler raising on every message must not write a line per message.
        self._error_log = LogThrottle(log, interval_s=10.0)

    # --- declaring ---------------------------------------------------------------

    def on(self, *patterns: str, auto_ack: bool = True) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator: call the function with each message of topics matching `patterns`."""
        def register(function: HandlerFn) -> HandlerFn:
            for pattern in patterns:
                self.add_handler(pattern, function, auto_ack=auto_ack)
            return function
        return register

    def on_batches(self, *patterns: str, auto_ack: bool = True
                   ) -> Callable[[BatchHandlerFn], BatchHandlerFn]:
        """Decorator: call the function with each `Batch` (messages of one topic that
        arrived together, payloads as a list): for handlers that keep up with tens of
        thousands of messages a second. A batch is finished when the function returns."""
        def register(function: BatchHandlerFn) -> BatchHandlerFn:
            for pattern in patterns:
                self.add_handler(pattern, function, auto_ack=auto_ack, batches=True)
            return function
        return register

    def add_handler(self, pattern: str, function: HandlerFn | BatchHandlerFn, *,
                    auto_ack: bool = True, batches: bool = False) -> Handler:
        """The same as `on` (or `on_batches`), for patterns known only at startup."""
        if not asyncio.iscoroutinefunction(function):
            raise TypeError(f"handler {function!r} for {pattern!r} must be an async def")
        try:
            validate_pattern(pattern)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from None
        handler = Handler(pattern, function, auto_ack, batches)
        self.handlers.append(handler)
        return handler

    def startup(self, hook: Hook) -> Hook:
        """Decorator: run before connecting (check flags, open a database, load state);
        a ConfigError raised here is exit 2 with its message, and nothing connected."""
        self._startup.append(hook)
        return hook

    def shutdown(self, hook: Hook) -> Hook:
        """Decorator: run on the way out, even after Ctrl-C or an error (close, flush)."""
        self._shutdown.append(hook)
        return hook

    def lifespan(self, function: Lifespan) -> Lifespan:
        """Decorator: an async generator that sets up (before connecting), yields while the
        consumer runs and cleans up after it (even after Ctrl-C or an error), keeping its
        state in its own locals instead of module globals:

            @app.lifespan
            async def serve() -> AsyncIterator[None]:
                site = await start_site(...)
                app.background(refresh(), "refresh")
                try:
                    yield
                finally:
                    await site.cleanup()
        """
        self._lifespans.append(function)
        return function

    def background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` beside the handlers, in the consumer's TaskGroup: cancelled when the
        consumer stops, and if it raises, the consumer stops with exit 1 saying so."""
        if self._tasks is not None:
            self._tasks.create_task(self._guard(work, name), name=name)
        else:
            self._background.append((work, name))  # started with the handlers

    async def _guard(self, work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except Exception as exc:
            log.error("%s failed: %s", name, exc, exc_info=True)
            self.fail(f"{name} failed: {exc}")

    def arguments(self, hook: Callable[[argparse.ArgumentParser],
                                       None]) -> Callable[[argparse.ArgumentParser], None]:
        """Decorator: add command-line flags; read them from `app.args` once running."""
        self._argument_hooks.append(hook)
        return hook

    def stop(self) -> None:
        """Finish cleanly: no more messages are handed out, shutdown hooks run."""
        if self._stopping is not None:
            self._stopping.set()

    def fail(self, reason: str) -> None:
        """Stop as `stop` does, then exit 1 with `reason` (from a hook or a background task)."""
        if self._failure is None:
            self._failure = HandlerFailed(reason)
        self.stop()

    # --- running ---------------------------------------------------------------------

    def parser(self, prog: str | None = None) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=prog or f"python -m consumer {self.name}",
                                         description=self.description)
        for hook in self._argument_hooks:
            hook(parser)
        parser.add_argument("--from", dest="start", type=cli.start_position,
                            default=self.default_start, metavar="new|earliest|SEQ",
                            help=f"where to start in each topic (default {self.default_start})")
        if self.takes_durable:
            parser.add_argument("--durable", metavar="NAME",
                                help="resume where the last consumer with this name stopped")
        else:
            parser.set_defaults(durable=None)
        parser.add_argument("--on-error", choices=["skip", "stop"], default="skip",
                            help="when a handler raises: log it and go on (default), or stop")
        cli.add_connection_args(parser)
        cli.add_logging_args(parser)
        return parser

    def run(self, argv: list[str] | None = None, prog: str | None = None) -> int:
        """Parse the command line and run until stopped; returns the exit code."""
        self.args = self.parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
        cli.setup_logging(self.args, default=logging.WARNING)
        return cli.run(prog or self.name, self.serve)

    async def serve(self) -> int:
        """Run the startup hooks, connect, handle messages until stopped, then shut down."""
        self._stopping = asyncio.Event()
        self._subscribed = asyncio.Event()
        shut_down = False
        lifespans = contextlib.AsyncExitStack()
        try:
            for hook in self._startup:
                await hook()
            for lifespan in self._lifespans:
                await lifespans.enter_async_context(contextlib.asynccontextmanager(lifespan)())
            if not self.handlers:
                raise ConfigError(f"consumer {self.name!r} has no handlers")
            async with cli.client_for(self.args, self.name) as client:
                self.client = client
                try:
                    await self._consume(client)
                finally:
                    shut_down = True  # while connected: a last flush can still acknowledge
                    await self._run_shutdown_hooks(lifespans)
        finally:
            if not shut_down:  # startup or connecting failed: close what startup opened
                await self._run_shutdown_hooks(lifespans)
            for work, _ in self._background:  # never started: say nothing of it
                work.close()
            self._background.clear()
            if self._stdout_gone:
                _silence_stdout()
            self._error_log.flush()
            print(self.report(), file=sys.stderr)
        if self._failure is not None:
            return cli.fail(self.name, str(self._failure))
        return cli.EXIT_OK

    async def _run_shutdown_hooks(self, lifespans: contextlib.AsyncExitStack) -> None:
        try:
            await lifespans.aclose()  # the lifespans' clean-up, last set up first
        finally:
            for hook in self._shutdown:
                await hook()

    async def _consume(self, client: Client) -> None:
        for handler in self.handlers:
            handler.subscription = await client.subscribe(
                handler.pattern, start=self.args.start, auto_ack=handler.auto_ack,
                durable=f"{self.args.durable}:{handler.pattern}" if self.args.durable else None)
        assert self._subscribed is not None
        self._subscribed.set()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                for handler in self.handlers:
                    tasks.create_task(self._pump(handler), name=handler.pattern)
                tasks.create_task(self._wait_for_stop())
                tasks.create_task(self._hint_unmatched(client))
                for work, name in self._background:
                    tasks.create_task(self._guard(work, name), name=name)
                self._background.clear()
        except* _Stop:
            pass
        except* HandlerFailed as group:
            self._failure = self._failure or group.exceptions[0]  # type: ignore[assignment]
        finally:
            self._tasks = None

    async def subscribed(self) -> Client:
        """Wait until every handler's subscription is made (for a startup hook's task that
        needs the broker, such as a progress report); returns the connected client."""
        assert self._subscribed is not None, "only while the consumer runs"
        await self._subscribed.wait()
        assert self.client is not None
        return self.client

    async def _hint_unmatched(self, client: Client) -> None:
        """A pattern that matches no topic waits in silence, and a typo looks like a quiet
        session: once, after HINT_AFTER_S, name the topics that look close (if none does,
        the source has probably not started yet, and nothing is said)."""
        await asyncio.sleep(HINT_AFTER_S)
        idle = [h.pattern for h in self.handlers
                if h.subscription is not None and not h.subscription.received]
        if not idle:
            return
        try:
            topics = list((await client.stats(topic_limit=HINT_TOPICS))["topics"])
        except Exception:  # a hint only: an engine without the list, a broker gone
            return
        # A topic another of this consumer's patterns reads is no typo of this one
        # (game.lap_data beside game.*.lap_data: one rig or several).
        patterns = [h.pattern for h in self.handlers]
        unread = [t for t in topics if not any(pattern_matches(p, t) for p in patterns)]
        for pattern in idle:
            if "*" in pattern or ">" in pattern:
                continue  # a wildcard waits for what may come (game.*.lap_data: rigs), no typo
            if any(pattern_matches(pattern, topic) for topic in topics):
                continue  # there is one: it has not said anything yet
            # 0.8: a typo of a letter or two (TimingDate: TimingData 0.93), not a sibling
            # that exists before this one does (TrackStatus: TimingStats 0.69, the demo).
            close = difflib.get_close_matches(pattern, unread, n=5, cutoff=0.8)
            if not close:
                continue  # nothing like it yet: a source not started, not a typo
            log.warning("no topic matches %r yet; topics that look close: %s (every topic: "
                        "slipstream stats)", pattern, ", ".join(close))

    async def _wait_for_stop(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()
        raise _Stop

    async def _pump(self, handler: Handler) -> None:
        subscription, stopping = handler.subscription, self._stopping
        assert subscription is not None and stopping is not None
        # Check for a stop before asking for the next message: asking is what
        # acknowledges the previous one, so a message is acknowledged only once it
        # was handled, and none is handled after stop() (buffered ones stay unacked).
        take: Callable[[], Awaitable[Message | Batch]] = (
            subscription.next_batch if handler.batches else subscription.__anext__)
        function = handler.function
        while not stopping.is_set():
            try:
                message = await take()
            except StopAsyncIteration:
                return
            try:
                await function(message)
            except BrokenPipeError:
                # Our reader went away (`| head`, a jq that exited): stop, quietly.
                self._stdout_gone = True
                self.stop()
                return
            except Fatal as exc:
                raise HandlerFailed(str(exc)) from exc
            except HandlerFailed:
                raise  # message_failed under --on-error stop
            except Exception as exc:
                self.message_failed(message, exc, handler)
            handler.handled += len(message) if type(message) is Batch else 1

    def message_failed(self, item: Message | Batch, error: Exception,
                       handler: Handler | None = None) -> None:
        """A handler could not handle `item`: under --on-error skip it is logged and
        counted and the consumer goes on; under stop, HandlerFailed ends it (exit 1).
        A batch handler calls this for the one message it could not handle, so that one
        bad message costs that message, not its whole batch."""
        if handler is None:  # the handler whose pattern the message came by
            handler = next((h for h in self.handlers if pattern_matches(h.pattern, item.topic)),
                           self.handlers[0])
        handler.failed += 1
        where = f"handler {handler.name!r} failed on {_where(item)}"
        if self.args.on_error == "stop":
            raise HandlerFailed(f"{where}: {type(error).__name__}: {error}") from error
        # Keyed on the handler and the error's type, not its text (which may name
        # each message's data): the same failure on every message is one line,
        # then a count every 10 s.
        self._error_log.log(logging.ERROR, f"{handler.name}:{type(error).__name__}",
                            "%s (skipped): %s: %s", where, type(error).__name__, error,
                            exc_info=handler.failed == 1)  # the traceback once (we are
        # called in the except block that caught `error`)

    def report(self) -> str:
        subs = [h.subscription for h in self.handlers if h.subscription is not None]
        unknown = sum(s.unknown_gaps for s in subs)
        return (f"{self.name}: handled {sum(h.handled for h in self.handlers):,} messages, "
                f"{sum(s.gap_count for s in subs)} gaps ({sum(s.missed for s in subs):,} "
                f"messages missed{f', {unknown} of unknown size' if unknown else ''}), "
                f"{sum(h.failed for h in self.handlers)} handler errors")


def _where(item: Message | Batch) -> str:
    if type(item) is Batch:
        return f"{item.topic} #{item.seqs[0]}..#{item.seqs[-1]}"
    return f"{item.topic} #{item.seq}"  # type: ignore[union-attr]


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def json_text(value: Any) -> str:
    """Compact JSON of decoded message data; bytes (game.raw, say) become base64."""
    return json.dumps(value, separators=(",", ":"), default=_bytes_as_base64)


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def find_consumer(namespace: dict[str, Any], where: str) -> Consumer:
    """The Consumer a plugin module defines: the only one, or the one named `app`."""
    found = [value for value in namespace.values() if isinstance(value, Consumer)]
    if isinstance(namespace.get("app"), Consumer):
        return namespace["app"]  # type: ignore[no-any-return]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"{where} defines no Consumer (write: app = Consumer('name'))")
    raise ConfigError(f"{where} defines {len(found)} Consumers; name the one to run `app`")
