"""Convert dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) to ONNX.

Run as a script by the build env's Python (numpy and onnx only; no dlib, nothing of the
project):

    build-env/bin/python dlib_convert.py MODEL.dat OUT.onnx [--no-normalise]

The .dat file is dlib's ``serialize(net)`` of the ``anet_type`` of dlib's
``dnn_face_recognition_ex.cpp`` (a 29-conv-layer ResNet, input a 150x150 RGB chip,
``loss_metric`` on 128-d outputs). dlib's format is not self-describing: the layer types
come from that C++ type, written out in ``architecture()`` below, and the file is parsed
against it (every layer's name string and every shape is checked, the whole file must be
consumed). Layout of the stream (dlib/dnn/core.h, layers.h, tensor.h):

- integers: one byte ``n`` (bit 7 = negative) then ``n`` bytes little-endian magnitude;
- dlib floats (scalars): mantissa (int64) and exponent (int16) as integers, value
  ``mantissa * 2**exponent``;
- strings: length as integer, then the bytes;
- ``add_loss_layer``: version, the loss's details, then the network;
- bools: the character '1' or '0';
- ``add_layer``: version 2, its sub-network (recursively, so the stream goes top-down
  through the versions first), then its layer's details, three bools and three empty
  tensors; the bottom ``add_layer`` (version 3) holds the input layer instead of a
  sub-network and ends with one more integer (its sample expansion factor);
- ``add_tag_layer`` / ``add_skip_layer``: version 1 and the sub-network, nothing else;
- tensors (version 2): num_samples, k, nr, nc as integers, then raw float32 little-endian.

The ONNX graph: input ``chip`` [batch, 150, 150, 3] float32 RGB in 0-255 (NHWC, the
project's layout), dlib's input scaling ``(x - channel mean) / 256`` inside the graph,
output ``descriptor`` [batch, 128], L2-normalised unless ``--no-normalise`` (dlib's own
descriptor is the raw fc output; the cosine of the normalised one is what the gallery
uses). dlib's ``add_prev`` adds tensors of different shapes into the larger shape with
zeros for missing values (channels, and 3x3 vs 4x4 maps in one downsampling block); the
graph pads explicitly where that happens.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------- architecture
# Each layer is a tuple; the list is top-down (output first), as dlib nests the types.
#   ("con", filters, k, stride) ("affine",) ("relu",) ("max_pool", k, stride)
#   ("avg_pool", k, stride) ("avg_pool_all",) ("fc", n) ("add_prev", tag)
#   ("tag", n) ("skip", n) ("input",)


def _block(n: int, stride: int) -> list[tuple]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [("affine",), ("con", n, 3, 1), ("relu",), ("affine",), ("con", n, 3, stride)]


def _ares(n: int) -> list[tuple]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [("relu",), ("add_prev", 1), *_block(n, 1), ("tag", 1)]


def _ares_down(n: int) -> list[tuple]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [("relu",), ("add_prev", 2), ("avg_pool", 2, 2), ("skip", 1), ("tag", 2),
            *_block(n, 2), ("tag", 1)]


def architecture() -> list[tuple]:
    """dlib's anet_type (dnn_face_recognition_ex.cpp), top-down, without the loss."""
    layers: list[tuple] = [("fc", 128), ("avg_pool_all",)]
    layers += _ares_down(256)                                  # alevel0
    layers += _ares(256) + _ares(256) + _ares_down(256)        # alevel1
    layers += _ares(128) + _ares(128) + _ares_down(128)        # alevel2
    layers += _ares(64) + _ares(64) + _ares(64) + _ares_down(64)  # alevel3
    layers += _ares(32) + _ares(32) + _ares(32)                # alevel4
    layers += [("max_pool", 3, 2), ("relu",), ("affine",), ("con", 32, 7, 2), ("input",)]
    return layers


# --------------------------------------------------------------------------- stream


