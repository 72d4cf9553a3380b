"""Serve one trace file to ui.perfetto.dev from 127.0.0.1, the way Perfetto's ``tools/open_trace_in_ui`` does.

The UI's content security policy lets it fetch from ``http://127.0.0.1:9001`` (the port of
``trace_processor_shell --httpd``) and no other port, so a deep link
``https://ui.perfetto.dev/#!/?url=http://127.0.0.1:9001/FILE`` makes the browser fetch the file from this
machine, and the link always names port 9001. The server:

- listens on 127.0.0.1 only (nothing off the machine can connect; a remote run is reached through
  ``ssh -L 9001:127.0.0.1:9001``); on another port (``--port``), local port 9001 must be forwarded to it
  (``ssh -L 9001:127.0.0.1:PORT``);
- answers 403 to any request whose ``Host`` is not ``127.0.0.1`` or ``localhost`` with this port or 9001 (the
  one a forward from 9001 brings): a web page whose own name was re-pointed at 127.0.0.1 (DNS rebinding)
  sends its own name as ``Host`` and cannot read the trace;
- answers ``GET``/``HEAD`` of the file's path; with ``Access-Control-Allow-Origin`` only for a request whose
  ``Origin`` is the UI's; a request from any other origin gets 403 (a web page of another site cannot read
  the trace); one without ``Origin`` (curl through the tunnel) is served without CORS headers;
- answers a CORS preflight from the UI's origin (with ``Access-Control-Allow-Private-Network``, which Chrome
  asks of public sites reaching loopback), and every other path or method with 404, without stopping: the UI
  probes port 9001 for a trace processor;
- stops once the whole file has been sent to a request that passed those checks (``keep_serving``: on Ctrl-C
  only); a refused request never counts.
"""

from __future__ import annotations

import errno
import http.server
import os
import shutil
import sys
import urllib.parse
import webbrowser
from collections.abc import Callable
from pathlib import Path

from dpprof.errors import DpprofError

UI_ORIGIN = "https://ui.perfetto.dev"
DEFAULT_PORT = 9001
LOOPBACK = "127.0.0.1"
_BLOCK = 1 << 20


def ui_link(port: int, name: str, origin: str = UI_ORIGIN) -> str:
    """The deep link that makes the UI fetch ``name`` from ``127.0.0.1:port`` (the UI allows only 9001)."""
    return f"{origin}/#!/?url=http://{LOOPBACK}:{port}/{urllib.parse.quote(name)}&referrer=dpprof"


