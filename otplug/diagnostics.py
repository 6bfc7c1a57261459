"""Alignment diagnostics: is OT aligning sim and real features, or collapsing them?

Pure torch/numpy (no lerobot). Every function takes embeddings ``src`` and ``tgt`` of shape ``(n, F)`` (torch
tensors or arrays; more dimensions are flattened to ``F``) where row ``i`` of each is one DTW pair (a real frame
and its sim partner). All computations run in float64 on the CPU and never touch a global random generator, so
calling them during training does not change the run.

=================================  ===============================================================================
``diag/embed_scale``               mean squared norm of the ``src`` and ``tgt`` rows (as ``ot_embed_scale/<term>``)
``diag/embed_scale_ratio``         ``embed_scale`` / a reference (the value at the first measurement): scale
                                   collapse shows as a ratio falling towards 0 (:class:`CollapseAlarm`)
``diag/effective_rank``            exp of the entropy of the normalised singular values of the centred rows of
                                   both domains (Roy & Vetterli 2007): how many directions the features use
``diag/domain_probe_acc``          held-out accuracy of a linear classifier telling sim from real (0.5: the
                                   domains are indistinguishable to a linear probe; 1.0: separable)
``diag/retrieval_at_1``            share of real rows whose nearest sim row (Euclidean) is their own DTW partner
``diag/retrieval_at_1_cosine``     the same with cosine similarity
=================================  ===============================================================================

A good alignment lowers the probe accuracy towards 0.5 while retrieval stays high (partners remain each
other's neighbours) and the scale ratio and effective rank stay put. Probe -> 0.5 together with the scale
ratio -> 0 is collapse, not alignment.

Training side: :class:`DiagnosticsRecorder` (a fixed probe set of pairs, measured every N steps, embeddings
saved to ``<run_dir>/embeddings/step_<step>.npz`` for ``otplug report``) or the plain functions
:func:`embed_probe` / :func:`diagnose`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otplug.atomic import write_error
from otplug.errors import OtplugError
from otplug.stats import retrieval_at_1  # its home; re-exported here

__all__ = [
    "CollapseAlarm",
    "DiagnosticsRecorder",
    "EmbeddingCollapseWarning",
    "alignment_diagnostics",
    "as_matrix",
    "diagnose",
    "domain_probe_accuracy",
    "effective_rank",
    "embed_probe",
    "embedding_files",
    "load_probe_embeddings",
    "retrieval_at_1",
    "save_probe_embeddings",
    "scale",
]

PREFIX = "diag/"
EMBED_DIR = "embeddings"
_FILE = re.compile(r"^step_(\d+)\.npz$")


class EmbeddingCollapseWarning(RuntimeWarning):
    """The probe embeddings shrank far below their reference scale (see :class:`CollapseAlarm`)."""


# ---------------------------------------------------------------------------------------------------------------------
# inputs

def as_matrix(x: Any, what: str = "embeddings") -> np.ndarray:
    """``x`` (tensor, array or nested list) as a float64 ``(n, F)`` array; ``(n,)`` becomes ``(n, 1)`` and
    ``(n, d1, d2, ...)`` is flattened to ``(n, d1*d2*...)``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        raise OtplugError(f"{what}: expected rows of features, got a scalar")
    if a.ndim == 1:
        a = a[:, None]
    elif a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    return a


def _pair(src: Any, tgt: Any) -> tuple[np.ndarray, np.ndarray]:
    s, t = as_matrix(src, "src embeddings"), as_matrix(tgt, "tgt embeddings")
    if s.shape != t.shape:
        raise OtplugError(f"src and tgt embeddings must be DTW pairs of the same shape, got {s.shape} and {t.shape}")
    if s.shape[0] < 2:
        raise OtplugError(f"diagnostics need at least 2 pairs, got {s.shape[0]}")
    return s, t


# ---------------------------------------------------------------------------------------------------------------------
# the measures

def scale(x: Any) -> float:
    """Mean squared row norm, ``mean_i ||x_i||^2`` (the ``ot_embed_scale`` of the OT terms)."""
    a = as_matrix(x)
    return float(np.mean(np.sum(a * a, axis=1))) if a.size else float("nan")