class Stream:
    """Reader of dlib's serialisation primitives over a bytes object."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, msg: str) -> NoReturn:
        sys.exit(f"bad model file at byte {self.pos}: {msg}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            self.fail(f"truncated (wanted {n} bytes)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def read_int(self) -> int:
        head = self.take(1)[0]
        size, neg = head & 0x7F, head & 0x80
        if size > 8:
            self.fail(f"integer of {size} bytes")
        value = int.from_bytes(self.take(size), "little") if size else 0
        return -value if neg else value

    def read_float(self) -> float:
        mantissa, exponent = self.read_int(), self.read_int()
        return float(mantissa) * 2.0 ** exponent

    def read_str(self) -> str:
        n = self.read_int()
        if not 0 <= n < 256:
            self.fail(f"string of length {n}")
        return self.take(n).decode("ascii")

    def read_bool(self) -> bool:
        c = self.take(1)  # dlib writes a bool as the character '1' or '0'
        if c not in (b"0", b"1"):
            self.fail(f"bool {c!r}")
        return c == b"1"

    def expect_str(self, *names: str) -> str:
        s = self.read_str()
        if s not in names:
            self.fail(f"expected {' or '.join(names)}, found {s!r}")
        return s

    def version(self, want: int) -> None:
        v = self.read_int()
        if v != want:
            self.fail(f"version {v}, expected {want}")

    def tensor(self) -> np.ndarray:
        self.version(2)
        shape = tuple(self.read_int() for _ in range(4))
        if any(d < 0 for d in shape):
            self.fail(f"tensor shape {shape}")
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape).copy()

    def alias(self) -> tuple[int, int, int, int]:
        self.version(1)
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]


@dataclass
class Layer:
    """One parsed layer: its kind, integer settings and weight arrays."""

    kind: str
    args: tuple = ()
    ints: dict[str, int] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    flat = params.reshape(-1)
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) != flat.size:
        sys.exit(f"bad model file: params of {flat.size} floats, layer needs {sum(sizes)}")
    out, at = [], 0
    for s, n in zip(shapes, sizes, strict=True):
        out.append(flat[at:at + n].reshape(s))
        at += n
    return out


def _layer_details(st: Stream, spec: tuple) -> Layer:
    kind = spec[0]
    lay = Layer(kind, spec[1:])
    if kind == "con":
        st.expect_str("con_4", "con_5")
        params = st.tensor()
        nf, nr, nc = st.read_int(), st.read_int(), st.read_int()
        sy, sx, py, px = st.read_int(), st.read_int(), st.read_int(), st.read_int()
        fshape, bshape = st.alias(), st.alias()
        if nf != spec[1] or nr != nc or nr != spec[2] or sy != sx or sy != spec[3]:
            st.fail(f"con {nf} {nr}x{nc}/{sy},{sx}, expected {spec[1:]}")
        for _ in range(4):  # learning-rate and weight-decay multipliers: training only
            st.read_float()
        lay.ints = {"pad_y": py, "pad_x": px}
        w, b = _split(params, fshape, (bshape[1],))
        lay.arrays = {"w": w, "b": b}
    elif kind == "affine":
        st.expect_str("affine_")
        params = st.tensor()
        gshape, bshape = st.alias(), st.alias()
        st.read_int()  # mode: CONV_MODE (per channel); the shapes say the same
        g, b = _split(params, gshape, bshape)
        lay.arrays = {"gamma": g.reshape(-1), "beta": b.reshape(-1)}
    elif kind == "relu":
        st.expect_str("relu_")
    elif kind in ("max_pool", "avg_pool", "avg_pool_all"):
        st.expect_str("max_pool_2" if kind == "max_pool" else "avg_pool_2")
        nr, nc, sy, sx, py, px = (st.read_int() for _ in range(6))
        if kind == "avg_pool_all":
            if (nr, nc) != (0, 0):
                st.fail(f"avg_pool_everything with window {nr}x{nc}")
        elif nr != nc or nr != spec[1] or sy != sx or sy != spec[2]:
            st.fail(f"{kind} {nr}x{nc}/{sy},{sx}, expected {spec[1:]}")
        lay.ints = {"pad_y": py, "pad_x": px}
    elif kind == "fc":
        st.expect_str("fc_2", "fc_3")
        n_out, n_in = st.read_int(), st.read_int()
        params = st.tensor()
        wshape, _ = st.alias(), st.alias()
        bias_mode = st.read_int()
        for _ in range(4):  # learning-rate and weight-decay multipliers: training only
            st.read_float()
        if n_out != spec[1] or bias_mode != 1:  # 1 = FC_NO_BIAS
            st.fail(f"fc {n_out} outputs, bias mode {bias_mode}")
        lay.arrays = {"w": _split(params, (wshape[0] * wshape[1],))[0].reshape(n_in, n_out)}
    elif kind == "add_prev":
        st.expect_str("add_prev_")
    else:
        st.fail(f"no details for {kind}")
    return lay


def _layer_tail(st: Stream, bottom: bool) -> None:
    # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
    st.read_bool(), st.read_bool(), st.read_bool()
    for _ in range(3):  # x_grad, cached_output, params_grad (or grad_final): empty here
        t = st.tensor()
        if t.size:
            st.fail("unexpected non-empty state tensor")
    if bottom:  # the bottom add_layer also stores its _sample_expansion_factor
        st.read_int()


def parse(data: bytes) -> tuple[list[float], list[Layer]]:
    """The input means and the layers bottom-up (input side first)."""
    st = Stream(data)
    st.version(1)  # add_loss_layer
    st.expect_str("loss_metric_", "loss_metric_2")
    st.read_float(), st.read_float()  # margin, distance threshold: training only
    arch = architecture()
    for spec in arch[:-2]:  # versions, top-down; the bottom add_layer has version 3
        st.version(1 if spec[0] in ("tag", "skip") else 2)
    st.version(3)
    st.expect_str("input_rgb_image_sized")
    means = [st.read_float(), st.read_float(), st.read_float()]
    size = (st.read_int(), st.read_int())
    if size != (150, 150):
        st.fail(f"input size {size}")
    layers: list[Layer] = []
    for i, spec in enumerate(reversed(arch[:-1])):
        if spec[0] in ("tag", "skip"):
            layers.append(Layer(spec[0], spec[1:]))
            continue
        layers.append(_layer_details(st, spec))
        _layer_tail(st, bottom=i == 0)
    if st.pos != len(data):
        st.fail(f"{len(data) - st.pos} bytes left over")
    return means, layers


# --------------------------------------------------------------------------- graph


class Graph:
    """Builds ONNX nodes while tracking each value's static [C, H, W]."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, op: str) -> str:
        self.n += 1
        return f"{op}_{self.n:03d}"

    def const(self, base: str, arr: np.ndarray) -> str:
        name = f"{base}/{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        name = self.name(op)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def _pool_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def build_graph(means: list[float], layers: list[Layer], normalise: bool) -> onnx.ModelProto:
    """The ONNX model computing dlib's descriptor (optionally L2-normalised)."""
    g = Graph()
    x = g.op("Transpose", ["chip"], perm=[0, 3, 1, 2])  # NHWC -> NCHW
    mean = np.array(means, np.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", [x, g.const("input/mean", mean)])
    x = g.op("Mul", [x, g.const("input/scale", np.array(1 / 256, np.float32))])
    shape = (3, 150, 150)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for lay in layers:
        k = lay.kind
        if k == "con":
            w, b = lay.arrays["w"], lay.arrays["b"]
            ksz, stride = lay.args[1], lay.args[2]
            py, px = lay.ints["pad_y"], lay.ints["pad_x"]
            x = g.op("Conv", [x, g.const("con/w", w), g.const("con/b", b)],
                     kernel_shape=[ksz, ksz], strides=[stride, stride], pads=[py, px, py, px])
            shape = (w.shape[0], _pool_out(shape[1], ksz, stride, py),
                     _pool_out(shape[2], ksz, stride, px))
        elif k == "affine":
            c = shape[0]
            x = g.op("Mul", [x, g.const("affine/gamma", lay.arrays["gamma"].reshape(1, c, 1, 1))])
            x = g.op("Add", [x, g.const("affine/beta", lay.arrays["beta"].reshape(1, c, 1, 1))])
        elif k == "relu":
            x = g.op("Relu", [x])
        elif k in ("max_pool", "avg_pool"):
            ksz, stride = lay.args
            py, px = lay.ints["pad_y"], lay.ints["pad_x"]
            if k == "max_pool":
                x = g.op("MaxPool", [x], kernel_shape=[ksz, ksz], strides=[stride, stride],
                         pads=[py, px, py, px])
            else:  # dlib divides by the window inside the image only (padding 0 here)
                if py or px:
                    sys.exit("avg_pool with padding is not supported")
                x = g.op("AveragePool", [x], kernel_shape=[ksz, ksz], strides=[stride, stride])
            shape = (shape[0], _pool_out(shape[1], ksz, stride, py),
                     _pool_out(shape[2], ksz, stride, px))
        elif k == "avg_pool_all":
            x = g.op("GlobalAveragePool", [x])
            x = g.op("Flatten", [x], axis=1)
            shape = (shape[0], 1, 1)
        elif k == "fc":
            x = g.op("MatMul", [x, g.const("fc/w", lay.arrays["w"])])
        elif k == "tag":
            tags[lay.args[0]] = (x, shape)
        elif k == "skip":
            x, shape = tags[lay.args[0]]
        elif k == "add_prev":
            other, oshape = tags[lay.args[0]]
            out = tuple(max(a, b) for a, b in zip(shape, oshape, strict=True))
            x = _pad_to(g, x, shape, out)
            other = _pad_to(g, other, oshape, out)
            x = g.op("Add", [x, other])
            shape = out  # type: ignore[assignment]
        else:
            sys.exit(f"cannot build {k}")
    if normalise:
        x = g.op("LpNormalization", [x], axis=1, p=2)
    g.nodes[-1].output[0] = "descriptor"
    graph = helper.make_graph(
        g.nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chip", TensorProto.FLOAT, ["batch", 150, 150, 3])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 128])],
        g.inits)
    graph.doc_string = "converted from dlib_face_recognition_resnet_model_v1.dat (CC0)"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)],
                              producer_name="motcua dlib_convert")
    model.ir_version = 8  # what opset 15 needs; readable by every onnxruntime since 1.10
    return model


