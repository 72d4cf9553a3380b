"""What reaches a terminal (issue 12): strings from files are shown with their control characters escaped.

Run on a real pseudo-terminal, where rich draws in colour and a raw ``ESC ] 0 ; … BEL`` would retitle the
window, ``ESC [2J`` clear it and ``\\r\\n`` forge a line: the only escape sequences allowed in the output
are rich's own colours (SGR, ``ESC [ … m``).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpprof.term import clean, console
from tests.data.bad.generate import case_dir

ROOT = Path(__file__).resolve().parents[2]
SGR = re.compile(rb"\x1b\[[0-9;]*m")


def on_pty(*args: str, cwd: Path | None = None) -> tuple[int, bytes]:
    """Run ``dpprof ARGS`` with stdout and stderr on a pty; (exit code, everything it wrote)."""
    main_fd, sub_fd = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("DPPROF_DEBUG", "NO_COLOR")}
    env.update(PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="200", FORCE_COLOR="1")
    p = subprocess.Popen([sys.executable, "-m", "dpprof.cli", *args], stdin=subprocess.DEVNULL, stdout=sub_fd,
                         stderr=sub_fd, env=env, cwd=cwd)
    os.close(sub_fd)
    out = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 60)
        if not ready:
            p.kill()
            pytest.fail("no output for 60 s")
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    return p.wait(timeout=60), out


def assert_no_raw_controls(out: bytes) -> None:
    rest = SGR.sub(b"", out).replace(b"\r\n", b"\n")  # the pty turns \n into \r\n itself
    bad = sorted({c for c in rest if c < 0x20 and c not in (0x0A,)} | ({0x7F} & set(rest)))
    assert not bad, f"raw control characters reached the terminal: {[hex(c) for c in bad]}"
    assert "\u202e".encode() not in rest


def test_trace_strings_are_escaped_on_a_terminal(tmp_path: Path) -> None:
    trace = next(case_dir("terminal_escapes", tmp_path).iterdir())
    rc, out = on_pty("analyze", str(trace), "--no-json")
    assert rc == 0, out
    assert SGR.search(out), "not a terminal for rich: the test would prove nothing"
    assert_no_raw_controls(out)
    assert rb"nccl\x1b]0;pwned\x07\x1b[2J\x1b[Hall good\r\n\u202e" in out  # shown, escaped
    assert b"all good\n" not in out.replace(b"\r\n", b"\n")  # no forged line


def test_errors_and_file_names_are_one_escaped_line(tmp_path: Path) -> None:
    bad = tmp_path / "x\x1b]0;t\x07\nforged line"
    rc, out = on_pty("analyze", str(bad))
    assert rc == 2
    assert_no_raw_controls(out)
    text = out.decode().replace("\r\n", "\n").strip()
    assert text.count("\n") == 0 and "x\\x1b]0;t\\x07\\nforged line: no such file" in text, text


def test_nvml_warnings_and_markup_on_a_terminal(tmp_path: Path) -> None:
    """merge-nvml prints the NVML file's own warning lines; a backend in rich markup is printed as text."""
    run = tmp_path / "run"  # merge-nvml writes into the run: a copy, not the committed case
    shutil.copytree(case_dir("sidecars_wrong_types", tmp_path), run)
    rc, out = on_pty("merge-nvml", str(run))
    assert rc == 0, out
    assert_no_raw_controls(out)
    assert rb"\x1b]0;pwned\x07" in out
    trace = next(case_dir("rich_markup", tmp_path).iterdir())
    rc, out = on_pty("analyze", str(trace), "--no-json")
    assert rc == 0 and b"[/red][bold]nccl[/][link=file:///etc/passwd]x" in out, out


def test_perfetto_prints_the_runs_strings_escaped(tmp_path: Path) -> None:
    """perfetto repeats the NVML file's warnings (an ``ESC ] 0 ; pwned BEL`` among them) and the paths it wrote."""
    run = tmp_path / "run"
    shutil.copytree(case_dir("sidecars_wrong_types", tmp_path), run)
    rc, out = on_pty("perfetto", str(run))
    assert rc == 0, out
    assert_no_raw_controls(out)
    assert rb"\x1b]0;pwned\x07" in out and b"wrote " in out
    rc, out = on_pty("perfetto", str(run), "--out", "-")  # megabytes of JSON onto a terminal: refused
    assert rc == 2 and b"standard output is a terminal" in out, out


def test_clean() -> None:
    assert clean("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert clean("line\nfake\r") == "line\\nfake\\r"
    assert clean("\x9b31m\x7f\u202eabc\u2028") == "\\x9b31m\\x7f\\u202eabc\\u2028"
    assert clean("caf\udce9") == "caf\\udce9"  # an undecodable byte of a file name: printable, not an error
    assert clean("µs — ok\t") == "µs — ok\\t"
    assert clean(42) == "42"


def test_console_cleans_every_string_and_reads_no_markup(tmp_path: Path) -> None:
    from rich.table import Table

    out = tmp_path / "out.txt"
    with open(out, "w", encoding="utf-8") as fh:
        c = console(file=fh, width=120)
        table = Table()
        table.add_column("\x1b[31mhead")
        table.add_row("cell\x07[/red]")
        c.print("text\x1b]0;t\x07 [bold]x[/bold]")
        c.print(table)
    text = out.read_text()
    assert "\x1b" not in text and "\x07" not in text
    assert "text\\x1b]0;t\\x07 [bold]x[/bold]" in text and "cell\\x07[/red]" in text and "\\x1b[31mhead" in text
