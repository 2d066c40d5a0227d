"""What a grading run shows while it works: students done, failures so far, time left.

On a terminal, a tqdm bar (``grading: 40%|████ | 12/30 students [02:10<03:15, failures=1]``, the time
left estimated by tqdm from the students done so far). Anywhere else (a Slurm log, a file, a pipe), one
plain line per student: ``grading: 12/30 students done, 1 failure, about 3 min 15 s left (last: alice)``.
A failure is a student for whom something of the lab went wrong (a notebook that could not be read or
graded, results that could not be saved), not a student who failed an exercise.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Optional

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Progress:
    """Report each graded student; a bar on a terminal, plain lines elsewhere, nothing if ``enabled`` is False."""

    def __init__(self, total: int, *, enabled: bool = True, stream: Optional[IO[str]] = None,
                 terminal: Optional[bool] = None) -> None:
        self.total, self.done, self.failures = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = terminal if terminal is not None else bool(isatty and isatty())
        self.began = time.monotonic()
        self.bar = tqdm(total=total, desc="grading", unit="student", file=self.stream, dynamic_ncols=True,
                        postfix={"failures": 0}) if self.enabled and self.terminal else None
        if self.enabled and not self.terminal:
            self._line(f"grading: {total} student{'s' if total != 1 else ''} to grade")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def student(self, student: str, failed: bool = False) -> None:
        """One more student graded (``failed``: something of the lab went wrong for them)."""
        self.done += 1
        self.failures += bool(failed)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(failures=self.failures, refresh=False)
            self.bar.update()
            return
        elapsed = time.monotonic() - self.began
        left = elapsed / self.done * (self.total - self.done)
        self._line(f"grading: {self.done}/{self.total} students done, {self.failures} failure"
                   f"{'s' if self.failures != 1 else ''}, "
                   + (f"about {_duration(left)} left" if self.done < self.total else f"took {_duration(elapsed)}")
                   + f" (last: {student}{', FAILED' if failed else ''})")

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._line(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
