"""Progress of a long loop (evaluation, prediction, export): a bar on a terminal, a periodic log line elsewhere.

On a terminal the count, its rate and (with a known total) the ETA are a tqdm bar; where stderr is a
file or a pipe (CI logs, ``nohup``, a supervisor), where a bar would write an unreadable stream of
carriage returns, one line every ``interval_s`` seconds says the same::

    evaluate: 12,800 examples, 5,120 examples/s, 40% of 32,000, about 4 s left

and a last line gives the total of a run that wrote any.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "Progress"]

#: Seconds between two progress lines where stderr is no terminal.
LOG_INTERVAL_S = 30.0


class Progress:
    """Counts ``unit`` done with :meth:`update`; shows them on ``file`` (default stderr) while it runs.

    Args:
        desc: what runs, first on the bar and the lines ("evaluate").
        unit: what is counted, plural ("examples", "rows").
        total: how many there will be, when known (settable later as :attr:`total`): the bar's
            length and the ETA.
        enabled: False shows nothing (``RunConfig.progress_bar``; ranks other than 0).
        file: where it goes; a bar when it is a terminal, else the lines.
        interval_s: seconds between lines (default :data:`LOG_INTERVAL_S`).
        clock: seconds, monotonic (a test's own clock).

    Example::

        with Progress("predict", total=20_000) as progress:
            for batch in batches:
                ...
                progress.update(batch.batch_size)
    """

    def __init__(self, desc: str, unit: str = "examples", total: int | None = None, enabled: bool = True,
                 file: IO[str] | None = None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.unit, self._total = desc, unit, total
        self.done = 0
        self._file = sys.stderr if file is None else file
        self._interval_s = LOG_INTERVAL_S if interval_s is None else interval_s
        self._clock = clock
        self._started = self._logged_at = clock()
        self._lines = 0
        self._enabled = enabled
        terminal = enabled and getattr(self._file, "isatty", lambda: False)()
        self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self._file,
                         dynamic_ncols=True) if terminal else None

    @property
    def total(self) -> int | None:
        """How many there will be (None: unknown)."""
        return self._total

    @total.setter
    def total(self, total: int | None) -> None:
        self._total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int) -> None:
        """``n`` more done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._enabled and self._clock() - self._logged_at >= self._interval_s:
            self._logged_at = self._clock()
            self._write(self._line())

    def close(self) -> None:
        """Ends the bar, or writes the last line of a run that wrote any."""
        if self._bar is not None:
            if self._total is not None and self.done != self._total:  # the total was an estimate
                self.total = self.done
            self._bar.close()
        elif self._lines:
            self._write(f"{self.desc}: {self.done:,} {self.unit} in {self._clock() - self._started:.0f} s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = self._clock() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        line = f"{self.desc}: {self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s"
        if self._total:
            line += f", {100 * self.done / self._total:.0f}% of {self._total:,}"
            if rate > 0:
                line += f", about {max(self._total - self.done, 0) / rate:.0f} s left"
        return line

    def _write(self, line: str) -> None:
        self._lines += 1
        print(line, file=self._file, flush=True)
