"""The user's entry points: ``nox -s tests``, ``nox -s matrix``, ``nox -s certify``,
``nox -s golden``, ``nox -s cross_version``, ``nox -s upgrade``, ``nox -s real``, ``nox -s lint``.

Each session installs the torch under certification first (default: the pins below; override with
``CKPT_MATRIX_TORCH="torch==X torchvision==Y"``), then this project, then its dependency group.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
TORCH = os.environ.get("CKPT_MATRIX_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
# Two torch versions for cross_version, older first (both are on the development machines' disk).
CROSS = os.environ.get("CKPT_MATRIX_CROSS", "2.13.0,2.14.1").split(",")


def install(session: nox.Session, *groups: str) -> None:
    session.install(*TORCH)
    session.install("-e", ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """The harness's unit tests and the conformance matrix as pytest tests (pytest-xdist), with
    the 15 slowest listed at the end; the real libraries' models are installed for the tests
    that build them."""
    install(session, "test", "real")
    session.run("pytest", "-n", "auto", "--durations", "15", *session.posargs)


@nox.session
def matrix(session: nox.Session) -> None:
    """Run the conformance matrix on the hardware present; writes results.jsonl."""
    install(session)
    args = session.posargs or ["--out", "results.jsonl", "--overwrite"]
    session.run("ckpt-matrix", "run", *args)


REAL_MODELS = Path(__file__).parent / "tests" / "data" / "real_models"


def real_models() -> list[str]:
    """The factories that the modules of ``tests/data/real_models`` list in ``MODELS`` (read,
    not imported: nox's interpreter has no torch), as ``--model`` names them."""
    found = []
    for source in sorted(REAL_MODELS.glob("ckpt_*.py")):
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "MODELS" for target in node.targets
            ):
                found += [f"{source.stem}:{name}" for name in ast.literal_eval(node.value)]
    if not found:
        raise ValueError(f"no module in {REAL_MODELS} lists MODELS")
    return found


@nox.session
def real(session: nox.Session) -> None:
    """The shipped scenarios over model classes of real libraries (transformers: GPT-2, Llama,
    BERT, T5, ViT; timm: a CNN and a ViT; tests/data/real_models) built from small
    configurations with random weights; nothing is downloaded. Writes results-real.jsonl;
    ``-- OPTIONS`` go to ``ckpt-matrix run`` (``-- -k dcp``). A model whose library is not
    installed is skipped with the reason."""
    install(session, "real")
    env = {
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REAL_MODELS), os.environ.get("PYTHONPATH", "")) if p
        ),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    models = [option for name in real_models() for option in ("--model", name)]
    args = session.posargs or []
    if "--out" not in args:
        args = ["--out", "results-real.jsonl", "--overwrite", *args]
    session.run("ckpt-matrix", "run", *models, *args, env=env)


@nox.session
def mesh(session: nox.Session) -> None:
    """The device-mesh scenarios (scenarios/mesh: FSDP2, tensor parallel, FSDP2 + tensor
    parallel on a 2-D mesh and HSDP, each saved through DCP and loaded on every other shape, at
    2 and 4 ranks). Not among the default scenarios: 4-rank cells cost seconds each on a small
    machine. Writes results-mesh.jsonl; ``-- OPTIONS`` go to ``ckpt-matrix run``."""
    install(session)
    args = session.posargs or []
    if "--out" not in args:
        args = ["--out", "results-mesh.jsonl", "--overwrite", *args]
    session.run("ckpt-matrix", "run", "--scenarios", "scenarios/mesh", *args)


