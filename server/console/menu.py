"""The admin console (``fl-server`` without a command): the request socket, the session manager
and a menu, all in one process.

Before every menu prompt it prints the notices that arrived (new requests, sessions that ended)
and a status header. Ctrl-C inside a dialog returns to the menu; at the menu it leads to the
exit question. Whatever way the console ends, running sessions are waited for or stopped
cleanly, never left behind.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from questionary import Choice
from rich.console import Console

from server.console import dialogs
from server.console.actions import pending_requests, start_serving
from server.console.commands import console as default_console
from server.console.commands import event_notice
from server.console.views import dp_text
from server.sessions.manager import ACTIVE_STATES, SessionManager
from server.socket.request_socket import RequestServerThread
from server.store import Store
from shared import prompts
from shared.errors import ConfigError, FLError
from shared.interrupts import deferred_interrupt, exit_cleanly_on_termination
from shared.settings import Settings
from shared.terminal import print_error

Dialog = Callable[[dialogs.AdminContext], None]

MENU: list[tuple[str, str, Dialog | None]] = [
    ("1", "View pending requests", dialogs.show_pending),
    ("2", "Approve requests (one session)", dialogs.approve),
    ("3", "Reject a request", dialogs.reject),
    ("4", "Active sessions (live)", dialogs.active_sessions),
    ("5", "Training history", dialogs.history),
    ("6", "Model versions", dialogs.versions),
    ("7", "Version details", dialogs.version_details),
    ("8", "Export a version to sites", dialogs.export),
    ("9", "Statistics", dialogs.stats),
    ("c", "Clean up old versions", dialogs.cleanup),
    ("e", "Enrol a site", dialogs.enrol),
    ("d", "Disable a site", dialogs.disable),
    ("r", "Roll back the head", dialogs.rollback),
    ("x", "Exit", None),
]


def run_console(store: Store, settings: Settings, console: Console | None = None) -> int:
    """Serve and show the menu until the admin exits; returns the exit status."""
    out = console or default_console
    exit_cleanly_on_termination()  # `kill` or a closed terminal still stops the sessions below
    notices: queue.SimpleQueue[str] = queue.SimpleQueue()
    out.print("starting: initial model, session recovery, request socket ...")
    manager, interrupted = start_serving(store, settings, on_event=lambda e: notices.put(event_notice(e)))
    for session in interrupted:
        notices.put(f"session {session.id} was interrupted by the last shutdown; requeue its requests to retry")
    try:
        socket_thread = _listening(store, settings)
        try:
            out.print(f"request socket on {settings.request_host}:{socket_thread.port}; "
                      f"log in {settings.home / 'logs' / 'admin-console.log'}")
            AdminConsole(dialogs.AdminContext(store, manager, socket_thread.server, out), notices).loop()
        finally:
            socket_thread.stop()
    finally:
        manager.shutdown(stop_running=True)  # after Exit nothing is left running; after a signal, stop
    return 0


def _listening(store: Store, settings: Settings) -> RequestServerThread:
    """The started request socket, or a clear error when its port is taken."""
    thread = RequestServerThread(store, settings)
    try:
        return thread.start()
    except OSError as exc:
        raise ConfigError(f"the request socket cannot listen on {settings.request_host}:{settings.request_port} "
                          f"({exc.strerror or exc})",
                          hint="Is another fl-server running? Stop it or set FL_REQUEST_PORT.") from None


class AdminConsole:
    """The menu loop: notices, header, one dialog, repeat."""

    def __init__(self, ctx: dialogs.AdminContext, notices: queue.SimpleQueue[str]) -> None:
        self.ctx = ctx
        self.notices = notices
        self.last_request_id = max((r.id for r in ctx.store.list_requests()), default=0)

    def loop(self) -> None:
        dialog_of = {key: dialog for key, _, dialog in MENU}
        choices = [Choice(title, value=key, shortcut_key=key) for key, title, _ in MENU]
        while True:
            self._print_notices()
            self._print_header()
            try:
                key = prompts.choose("What next?", choices, shortcuts=True)
            except KeyboardInterrupt:
                key = "x"
            dialog = dialog_of[key]
            if dialog is None:
                if self._exit():
                    return
                continue
            self._run(dialog)

    def _run(self, dialog: Dialog) -> None:
        try:
            dialog(self.ctx)
        except KeyboardInterrupt:
            self.ctx.console.print("cancelled; back to the menu")
        except FLError as error:
            print_error(self.ctx.console, error)

    def _print_notices(self) -> None:
        for request in self.ctx.store.list_requests():
            if request.id > self.last_request_id:
                self.notices.put(f"new request {request.label} from {request.site}: {request.rounds} round(s), "
                                 f"{dp_text(request.dp)}" + (f" - {request.note}" if request.note else ""))
                self.last_request_id = request.id
        while not self.notices.empty():
            self.ctx.console.print(f"[bold cyan]notice:[/] {self.notices.get()}")

    def _print_header(self) -> None:
        store = self.ctx.store
        head = store.head()
        accuracy = head.metrics.get("evaluate", {}).get("accuracy")
        active = store.list_sessions(states=ACTIVE_STATES)
        self.ctx.console.rule(
            f"pending requests: {len(pending_requests(store))} | active sessions: {len(active)} | "
            f"head: {head.label}" + (f" ({accuracy:.1%} val. acc)" if accuracy is not None else " (not evaluated)"),
            style="dim")

    def _exit(self) -> bool:
        """Ask what to do with running sessions; False means back to the menu."""
        manager: SessionManager = self.ctx.manager
        running = manager.running_ids()
        if not running:
            self.ctx.console.print("bye")
            return True
        try:
            answer = prompts.choose(
                f"{len(running)} session(s) still running ({', '.join(map(str, running))}). Before exiting:",
                [Choice("wait for them to finish", value="wait"), Choice("stop them cleanly now", value="stop"),
                 Choice("back to the menu", value="menu")])
            if answer == "wait":
                self.ctx.console.print("waiting for the sessions to end (Ctrl-C returns to the menu) ...")
                for session_id in running:
                    manager.wait(session_id)
            elif answer == "stop":
                with deferred_interrupt():
                    manager.shutdown(stop_running=True)
        except KeyboardInterrupt:
            self.ctx.console.print("back to the menu")
            return False
        if answer == "menu":
            return False
        self._print_notices()
        self.ctx.console.print("bye")
        return True
