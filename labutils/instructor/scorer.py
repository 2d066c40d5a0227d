"""The scoring process: runs inside the sandbox, calls the students' functions, sends back plain data.

    python -m labutils.instructor.scorer      # started by the grader (labutils.instructor.scoring)

It imports torch and numpy once, then serves requests read from stdin: each one is a solution cell's
code, the function it defines, the modules it may import and the cases to call it on. For each request
it forks a worker, which reads the request itself (the scoring process never holds one, so no solution
finds the instructor's or another student's code in the memory it inherits) and forks one child, which
runs the notebook's import lines and the solution cell in a fresh namespace and calls the function on
every case with ``labutils.exercise.call``; the child sends the outcomes back as plain data
(:mod:`labutils.instructor.plain`) and exits. After each request every other process of the sandbox is
killed and ``/tmp`` is emptied, so nothing one solution leaves behind meets the next.
The grader decides the points from the outcomes; nothing here is trusted.

Only the files of torch, numpy, ``labutils.exercise`` and the request's ``modules`` exist in this
sandbox. Imports from the student's code are further limited to those and harmless standard-library
modules (a clear ``ModuleNotFoundError``); that check is a courtesy, the sandbox is the wall.
"""

from __future__ import annotations

import builtins
import os
import select
import shutil
import signal
import struct
import sys
import time

SAFE_STDLIB = frozenset(
    "__future__ abc bisect cmath collections contextlib copy dataclasses decimal enum fractions functools heapq "
    "itertools math numbers operator random re statistics string textwrap types typing warnings".split()
)
SOLUTION_FILE = "<solution cell>"


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd`` (fewer only at its end), read without a buffer: nothing beyond them is taken."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes | None:
    head = _read_exactly(fd, 8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    data = _read_exactly(fd, size)
    return data if len(data) == size else None


def write_frame(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _allow_imports(namespace: dict, modules: list[str], views: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse imports from the student's code outside torch, numpy, ``modules`` (and the ``views`` of other
    labutils modules: their re-exports of ``modules``) and SAFE_STDLIB."""
    allowed = {"torch", "numpy", *SAFE_STDLIB}
    dotted = set(views)
    for name in modules:
        parts = name.split(".")
        dotted |= {".".join(parts[: n + 1]) for n in range(len(parts))}
    original = builtins.__import__

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):  # type: ignore[no-untyped-def]
        if globals is namespace and level == 0:
            top = name.split(".")[0]
            if top not in allowed and name not in dotted:
                listed = ", ".join(["torch", "numpy", *modules])
                raise ModuleNotFoundError(f"{name} is not available when your solution is graded; it may import "
                                          f"{listed} and the standard library's math, functools, itertools...")
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded


def child(request: dict, fd: int) -> None:
    """In the forked child: run the solution cell, call the function on every case, write the outcomes."""
    from labutils.exercise import Case, Net, Outcome, call
    from labutils.instructor.plain import PlainError, encode

    def send(value: object) -> None:
        data = encode(value)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def outcome(o: Outcome) -> dict:
        return {"result": o.result, "error": o.error, "changed_inputs": list(o.changed_inputs),
                "hooks_left": list(o.hooks_left)}

    os.chdir(request["workdir"])
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    _allow_imports(namespace, list(request["modules"]), list(request.get("views", [])))
    for line in request["prelude"]:
        try:
            exec(compile(line, "<notebook imports>", "exec"), namespace)
        except BaseException:  # an import the scoring process does not offer: the solution may not need it
            pass
    cases = [Case(str(n), tuple(Net(a["builder"], a["seed"]) if isinstance(a, dict) and a.get("net") else a
                                for a in args)) for n, args in enumerate(request["cases"])]
    import linecache

    lines = request["code"].splitlines(keepends=True)
    linecache.cache[SOLUTION_FILE] = (len(request["code"]), None, lines, SOLUTION_FILE)  # error lines quote the code
    try:
        exec(compile(request["code"], SOLUTION_FILE, "exec"), namespace)
        fn = namespace.get(request["function"])
        failure = None if callable(fn) else f"the solution cell defines no function {request['function']}"
    except BaseException as error:
        fn, failure = None, f"the solution cell raised {type(error).__name__}: {str(error).strip()[:300]}"
    if failure:
        send({"failure": failure, "outcomes": []})
        return
    results = []
    for case in cases:
        try:
            o = call(fn, case, tuple(request.get("forbidden", ())))
        except BaseException as error:  # SystemExit, KeyboardInterrupt...: one line, like any error
            o = Outcome(None, f"{type(error).__name__}: {str(error).strip()[:300]}")
        entry = outcome(o)
        try:
            encode(entry)
        except PlainError as error:
            entry = outcome(Outcome(None, f"it returned something that is not plain data: {error}",
                                    o.changed_inputs, o.hooks_left))
        results.append(entry)
        if entry["error"]:
            break  # the first error is the verdict: the later cases would not change it
    send({"failure": None, "outcomes": results})


def _others(spared: tuple[int, ...] = ()) -> list[int]:
    """Every process of the sandbox but this one, the sandbox's init and ``spared``."""
    mine = {os.getpid(), 1, *spared}
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine]


def _kill_others(spared: tuple[int, ...] = ()) -> None:
    """Kill (and reap) every other process of the sandbox until none is left."""
    for _ in range(200):
        others = _others(spared)
        if not others:
            break
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.01)


