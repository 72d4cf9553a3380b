"""Console progress of a run: a rich progress bar over steps, one line per epoch."""

from __future__ import annotations

from typing import Any


class ConsoleProgress:
    """Shown by global rank 0 only. On a non-terminal (CI, torchrun pipes) rich prints no live bar."""

    def __init__(self, rank: int = 0) -> None:
        from dpprof.term import console

        self.console = console()  # stdout: torchrun passes it through untouched
        self.rank = rank
        self._progress: Any = None
        self._task: Any = None

    def begin(self, total_steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]steps"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                  console=self.console, transient=False)
        self._task = self._progress.add_task("steps", total=total_steps, info="")
        self._progress.start()

    def advance(self, rec: dict[str, Any]) -> None:
        if self._progress is None:
            return
        rate = rec.get("images_per_s")
        info = f"epoch {rec['epoch']}  {rec['wall_ms']:.1f} ms/step"
        if rate:
            info += f"  {rate:.0f} img/s"
        if rec.get("profiled"):
            info += "  (profiled)"
        self._progress.update(self._task, advance=1, info=info)

    def epoch(self, rec: dict[str, Any]) -> None:
        test = "-" if rec.get("test_acc") is None else f"{rec['test_acc']:.3f}"
        train = "-" if rec.get("train_acc") is None else f"{rec['train_acc']:.3f}"
        partial = " (partial)" if rec.get("partial") else ""
        text = (f"epoch {rec['epoch']}{partial}: {rec['steps']} steps, train acc {train}, "
                f"held-out acc {test}, {rec['images_per_s']:.0f} img/s")
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            self.console.print(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
