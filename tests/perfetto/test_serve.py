"""The loopback server for ui.perfetto.dev, checked with a plain HTTP client (the UI cannot be reached here)."""

from __future__ import annotations

import errno
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpprof.errors import DpprofError
from dpprof.perfetto import serve
from dpprof.perfetto.serve import UI_ORIGIN, TraceServer, open_in_ui
from tests.synth import write_dp_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "all ranks.json.gz"  # a space: the link and the server must agree on escaping
    path.write_bytes(os.urandom(3_000_000))
    return path


@pytest.fixture()
def server(trace: Path) -> Iterator[tuple[TraceServer, threading.Thread, list[str]]]:
    said: list[str] = []
    srv = TraceServer(0, log=said.append)
    t = threading.Thread(target=open_in_ui, args=(srv, trace), kwargs={"open_browser": False, "say": said.append},
                         daemon=True)
    t.start()
    yield srv, t, said
    if t.is_alive():  # the test failed before the file was sent: end the loop with one fetch
        _get(srv.port, "/" + urllib.parse.quote(trace.name))
        t.join(10)
    srv.server_close()


def _get(port: int, path: str, origin: str | None = None, method: str = "GET",
         host: str = "127.0.0.1", host_header: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request to ``host:port``; ``host_header``: the Host it says (a browser sends the name it resolved)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest(method, path, skip_host=host_header is not None)
    if host_header is not None:
        conn.putheader("Host", host_header)
    if origin:
        conn.putheader("Origin", origin)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_serves_the_ui_origin_and_stops_after_the_fetch(server: tuple, trace: Path) -> None:
    srv, thread, said = server
    path = "/" + urllib.parse.quote(trace.name)
    link = next(line for line in said if line.startswith("open in Perfetto: "))
    # The UI fetches only from 127.0.0.1:9001: the link names 9001 whatever the port served on.
    assert link == f"open in Perfetto: https://ui.perfetto.dev/#!/?url=http://127.0.0.1:9001{path}&referrer=dpprof"
    # The UI probes the port for a trace processor: 404, and the server goes on.
    for method, probe in (("POST", "/status"), ("GET", "/"), ("GET", "/other.json.gz")):
        status, headers, _ = _get(srv.port, probe, UI_ORIGIN, method)
        assert status == 404 and headers["access-control-allow-origin"] == UI_ORIGIN
    # Another origin may not read it.
    status, headers, body = _get(srv.port, path, "https://evil.example")
    assert status == 403 and "access-control-allow-origin" not in headers and body != trace.read_bytes()
    status, headers, _ = _get(srv.port, path, "https://evil.example", "OPTIONS")
    assert status == 403 and "access-control-allow-origin" not in headers
    # The UI's preflight (Chrome asks before a public site reaches loopback) and a HEAD do not count as the fetch.
    status, headers, _ = _get(srv.port, path, UI_ORIGIN, "OPTIONS")
    assert status == 204 and headers["access-control-allow-origin"] == UI_ORIGIN
    assert headers["access-control-allow-private-network"] == "true"
    status, headers, body = _get(srv.port, path, UI_ORIGIN, "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == trace.stat().st_size
    assert thread.is_alive() and srv.fetched == 0
    # The UI's GET: the file, with the CORS header for the UI only; then the server stops by itself.
    status, headers, body = _get(srv.port, path, UI_ORIGIN)
    assert status == 200 and body == trace.read_bytes()
    assert headers["access-control-allow-origin"] == UI_ORIGIN and "content-encoding" not in headers
    thread.join(10)
    assert not thread.is_alive() and srv.fetched == 1
    assert any("refused a request from origin 'https://evil.example'" in line for line in said)


def test_other_hosts_are_refused_and_do_not_end_the_serving(server: tuple, trace: Path) -> None:
    """A page whose name an attacker re-pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host: 403, with
    or without an Origin, for every method; it is said once and does not count as the fetch."""
    srv, thread, said = server
    path = "/" + urllib.parse.quote(trace.name)
    evil = f"attacker.example:{srv.port}"
    for method, origin in (("GET", None), ("GET", UI_ORIGIN), ("HEAD", None), ("OPTIONS", UI_ORIGIN),
                           ("POST", UI_ORIGIN)):
        status, headers, body = _get(srv.port, path, origin, method, host_header=evil)
        assert status == 403 and "access-control-allow-origin" not in headers and body != trace.read_bytes()
    for other in (f"127.0.0.1:{srv.port + 1}", "127.0.0.1", f"127.0.0.1.attacker.example:{srv.port}"):
        assert _get(srv.port, path, host_header=other)[0] == 403, other
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # HTTP/1.0 without any Host
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert s.recv(64).startswith(b"HTTP/1.0 403")
    assert thread.is_alive() and srv.fetched == 0
    assert sum("refused a request for host 'attacker.example" in line for line in said) == 1
    assert not any(line.startswith("sent ") for line in said)
    # The names of this machine's loopback are accepted, and 9001's (local port 9001 forwarded to this one).
    for name in (f"localhost:{srv.port}", f"LOCALHOST:{srv.port}", "127.0.0.1:9001", "localhost:9001"):
        assert _get(srv.port, path, UI_ORIGIN, "HEAD", host_header=name)[0] == 200, name
    status, headers, body = _get(srv.port, path, UI_ORIGIN, host_header=f"localhost:{srv.port}")
    assert status == 200 and body == trace.read_bytes() and headers["access-control-allow-origin"] == UI_ORIGIN
    thread.join(10)
    assert not thread.is_alive() and srv.fetched == 1


def _printed(srv: TraceServer, trace: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(srv, "serve_until_fetched", lambda keep_serving=False: 0)
    open_in_ui(srv, trace, open_browser=False, say=said.append)
    return said


def test_link_and_ssh_hint_name_port_9001(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI's content security policy allows only 127.0.0.1:9001: on another port the link still names 9001
    and the one ssh hint forwards local 9001 to the port served; on 9001 the hint forwards 9001 to 9001."""
    srv = TraceServer(0)
    port = srv.port
    try:
        assert port != 9001
        said = _printed(srv, trace, monkeypatch)
        assert said[0].startswith("open in Perfetto: https://ui.perfetto.dev/#!/?url=http://127.0.0.1:9001/")
        hints = [line for line in said if "ssh -L" in line]
        assert len(hints) == 1 and f"ssh -L 9001:127.0.0.1:{port} " in hints[0]
        assert "forward local port 9001" in hints[0] and f"-L {port}:" not in hints[0]
        assert any(f"on http://127.0.0.1:{port} " in line for line in said)
        monkeypatch.setattr(serve, "DEFAULT_PORT", port)  # as if served on the UI's port
        said = _printed(srv, trace, monkeypatch)
        assert said[0].startswith(f"open in Perfetto: https://ui.perfetto.dev/#!/?url=http://127.0.0.1:{port}/")
        hints = [line for line in said if "ssh -L" in line]
        assert len(hints) == 1 and f"ssh -L {port}:127.0.0.1:{port} USER@THIS_HOST" in hints[0]
        assert "forward local port" not in hints[0]
    finally:
        srv.server_close()


def _other_addresses() -> list[str]:
    """This machine's IPv4 address on its default route, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere, only used to pick the interface
            ip = s.getsockname()[0]
        except OSError:
            return []
    return [ip] if not ip.startswith("127.") and ip != "0.0.0.0" else []


def test_binds_loopback_only(server: tuple, trace: Path) -> None:
    srv, thread, _ = server
    assert srv.server_address[0] == "127.0.0.1" and srv.socket.getsockname()[0] == "127.0.0.1"
    for family, host in ((socket.AF_INET, "127.0.0.2"), (socket.AF_INET6, "::1"),
                         *((socket.AF_INET, ip) for ip in _other_addresses())):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            try:
                code = s.connect_ex((host, srv.port))
            except OSError as exc:  # no IPv6 on this machine: nothing can reach it there either
                code = exc.errno or errno.EADDRNOTAVAIL
            assert code != 0, f"{host}:{srv.port} accepted a connection"
    status, _, body = _get(srv.port, "/" + urllib.parse.quote(trace.name))  # no Origin (curl): served, no CORS
    assert status == 200 and body == trace.read_bytes()
    thread.join(10)
    assert not thread.is_alive()


def test_busy_port_is_one_line(trace: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(DpprofError, match=r"^port \d+ on 127.0.0.1 is busy .*--port") as info:
            TraceServer(taken.getsockname()[1])
        assert "\n" not in str(info.value)


def test_keep_serving_until_interrupted(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    srv = TraceServer(0, log=said.append)
    calls = {"n": 0}

    def fake_handle() -> None:  # two fetches, then Ctrl-C
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        srv.fetched += 1

    monkeypatch.setattr(srv, "handle_request", fake_handle)
    assert open_in_ui(srv, trace, open_browser=False, keep_serving=True, say=said.append) == 2
    assert "stopped (Ctrl-C)" in said and any("until Ctrl-C" in line for line in said)
    srv.server_close()


def test_no_console_browser_without_a_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert serve.browser_available() is False


def _open_command(args: list[str], cwd: Path) -> tuple[list[str], str, str, tuple[int, dict[str, str], bytes]]:
    """Run ``dpprof perfetto ARGS --open --port 0 --no-browser``, fetch the printed link as the UI would; the
    process must then exit by itself. Returns (lines up to the link, the rest of stdout, stderr, the fetch)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "dpprof.cli", "perfetto", *args, "--open", "--port", "0",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        url = re.search(r"url=http://127\.0\.0\.1:9001(/\S+?)&referrer=dpprof", "".join(lines))
        port = re.search(r" on http://127\.0\.0\.1:(\d+) ", lines[-1])
        assert url and port, lines
        fetched = _get(int(port.group(1)), url.group(1), UI_ORIGIN)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return lines, out, err, fetched


def test_command_open_serves_once_and_exits(tmp_path: Path) -> None:
    """``dpprof perfetto RUN --open --port 0 --no-browser`` writes, prints the link, serves one fetch, exits 0."""
    traces, _ = write_dp_run(tmp_path, 2, "balanced")
    lines, out, _, (status, headers, body) = _open_command([str(traces.parent)], tmp_path)
    merged = traces.parent / "perfetto" / "all_ranks.json.gz"
    assert status == 200 and headers["access-control-allow-origin"] == UI_ORIGIN and body == merged.read_bytes()
    assert lines[0].startswith("wrote ") and "sent all_ranks.json.gz" in out
    # An earlier output, wherever it lies (known by its first bytes, not its folder), is served again as it is.
    elsewhere = tmp_path / "out" / "m.json.gz"
    elsewhere.parent.mkdir()
    shutil.copy(merged, elsewhere)
    lines, out, _, (status, _, body) = _open_command([str(elsewhere)], tmp_path)
    assert status == 200 and body == merged.read_bytes() and elsewhere.read_bytes() == merged.read_bytes()
    assert not any(line.startswith("wrote ") for line in lines) and "sent m.json.gz" in out
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == ["m.json.gz"]
