"""The command line: ``python -m labutils {fetch,summary,explain,handin-check,student,release,grade}``.

    python -m labutils fetch [--from DIR]
    python -m labutils handin-check notebooks/ --student alice          # before handing in
    python -m labutils student [--out student/]                       # the notebooks without solutions
    python -m labutils release --out release/ [--install-from URL]    # the students' copy of the lab
    python -m labutils grade submissions/ [--out grades/] [--timeout 120] [--jobs 2] [--regrade alice]
    python -m labutils grade --marks marks.csv --out grades/          # merge the manual marks
    python -m labutils grade --out grades/ --roster roster.csv --export canvas   # canvas.csv (or moodle.csv)
    python -m labutils grade submissions/ --no-execute --shard 2/4 --out grades/shards/2 [--feedback]
    python -m labutils grade --merge grades/shards/* --out grades/ [--feedback]
    python -m labutils summary vgg16
    python -m labutils explain cat_dog.jpg --model vgg16 --class 243 --class "tiger cat" --out out/ --npz
    python -m labutils explain photos/ --model vgg16 --out out/          # a whole folder, batched

Bad input gives one line on stderr and a non-zero exit status, never a traceback. ``explain`` reads
the images a batch at a time; an image that cannot be used (whatever goes wrong while reading or
explaining it) does not stop the others, the failures are listed at the end. File names that are not
valid in the terminal's encoding are printed with backslash escapes (``caf\xe9.jpg``). Exit status: 0 when every image was explained, 1 when some were and others failed,
2 when nothing was done (bad input, weights, class or layer, or no image usable) or a result could not
be written (a full disk: the run stops, the files written before are complete).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .errors import ImageError, LabError
from .gradcam import Explanation, gradcam
from .guided import guided_backprop, guided_gradcam
from .images import LabImage, load_image
from .inputs import class_targets, model_input
from .models import ARCHITECTURES, class_label, get_layer, load_model
from .overlay import METHOD_TITLES, explanation_image, labelled, title, untrained_banner
from .predict import predict

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
METHODS: dict[str, Callable[..., Explanation]] = {
    "gradcam": lambda model, x, classes, layer: gradcam(model, x, classes, layer),
    "counterfactual": lambda model, x, classes, layer: gradcam(model, x, classes, layer, counterfactual=True),
    "guided-backprop": lambda model, x, classes, layer: guided_backprop(model, x, classes),
    "guided-gradcam": lambda model, x, classes, layer: guided_gradcam(model, x, classes, layer),
}


class ResultNotWritten(LabError):
    """A result file could not be written (a full disk...): the run stops there (exit status 2)."""


def printable(text: str, stream=None) -> str:
    """``text`` as the stream can print it: bytes of a non-UTF-8 file name (surrogate escapes) and characters
    the stream's encoding lacks become backslash escapes, instead of a UnicodeEncodeError."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "utf-8"
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.encode(encoding, "backslashreplace").decode(encoding)


def say(text: str, stream=None) -> None:
    """Print one line that cannot fail on its characters (stdout by default)."""
    stream = stream or sys.stdout
    print(printable(text, stream), file=stream)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("python -m labutils").strip()  # "" for the top-level parser
        raise LabError(f"{message} (see: python -m labutils {command + ' ' if command else ''}--help)")