def _pad_to(g: Graph, x: str, shape: tuple[int, int, int], out: tuple[int, ...]) -> str:
    """Zero-pad [C, H, W] at the end of each axis up to ``out`` (dlib's add_prev)."""
    extra = [o - s for s, o in zip(shape, out, strict=True)]
    if not any(extra):
        return x
    pads = np.array([0, 0, 0, 0, 0, *extra], np.int64)
    return g.op("Pad", [x, g.const("pad/pads", pads)], mode="constant")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--no-normalise", action="store_true",
                    help="output dlib's raw descriptor (for comparing with dlib)")
    args = ap.parse_args()
    with open(args.model, "rb") as fh:
        data = fh.read()
    means, layers = parse(data)
    convs = sum(1 for lay in layers if lay.kind == "con")
    print(f"  parsed {len(layers)} layers ({convs} conv), input means "
          f"{[round(m, 3) for m in means]}", flush=True)
    model = build_graph(means, layers, normalise=not args.no_normalise)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_param or d.dim_value
            for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    if dims != ["batch", 128]:
        sys.exit(f"output shape {dims}, expected [batch, 128]")
    onnx.save(model, args.out)
    print(f"  wrote {args.out}: {len(model.graph.node)} nodes", flush=True)


if __name__ == "__main__":
    main()