def effective_rank(x: Any, center: bool = True) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular values
    of ``x`` (rows centred first when ``center``: the spread of the cloud, not its offset). Between 1 and
    ``min(n, F)``; a matrix with ``k`` equal non-zero singular values has effective rank ``k``. 0.0 for an all-zero
    (or single-point, when centred) cloud; NaN when ``x`` holds non-finite values."""
    a = as_matrix(x)
    if not np.isfinite(a).all():
        return float("nan")
    size = float(np.abs(a).max()) if a.size else 0.0
    if center:
        a = a - a.mean(axis=0, keepdims=True)
    s = np.linalg.svd(a, compute_uv=False)
    total = s.sum()
    if not total > 0 or s[0] <= size * 1e-12 * math.sqrt(a.size):  # all zero, or one point (rounding residue)
        return 0.0
    p = s[s > s[0] * 1e-12] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def domain_probe_accuracy(src: Any, tgt: Any, held_out: float = 0.3, *, seed: int = 0, c: float = 1.0,
                          max_iter: int = 200) -> float:
    """Held-out accuracy of a linear probe telling sim (``src``) rows from real (``tgt``) rows.

    The pairs are split (deterministically: ``seed``) into a training part and a held-out part of
    ``round(held_out * n)`` pairs (at least one each); a pair goes whole to one side, so a row's near-identical
    partner never leaks into the other. Features are standardised with the training part's mean and standard
    deviation (the probe is blind to the overall scale: a collapsed cloud is judged by its shape), then an
    L2-regularised logistic regression is fitted by L-BFGS in torch, float64 -- the same objective as
    scikit-learn's ``LogisticRegression(C=c)`` (``c * sum(log-loss) + ||w||^2 / 2``, intercept not penalised).
    Returns the accuracy on the held-out rows of both domains (balanced classes): 0.5 means the domains are
    indistinguishable to a linear classifier, 1.0 separable. NaN for non-finite embeddings.
    """
    s, t = _pair(src, tgt)
    if not 0.0 < held_out < 1.0:
        raise OtplugError(f"held_out must be a fraction in (0, 1), got {held_out}")
    if not np.isfinite(s).all() or not np.isfinite(t).all():
        return float("nan")
    n = s.shape[0]
    n_test = min(n - 1, max(1, round(held_out * n)))
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    x_train = np.concatenate([s[train], t[train]])
    y_train = np.concatenate([np.zeros(len(train)), np.ones(len(train))])
    x_test = np.concatenate([s[test], t[test]])
    y_test = np.concatenate([np.zeros(len(test)), np.ones(len(test))])
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
    logits = _probe_logits((x_train - mean) / std, y_train, (x_test - mean) / std, c=c, max_iter=max_iter)
    return float(np.mean((logits > 0) == (y_test > 0.5)))


def _probe_logits(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, *, c: float,
                  max_iter: int) -> np.ndarray:
    """Fit the probe on ``z_train`` and return its logits on ``z_test``. With more features than rows the
    penalised optimum lies in the span of the training rows (representer theorem): the fit runs in that basis --
    the same classifier, a problem of size n instead of F."""
    if z_train.shape[1] > z_train.shape[0]:
        _u, sv, vt = np.linalg.svd(z_train, full_matrices=False)
        basis = vt[sv > sv[0] * 1e-12].T if sv.size and sv[0] > 0 else vt[:0].T
        z_train, z_test = z_train @ basis, z_test @ basis
    w, b = _fit_logistic(z_train, y_train, c=c, max_iter=max_iter)
    return z_test @ w + b


def _fit_logistic(x: np.ndarray, y: np.ndarray, *, c: float, max_iter: int) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (sklearn's objective with ``C = c``) by L-BFGS, float64, CPU."""
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    n = float(x.shape[0])
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ w + b
        # objective divided by c * n (same minimiser, well-scaled for the tolerances)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt) + w.pow(2).sum() / (2.0 * c * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy().copy(), float(b.detach())