def image_paths(items: Sequence[str]) -> list[Path]:
    """The image files named on the command line; a folder stands for the images inside it."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if os.path.isdir(path):  # False, not an error, for a name too long or a symbolic link loop
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not found:
                raise ImageError(f"{path} is a folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        else:
            paths.append(path)
    return paths


def check_output_folder(out: Path) -> None:
    """Refuse an --out that cannot become a folder of results, before any work (nothing is created yet)."""
    try:
        out.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LabError(f"--out {out} is a loop of symbolic links; give a folder for the results") from None
        if out.is_symlink():
            raise LabError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
                           "remove the link or give another folder") from None
    if out.exists() and not out.is_dir():
        raise LabError(f"--out {out} is a file; give a folder for the results (it is created if needed)")
    existing = out.absolute()
    while not existing.exists():  # the folder is made at the first result: its nearest existing parent must allow it
        existing = existing.parent
    if not existing.is_dir():
        raise LabError(f"--out {out} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == out.absolute() else f" ({existing}, where it would be made)"
        raise LabError(f"--out {out}: the folder{what} is not writable (permission denied); give another folder")


def check_output_names(paths: Sequence[Path]) -> None:
    """Refuse two images with one name stem (cat.jpg, cat.png): their results would overwrite each other."""
    first: dict[str, Path] = {}
    for path in paths:
        other = first.setdefault(path.stem, path)
        if other != path:
            raise LabError(f"{other} and {path} would write their results to the same files ({path.stem}_...): "
                           "rename one of them, or explain them separately with different --out folders")


def save_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a result file is an ordinary file
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a folder in the way...: name the result, not the temporary file
            raise cannot_write(path, exc) from None
        raise


def cannot_write(path: Path, exc: OSError) -> LabError:
    """The one-line error for a result that could not be written (the run stops: exit status 2)."""
    return ResultNotWritten(f"cannot write {path}: {exc.strerror or exc}; the run stopped there, the results written "
                    "before it are complete")


def write_outputs(args: argparse.Namespace, model: torch.nn.Module, image: LabImage, exp: Explanation, n: int) -> None:
    """One labelled overlay PNG per class (and with --npz one .npz) for image n of the batch."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # made with the first result: a run that fails before leaves none
    for k, c in enumerate(exp.classes[n].tolist()):
        name = f"{Path(image.name).stem}_{args.model}_{exp.layer or 'input'}_{c}_{exp.method}.png"
        picture = labelled(explanation_image(image.original, exp, n, k), title(model, exp, k, n), untrained_banner(model))
        save_atomically(out / name, lambda tmp: picture.save(tmp, format="PNG"))
    if args.npz:
        arrays = {"classes": exp.classes[n].cpu().numpy(), "raw": exp.raw[n].cpu().numpy(),
                  "map": exp.maps[n].cpu().numpy()}  # the maps are on the device of the input
        target = out / f"{Path(image.name).stem}_{args.model}_{exp.method}.npz"
        save_atomically(target, lambda tmp: np.savez(tmp, **arrays))  # tmp ends in .npz: numpy keeps the name


def prepare_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model with its weights and layer checked, on the GPU when there is one."""
    model = load_model(args.model, args.weights, progress=True)
    if args.layer is not None:
        get_layer(model, args.layer)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    banner = untrained_banner(model)
    if banner:
        tqdm.write(banner)
    return model


def explain_batch(args: argparse.Namespace, model: torch.nn.Module, batch: list[LabImage], classes: list | None
                  ) -> None:
    """Print the top-5 of each image of the batch and write its results."""
    x = model_input(model, torch.cat([im.tensor for im in batch]))
    per_image = None if classes is None else [classes] * len(batch)
    exp = METHODS[args.method](model, x, per_image, args.layer)
    for n, (image, top5) in enumerate(zip(batch, predict(model, x, 5))):
        tqdm.write(printable(f"{image.path}: " + "; ".join(f"{class_label(i)} {p:.3f}" for i, _, p in top5)))
        write_outputs(args, model, image, exp, n)


def explain(args: argparse.Namespace) -> int:
    """Top-5 predictions and maps for every image, in batches, a batch of images in memory at a time.

    An image that cannot be used does not stop the others: the failures are listed at the end. Exit
    status: 0 when every image was explained, 1 when some were and others failed, 2 when none was.
    """
    if args.batch_size < 1:
        raise LabError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.layer == "":
        raise LabError("--layer is empty; give a layer name such as features.29, or leave --layer out")
    check_output_folder(Path(args.out))
    paths = image_paths(args.images)
    check_output_names(paths)
    classes = class_targets(args.classes, 1)[0].tolist() if args.classes else None
    model, failures, explained = None, [], 0
    with tqdm(total=len(paths), desc="explaining", unit="image", disable=True if len(paths) < 2 else None) as bar:
        for start in range(0, len(paths), args.batch_size):
            batch = []
            for path in paths[start : start + args.batch_size]:
                try:
                    batch.append(load_image(path))
                except Exception as error:  # noqa: BLE001 - one image's failure, whatever it is, is listed
                    failures.append(one_line(path, error))
                    bar.update(1)
            if not batch:
                continue
            if model is None:  # built at the first usable image: a run with none builds nothing
                model = prepare_model(args)
            done = explain_each(args, model, batch, classes, failures)
            explained += done
            bar.update(len(batch))
    if explained:
        say(f"wrote {METHOD_TITLES[args.method]} results for {explained} image(s) to {args.out}")
    if len(failures) == 1 and not explained:
        raise LabError(failures[0])
    for failure in failures:
        say(f"error: {failure}", sys.stderr)
    if failures:
        say(f"error: {len(failures)} of {len(paths)} images could not be explained (listed above)", sys.stderr)
    return 0 if not failures else 1 if explained else 2


def one_line(path: Path, error: Exception) -> str:
    """A failure as one line: a LabError's own message (it names the file), else the file and the exception."""
    text = str(error) if isinstance(error, LabError) else f"{path}: {type(error).__name__}: {error}"
    return " ".join(text.split())


