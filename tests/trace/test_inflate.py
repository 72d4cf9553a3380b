"""Bounded gunzip (dpprof.trace.inflate): the limit rule, where it stops, and --max-inflate end to end."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from dpprof.cli import main
from dpprof.errors import TraceError
from dpprof.trace import inflate
from dpprof.trace.inflate import gunzip, gunzip_pieces, inflate_limit, parse_size
from tests.data.bad.generate import case_dir

MiB = 1 << 20


def bomb(inflated: int, head: bytes = b"") -> bytes:
    """gzip of ``head`` then ``inflated`` bytes of spaces (~1000x compression)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(head)] + [c.compress(b" " * MiB) for _ in range(inflated // MiB)]
    return b"".join(parts) + c.flush()


def test_limit_rule() -> None:
    assert inflate_limit(0) == inflate_limit(10 * MiB) == 1 << 30  # the 1 GiB floor
    assert inflate_limit(100 * MiB) == 5000 * MiB  # 50x the compressed size
    assert inflate_limit(100 * MiB, max_inflate=5) == 5  # --max-inflate decides alone
    assert parse_size("8G") == 8 << 30 and parse_size("512MiB") == 512 * MiB and parse_size("1000") == 1000
    assert parse_size("1.5k") == 1536
    for bad in ("", "x", "-1", "0", "1e3", "5P"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_stops_past_the_limit_without_inflating_the_rest() -> None:
    data = bomb(64 * MiB)
    got = 0
    with pytest.raises(TraceError, match=r"bomb\.gz: inflates to more than 8,388,608 bytes"):
        for piece in gunzip_pieces(data, 8 * MiB, "bomb.gz"):
            got += len(piece)
    assert got <= 8 * MiB + inflate.PIECE_BYTES  # one piece past the limit at most, never the 64 MiB


def test_members_padding_and_damage() -> None:
    text = b'{"traceEvents": []}' * 1000
    two = gzip.compress(text[:5000]) + b"\0" * 7 + gzip.compress(text[5000:])
    assert bytes(gunzip(two, 1 << 30, "p")) == text  # several members and zero padding, as gzip reads them
    one = gzip.compress(text)
    for damaged, why in ((one[:-20], "truncated"), (one + b"junk", "trailing bytes"),
                         (one[:30] + bytes(40) + one[70:], "corrupt")):
        with pytest.raises(TraceError, match=why):
            gunzip(damaged, 1 << 30, "p")


def test_max_inflate_option_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    trace = next(case_dir("control", tmp_path).iterdir())  # ~130 kB of JSON, gzipped
    assert main(["analyze", str(trace), "--no-json", "--max-inflate", "64k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dpprof analyze: error:") and "inflates to more than 65,536 bytes" in err, err
    assert main(["analyze", str(trace), "--no-json", "--max-inflate", "1M"]) == 0
    capsys.readouterr()
    # The default rule: with a 2 MiB floor a 16 MiB bomb of 16 kB is refused (50 x 16 kB < 2 MiB).
    monkeypatch.setattr(inflate, "INFLATE_FLOOR_BYTES", 2 * MiB)
    b = tmp_path / "bomb.pt.trace.json.gz"
    b.write_bytes(bomb(16 * MiB, b'{"traceEvents": [\n'))
    for cmd in (["analyze", str(b), "--no-json"], ["report", str(b), "--out", str(tmp_path / "r.html")]):
        assert main(cmd) == 2
        assert "inflates to more than 2,097,152 bytes" in capsys.readouterr().err
    assert main(["analyze", str(b), "--no-json", "--max-inflate", "64M"]) == 2  # allowed: then not a trace
    assert "inflates" not in capsys.readouterr().err