def ssh_hint(port: int) -> str:
    """How to reach a server on ``port`` through the link's port 9001."""
    if port == DEFAULT_PORT:
        return (f"on a remote machine: on your computer run `ssh -L {DEFAULT_PORT}:{LOOPBACK}:{port} "
                "USER@THIS_HOST`, then open the link there")
    return (f"the link names port {DEFAULT_PORT}, the only one ui.perfetto.dev may fetch from (its content security "
            f"policy), and this server listens on {port}: forward local port {DEFAULT_PORT} to it, from your "
            f"computer with `ssh -L {DEFAULT_PORT}:{LOOPBACK}:{port} USER@THIS_HOST` (on this machine itself: "
            f"`ssh -N -L {DEFAULT_PORT}:{LOOPBACK}:{port} localhost`), then open the link")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: TraceServer
    server_version = "dpprof"
    sys_version = ""
    timeout = 60  # seconds a socket read or write may take: a silent client cannot hold the server forever

    def _origin(self) -> tuple[str | None, bool]:
        origin = self.headers.get("Origin")
        return origin, origin == self.server.origin

    def _bad_host(self) -> bool:
        """Answer 403 to a request not addressed to this server by its loopback name (DNS rebinding)."""
        host = self.headers.get("Host")
        if host is not None and host.lower() in self.server.hosts:
            return False
        shown = host[:80] if host is not None else None
        self.server.note_once(f"refused a request for host {shown!r} (only {', '.join(self.server.hosts)} may read "
                              "it)")
        self._answer(403, False, body=b"host not allowed\n")
        return True

    def _answer(self, code: int, allowed: bool, extra: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(code)
        if allowed:
            self.send_header("Access-Control-Allow-Origin", self.server.origin)
            self.send_header("Vary", "Origin")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, head: bool) -> None:
        if self._bad_host():
            return
        origin, allowed = self._origin()
        if urllib.parse.unquote(urllib.parse.urlsplit(self.path).path) != self.server.url_path:
            self._answer(404, allowed, body=b"not found\n")
            return
        if origin is not None and not allowed:
            self.server.note_once(f"refused a request from origin {origin[:80]!r} (only {self.server.origin} may "
                                  "read it)")
            self._answer(403, False, body=b"origin not allowed\n")
            return
        path = self.server.file
        if path is None:
            self._answer(404, allowed, body=b"not found\n")
            return
        try:
            fh = open(path, "rb")
        except OSError as exc:
            self._answer(404, allowed, body=f"cannot read: {exc.strerror}\n".encode())
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            self.send_response(200)
            if allowed:
                self.send_header("Access-Control-Allow-Origin", self.server.origin)
                self.send_header("Vary", "Origin")
            self.send_header("Content-Type", "application/octet-stream")  # never Content-Encoding: the UI gunzips
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if head:
                return
            try:
                shutil.copyfileobj(fh, self.wfile, _BLOCK)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.server.note("the browser closed the connection before the whole file was sent")
                return
        self.server.fetched += 1
        self.server.note(f"sent {path.name} ({size / 1e6:,.1f} MB) to {origin or 'a client without Origin'}")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send_file(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send_file(head=True)

    def do_OPTIONS(self) -> None:  # noqa: N802
        if self._bad_host():
            return
        _, allowed = self._origin()
        if not allowed:
            self._answer(403, False, body=b"origin not allowed\n")
            return
        self._answer(204, True, {"Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                 "Access-Control-Allow-Headers": "*", "Access-Control-Max-Age": "86400",
                                 "Access-Control-Allow-Private-Network": "true"})

    def _not_found(self) -> None:
        if not self._bad_host():
            self._answer(404, self._origin()[1], body=b"not found\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_found  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass  # the UI's probes are noise; what matters is said through TraceServer.note


class TraceServer(http.server.HTTPServer):
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) for one file; ``fetched`` counts whole sends."""

    def __init__(self, port: int = DEFAULT_PORT, origin: str = UI_ORIGIN,
                 log: Callable[[str], None] | None = None) -> None:
        self.origin = origin
        self.file: Path | None = None
        self.url_path = ""
        self.fetched = 0
        self._log = log
        self._said: set[str] = set()
        try:
            super().__init__((LOOPBACK, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DpprofError(f"port {port} on {LOOPBACK} is busy (another `dpprof perfetto --open`, or "
                                  "trace_processor_shell --httpd?): stop it, or serve elsewhere with --port "
                                  "and forward it to 9001") from None
            raise DpprofError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}") from None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def hosts(self) -> tuple[str, ...]:
        """``Host`` headers a request may carry: this port's, then 9001's (a forward from 9001 to this port)."""
        ports = dict.fromkeys((self.port, DEFAULT_PORT))
        return tuple(f"{name}:{p}" for p in ports for name in (LOOPBACK, "localhost"))

    def set_file(self, path: Path) -> None:
        self.file = Path(path)
        self.url_path = "/" + self.file.name

    def note(self, line: str) -> None:
        if self._log is not None:
            self._log(line)

    def note_once(self, line: str) -> None:
        """``note``, once per distinct line: a page that retries must not flood the terminal."""
        if line not in self._said:
            self._said.add(line)
            self.note(line)

    def serve_until_fetched(self, keep_serving: bool = False) -> int:
        """Answer requests until the file was sent whole (or forever with ``keep_serving``); Ctrl-C stops."""
        try:
            while keep_serving or not self.fetched:
                self.handle_request()
        except KeyboardInterrupt:
            self.note("stopped (Ctrl-C)")
        return self.fetched


def browser_available() -> bool:
    """A graphical browser can be opened here (not a console one that would take over the terminal)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    console = isinstance(browser, webbrowser.GenericBrowser) and not isinstance(browser, webbrowser.BackgroundBrowser)
    return not console and bool(getattr(browser, "background", True))


def open_in_ui(server: TraceServer, path: Path, *, open_browser: bool = True, keep_serving: bool = False,
               say: Callable[[str], None] = print) -> int:
    """Serve ``path`` on ``server``, print the link (and open it when a browser is available); returns the
    number of times the file was sent."""
    server.set_file(path)
    link = ui_link(DEFAULT_PORT, path.name, server.origin)
    say(f"open in Perfetto: {link}")
    say(f"serving {path} on http://{LOOPBACK}:{server.port} (this machine only) "
        + ("until Ctrl-C" if keep_serving else "until the UI has fetched it (Ctrl-C stops)"))
    say(ssh_hint(server.port))
    if open_browser and browser_available():
        try:
            webbrowser.open_new_tab(link)
        except webbrowser.Error:
            say("could not open a browser: open the link yourself")
    return server.serve_until_fetched(keep_serving)
