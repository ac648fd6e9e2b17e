"""onnxruntime sessions built from :class:`faces.settings.RuntimeConfig`.

Every model of the pipeline is opened here, so threads and execution providers (CPU;
CUDA or TensorRT on a Jetson) are set in one place, and onnxruntime's exceptions become
:class:`core.errors.ModelError` at this boundary.

On the CPU, onnxruntime's full optimisation (fused, blocked-layout convolutions: FaceNet
~16 ms a face instead of ~20) keeps the original weights alongside the transformed ones:
+120 MB resident for FaceNet. So the first time a model is opened on a machine, a child
process optimises it and saves the result under ``<model_dir>/.ort-optimized/``; every
session then loads that file with optimisation off: the same speed, 120 MB less. The file
is a cache derived from a hash-checked pack file, keyed by that file, the onnxruntime
version and the CPU (the optimised graph is specific to both); when it cannot be made
(read-only directory, ...) the model is optimised in process as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.errors import ModelError
from faces.settings import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER, RuntimeConfig

log = logging.getLogger(__name__)

#: onnxruntime's own log level: 3 = errors only. Its warnings (e.g. a batch larger than
#: the shape a converted graph declares) go straight to stderr and mean nothing to a user.
_ORT_LOG_SEVERITY = 3


#: folder (beside the pack folders) of the optimised copies
OPTIMIZED_DIR = ".ort-optimized"
#: the child process optimising FaceNet takes ~5 s; allow for a loaded machine
_OPTIMIZE_TIMEOUT_S = 300


def session_options(runtime: RuntimeConfig, optimize: bool = True) -> ort.SessionOptions:
    """Session options for one model: threads from the config, full graph optimisation
    unless the model file is already optimised."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime.intra_op_threads
    # one model call at a time per session: inter-op parallelism only adds threads here
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = _ORT_LOG_SEVERITY
    if not runtime.spin_wait:
        # worker threads sleep between calls instead of spinning: on a 2-core terminal
        # that also runs the camera and the display, spinning steals their CPU
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def providers(runtime: RuntimeConfig, available: Iterable[str] | None = None) -> list[str]:
    """The configured execution providers that this onnxruntime build offers (or
    ``available``), in order; the CPU alone when none is."""
    have = set(ort.get_available_providers() if available is None else available)
    chosen = [p for p in runtime.providers if p in have]
    for p in runtime.providers:
        if p not in have:
            log.warning("execution provider %s is not available here; skipped", p)
    if not chosen:
        chosen = [CPU_PROVIDER]
    return chosen


ProviderOptions = dict[str, str | int | bool]


def execution_providers(runtime: RuntimeConfig, available: Iterable[str] | None = None
                        ) -> list[tuple[str, ProviderOptions]]:
    """The providers to use, each with its onnxruntime options (the names of onnxruntime's
    TensorRT and CUDA provider documentation): ``device_id`` for both GPU providers;
    ``trt_fp16_enable`` and, with a cache folder, ``trt_engine_cache_enable`` and
    ``trt_engine_cache_path`` for TensorRT."""
    out: list[tuple[str, ProviderOptions]] = []
    for name in providers(runtime, available):
        opts: ProviderOptions = {}
        if name == TENSORRT_PROVIDER:
            opts["device_id"] = runtime.device_id
            opts["trt_fp16_enable"] = runtime.trt_fp16
            if runtime.trt_engine_cache_dir is not None:
                opts["trt_engine_cache_enable"] = True
                opts["trt_engine_cache_path"] = str(runtime.trt_engine_cache_dir)
        elif name == CUDA_PROVIDER:
            opts["device_id"] = runtime.device_id
        out.append((name, opts))
    return out


