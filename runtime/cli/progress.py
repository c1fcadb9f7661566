"""Progress bars of the long-running tools (decode, client, loadtest): tqdm on stderr.

A bar is drawn only when stderr is a terminal (or `enabled=True`), tqdm is installed (optional: it
comes with the profile, train and test extras; without it there is no bar) and the job is still
running DELAY_S seconds after it started (tqdm's `delay`): short jobs print nothing extra. The
library (InfGenEngine.decode's `progress` callback) never draws a bar itself.
"""
from __future__ import annotations

import functools
import sys
import threading

DELAY_S = 3.0  # seconds before a bar appears


@functools.cache
def tqdm_class():
    """tqdm.tqdm, or None when tqdm is not installed (probed once)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def add_progress_option(parser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help=f"no progress bar (default: one on stderr for a job past {DELAY_S:g} s, "
                             "when stderr is a terminal and tqdm is installed)")


class Bar:
    """A progress(done, total) callback that draws a tqdm bar on stderr, made at the first call
    (when the total is known); also bar.update(n) when the caller counts. enabled None: only when
    stderr is a terminal. A no-op when not enabled or without tqdm. Use as a context manager."""

    def __init__(self, desc: str, unit: str = "it", total: int | None = None, enabled: bool | None = None,
                 delay: float = DELAY_S, file=None):
        self.file = file or sys.stderr
        self.enabled = (self.file.isatty() if enabled is None else enabled) and tqdm_class() is not None
        self.desc, self.unit, self.total, self.delay = desc, unit, total, delay
        self.bar = None
        if self.enabled and total is not None:
            self._open(total)

    def _open(self, total: int) -> None:
        self.bar = tqdm_class()(total=total, desc=self.desc, unit=self.unit, delay=self.delay, file=self.file,
                                leave=False, dynamic_ncols=True)

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self._open(total)
        elif self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def describe(self, desc: str) -> None:
        """A new description (the item now in progress)."""
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)

    def update(self, n: int = 1) -> None:
        """n more done (update(0): redraw the elapsed time, once past the delay)."""
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line: str) -> None:
        """A line on the bar's stream, above the bar (tqdm.write), or a plain print without one."""
        if self.bar is not None:
            self.bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def wait(self, fn, interval: float = 0.5):
        """fn() -> its result; with a bar, fn runs in a daemon thread while the bar's elapsed time
        ticks every `interval` seconds (one long request: no fake fraction, the time it has taken)."""
        if self.bar is None:
            return fn()
        out = {}

        def work():
            try:
                out["value"] = fn()
            except BaseException as exc:  # re-raised in the caller's thread
                out["error"] = exc
        t = threading.Thread(target=work, daemon=True)  # daemon: Ctrl-C ends the tool, not the request
        t.start()
        while t.is_alive():
            t.join(interval)
            self.bar.update(0)
        if "error" in out:
            raise out["error"]
        return out["value"]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
