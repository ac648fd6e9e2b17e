"""onnxruntime sessions built from :class:`edge.config.RuntimeConfig`.

Every model of the pipeline is opened here, so threads and execution providers (CPU;
CUDA or TensorRT on a Jetson) are set in one place, and onnxruntime's exceptions become
:class:`edge.errors.ModelError` at this boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge.config import RuntimeConfig
from edge.errors import ModelError

log = logging.getLogger(__name__)

#: onnxruntime's own log level: 3 = errors only. Its warnings (e.g. a batch larger than
#: the shape a converted graph declares) go straight to stderr and mean nothing to a user.
_ORT_LOG_SEVERITY = 3


def session_options(runtime: RuntimeConfig) -> ort.SessionOptions:
    """Session options for one model: threads from the config, full graph optimisation."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime.intra_op_threads
    # one model call at a time per session: inter-op parallelism only adds threads here
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = _ORT_LOG_SEVERITY
    if not runtime.spin_wait:
        # worker threads sleep between calls instead of spinning: on a 2-core terminal
        # that also runs the camera and the display, spinning steals their CPU
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def providers(runtime: RuntimeConfig) -> list[str]:
    """The configured execution providers that this onnxruntime build offers, in order."""
    available = set(ort.get_available_providers())
    chosen = [p for p in runtime.providers if p in available]
    for p in runtime.providers:
        if p not in available:
            log.warning("execution provider %s is not available here; skipped", p)
    if not chosen:
        chosen = ["CPUExecutionProvider"]
    return chosen


class OnnxModel:
    """One onnxruntime session with a single input; ``run`` returns all outputs."""

    def __init__(self, path: Path, runtime: RuntimeConfig) -> None:
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options(runtime), providers=providers(runtime)
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelError(f"cannot load model {self.path}: {_one_line(exc)}") from None
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