@nox.session
def certify(session: nox.Session) -> None:
    """Run the matrix, then diff it against a baseline (``nox -s certify -- BASELINE [OPTIONS]``).

    Writes results-candidate.jsonl and certification.md (Markdown for a CI job summary). The
    session fails when the diff finds a regression (exit 1) or an unusable input (exit 2); cells
    that FAIL in the run are judged by the diff against the baseline, not by the run's own exit.
    A baseline that holds golden cells (``ckpt-matrix merge`` of a matrix run and a ``golden
    record``) has those files verified too, and merged into the candidate.
    """
    if not session.posargs:
        session.error("give the baseline results file: nox -s certify -- BASELINE [run options]")
    baseline, *run_options = session.posargs
    if not Path(baseline).is_file():
        session.error(
            f"baseline {baseline!r} is not a file; pass a results.jsonl of an earlier run"
        )
    install(session)
    candidate = "results-candidate.jsonl"
    session.run(
        "ckpt-matrix", "run", "--out", candidate, "--overwrite", *run_options, success_codes=[0, 1]
    )
    if has_golden_cells(Path(baseline)):
        matrix, golden_part = "results-matrix.jsonl", "results-golden.jsonl"
        shutil.move(candidate, matrix)
        session.run(
            "ckpt-matrix",
            "golden",
            "verify",
            baseline,
            "--out",
            golden_part,
            "--overwrite",
            success_codes=[0, 1],
        )
        session.run("ckpt-matrix", "merge", candidate, matrix, golden_part, "--overwrite")
    session.run("ckpt-matrix", "diff", baseline, candidate, "--markdown", "certification.md")


def has_golden_cells(results: Path) -> bool:
    """Whether a results file holds cells of a team's own files (recipe ``golden``)."""
    with open(results, encoding="utf-8") as lines:
        return any('"recipe": "golden"' in line for line in lines)


@nox.session
def golden(session: nox.Session) -> None:
    """Your own checkpoints (``nox -s golden -- PATH... [--safe-global module.Name]``): the first
    time, record them into golden.jsonl; afterwards (a new torch, driver or GPU), verify them
    against it into golden-verify.jsonl beside it and diff the two (golden-certification.md).
    ``CKPT_MATRIX_GOLDEN`` names another recording."""
    recording = os.environ.get("CKPT_MATRIX_GOLDEN", "golden.jsonl")
    install(session)
    if not Path(recording).is_file():
        if not session.posargs:
            session.error("give the files or folders to record: nox -s golden -- PATH...")
        session.run("ckpt-matrix", "golden", "record", *session.posargs, "--out", recording)
        return
    verified = str(Path(recording).with_name("golden-verify.jsonl"))
    # the paths and --safe-global were the recording's: the rest (--jobs N, --timeout S, ...)
    # apply to the verification
    options, skip = [], False
    for arg in session.posargs:
        if skip or arg == "--safe-global" or Path(arg).exists():
            skip = arg == "--safe-global"
            continue
        options.append(arg)
    session.run(
        "ckpt-matrix",
        "golden",
        "verify",
        recording,
        "--out",
        verified,
        "--overwrite",
        *options,
        success_codes=[0, 1],
    )
    report = str(Path(recording).with_name("golden-certification.md"))
    session.run("ckpt-matrix", "diff", recording, verified, "--markdown", report)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict over the harness, tests and this file."""
    install(session, "lint", "test")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


def crossed(session: nox.Session, out: Path, saved: str, loaded: str) -> None:
    """Every cell of ``out`` was saved under torch ``saved`` and loaded under ``loaded``, as its
    results say, or the session fails: a cross-version run that saved again under the loading
    torch would certify nothing."""
    wrong = []
    for line in out.read_text().splitlines():
        record = json.loads(line)
        observed = record.get("observed") or {}
        if "id" not in record or "saved_with_torch" not in observed:
            continue  # the header, the last line, a cell whose save failed
        pair = (observed["saved_with_torch"], observed.get("loaded_with_torch", ""))
        if not (pair[0].startswith(saved) and pair[1].startswith(loaded)):
            wrong.append(f"{record['id']}: saved with {pair[0]}, loaded with {pair[1]}")
    if wrong:
        session.error(
            f"{out}: {len(wrong)} cell(s) did not cross from torch {saved} to {loaded}: {wrong[:3]}"
        )


@nox.session
def cross_version(session: nox.Session) -> None:
    """Save under one torch, load under the other, both ways (CKPT_MATRIX_CROSS="OLD,NEW").

    The artifact store reuses the checkpoints a run left in its --workdir, so running the cells
    again under another torch with the same --workdir loads the first torch's files. Results:
    results-cross-A-to-B.jsonl, each cell naming the torch it was saved and loaded with.
    """
    if len(CROSS) != 2:
        session.error(f"CKPT_MATRIX_CROSS={','.join(CROSS)!r}: give two versions, OLD,NEW")
    older, newer = CROSS
    work = Path(session.create_tmp())
    scenarios = ["--scenarios", "scenarios/cross_version.toml", *session.posargs]

    def use(version: str) -> None:
        session.install(f"torch=={version}")
        session.install("-e", ".")

    def run(saved: str, loaded: str) -> None:
        out = f"results-cross-{saved}-to-{loaded}.jsonl"
        workdir = work / f"saved-with-{saved}"
        keep = []
        if saved == loaded:
            # the saving run starts afresh: the store would reuse an earlier session's records,
            # failed saves included
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            keep = ["--keep-saves"]  # the loading run loads the saving run's checkpoints
        session.run(
            "ckpt-matrix",
            "run",
            *scenarios,
            "--workdir",
            str(workdir),
            *keep,
            "--out",
            out,
            "--overwrite",
        )
        crossed(session, Path(out), saved, loaded)

    use(older)
    run(older, older)  # saves under the older torch
    use(newer)
    run(older, newer)  # loads the older torch's files
    run(newer, newer)  # saves under the newer torch
    use(older)
    run(newer, older)  # loads the newer torch's files


def _releases() -> Any:
    """harness.core.releases, standard library only: read here, before anything is installed."""
    import sys

    root = str(Path(__file__).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from harness.core import releases

    return releases


def refuse_a_capped_release(session: nox.Session, requirement: str) -> None:
    """Stop, naming the cap and how to lift it, where this machine's pip configuration holds a
    constraint that the release exceeds (pip would say only that no version matches)."""
    import subprocess
    import sys

    releases = _releases()
    version = releases.pinned_version(requirement)
    if version is None:
        return
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if not key.endswith(".constraint"):
            continue
        for path in value.strip().strip("'\"").split():
            try:
                cap = releases.cap_of(Path(path).read_text(encoding="utf-8"), "torch")
            except OSError:
                continue
            if cap is not None and releases.exceeds(version, cap):
                session.error(
                    f"{requirement}: this machine's pip configuration caps torch at {cap} (the "
                    f"constraint file {path}, named by `pip config list` as {key}). Lift it for "
                    "this session alone: PIP_CONFIG_FILE=/dev/null python3 -m nox -s "
                    f"{session.name} -- {' '.join(session.posargs)}"
                )


RELEASES = Path(".nox") / "releases"


def release_name(chosen: Any) -> str:
    """A release's label as a folder or file name."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in chosen.label)