def _one_blas_thread() -> Any:
    """These are small problems: run BLAS single-threaded (threadpoolctl, when installed). On shared or busy
    cores a multi-threaded OpenBLAS spins and waits: measured 1.3-7 s per call instead of 0.4 s."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def alignment_diagnostics(src: Any, tgt: Any, reference_scale: float | None = None, *, held_out: float = 0.3,
                          seed: int = 0) -> dict[str, float]:
    """All the measures of this module for one set of DTW pairs, named ``diag/<name>`` (module docstring).

    ``reference_scale``: the embedding scale to compare with (e.g. :func:`scale` of the first measurement);
    ``diag/embed_scale_ratio`` is left out without one (or when it is not a positive finite number). Non-finite
    embeddings give NaN values (metrics.jsonl writes them as ``null``), never an exception. BLAS runs on one
    thread meanwhile (threadpoolctl, when installed).
    """
    with _one_blas_thread():
        return _alignment_diagnostics(src, tgt, reference_scale, held_out=held_out, seed=seed)


def _alignment_diagnostics(src: Any, tgt: Any, reference_scale: float | None, *, held_out: float,
                           seed: int) -> dict[str, float]:
    s, t = _pair(src, tgt)
    both = np.concatenate([s, t])
    out = {PREFIX + "embed_scale": scale(both)}
    if reference_scale is not None and math.isfinite(reference_scale) and reference_scale > 0:
        out[PREFIX + "embed_scale_ratio"] = out[PREFIX + "embed_scale"] / float(reference_scale)
    out[PREFIX + "effective_rank"] = effective_rank(both)
    out[PREFIX + "domain_probe_acc"] = domain_probe_accuracy(s, t, held_out, seed=seed)
    out[PREFIX + "retrieval_at_1"] = retrieval_at_1(s, t, "euclidean")
    out[PREFIX + "retrieval_at_1_cosine"] = retrieval_at_1(s, t, "cosine")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the collapse alarm

class CollapseAlarm:
    """Warns (:class:`EmbeddingCollapseWarning`) when ``diag/embed_scale_ratio`` falls below ``threshold``, at
    most once per ``every`` calls of :meth:`check` (the first low call warns; the next warning needs ``every``
    more calls)."""

    def __init__(self, threshold: float = 0.1, every: int = 100, key: str = PREFIX + "embed_scale_ratio") -> None:
        if not threshold > 0:
            raise OtplugError(f"CollapseAlarm: threshold must be > 0, got {threshold}")
        if int(every) < 1:
            raise OtplugError(f"CollapseAlarm: every must be >= 1, got {every}")
        self.threshold = float(threshold)
        self.every = int(every)
        self.key = key
        self.calls = 0
        self.fired = 0
        self._last_fired_call: int | None = None

    def check(self, metrics: Mapping[str, Any] | float, step: int | None = None) -> bool:
        """Look at one measurement (a metrics mapping or the ratio itself); True when it warned."""
        self.calls += 1
        ratio = metrics.get(self.key) if isinstance(metrics, Mapping) else metrics
        if ratio is None or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio >= self.threshold:
            return False
        if self._last_fired_call is not None and self.calls - self._last_fired_call < self.every:
            return False
        self._last_fired_call = self.calls
        self.fired += 1
        at = f"step {step}: " if step is not None else ""
        warnings.warn(f"{at}the OT embeddings shrank to {ratio:.3g}x their reference scale (threshold "
                      f"{self.threshold:g}): scale collapse -- the squared-distance cost is rewarding smaller "
                      "features, not aligned ones. Remedies: embed_norm='l2' on the embedding terms, a smaller "
                      "lambda_ot, fixed features in the cost (docs/report.md)", EmbeddingCollapseWarning,
                      stacklevel=2)
        return True


# ---------------------------------------------------------------------------------------------------------------------
# training side

@contextlib.contextmanager
def _quiet_module(module: Any) -> Iterator[None]:
    """``module`` in eval mode (no dropout draws, no BatchNorm statistics moved) and the global torch RNG
    restored afterwards, so a measurement leaves the training run exactly as it was."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    was_training = [(m, m.training) for m in module.modules()] if module is not None else []
    with torch.random.fork_rng(devices=devices):
        try:
            if module is not None:
                module.eval()
            yield
        finally:
            for m, mode in was_training:
                m.train(mode)


