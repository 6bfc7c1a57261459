"""Run a grid of ``otplug train`` cells: side by side on this machine, or one submitit job per cell (SLURM).

A :class:`Cell` is one training (a method and a seed of the study): its run folder, its ``otplug train``
arguments and its log. :func:`run_cells` trains every cell that is not finished and returns one
:class:`CellOutcome` per cell, in order. The cells are independent: a failed cell is an outcome with its error
and the log to read, never an exception that stops the others.

* ``local`` (default): ``jobs`` children ``python -m otplug train`` side by side (0: 2 on a CPU, 1 with CUDA),
  each with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` pinned to the cell's ``threads`` (several trainings side by side
  must not oversubscribe the cores: OpenMP spin-waiting then costs 10x).
* ``submitit``: :class:`submitit.AutoExecutor` -- SLURM where ``srun``/``sbatch`` exist (the cells go out as one job
  array), local processes otherwise (at most ``array_parallelism`` or ``jobs`` at a time). Each job runs
  :func:`train_cell_job`, which runs the same ``otplug train`` child on CUDA when the job has a GPU. The environment
  variable ``OTPLUG_SUBMITIT_CLUSTER`` (or :attr:`LaunchConfig.cluster`) forces submitit's executor: ``slurm``,
  ``local`` (processes on this machine, what the tests use) or ``debug`` (in this process, one after the other;
  submitit opens pdb when a job fails there).

Resume: a cell is finished when ``<run_dir>/train_summary.json`` exists (the training writes it last); a finished
cell is kept and not run again; an unfinished run folder is removed and the cell trained from the start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from otplug.atomic import writing
from otplug import validators as v
from otplug.errors import OtplugError

__all__ = [
    "CLUSTER_ENV",
    "DEFAULT_TIMEOUT_MIN",
    "LAUNCHERS",
    "Cell",
    "CellFailed",
    "CellOutcome",
    "LaunchConfig",
    "LaunchError",
    "add_launch_arguments",
    "launch_config_from_args",
    "read_summary",
    "run_cells",
    "split_cores",
    "submitit_parameters",
    "train_cell",
    "train_cell_job",
]

LAUNCHERS = ("local", "submitit")
#: forces submitit's executor (``slurm``, ``local``, ``debug``); unset: SLURM where it exists, local otherwise
CLUSTER_ENV = "OTPLUG_SUBMITIT_CLUSTER"
CLUSTERS = ("slurm", "local", "debug")
#: the job time limit sent when none is given: submitit's own defaults (5 min on SLURM, 2 min for its local
#: executor) would kill most trainings
DEFAULT_TIMEOUT_MIN = 60
SUMMARY = "train_summary.json"
_INSTALL = "pip install 'otplug[cluster]'"


class LaunchError(OtplugError):
    """The grid cannot be launched as asked (a bad launcher option, submitit missing)."""


class CellFailed(OtplugError):
    """One training failed; the message is one line and ends with the log to read."""


# ---------------------------------------------------------------------------------------------------------------------
# configuration

class _Flag:
    """An otplug validator whose message names the CLI flag of the field (``--jobs: must be ...``); ``None`` passes
    when ``optional``."""

    __slots__ = ("check", "optional")

    def __init__(self, check: Callable[[Any, Any, Any], None], optional: bool = False) -> None:
        self.check, self.optional = check, optional

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None and self.optional:
            return
        try:
            self.check(instance, attribute, value)
        except (v.FieldValueError, v.FieldTypeError) as exc:
            raise LaunchError(f"{attribute.metadata['flag']}: {exc.args[0]}") from None

    def __repr__(self) -> str:
        return f"<otplug launch flag check {self.check!r}{' or None' if self.optional else ''}>"


def _text(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise v.FieldValueError(f"must be a non-empty line of text, got {v.show_value(value)}")


def _texts(instance: Any, attribute: Any, value: Any) -> None:
    for item in value:
        _text(instance, attribute, item)


def _key_values(instance: Any, attribute: Any, value: Any) -> None:
    for item in value:
        _text(instance, attribute, item)
        key, eq, _ = item.partition("=")
        if not eq or not key.strip().lstrip("-"):
            raise v.FieldValueError(f"must be KEY=VALUE (an sbatch option without its '--', e.g. account=abc), got "
                                    f"{v.show_value(item)}")


def _field(default: Any, flag: str, check: Any, optional: bool = False, **kw: Any) -> Any:
    return attrs.field(default=default, validator=_Flag(check, optional), metadata={"flag": flag}, **kw)


def _opt_path(value: Any) -> Path | None:
    return None if value is None else Path(value).expanduser()


#: the options of the SLURM cluster, by field: the flag, and the name submitit's ``update_parameters`` takes
_CLUSTER_OPTIONS = {
    "partition": ("--slurm-partition", "slurm_partition"),
    "gpus_per_job": ("--gpus-per-job", "gpus_per_node"),
    "cpus_per_job": ("--cpus-per-job", "cpus_per_task"),
    "mem_gb": ("--mem-gb", "mem_gb"),
    "array_parallelism": ("--array-parallelism", "slurm_array_parallelism"),
    "slurm_extra": ("--slurm-extra", "slurm_additional_parameters"),
    "slurm_setup": ("--slurm-setup", "slurm_setup"),
}
#: sbatch options that have their own flag (a --slurm-extra for them would silently win over the flag)
_OWN_FLAG = {"partition": "--slurm-partition", "gpus-per-node": "--gpus-per-job", "cpus-per-task": "--cpus-per-job",
             "mem": "--mem-gb", "time": "--timeout-min", "array": "--array-parallelism"}


@attrs.frozen(kw_only=True)
class LaunchConfig:
    """Where and how the cells run. Every error names the ``otplug study`` flag of the field."""

    #: ``local``: children on this machine; ``submitit``: one submitit job per cell (SLURM, or local processes)
    launcher: str = _field("local", "--launcher", v.one_of(*LAUNCHERS))
    #: local: cells side by side (0: 2 on a CPU, 1 with CUDA); submitit without SLURM: jobs at a time
    jobs: int = _field(0, "--jobs", v.non_negative_int)
    #: submitit's folder: job scripts, pickles and each job's stdout/stderr
    folder: Path | None = attrs.field(default=None, converter=_opt_path, metadata={"flag": "--submitit-folder"})
    partition: str | None = _field(None, "--slurm-partition", _text, optional=True)
    gpus_per_job: int | None = _field(None, "--gpus-per-job", v.non_negative_int, optional=True)
    cpus_per_job: int | None = _field(None, "--cpus-per-job", v.positive_int, optional=True)
    mem_gb: float | None = _field(None, "--mem-gb", v.positive, optional=True)
    timeout_min: int = _field(DEFAULT_TIMEOUT_MIN, "--timeout-min", v.positive_int)
    array_parallelism: int | None = _field(None, "--array-parallelism", v.positive_int, optional=True)
    #: extra sbatch options ``KEY=VALUE`` (``account=abc``, ``qos=high``) -> ``#SBATCH --KEY=VALUE``
    slurm_extra: tuple[str, ...] = _field((), "--slurm-extra", _key_values, converter=tuple)
    #: shell lines run in the job script before the training (``module load cuda``, ``source venv/bin/activate``)
    slurm_setup: tuple[str, ...] = _field((), "--slurm-setup", _texts, converter=tuple)
    #: submitit's executor (``slurm``, ``local``, ``debug``); None: $OTPLUG_SUBMITIT_CLUSTER, else auto-detected
    cluster: str | None = _field(None, f"${CLUSTER_ENV}", v.one_of(*CLUSTERS), optional=True)

    def __attrs_post_init__(self) -> None:
        if self.launcher == "local":
            given = [flag for name, (flag, _) in _CLUSTER_OPTIONS.items() if getattr(self, name) not in (None, ())]
            if self.folder is not None:
                given.append("--submitit-folder")
            if given:
                raise LaunchError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --launcher submitit")
            return
        if self.folder is None:
            raise LaunchError("--submitit-folder: needed with --launcher submitit (otplug study uses <study>/submitit)")
        for key in self.extra_parameters():
            own = _OWN_FLAG.get(key.replace("_", "-"))
            if own:
                raise LaunchError(f"--slurm-extra {key}=...: use {own}")

    def extra_parameters(self) -> dict[str, str]:
        """``slurm_extra`` as submitit's ``slurm_additional_parameters`` (``{"account": "abc"}``)."""
        out = {}
        for item in self.slurm_extra:
            key, _, value = item.partition("=")
            out[key.strip().lstrip("-")] = value.strip()
        return out