def release_tools(session: nox.Session, chosen: Any) -> Path:
    """The bin folder of the release's own environment (.nox/releases/LABEL), kept between
    sessions: made and filled the first time, refilled only when its requirements change (this
    checkout installed in it, editable)."""
    root = RELEASES / release_name(chosen)
    python = root / "bin" / "python"
    installed = root / "ckpt-matrix-requirements.txt"
    if not python.exists():
        session.run("python", "-m", "venv", str(root))
    wanted = "\n".join(chosen.requirements) + "\n"
    if not installed.exists() or installed.read_text() != wanted:
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        session.run(*pip, *chosen.requirements, external=True)
        session.run(*pip, "-e", ".", external=True)
        installed.write_text(wanted)
    return root / "bin"


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def log_kept_releases(session: nox.Session) -> None:
    """Say what the release environments take on disk, and how to free it."""
    kept = (
        {path.name: folder_size(path) for path in RELEASES.iterdir()} if RELEASES.is_dir() else {}
    )
    session.log(
        "kept for the next session: "
        + (
            ", ".join(f"{label} {size / 2**30:.1f} GiB" for label, size in sorted(kept.items()))
            or "nothing"
        )
        + f" in {RELEASES} (remove a release's folder to free it)"
    )


def run_arguments(options: list[str], workdir: Path, out: str, *, keep: bool = False) -> list[str]:
    """``ckpt-matrix``'s words for a run of a release (``run_under``), which its results file
    records in its environment's ``argv``: a run is reused only where they are the same."""
    return [
        "run",
        "--rerun-errors",  # a job the machine broke (a port taken) once more; told as flaky
        "1",
        *options,
        "--workdir",
        str(workdir),
        *(["--keep-saves"] if keep else []),
        "--out",
        out,
        "--overwrite",
    ]