def embed_probe(encode_fn: Callable[[Any], Any], probe_src: Any, probe_tgt: Any, *,
                module: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(encode_fn(probe_src), encode_fn(probe_tgt))`` as float64 ``(n, F)`` arrays, computed under
    ``torch.no_grad()`` with the global torch RNG (CPU and initialised CUDA devices) restored afterwards. Pass the
    policy as ``module`` to run it in eval mode for the measurement (its train/eval flags are restored)."""
    with torch.no_grad(), _quiet_module(module):
        s = encode_fn(probe_src)
        t = encode_fn(probe_tgt)
    return _pair(s, t)


def diagnose(encode_fn: Callable[[Any], Any], probe_src: Any, probe_tgt: Any, reference: float | None = None, *,
             module: Any = None, held_out: float = 0.3, seed: int = 0) -> dict[str, float]:
    """:func:`embed_probe` then :func:`alignment_diagnostics` (``reference``: the reference embedding scale)."""
    s, t = embed_probe(encode_fn, probe_src, probe_tgt, module=module)
    return alignment_diagnostics(s, t, reference, held_out=held_out, seed=seed)


def _phase(value: Any, n: int, what: str) -> np.ndarray | None:
    if value is None:
        return None
    a = as_matrix(value, what).reshape(-1)
    if a.shape[0] != n:
        raise OtplugError(f"{what}: expected {n} values (one per probe row), got {a.shape[0]}")
    return a.astype(np.float32)


def save_probe_embeddings(run_dir: str | Path, step: int, src: Any, tgt: Any, *, src_phase: Any = None,
                          tgt_phase: Any = None, metrics: Mapping[str, float] | None = None) -> Path:
    """Write ``<run_dir>/embeddings/step_<step, 6 digits>.npz`` atomically: ``src`` and ``tgt`` (float32
    ``(n, F)``), ``src_phase`` / ``tgt_phase`` (float32 ``(n,)``, the frame's position in its episode,
    ``frame index / episode length``) when given, ``step``, and each metric as a 0-d float64 array under its name
    (``diag/embed_scale``, ...). Read back with :func:`load_probe_embeddings`."""
    s, t = _pair(src, tgt)
    n = s.shape[0]
    arrays: dict[str, np.ndarray] = {"src": s.astype(np.float32), "tgt": t.astype(np.float32),
                                     "step": np.asarray(int(step), dtype=np.int64)}
    for name, value in (("src_phase", src_phase), ("tgt_phase", tgt_phase)):
        p = _phase(value, n, name)
        if p is not None:
            arrays[name] = p
    for k, v in (metrics or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            arrays[k] = np.asarray(float(v), dtype=np.float64)
    folder = Path(run_dir) / EMBED_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{int(step):06d}.npz"
        tmp = folder / f".step_{int(step):06d}.{os.getpid()}.tmp.npz"
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(folder / f"step_{int(step):06d}.npz", exc, "the probe embeddings") from exc
    return path


def embedding_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the saved probe embeddings of a run, by step."""
    folder = Path(run_dir) / EMBED_DIR
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _FILE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def load_probe_embeddings(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_probe_embeddings` (no pickles): ``{"src", "tgt", "step",
    "src_phase"?, "tgt_phase"?, "metrics": {name: float}}``. :class:`~otplug.errors.OtplugError` naming the file
    when it is not such a file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise OtplugError(f"{path}: not a readable .npz file ({exc})") from exc
    try:
        s, t = _pair(data.pop("src"), data.pop("tgt"))
    except KeyError as exc:
        raise OtplugError(f"{path}: no {exc.args[0]!r} array (not a probe-embeddings file)") from None
    except OtplugError as exc:
        raise OtplugError(f"{path}: {exc}") from None
    out: dict[str, Any] = {"src": s, "tgt": t, "metrics": {}}
    m = _FILE.match(path.name)
    step = data.pop("step", None)
    out["step"] = int(step) if step is not None and step.shape == () else (int(m.group(1)) if m else None)
    for name in ("src_phase", "tgt_phase"):
        if name in data:
            p = data.pop(name).astype(np.float64).reshape(-1)
            if p.shape[0] == s.shape[0]:
                out[name] = p
    for k, v in data.items():
        if v.shape == () and np.issubdtype(v.dtype, np.number):
            out["metrics"][k] = float(v)
    return out


class DiagnosticsRecorder:
    """The training loop's diagnostics: a fixed probe set of DTW pairs measured every ``every`` steps.

    ``probe_src`` / ``probe_tgt``: the batches ``encode_fn`` takes (e.g. preprocessed lerobot batches of the same
    ``n`` pairs, built once at start-up with a fixed seed). ``src_phase`` / ``tgt_phase``: each row's position in
    its episode (``frame / episode length``), saved for the report's pictures. The first measurement sets the
    reference scale (so its ``diag/embed_scale_ratio`` is 1.0); a resumed run (``resume_step > 0``) takes it from
    the earliest saved embeddings file instead, when there is one. Embeddings are saved at the first measurement,
    at ``total_steps`` and every ``save_every`` steps (when set). ``alarm``: a :class:`CollapseAlarm` (default
    threshold 0.1, at most one warning per 10 measurements), or None for none.
    """

    def __init__(self, run_dir: str | Path, probe_src: Any, probe_tgt: Any, *, every: int = 100,
                 src_phase: Any = None, tgt_phase: Any = None, total_steps: int | None = None,
                 save_every: int | None = None, alarm: CollapseAlarm | None | str = "default",
                 held_out: float = 0.3, seed: int = 0, resume_step: int = 0) -> None:
        if int(every) < 1:
            raise OtplugError(f"diagnostics: every must be >= 1, got {every}")
        if save_every is not None and int(save_every) < 1:
            raise OtplugError(f"diagnostics: save_every must be >= 1 or None, got {save_every}")
        self.run_dir = Path(run_dir)
        self.probe_src, self.probe_tgt = probe_src, probe_tgt
        self.src_phase, self.tgt_phase = src_phase, tgt_phase
        self.every = int(every)
        self.total_steps = total_steps
        self.save_every = None if save_every is None else int(save_every)
        self.alarm = CollapseAlarm(every=10) if alarm == "default" else alarm
        self.held_out, self.seed = held_out, seed
        self.reference: float | None = None
        self.records = 0
        if resume_step > 0:
            for step, path in embedding_files(self.run_dir):
                if step > resume_step:
                    break
                try:
                    ref = load_probe_embeddings(path)["metrics"].get(PREFIX + "embed_scale")
                except OtplugError:
                    continue
                if ref is not None and math.isfinite(ref) and ref > 0:
                    self.reference = ref
                    break

    def due(self, step: int) -> bool:
        """Whether ``step`` is a measurement step: step 0 (before the first update), every ``every`` steps and
        the last step."""
        return step % self.every == 0 or (self.total_steps is not None and step == self.total_steps)

    def record(self, step: int, encode_fn: Callable[[Any], Any], *, module: Any = None) -> dict[str, float]:
        """Measure the probe set now: returns the ``diag/*`` metrics (log them with the step's row), warns
        through the alarm, and saves the embeddings when this is a saving step. ``module``: the policy, put in eval
        mode for the measurement (flags restored); the global torch RNG is left as it was."""
        s, t = embed_probe(encode_fn, self.probe_src, self.probe_tgt, module=module)
        if self.reference is None:
            ref = scale(np.concatenate([s, t]))
            self.reference = ref if math.isfinite(ref) and ref > 0 else None
        metrics = alignment_diagnostics(s, t, self.reference, held_out=self.held_out, seed=self.seed)
        if self.alarm is not None:
            self.alarm.check(metrics, step)
        first = self.records == 0
        self.records += 1
        if (first or (self.total_steps is not None and step >= self.total_steps)
                or (self.save_every is not None and step % self.save_every == 0)):
            save_probe_embeddings(self.run_dir, step, s, t, src_phase=self.src_phase, tgt_phase=self.tgt_phase,
                                  metrics=metrics)
        return metrics
