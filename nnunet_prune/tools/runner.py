"""The one subprocess runner: every step of the benchmark, the demo, a cluster job, ``train-folds``, the INT8 export's
checks (a stock nnU-Net console script or a command of this package) runs through :class:`StepRunner`.

A runner is given its steps' whole environment (the caller composes it from the user's environment once: nothing
here reads or writes ``os.environ``); each step may add variables. The output of a step goes to its log file
(``<log_dir>/<method>.<step>.log``; the benchmark) or is streamed, filtered and indented, to the terminal (the
demo). Every command can be appended, with the variables that matter, to a ``commands.sh`` that replays it. A step
that SIGINT ended (Ctrl-C) raises :class:`StepInterrupted`, a :class:`KeyboardInterrupt`, never a failure; once the
shared ``stop`` event is set no step starts any more. Nothing here imports torch or nnU-Net.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

from nnunet_prune import NnUNetPruneError
from nnunet_prune.tools.quiet import is_banner_line

#: exit codes of a command that SIGINT ended (killed by it, or a shell's 128 + 2)
INTERRUPTED_CODES = (-signal.SIGINT, 128 + signal.SIGINT)
#: starts of streamed lines left out (nnU-Net prints its whole plan as one dict)
SKIPPED_PREFIXES = ("{'data_identifier'",)
#: lines of output kept for the message of a failed streamed step
TAIL_LINES = 40


class StepFailed(NnUNetPruneError):
    """A step failed; the message names the step or command and holds the end of its output."""


class StepInterrupted(KeyboardInterrupt):
    """A step ended by Ctrl-C (its command exited on SIGINT, or the run is stopping): not a failure."""


def program_line(cmd: Sequence[str]) -> str:
    """``cmd`` as a shell line that pastes as it is: the program by its file name (this Python: ``python``), every
    argument quoted where needed."""
    program = "python" if cmd[0] == sys.executable else Path(cmd[0]).name
    return shlex.join([program, *cmd[1:]])


class StepRunner:
    """Runs the commands of one run's steps in ``cwd`` with ``env`` (the steps' whole environment, as composed by
    the caller).

    ``log_dir``: each step's output goes to ``<log_dir>/<method>.<step>.log`` (None: nowhere); ``echo``: each line
    of output that is not noise (progress-bar redraws keep their last state; nnU-Net's banners,
    :func:`nnunet_prune.tools.quiet.is_banner_line`, and :data:`SKIPPED_PREFIXES` are left out) is passed to it,
    indented, after the command itself (None: nothing is shown). ``commands``: the ``commands.sh`` each command is
    appended to, under a comment ``# <note_prefix><method>: <step>``, with the ``NNUNET_PRUNE_*`` variables,
    ``nnUNet_results`` and the step's own variables before it (None: not recorded). ``stop``: set it (Ctrl-C) and
    no step starts any more, and a step that fails then counts as interrupted.
    """

    def __init__(self, env: Mapping[str, str], cwd: str | Path, *, log_dir: Path | None = None,
                 echo: Callable[[str], None] | None = None, commands: Path | None = None, note_prefix: str = "",
                 stop: threading.Event | None = None):
        self.env = dict(env)
        self.cwd = Path(cwd)
        self.log_dir, self.echo, self.commands, self.note_prefix = log_dir, echo, commands, note_prefix
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a step: the runner's, plus ``extra``."""
        return {**self.env, **(extra or {})}

    def shown_line(self, cmd: Sequence[str], extra: Mapping[str, str] | None = None) -> str:
        """The line of ``commands.sh`` that replays ``cmd``: the variables that matter, then :func:`program_line`."""
        env = self.environment(extra)
        shown = {k: env[k] for k in sorted(env) if k.startswith("NNUNET_PRUNE_") or k == "nnUNet_results"}
        shown.update(extra or {})
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()) + " " + program_line(cmd)

    def record(self, text: str) -> None:
        """Append ``text`` (lines) to ``commands.sh`` (nothing without one)."""
        if self.commands is not None:
            with self._lock, open(self.commands, "a") as f:
                f.write(text)

    def run(self, method: str, step: str, cmd: Sequence[str], extra_env: Mapping[str, str] | None = None) -> None:
        """Run step ``step`` of ``method`` (e.g. ``dense``, ``train_fold_0``): the command ``cmd`` with
        :meth:`environment` (plus ``extra_env``), its output logged and/or streamed, the command recorded.

        Raises:
            StepFailed: it exited with a non-zero code. With a log file the message names the step and the log and
                holds its last error lines; streamed, it shows the command and its last :data:`TAIL_LINES` lines.
            StepInterrupted: SIGINT ended it (Ctrl-C), or the run is stopping (then it does not start).
            KeyboardInterrupt: Ctrl-C reached this process while the command ran (the command is ended).
        """
        if self.stop.is_set():
            raise StepInterrupted(f"{method} {step}: not started (interrupted)")
        line = self.shown_line(cmd, extra_env)
        self.record(f"# {self.note_prefix}{method}: {step}\n{line}\n")
        log = self.log_dir / f"{method}.{step}.log" if self.log_dir is not None else None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        if self.echo is not None:
            self.echo(f"    $ {program_line(cmd)}")
        code, tail = self._execute(cmd, self.environment(extra_env), log, line)
        if code in INTERRUPTED_CODES or (code != 0 and self.stop.is_set()):
            raise StepInterrupted(f"{method} {step}: interrupted (exit code {code})")
        if code != 0:
            raise StepFailed(self._failure(step, cmd, code, log, tail))

    def _execute(self, cmd: Sequence[str], env: dict[str, str], log: Path | None,
                 line: str) -> tuple[int, list[str]]:
        """Run ``cmd``; its output, as it comes, into ``log`` (the raw bytes, after ``$ line``) and, filtered, to
        :attr:`echo`. Returns (exit code, its last lines). Any exception here (Ctrl-C) ends the command first."""
        proc = subprocess.Popen(list(cmd), env=env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with open(log, "wb") if log is not None else nullcontext() as f:
            if f is not None:
                f.write(f"$ {line}\n".encode())
                f.flush()
            try:
                for raw in proc.stdout:
                    if f is not None:
                        f.write(raw)
                    # a progress bar redraws itself with carriage returns: keep only its last state
                    text = raw.decode("utf-8", "replace").rstrip("\r\n").split("\r")[-1].rstrip()
                    tail.append(text)
                    if self.echo is not None and text and not text.lstrip().startswith(SKIPPED_PREFIXES) \
                            and not is_banner_line(text):
                        self.echo(f"    | {text[:160]}")
                return proc.wait(), list(tail)
            except BaseException:
                proc.kill()
                proc.wait()
                raise

    @staticmethod
    def _failure(step: str, cmd: Sequence[str], code: int, log: Path | None, tail: list[str]) -> str:
        """The message of a failed step: from its log (the last error lines) or from its streamed output."""
        if log is None:
            return f"`{program_line(cmd)}` failed (exit code {code}). Last output:\n" + "\n".join(tail)
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith(("ERROR", "RuntimeError", "ValueError", "AssertionError"))
                  or "Error:" in x]
        return f"{step} failed (exit code {code}; log: {log}): " + "; ".join((errors or lines)[-3:])[-600:]