def clean(workdir: str, sandboxed: bool) -> None:
    """Kill every other process of the sandbox and empty /tmp and /dev/shm (without a sandbox: the work folder)."""
    if not sandboxed:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    _kill_others()
    for folder in ("/tmp", "/dev/shm"):
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def serve_one(request: dict, streams: tuple[int, ...]) -> bytes:
    """Fork a child for the request; its answer as a message, or a failure the scorer writes itself.
    ``streams``: the file descriptors the child must not keep (the protocol's)."""
    from labutils.instructor.plain import MAX_BYTES, encode

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own session, no access to the protocol streams
        try:
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.close(read_end)
            for fd in streams:
                os.close(fd)
            child(request, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + float(request["timeout"])
    chunks, size, timed_out = [], 0, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_end], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_end, 1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BYTES:
            break
        chunks.append(chunk)
    os.close(read_end)
    if timed_out:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    try:
        os.killpg(pid, signal.SIGKILL)  # what it started in its own process group
    except OSError:
        pass
    if timed_out:
        return encode({"failure": f"it ran longer than {request['timeout']:g} s", "outcomes": []})
    if size > MAX_BYTES:
        return encode({"failure": "it returned more data than the grader accepts", "outcomes": []})
    if not chunks:
        why = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
            f"exited with status {os.WEXITSTATUS(status)}"
        hint = " (out of memory, or by itself)" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9 else ""
        return encode({"failure": f"the process that ran it was {why}{hint} before it answered", "outcomes": []})
    return b"".join(chunks)


WROTE, ENDED = b"w", b"e"  # what a worker tells the scoring process: it wrote its answer; stdin has ended


def worker(requests: int, answers: int, told: int, workdir: str, sandboxed: bool) -> None:
    """In a fresh process forked for one request: read it from the grader, serve it, write the answer.

    Only this process and its child ever hold the request: the scoring process that forks a worker for each
    request never reads one, so no solution finds another's code (nor the instructor's, scored first) in
    the memory it was forked from."""
    from labutils.instructor.plain import decode

    frame = read_frame(requests)
    if frame is None:
        os.write(told, ENDED)
        return
    request = decode(frame)
    request["workdir"] = workdir
    answer = serve_one(request, (requests, answers, told))
    if sandboxed:
        _kill_others((os.getppid(),))  # nothing the solution started may interrupt the answer
    write_frame(answers, answer)
    os.write(told, WROTE)


def _not_dumpable() -> None:
    """No process of the sandbox may read or write this one's memory (/proc/PID/mem, ptrace)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _die_with(parent: int) -> None:
    """This process is killed when ``parent`` dies (a worker never outlives its scoring process)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def main(argv: list[str]) -> None:
    """Serve requests until stdin closes, each in a worker forked from this process, which never holds one.
    ``--sandboxed``: this process is alone in its PID namespace."""
    import tempfile

    import numpy  # noqa: F401  (pre-imported once: each worker starts with them loaded)
    import torch  # noqa: F401

    from labutils.instructor.plain import encode

    requests, answers = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    _not_dumpable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandboxed = "--sandboxed" in argv
    write_frame(answers, b"ready")
    parent = os.getpid()
    while True:
        workdir = tempfile.mkdtemp(prefix="work-")
        told_read, told = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(told_read)
                _die_with(parent)
                worker(requests, answers, told, workdir, sandboxed)
            finally:
                os._exit(0)
        os.close(told)
        os.waitpid(pid, 0)
        said = os.read(told_read, 1)
        os.close(told_read)
        clean(workdir, sandboxed)
        if said == ENDED:
            return
        if said != WROTE:  # the worker died before it answered (killed from inside)
            write_frame(answers, encode({"failure": "the scoring process was killed while it ran this solution",
                                         "outcomes": []}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