def run_under(
    session: nox.Session,
    tools: Path,
    options: list[str],
    workdir: Path,
    out: str,
    *,
    keep: bool = False,
    env: dict[str, str] | None = None,
) -> None:
    """``ckpt-matrix run`` of a release's environment (``tools``: its bin folder) into
    ``workdir``, writing ``out`` afresh; ``keep``: load the checkpoints already there
    (``--keep-saves``, another release's). FAIL cells do not stop the session: its report
    judges them."""
    session.run(
        str(tools / "ckpt-matrix"),
        *run_arguments(options, workdir, out, keep=keep),
        success_codes=[0, 1],
        external=True,
        env=env,
    )


def verify_under(session: nox.Session, tools: Path, recording: str, out: str) -> None:
    """``golden verify`` of a recording under a release's environment (``tools``: its bin
    folder), writing ``out`` afresh; a failed file does not stop the session: its report judges
    it."""
    session.run(
        str(tools / "ckpt-matrix"),
        "golden",
        "verify",
        recording,
        "--out",
        out,
        "--overwrite",
        success_codes=[0, 1],
        external=True,
    )


@nox.session
def upgrade(session: nox.Session) -> None:
    """Certify a torch upgrade in one command: ``nox -s upgrade -- OLD NEW [run options]
    [--golden RECORDING ...]`` (releases as ``2.15.0`` or ``"torch==X torchvision==Y"``).

    Each release has its own environment, kept in .nox/releases between sessions. Runs the
    matrix under OLD (reusing results-upgrade-OLD.jsonl where it is OLD's at this commit, run
    with the same options, and its checkpoints are still kept), under NEW, then loads under NEW
    every file OLD saved (``run --keep-saves``) and, not gating, under OLD every file NEW saved;
    verifies each golden recording given under NEW (``--golden``, repeatable: a ladder's corpus
    has one per release); writes certification-upgrade.md and .html, whose first line is the
    verdict, and fails unless it is CERTIFIED. A release without a torchvision (the zoo's
    resnet18 needs none) leaves torchvision's models out, named in the verdict.
    """
    import subprocess

    releases = _releases()
    args = list(session.posargs)
    golden: list[str] = []  # recordings (repeatable: the ladder's corpus has one per release)
    while "--golden" in args:
        at = args.index("--golden")
        if at + 1 >= len(args):
            session.error("--golden needs a recording: --golden golden.jsonl")
        golden.append(args[at + 1])
        del args[at : at + 2]
    if len(args) < 2:
        session.error("give two releases, older first: nox -s upgrade -- 2.14.1 2.15.0")
    try:
        old, new = releases.release(args[0]), releases.release(args[1])
    except ValueError as exc:
        session.error(str(exc))
    run_options = args[2:]
    for chosen in (old, new):
        refuse_a_capped_release(session, chosen.torch)
    work = Path(session.create_tmp())
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    # a tree with changes (new files included) is not what the commit names: its runs record
    # the commit as changed, so that no later session takes them for the commit's own
    changed = bool(
        subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    recorded = {"CKPT_MATRIX_GIT_COMMIT": f"{commit}+changes"} if changed else None

    def matrix(tools: Path, out: str, workdir: Path, *, keep: bool = False) -> None:
        run_under(session, tools, run_options, workdir, out, keep=keep, env=recorded)

    before, after = release_name(old), release_name(new)
    saved_old, saved_new = work / f"saved-with-{before}", work / f"saved-with-{after}"
    out_old, out_new = f"results-upgrade-{before}.jsonl", f"results-upgrade-{after}.jsonl"
    out_forward = f"results-upgrade-{before}-to-{after}.jsonl"
    out_backward = f"results-upgrade-{after}-to-{before}.jsonl"
    older, newer = release_tools(session, old), release_tools(session, new)
    inventory = subprocess.run(
        [str(older / "ckpt-matrix"), "inventory", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    # the machine as the older release reads it (none read: nothing is reused)
    try:
        machine = json.loads(inventory.stdout) if inventory.returncode == 0 else {}
    except ValueError:
        machine = {}
    why = releases.why_not_reused(
        Path(out_old),
        saved_old,
        old.torch,
        None if changed else commit,
        run_arguments(run_options, saved_old, out_old),
        machine,
    )
    if why is None:
        session.log(
            f"{out_old}: {old.label}'s run at this commit, with these options on this machine, "
            "its checkpoints kept: reused"
        )
    else:
        session.log(f"{old.label}'s matrix is run: {why}")
        matrix(older, out_old, saved_old)
    matrix(newer, out_new, saved_new)
    matrix(newer, out_forward, saved_old, keep=True)
    report_golden: list[str] = []
    for number, recording in enumerate(golden, start=1):
        out_golden = f"results-upgrade-golden-{after}-{number}.jsonl"
        verify_under(session, newer, recording, out_golden)
        report_golden += ["--golden", out_golden]
    matrix(older, out_backward, saved_new, keep=True)
    session.run(
        str(newer / "ckpt-matrix"),
        "upgrade-report",
        out_old,
        out_new,
        out_forward,
        "--backward",
        out_backward,
        *report_golden,
        "--markdown",
        "certification-upgrade.md",
        "--html",
        "certification-upgrade.html",
        success_codes=[0, 1],
        external=True,
    )
    log_kept_releases(session)
    if not Path("certification-upgrade.md").read_text().startswith("# CERTIFIED"):
        session.error("not certified: certification-upgrade.md says what changed")


def corpus_files(artifacts: Path, into: Path) -> int:
    """Copy the checkpoints a run saved (each artifact's ``checkpoint.pt``, a file or a folder,
    or ``checkpoint.dcp``) into ``into``, named for their artifact without the device tag
    (``trap-single-state_dict.pt``, ``trap-fsdp2x2-dcp``); whole pickled models stay out:
    ``golden`` never unpickles a model, and the ladder's own cells load those. Returns how many."""
    copied = 0
    for folder in sorted(artifacts.iterdir()):
        found = [folder / name for name in ("checkpoint.pt", "checkpoint.dcp")]
        saved = next((path for path in found if path.exists()), None)
        if saved is None or re.search(r"-whole(-legacy)?$", folder.name):
            continue
        name = folder.name.replace("[cpu]", "")
        if saved.is_dir():
            shutil.copytree(saved, into / name)
        else:
            shutil.copy2(saved, into / f"{name}.pt")
        copied += 1
    return copied


@nox.session
def ladder(session: nox.Session) -> None:
    """The release ladder: ``nox -s ladder -- 2.4.1 2.6.0 2.8.0 2.13.0 2.15.0 [run options]
    [--corpus FOLDER] [--replace-corpus] [--keep-envs]`` (oldest first; the last loads the
    others' files).

    Under each older release, scenarios/ladder saves the zoo's checkpoints in every format that
    release writes (harness.core.releases.ladder_unsupported says what it cannot, and why) and
    loads them under itself; its files, less whole pickled models, go into the corpus
    (FOLDER/torch-RELEASE, default ladder-corpus) with a ``golden record`` made under that
    release (sha256 of each file, every tensor's digest, the release, Python and date). Under
    the newest, the same cells load every older release's files, and ``golden verify`` checks
    the corpus. Writes ladder.md (the release x format table, its first line the verdict) and
    fails unless every cell is as predicted. A corpus part recorded earlier is never replaced
    unless ``--replace-corpus``. An older release's environment (.nox/releases/RELEASE, which
    ``upgrade`` would reuse) is removed once it has saved (several GB each) unless
    ``--keep-envs``; the newest's is kept. A ``-k`` among the run options keeps fewer cells under
    every release.
    """
    releases = _releases()
    args = list(session.posargs)
    corpus = Path("ladder-corpus")
    keep_envs, replace_corpus = "--keep-envs" in args, "--replace-corpus" in args
    args = [arg for arg in args if arg not in ("--keep-envs", "--replace-corpus")]
    if "--corpus" in args:
        at = args.index("--corpus")
        if at + 1 >= len(args):
            session.error("--corpus needs a folder: --corpus ladder-corpus")
        corpus = Path(args[at + 1])
        del args[at : at + 2]
    at = next((i for i, arg in enumerate(args) if arg.startswith("-")), len(args))
    named, run_options = args[:at], args[at:]
    chosen_cells = ""  # the user's own -k, kept together with each release's
    for flag in ("-k", "--select"):
        while flag in run_options:
            at = run_options.index(flag)
            if at + 1 >= len(run_options):
                session.error(f"{flag} needs an expression: {flag} weights")
            chosen_cells = run_options[at + 1]
            del run_options[at : at + 2]
    try:
        older, newest = releases.ladder_plan(named)
    except ValueError as exc:
        session.error(str(exc))
    kept_parts = [
        corpus / f"torch-{c.label}"
        for c in older
        if (corpus / f"torch-{c.label}").is_dir() and any((corpus / f"torch-{c.label}").iterdir())
    ]
    if kept_parts and not replace_corpus:
        session.error(
            f"{', '.join(map(str, kept_parts))}: a corpus recorded earlier is there; verify it "
            "with nox -s upgrade -- OLD NEW --golden PART/golden.jsonl, give another --corpus, "
            "or --replace-corpus to record it again"
        )
    for chosen in (*older, newest):
        refuse_a_capped_release(session, chosen.torch)
    work = Path(session.create_tmp())
    scenarios = ["--scenarios", str(Path("scenarios") / "ladder")]

    def run(tools: Path, workdir: Path, out: str, version: str | None, *, keep: bool) -> None:
        parts = [releases.ladder_selection(version) if version else None, chosen_cells]
        selection = " and ".join(f"({part})" for part in parts if part)
        options = [*scenarios, *(["-k", selection] if selection else []), *run_options]
        run_under(session, tools, options, workdir, out, keep=keep)

    rungs: list[tuple[str, str, Path, str | None]] = []  # own run, crossing run, corpus, version
    for chosen in older:
        label, version = release_name(chosen), releases.pinned_version(chosen.torch)
        tools = release_tools(session, chosen)
        workdir = work / f"saved-with-{label}"
        shutil.rmtree(workdir, ignore_errors=True)  # saves afresh
        own = f"results-ladder-{label}.jsonl"
        run(tools, workdir, own, version, keep=False)
        files = corpus / f"torch-{label}"
        shutil.rmtree(files, ignore_errors=True)
        files.mkdir(parents=True)
        session.log(f"{files}: {corpus_files(workdir / 'artifacts', files)} checkpoint(s)")
        session.run(
            str(tools / "ckpt-matrix"),
            "golden",
            "record",
            str(files),
            # the training states whose args are a Namespace (the known-bad cells' files): a
            # class whose unpickling sets attributes, and runs no code of the file's
            "--safe-global",
            "argparse.Namespace",
            "--out",
            str(files / "golden.jsonl"),
            "--overwrite",
            success_codes=[0, 1],
            external=True,
        )
        if not keep_envs:
            size = folder_size(tools.parent)
            shutil.rmtree(tools.parent)
            session.log(f"removed {tools.parent} ({size / 2**30:.1f} GiB): --keep-envs keeps it")
        rungs.append(
            (own, f"results-ladder-{label}-to-{release_name(newest)}.jsonl", files, version)
        )
    tools = release_tools(session, newest)
    report = ["ladder-report"]
    for (own, crossing, files, version), chosen in zip(rungs, older, strict=True):
        run(tools, work / f"saved-with-{release_name(chosen)}", crossing, version, keep=True)
        verified = f"results-ladder-golden-{release_name(chosen)}.jsonl"
        verify_under(session, tools, str(files / "golden.jsonl"), verified)
        report += ["--rung", own, crossing, "--golden", verified]
    session.run(
        str(tools / "ckpt-matrix"),
        *report,
        "--markdown",
        "ladder.md",
        success_codes=[0, 1],
        external=True,
    )
    saved = folder_size(work)
    shutil.rmtree(work, ignore_errors=True)  # every release saves afresh: nothing there is reused
    session.log(f"removed the runs' work folders ({saved / 2**20:.0f} MiB)")
    log_kept_releases(session)
    session.log(f"the corpus: {corpus} ({folder_size(corpus) / 2**20:.1f} MiB)")
    if not Path("ladder.md").read_text().startswith("# LADDER HOLDS"):
        session.error("the ladder does not hold: ladder.md says where")
