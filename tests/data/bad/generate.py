"""The damaged-trace corpus: every case, built from the shrunk real trace of ``base.py``.

Each case is a folder ``tests/data/bad/<case>/`` holding the file(s) ``dpprof analyze`` is pointed at.
Small cases are committed; ``LARGE`` ones (megabytes) are generated into a temporary folder at test
time. ``python tests/data/bad/generate.py [OUT]`` rewrites the committed ones (deterministic bytes;
a test checks the committed files match this script). What each case must give (analyze with a
warning, or one clear error line) is written in ``tests/reliability/test_bad_traces.py`` and
``docs/reliability.md``.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.data.bad import cases_event, cases_file, cases_hostile  # noqa: E402
from tests.data.bad.base import DAMAGED, Files  # noqa: E402

__all__ = ["CASES", "DAMAGED", "HERE", "LARGE", "case_dir", "case_files", "write_case"]
HERE = Path(__file__).resolve().parent


def _cases(module: ModuleType) -> dict[str, Callable[[], Files]]:
    """The public functions of a cases module, in the order they are written there."""
    return {n: f for n, f in vars(module).items()
            if inspect.isfunction(f) and f.__module__ == module.__name__ and not n.startswith("_")}


CASES: dict[str, Callable[[], Files]] = {**_cases(cases_file), **_cases(cases_event), **_cases(cases_hostile)}
#: Generated at test time, never committed (uncompressed: 130 KB to 48 MB each).
LARGE = frozenset({"deep_nesting_extreme", "long_name", "truncated_json", "top_level_list", "plain_named_gz",
                   "utf8_bom", "gzip_bomb", "manifest_deep"})


def write_case(name: str, out: Path) -> Path:
    """Write case ``name`` into ``out/<name>/`` and return that folder (run-directory cases have subfolders)."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, data in CASES[name]().items():
        (folder / fname).parent.mkdir(parents=True, exist_ok=True)
        (folder / fname).write_bytes(data)
    return folder


def case_files(folder: Path) -> dict[str, bytes]:
    """Every file of a case folder by its path inside it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def case_dir(name: str, tmp: Path) -> Path:
    """The folder of case ``name``: the committed one, or a fresh one under ``tmp`` for large cases."""
    return write_case(name, tmp) if name in LARGE else HERE / name


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE
    for name in CASES:
        if name not in LARGE or out != HERE:
            write_case(name, out)
    sizes = {str(p): p.stat().st_size for p in out.glob("*/**/*") if p.is_file()}
    print(json.dumps({"cases": len(CASES), "written_to": str(out), "bytes": sum(sizes.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