def _prepare_engine_cache(runtime: RuntimeConfig, names: list[str]) -> None:
    """TensorRT writes its engines into the cache folder but does not create it."""
    folder = runtime.trt_engine_cache_dir
    if folder is None or TENSORRT_PROVIDER not in names:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"runtime.trt_engine_cache_dir: cannot create {folder}: "
                         f"{exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelError(f"runtime.trt_engine_cache_dir: {folder} is not writable by this "
                         f"user; TensorRT would rebuild its engines on every start")


class OnnxModel:
    """One onnxruntime session with a single input; ``run`` returns all outputs."""

    def __init__(self, path: Path, runtime: RuntimeConfig) -> None:
        self.path = Path(path)
        chosen = execution_providers(runtime)
        names = [name for name, _ in chosen]
        _prepare_engine_cache(runtime, names)
        optimized = optimized_copy(self.path) if names == [CPU_PROVIDER] else None
        #: the file the session was made from (the optimised copy when there is one)
        self.loaded_from = optimized or self.path
        try:
            self.session = ort.InferenceSession(
                str(optimized or self.path),
                sess_options=session_options(runtime, optimize=optimized is None),
                providers=names,
                provider_options=[opts for _, opts in chosen],
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelError(f"cannot load model {self.path}: {_one_line(exc)}") from None
        #: the providers the session really uses: onnxruntime drops a GPU provider whose
        #: libraries (CUDA, cuDNN, TensorRT) fail to load with only a warning on stderr
        self.providers: list[str] = list(self.session.get_providers())
        dropped = [n for n in names if n not in self.providers]
        if dropped:
            log.warning("%s: onnxruntime could not start %s; running on %s", self.path.name,
                        ", ".join(dropped), ", ".join(self.providers))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path.name}: expected one input, found {len(inputs)}")
        self.input_name: str = inputs[0].name
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the model on one float32 input tensor."""
        try:
            out: list[Any] = self.session.run(self.output_names, {self.input_name: x})
        except Exception as exc:
            raise ModelError(f"{self.path.name} failed: {_one_line(exc)}") from None
        return out

    def outputs(self, x: np.ndarray) -> Mapping[str, np.ndarray]:
        """Run and name the outputs."""
        return dict(zip(self.output_names, self.run(x), strict=True))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _cache_key(path: Path) -> str:
    """Identifies the source file, the onnxruntime build and the CPU it optimised for."""
    st = path.stat()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = sorted({line for line in fh if line.startswith(("flags", "Features"))})
    except OSError:
        cpu = []
    text = "|".join(
        [
            path.name,
            str(st.st_size),
            str(st.st_mtime_ns),
            str(st.st_ino),
            ort.__version__,
            platform.machine(),
            *cpu,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def optimized_copy(path: Path) -> Path | None:
    """The optimised copy of a CPU model, made in a child process if missing; None when
    it cannot be made (then the caller optimises in process)."""
    try:
        target = (
            path.parent.parent / OPTIMIZED_DIR / f"{path.parent.name}-{path.stem}-"
            f"{_cache_key(path)}.onnx"
        )
        if target.is_file():
            return target
        target.parent.mkdir(exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "faces.runtime", str(path), str(target)],
            capture_output=True,
            text=True,
            timeout=_OPTIMIZE_TIMEOUT_S,
            check=False,
        )
        if proc.returncode == 0 and target.is_file():
            log.info("optimised %s for this CPU into %s", path.name, target)
            # copies for an older build of the pack, onnxruntime or CPU are dead weight
            for stale in target.parent.glob(f"{path.parent.name}-{path.stem}-*.onnx"):
                if stale != target:
                    stale.unlink(missing_ok=True)
            return target
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        log.warning("cannot optimise %s: %s", path.name, last[0])
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot optimise %s: %s", path.name, exc)
    return None


def _optimize(src: Path, dst: Path) -> None:
    """Child process: optimise ``src`` fully and save it to ``dst`` atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp)
    opts.log_severity_level = _ORT_LOG_SEVERITY
    try:
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    _optimize(Path(sys.argv[1]), Path(sys.argv[2]))