def explain_each(args: argparse.Namespace, model: torch.nn.Module, batch: list[LabImage], classes: list | None,
                 failures: list[str]) -> int:
    """Explain a batch; if it fails, each image alone, so that one image's failure is its own. Returns how many
    were explained. A result that cannot be written (ResultNotWritten) and an interrupt stop the run."""
    try:
        explain_batch(args, model, batch, classes)
        return len(batch)
    except (ResultNotWritten, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001
        if len(batch) == 1:
            failures.append(one_line(batch[0].path, error))
            return 0
    return sum(explain_each(args, model, [image], classes, failures) for image in batch)


def fetch(args: argparse.Namespace) -> None:
    """Download (or copy from --from DIR) both weight files and the sample images."""
    from .data import fetch as fetch_all

    for path in fetch_all(Path(args.source) if args.source else None):
        say(str(path))


def summary(args: argparse.Namespace) -> None:
    """Print the seed's Table 1 or 2."""
    from .summary import print_summary

    print_summary(args.model, seed_layout=not args.plain)


def instructor_tools() -> None:
    """The instructor's commands need labutils.instructor, which the students' copy does not ship."""
    import importlib.util

    if importlib.util.find_spec("labutils.instructor") is None:
        raise LabError("this is the students' copy of labutils: the instructor's tools (student, release, grade) "
                       "are not in it; run them from the lab's repository")


def student(args: argparse.Namespace) -> None:
    """Write the student versions of the notebooks."""
    instructor_tools()
    from .instructor.student import default_notebooks, make_student_versions

    for path in make_student_versions([Path(p) for p in args.notebooks] or default_notebooks(), Path(args.out)):
        say(str(path))


def release(args: argparse.Namespace) -> None:
    """Write the students' copy of the lab."""
    instructor_tools()
    from .instructor.release import make_release

    version = make_release(Path(args.out), args.install_from)
    print(f"wrote the students' copy of the lab, release {version}, to {args.out}")


def handin_check(args: argparse.Namespace) -> int:
    """Check the notebooks a student is about to hand in."""
    from .handin import handin_check as check

    return check([Path(p) for p in args.notebooks], student=args.student)


def grade(args: argparse.Namespace) -> int:
    """Grade submitted notebooks (grades.csv, one HTML report per student), or merge manual marks; export."""
    instructor_tools()
    from .instructor.grading import NotGraded, grade as grade_all, merge_marks

    roster = None
    if bool(args.roster) != bool(args.export):
        raise LabError("--roster FILE and --export canvas|moodle go together: the roster maps your students to the "
                       "platform's accounts")
    if args.export:  # checked before any grading: a bad roster does not cost a run
        from .instructor.lms import check_assignment, read_roster

        check_assignment(args.assignment)
        roster = read_roster(Path(args.roster), args.export)
    results, not_graded = None, {}
    if args.marks and args.merge:
        raise LabError("--marks and --merge are two steps: merge the shards first, then the marks into --out")
    if (args.marks or args.merge) and args.shard:
        raise LabError("--shard grades a share of the submissions; give it without --marks or --merge")
    if args.marks:
        if args.submissions:
            raise LabError("--marks merges marks into graded results and runs no notebook: give no submissions")
        results = merge_marks([Path(m) for m in args.marks], Path(args.out))
        if args.feedback:  # the students' pages, with the marks just merged
            from .instructor.feedback import write_feedback

            write_feedback(results, Path(args.out))
    elif args.merge:
        from .instructor.shards import merge

        if args.submissions:
            raise LabError("--merge combines graded folders and runs no notebook: give no submissions")
        results = merge([Path(p) for p in args.merge], Path(args.out), feedback=args.feedback)
    elif not args.submissions:
        if roster is None:
            raise LabError("give the submissions to grade (files or folders), or --merge DIR... to merge graded "
                           "shards, or --marks FILE to merge manual marks, or --roster FILE --export canvas|moodle "
                           "to export the grades in --out")
    else:
        from .instructor.shards import parse_shard

        kw = {"instructor_dir": Path(args.notebooks)} if args.notebooks else {}
        try:
            results = grade_all([Path(p) for p in args.submissions], Path(args.out), timeout=args.timeout,
                                budget=args.budget, jobs=args.jobs, sandbox=not args.no_sandbox, memory=args.memory,
                                regrade=tuple(args.regrade), execute=not args.no_execute,
                                shard=parse_shard(args.shard) if args.shard else None, feedback=args.feedback, **kw)
        except NotGraded as missing:
            results, not_graded = missing.results, missing.causes
    for r in results or []:
        flags = [e.grade_id for e in r.exercises if e.copied]
        flagged = f"  FLAG: {', '.join(flags)}" if flags else ""
        print(f"{r.student}: {r.total:g} / {r.max_points:g}  {r.report}{flagged}")
    if results is not None:
        print(f"wrote {Path(args.out) / 'grades.csv'} ({len(results)} student(s))")
    if results is not None and not args.marks:
        pairs = json.loads((Path(args.out) / "similarity.json").read_text(encoding="utf-8"))["pairs"]
        print(f"wrote {Path(args.out) / 'similarity.html'} ({len(pairs)} pair(s) of students with similar answers)")
    if roster is not None:
        from .instructor.lms import export_grades

        done = export_grades(Path(args.out), roster, args.export, assignment=args.assignment)
        for line in done.lines():
            print(f"warning: {line}", file=sys.stderr)
        print(f"wrote {done.path} ({len(done.exported)} student(s) with points; who was left out: {done.check})")
    if not_graded:  # the grader's side failed for them: no grade, listed last, and a re-run grades them
        for student, why in not_graded.items():
            print(f"not graded: {student}: {' '.join(why.split())}", file=sys.stderr)
        print(f"error: {len(not_graded)} student(s) not graded (not their code: see above); fix the cause "
              "and run the same command again to grade them", file=sys.stderr)
        return 3
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    top = OneLineParser(prog="python -m labutils", description="The Grad-CAM lab's tools.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = commands.add_parser("fetch", help="download weights and sample images ahead of time")
    p.add_argument("--from", dest="source", metavar="DIR", help="install them from a folder instead")
    p.set_defaults(run=fetch)
    p = commands.add_parser("summary", help="print the architecture table (the seed's Table 1 or 2)")
    p.add_argument("model", choices=list(ARCHITECTURES))
    p.add_argument("--plain", action="store_true", help="torchvision's layers, without the seed's quirks")
    p.set_defaults(run=summary)
    p = commands.add_parser("student", help="write the student versions of the notebooks (solutions removed)")
    p.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="default: the lab's notebooks/*.ipynb")
    p.add_argument("--out", default="student", metavar="DIR", help="output folder (default: student)")
    p.set_defaults(run=student)
    p = commands.add_parser("release", help="write the students' copy of the lab (notebooks, package, platform files)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    p.add_argument("--install-from", default=None, metavar="LOCATION",
                   help="where the notebooks' first cell installs labutils when it is missing (Colab): a git URL, "
                        "a wheel URL or a path")
    p.set_defaults(run=release)
    p = commands.add_parser("handin-check", help="before handing in: exercises, unanswered questions, file names")
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="your notebooks, or the folder holding them")
    p.add_argument("--student", default=None, help="your id, as the hand-in names start (e.g. alice)")
    p.set_defaults(run=handin_check)
    p = commands.add_parser("grade", help="score submitted notebooks in a sandbox, write reports and grades.csv")
    p.add_argument("submissions", nargs="*", metavar="SUBMISSION", help="notebooks or folders of notebooks")
    p.add_argument("--out", default="grades", metavar="DIR", help="output folder (default: grades)")
    p.add_argument("--timeout", type=int, default=120, metavar="S", help="seconds per cell (default: 120)")
    p.add_argument("--budget", type=int, default=900, metavar="S", help="seconds per notebook (default: 900)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks run at a time (default: 1)")
    p.add_argument("--memory", type=float, default=4.0, metavar="GB", help="GiB per sandbox (default: 4)")
    p.add_argument("--notebooks", default=None, metavar="DIR", help="the instructor's notebooks (default: the lab's)")
    p.add_argument("--regrade", action="append", default=[], metavar="STUDENT",
                   help="grade this student again (repeatable); others already graded in --out are skipped")
    p.add_argument("--no-sandbox", action="store_true", help="run the students' code without bubblewrap")
    p.add_argument("--marks", action="append", default=[], metavar="CSV",
                   help="merge manual marks (student,question,points; repeatable: one file per marker); "
                        "an empty cell changes nothing, - clears a mark")
    p.add_argument("--no-execute", action="store_true",
                   help="points from the scorers alone; do not run the notebooks (reports show the submitted outputs)")
    p.add_argument("--shard", default=None, metavar="I/N", help="grade only shard I of N of the students (1 <= I <= N)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="merge the --out folders of graded shards into --out (runs no notebook)")
    p.add_argument("--feedback", action="store_true",
                   help="also write feedback/<student>.html for the students (no mark schemes, no flags)")
    p.add_argument("--roster", default=None, metavar="CSV",
                   help="the class roster for --export (student,name,id,sis_user_id,sis_login_id,section,email)")
    p.add_argument("--export", default=None, choices=["canvas", "moodle"],
                   help="also write canvas.csv or moodle.csv in --out for the platform's gradebook import")
    p.add_argument("--assignment", default="Grad-CAM lab", metavar="TITLE",
                   help='the lab\'s column in the gradebook (default: Grad-CAM lab; Canvas: "Title (assignment id)")')
    p.set_defaults(run=grade)
    p = commands.add_parser("explain", help="Grad-CAM and friends for images or folders of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--model", choices=list(ARCHITECTURES), required=True)
    p.add_argument("--weights", default=None, help="imagenet (default), random, or a state_dict file")
    p.add_argument("--layer", default=None, help="target layer, e.g. features.29 (default: last ReLU)")
    p.add_argument("--class", dest="classes", action="append", metavar="C", help="class index or name (repeatable)")
    p.add_argument("--method", choices=list(METHODS), default="gradcam")
    p.add_argument("--out", default="out", metavar="DIR", help="output folder (default: out)")
    p.add_argument("--npz", action="store_true", help="also write the maps as .npz")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(run=explain)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors become one line on stderr and exit status 2."""
    try:
        args = parser().parse_args(argv)
        status = args.run(args)
    except LabError as error:
        say("error: " + " ".join(str(error).split()), sys.stderr)  # one line
        return 2
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        say(f"error: {error.strerror or error}{where}", sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("error: interrupted", sys.stderr)
        return 130
    return status or 0
