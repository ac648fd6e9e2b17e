"""Convert FaceNet's frozen TensorFlow graph to ONNX (run inside the isolated build env).

This file is run as a script by the build env's Python (which has tensorflow-cpu, tf2onnx
and onnx but not this project), so it imports nothing from the project:

    build-env/bin/python facenet_convert.py GRAPH.pb OUT.onnx --inputs input:0[-1,160,160,3]
        --outputs embeddings:0 --opset 15 --batch-reshapes 3

Steps (each printed):
1. ``python -m tf2onnx.convert --graphdef GRAPH.pb --inputs ... --outputs ... --opset N``
   with the input's batch dimension made dynamic.
2. The graph hard-codes batch 1 in the target shapes of some Reshape nodes; each Reshape
   whose shape is a constant starting with 1 gets 0 there ("copy the input's dimension"),
   so batches work. Exactly ``--batch-reshapes`` such nodes must be found.
3. Canonical form, because tf2onnx is not byte-deterministic: when it merges identical
   constants it keeps an arbitrary one's name, numbers its folded constants in an arbitrary
   order and writes the initializers in an arbitrary order. Every initializer is renamed
   after its first consumer (``<node name>/in<k>``) and the initializers are sorted by
   name; the graph's doc string names the input file without its folder; the inputs'
   and outputs' batch dimension is named "batch" (tf2onnx numbers it and leaves the
   output at the traced batch 1); the graph, node order and values are otherwise
   untouched.
4. ``onnx.checker`` on the result and shape inference: the output must be [batch, dim].
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import onnx
from onnx import numpy_helper, shape_inference


def run_tf2onnx(pb: str, out: str, inputs: str, outputs: str, opset: int) -> None:
    env = dict(os.environ)
    # quiet TensorFlow's C++ logging; CPU only; oneDNN off for a reproducible constant fold
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", TF_ENABLE_ONEDNN_OPTS="0",
               PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--graphdef", pb, "--inputs", inputs,
           "--outputs", outputs, "--opset", str(opset), "--output", out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        sys.exit(f"tf2onnx failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")


def fix_batch_reshapes(model: onnx.ModelProto, expected: int) -> int:
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        tensor = inits[node.input[1]]
        shape = numpy_helper.to_array(tensor)
        if shape.ndim != 1 or shape.size == 0 or int(shape[0]) != 1:
            continue
        if consumers[node.input[1]] != 1:
            sys.exit(f"Reshape {node.name}: its shape constant is shared; cannot patch it alone")
        new = shape.copy()
        new[0] = 0
        tensor.CopyFrom(numpy_helper.from_array(new.astype(shape.dtype), tensor.name))
        print(f"  {node.name}: shape {shape.tolist()} -> {new.tolist()}", flush=True)
        fixed += 1
    if fixed != expected:
        sys.exit(f"expected {expected} Reshape nodes with batch 1 in their shape, found {fixed}")
    return fixed


def canonicalise(model: onnx.ModelProto, source: str) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    renames: dict[str, str] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in inits and name not in renames:
                renames[name] = f"{node.name}/in{k}"
    unused = set(inits) - set(renames)
    if unused:
        sys.exit(f"unused initializers: {sorted(unused)[:3]}")
    if len(set(renames.values())) != len(renames):
        sys.exit("canonical initializer names collide")
    outputs = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    if outputs & set(renames.values()):
        sys.exit("a canonical initializer name collides with a tensor name")
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
    tensors = []
    for t in graph.initializer:
        t.name = renames[t.name]
        tensors.append(t)
    tensors.sort(key=lambda t: t.name)
    copies = [onnx.TensorProto() for _ in tensors]
    for c, t in zip(copies, tensors, strict=True):
        c.CopyFrom(t)
    del graph.initializer[:]
    graph.initializer.extend(copies)
    del graph.value_info[:]
    # tf2onnx writes the path it was given ("converted from /tmp/x/graph.pb"): keep the name
    graph.doc_string = f"converted from {os.path.basename(source)} by tf2onnx"
    # the batch dimension: tf2onnx names it with a counter ("unk__507") and leaves the
    # output at the traced batch 1; both become the symbolic "batch"
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 0:
            dims[0].Clear()
            dims[0].dim_param = "batch"


def check(model: onnx.ModelProto, dim: int) -> None:
    onnx.checker.check_model(model, full_check=True)
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in out]
    if shape != ["batch", dim]:
        sys.exit(f"converted model's output shape is {shape}, expected [batch, {dim}]")
    print(f"  onnx.checker passed; output shape {shape}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("graph")
    ap.add_argument("out")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--opset", type=int, required=True)
    ap.add_argument("--batch-reshapes", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.out))) as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        print(f"  tf2onnx --inputs {args.inputs} --outputs {args.outputs} --opset {args.opset}",
              flush=True)
        run_tf2onnx(args.graph, raw, args.inputs, args.outputs, args.opset)
        model = onnx.load(raw)
    fix_batch_reshapes(model, args.batch_reshapes)
    canonicalise(model, args.graph)
    check(model, args.dim)
    data = model.SerializeToString(deterministic=True)
    with open(args.out, "wb") as fh:
        fh.write(data)
    print(f"  wrote {len(data)} bytes", flush=True)


if __name__ == "__main__":
    main()