def submitit_parameters(cfg: LaunchConfig) -> dict[str, Any]:
    """What :func:`run_cells` passes to ``AutoExecutor.update_parameters``: the time limit and the options given."""
    params: dict[str, Any] = {"name": "otplug-train", "timeout_min": cfg.timeout_min}
    for name, (_, key) in _CLUSTER_OPTIONS.items():
        value = getattr(cfg, name)
        if value in (None, ()):
            continue
        if name == "slurm_extra":
            value = cfg.extra_parameters()
        elif name == "slurm_setup":
            value = list(value)
        params[key] = value
    return params


def split_cores(jobs: int = 0, cuda: bool | None = None) -> tuple[int, int]:
    """``(cells side by side, intra-op threads each)`` on this machine: ``jobs`` or, for 0, 2 on a CPU and 1 with
    CUDA; the cores are split between them (threads 0, "leave", when one runs alone)."""
    cores = os.cpu_count() or 1
    if cuda is None:
        cuda = cuda_available()
    n = max(1, jobs if jobs else (1 if cuda else min(2, cores)))
    return n, (0 if n == 1 else max(1, cores // n))


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------------------------------
# cells

def _argv(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(a) for a in value)


def _own_flags(instance: Any, attribute: Any, value: tuple[str, ...]) -> None:
    for arg in value:
        if arg.split("=", 1)[0] in ("--output_dir", "--policy.device"):
            raise LaunchError(f"cell {instance.name}: {arg.split('=', 1)[0]} is set by the launcher; leave it out of "
                              "argv")


@attrs.frozen(kw_only=True)
class Cell:
    """One training of the grid (e.g. ``cotrain-ot/seed3``)."""

    name: str
    #: ``--output_dir`` of the training; finished when it holds ``train_summary.json``
    run_dir: Path = attrs.field(converter=Path)
    #: the ``otplug train`` arguments, without ``--output_dir`` and ``--policy.device`` (the launcher sets them)
    argv: tuple[str, ...] = attrs.field(converter=_argv, validator=_own_flags)
    #: the training's stdout and stderr
    log: Path = attrs.field(converter=Path)
    #: intra-op threads (``OMP_NUM_THREADS``) of the training; 0: leave them (a SLURM job uses its CPUs)
    threads: int = attrs.field(default=0, validator=v.non_negative_int)


@attrs.frozen(kw_only=True)
class CellOutcome:
    """What became of one cell: ``ok`` with its ``summary`` (``train_summary.json``), or an ``error`` line; ``log``
    is the file to read (the training's log; a submitit job's stderr when the job failed)."""

    cell: Cell
    ok: bool
    summary: dict[str, Any] | None = None
    error: str | None = None
    log: Path | None = None
    #: finished before this call (kept, not run again)
    resumed: bool = False
    #: wall time of the training here (0 when resumed)
    seconds: float = 0.0


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``train_summary.json``, or None when the run is unfinished (missing or unreadable)."""
    try:
        data = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def train_command(cell: Cell, device: str) -> list[str]:
    """The child's command line: ``python -m otplug train --output_dir=<run_dir> <argv> --policy.device=<device>``."""
    return [sys.executable, "-m", "otplug", "train", f"--output_dir={cell.run_dir}", *cell.argv,
            f"--policy.device={device}"]


def train_cell(cell: Cell, device: str, threads: int | None = None) -> dict[str, Any]:
    """Train one cell in a child process (its memory is returned at the end) unless it is finished; returns its
    summary. An unfinished run folder is removed first. ``threads`` (default: the cell's) > 0 pins the child's
    intra-op threads. Raises :class:`CellFailed` (one line, ending with the log) when the training fails."""
    from otplug.claims import Claim, ClaimHeld

    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    claim = Claim(cell_claim_path(cell), f"training cell {cell.name}",
                  hint="two jobs of one grid must not train the same cell")
    try:
        claim.acquire()
    except ClaimHeld as exc:
        raise CellFailed(str(exc)) from None
    try:
        return _train_claimed(cell, device, threads)
    finally:
        claim.release()


def cell_claim_path(cell: Cell) -> Path:
    """The claim file of a cell (beside its run folder): held by the process that trains it, from the check of its
    summary to the end of its training."""
    return cell.run_dir.parent / f".{cell.run_dir.name}.claim"


def busy_cell(cell: Cell) -> str | None:
    """Who is training ``cell`` now (one phrase), or None: a live claim on the cell, or a live ``otplug train``
    holding its run folder (a job or a child of an earlier invocation that outlived its study process)."""
    from otplug.claims import describe, holder_of
    from otplug.lerobot.train.run_dir import LOCK_NAME

    for path, who in ((cell_claim_path(cell), "a job"), (cell.run_dir / LOCK_NAME, "a training")):
        holder = holder_of(path)
        if holder is not None:
            return f"{who} ({describe(holder)}) holds {path}"
    return None


def _train_claimed(cell: Cell, device: str, threads: int | None) -> dict[str, Any]:
    done = read_summary(cell.run_dir)
    if done is not None:
        return done
    busy = run_folder_holder(cell.run_dir)
    if busy is not None:  # a training that outlived its job (the job killed, the child not): never remove its files
        raise CellFailed(f"training {cell.name} is still running elsewhere: {busy}; wait for it or stop it")
    shutil.rmtree(cell.run_dir, ignore_errors=True)  # an unfinished run restarts from scratch
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    cell.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    threads = cell.threads if threads is None else threads
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with writing(cell.log, "the training log"), cell.log.open("w") as fh:
        rc = subprocess.run(train_command(cell, device), stdout=fh, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
    summary = read_summary(cell.run_dir)
    if rc != 0 or summary is None:
        tail = [x for x in cell.log.read_text(errors="replace").splitlines() if x.strip()][-1:]
        raise CellFailed(f"training {cell.name} failed (exit {rc}): {tail[0].strip()[:300] if tail else 'no output'}"
                         f"; log: {cell.log}")
    return summary


def run_folder_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir`` (a live ``otplug train``: its lock file), as one phrase, or None."""
    from otplug.claims import describe, holder_of
    from otplug.lerobot.train.run_dir import LOCK_NAME

    holder = holder_of(Path(run_dir) / LOCK_NAME)
    return None if holder is None else f"{describe(holder)} holds {Path(run_dir) / LOCK_NAME}"


def train_cell_job(cell: Cell) -> dict[str, Any]:
    """The submitit job of one cell: :func:`train_cell` on CUDA when the job has a GPU, with the job's CPUs
    (``SLURM_CPUS_PER_TASK``) as intra-op threads on SLURM; on a failure the log's last lines go to the job's
    stderr too."""
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    threads = int(slurm_cpus) if slurm_cpus.isdigit() else cell.threads
    try:
        return train_cell(cell, "cuda" if cuda_available() else "cpu", threads)
    except CellFailed:
        if cell.log.is_file():
            lines = cell.log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- last lines of {cell.log}:", *lines, sep="\n", file=sys.stderr, flush=True)
        raise


# ---------------------------------------------------------------------------------------------------------------------
# running the grid

def run_cells(cells: Sequence[Cell], cfg: LaunchConfig, say: Callable[..., Any] = print) -> list[CellOutcome]:
    """Train every unfinished cell with ``cfg``'s launcher; one outcome per cell, in order. Finished cells are
    kept; a failed cell does not stop the others (the caller reports its ``error`` and ``log``)."""
    names = [c.name for c in cells]
    if len(set(names)) != len(names) or len({c.run_dir for c in cells}) != len(cells):
        raise LaunchError("two cells share a name or a run folder")
    for cell in cells:
        busy = busy_cell(cell) if read_summary(cell.run_dir) is None else None
        if busy is not None:
            raise LaunchError(f"training cell {cell.name} is being trained by another process: {busy} (a job or "
                              "child of an earlier invocation still running?); wait for it to end or stop it, then "
                              "run the same command again")
    outcomes: dict[str, CellOutcome] = {}
    todo = []
    for cell in cells:
        summary = read_summary(cell.run_dir)
        if summary is None:
            todo.append(cell)
        else:
            outcomes[cell.name] = CellOutcome(cell=cell, ok=True, summary=summary, log=cell.log, resumed=True)
    if outcomes:
        say(f"{len(outcomes)} of {len(cells)} trainings already finished (kept)")
    if todo:
        run = _run_local if cfg.launcher == "local" else _run_submitit
        for outcome in run(todo, cfg, say):
            outcomes[outcome.cell.name] = outcome
    return [outcomes[c.name] for c in cells]


def _done(cell: Cell, summary: dict[str, Any], t0: float, say: Callable[..., Any]) -> CellOutcome:
    seconds = time.perf_counter() - t0
    say(f"trained {cell.name} in {seconds:.0f} s")
    return CellOutcome(cell=cell, ok=True, summary=summary, log=cell.log, seconds=seconds)


def _failed(cell: Cell, error: str, log: Path | None, say: Callable[..., Any]) -> CellOutcome:
    say(f"FAILED {cell.name}: {error}" + ("" if log is None or str(log) in error else f" (log: {log})"))
    return CellOutcome(cell=cell, ok=False, error=error, log=log)


def _run_local(todo: list[Cell], cfg: LaunchConfig, say: Callable[..., Any]) -> list[CellOutcome]:
    from concurrent.futures import ThreadPoolExecutor

    cuda = cuda_available()
    n_jobs, _ = split_cores(cfg.jobs, cuda)
    device = "cuda" if cuda else "cpu"

    def one(cell: Cell) -> CellOutcome:
        t0 = time.perf_counter()
        try:
            return _done(cell, train_cell(cell, device), t0, say)
        except Exception as exc:  # noqa: BLE001 -- one failed cell must not stop the others
            error = str(exc) if isinstance(exc, CellFailed) else f"{type(exc).__name__}: {exc}"
            return _failed(cell, error.splitlines()[0] if error else type(exc).__name__, cell.log, say)

    with ThreadPoolExecutor(n_jobs) as pool:
        return list(pool.map(one, todo))


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise LaunchError(f"--launcher submitit needs submitit: {_INSTALL}") from None
    return submitit


def _job_error(exc: BaseException) -> str:
    """One line from what ``job.result()`` raised: our CellFailed line, the state of a job that left no result
    (timeout, killed, cancelled), or the last line of the job's trace."""
    text = str(exc)
    found = re.findall(r"CellFailed: (.+)", text)
    if found:
        return found[-1].strip()
    if "has not produced any output" in text:
        job = re.search(r"Job (\S+)", text)
        state = re.search(r"\(state: ([^)]*)\)", text)
        return (f"job {job.group(1) if job else '?'} ended without a result (state: "
                f"{state.group(1) if state else 'unknown'}; e.g. time limit or memory)")
    lines = [x.strip() for x in text.splitlines() if x.strip() and not set(x.strip()) <= {"-"}]
    trace_end = [x for x in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", x)]
    return (trace_end[-1] if trace_end else lines[0] if lines else type(exc).__name__)[:300]


def _run_submitit(todo: list[Cell], cfg: LaunchConfig, say: Callable[..., Any]) -> list[CellOutcome]:
    submitit = _import_submitit()
    assert cfg.folder is not None  # LaunchConfig checks it
    cluster = cfg.cluster or os.environ.get(CLUSTER_ENV) or None
    if cluster is not None and cluster not in CLUSTERS:
        raise LaunchError(f"${CLUSTER_ENV}: must be one of {', '.join(CLUSTERS)}, got {cluster!r}")
    try:
        executor = submitit.AutoExecutor(folder=cfg.folder, cluster=cluster)
        executor.update_parameters(**submitit_parameters(cfg))
    except (RuntimeError, ValueError, NameError, AssertionError) as exc:
        raise LaunchError(f"submitit refused the job settings: {str(exc).splitlines()[0]}") from None
    on_slurm = executor.cluster == "slurm"
    # SLURM queues the whole array (array_parallelism at a time); elsewhere the jobs are processes on this machine
    limit = len(todo) if on_slurm else (cfg.array_parallelism or split_cores(cfg.jobs)[0])
    say(f"submitit ({executor.cluster}): {len(todo)} job{'s' * (len(todo) != 1)}, one per training; job logs: "
        f"{cfg.folder}")
    queue, running, out = list(todo), [], []
    started: dict[str, float] = {}
    try:
        while queue or running:
            if queue and len(running) < limit:
                batch, queue = queue[: limit - len(running)], queue[limit - len(running):]
                with executor.batch():
                    jobs = [executor.submit(train_cell_job, cell) for cell in batch]
                ids = [j.job_id for j in jobs]
                array = ids[0].split("_")[0] if on_slurm and len(ids) > 1 else None
                if array:
                    say(f"submitted SLURM array {array}: {len(ids)} tasks (squeue -j {array}; scancel {array})")
                else:
                    say("submitted " + ", ".join(f"job {i} ({c.name})" for i, c in zip(ids, batch)))
                for job, cell in zip(jobs, batch):
                    started[cell.name] = time.perf_counter()
                    running.append((job, cell))
            finished = [(j, c) for j, c in running if j.done()]
            if not finished:
                time.sleep(30.0 if on_slurm else 1.0)
                continue
            for job, cell in finished:
                running.remove((job, cell))
                try:
                    summary = job.result()
                except Exception as exc:  # noqa: BLE001 -- FailedJobError, UncompletedJobError...: one cell
                    out.append(_failed(cell, _job_error(exc), Path(job.paths.stderr), say))
                    continue
                out.append(_done(cell, summary, started[cell.name], say))
    except KeyboardInterrupt:
        if on_slurm and running:
            ids = sorted({j.job_id.split("_")[0] for j, _ in running})
            say(f"interrupted: the SLURM jobs keep running (scancel {' '.join(ids)} stops them); run the same command "
                "again once they have ended to collect them")
        else:
            for job, _ in running:
                job.cancel(check=False)
        raise
    return out


# ---------------------------------------------------------------------------------------------------------------------
# command line

def add_launch_arguments(parser: Any) -> Any:
    """Add the launcher flags to an ``argparse`` parser (as one group); returns the group."""
    g = parser.add_argument_group("where the trainings run")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: trainings side by side on this machine (default); submitit: one job per training "
                   "(SLURM where sbatch exists, local processes otherwise; " + _INSTALL + ")")
    g.add_argument("--jobs", type=int, default=0,
                   help="trainings side by side on this machine (default: 2 on a CPU, 1 with CUDA)")
    g.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition of the jobs")
    g.add_argument("--gpus-per-job", type=int, metavar="N", help="GPUs per job (trains on CUDA when the job has one)")
    g.add_argument("--cpus-per-job", type=int, metavar="N", help="CPUs per job (its intra-op threads on SLURM)")
    g.add_argument("--mem-gb", type=float, metavar="GB", help="memory per job")
    g.add_argument("--timeout-min", type=int, default=DEFAULT_TIMEOUT_MIN, metavar="MIN",
                   help=f"time limit of each job (default {DEFAULT_TIMEOUT_MIN})")
    g.add_argument("--array-parallelism", type=int, metavar="N",
                   help="jobs of the array running at once (SLURM's %%N; without SLURM: jobs at a time)")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra sbatch option, e.g. account=abc or qos=high (repeatable)")
    g.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="a shell line run in the job before the training, e.g. 'module load cuda' (repeatable)")
    g.add_argument("--submitit-folder", metavar="DIR", help="submitit's job files and logs (default <study>/submitit)")
    return g


def launch_config_from_args(args: Any, study_dir: str | Path) -> LaunchConfig:
    """The :class:`LaunchConfig` of parsed :func:`add_launch_arguments` flags; raises :class:`LaunchError`."""
    folder = args.submitit_folder
    if args.launcher == "submitit":
        _import_submitit()
        folder = folder or Path(study_dir).expanduser() / "submitit"
    return LaunchConfig(
        launcher=args.launcher, jobs=args.jobs, folder=folder, partition=args.slurm_partition,
        gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb,
        timeout_min=args.timeout_min, array_parallelism=args.array_parallelism, slurm_extra=args.slurm_extra,
        slurm_setup=args.slurm_setup,
    )
