"""ONNX format: both towers through ``torch.onnx.export`` (dynamo), served by onnxruntime.

Batch size and history length are dynamic axes; weights are stored inside the
``.onnx`` files; the format offers int8 quantization of both graphs, with
activation scales computed per call (``int8``) or fixed ahead from calibration
inputs (``int8-static``).
Importing this module imports neither torch nor onnxruntime: the exporter
imports torch when called, the runtime onnxruntime (and numpy) when it opens a
graph, so a machine without one still registers the other formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contracts import Calibration
from ..errors import refused_as
from .quiet import quiet_exporter

if TYPE_CHECKING:
    import onnxruntime as ort

OPSET = 23
USER_FILE = "user_tower.onnx"
ITEM_FILE = "item_tower.onnx"
MAX_LENGTH_KEY = "max_history_len"  # user graph metadata: the longest history it takes


class OnnxTowers:
    """The runtime: two onnxruntime sessions; ``run`` is safe to call from many threads."""

    def __init__(
        self, bundle_dir: Path, threads: int = 1, user_file=USER_FILE, item_file=ITEM_FILE
    ):
        self.user = open_session(Path(bundle_dir) / user_file, session_options(threads))
        # the item tower runs when a bundle is checked, not per request: one thread
        self.item = open_session(Path(bundle_dir) / item_file, session_options(1))
        metadata = self.user.get_modelmeta().custom_metadata_map
        self.max_length = int(metadata[MAX_LENGTH_KEY]) if MAX_LENGTH_KEY in metadata else None

    def encode_users(self, user_ids, history, history_mask) -> np.ndarray:
        """User vectors; a history longer than the graph takes keeps its most recent items."""
        history = np.asarray(history, dtype=np.int64)
        history_mask = np.asarray(history_mask, dtype=bool)
        if self.max_length is not None and history.shape[1] > self.max_length:
            keep = slice(-self.max_length, None)
            history, history_mask = history[:, keep], history_mask[:, keep]
        return self.user.run(None, user_feed(user_ids, history, history_mask))[0]

    def encode_items(self, item_ids) -> np.ndarray:
        return self.item.run(None, item_feed(item_ids))[0]

    def graphs(self) -> dict[str, Any]:
        return {"user_tower": describe(self.user), "item_tower": describe(self.item)}


def session_options(threads: int) -> ort.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def user_feed(user_ids, history, history_mask) -> dict[str, np.ndarray]:
    """The user graph's inputs by name."""
    return {
        "user_ids": np.asarray(user_ids, dtype=np.int64),
        "history": np.asarray(history, dtype=np.int64),
        "history_mask": np.asarray(history_mask, dtype=bool),
    }


def item_feed(item_ids) -> dict[str, np.ndarray]:
    """The item graph's input by name."""
    return {"item_ids": np.asarray(item_ids, dtype=np.int64)}


def open_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """An onnxruntime session on ``path``; a graph it cannot read is one clear error."""
    import onnxruntime as ort

    with refused_as(f"bundle graph {path} cannot be loaded"):
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def describe(session: ort.InferenceSession) -> dict[str, Any]:
    """Input/output names, dtypes and shapes (symbolic axes by name) of a session."""

    def entry(arg) -> dict[str, Any]:
        shape = [dim if isinstance(dim, int) else str(dim) for dim in arg.shape]
        return {"name": arg.name, "dtype": arg.type, "shape": shape}

    return {
        "inputs": [entry(arg) for arg in session.get_inputs()],
        "outputs": [entry(arg) for arg in session.get_outputs()],
    }


def remainder_scalar(self, other):
    """``aten.remainder.Scalar`` whose divisor may be a symbolic size (the GRU's ``% length``).

    onnxscript's own translation turns the divisor into a constant and fails on
    a dynamic axis; this one keeps it a graph value. For integers ONNX ``Mod``
    (fmod=0) takes the sign of the divisor, as ``torch.remainder`` does.
    """
    from onnxscript import opset20 as op

    other = op.CastLike(other, self)
    if self.dtype.is_integer():
        return op.Mod(self, other)
    return op.Sub(self, op.Mul(op.Floor(op.Div(self, other)), other))


class OnnxFormat:
    name = "onnx"
    files = (USER_FILE, ITEM_FILE)
    opset = OPSET  # recorded in the bundle's manifest
    quantizations = ("int8", "int8-static")

    def export(self, model, out_dir: Path) -> list[Path]:
        import onnx
        import torch

        from . import onnx_attention
        from .towers import (
            ITEM_INPUTS,
            ITEM_OUTPUTS,
            USER_INPUTS,
            USER_OUTPUTS,
            example_inputs,
            towers,
        )

        user_tower, item_tower = towers(model)
        user_example, item_example = example_inputs(model)
        batch = torch.export.Dim("batch")
        length = torch.export.Dim("history_length", max=model.max_history_len)
        items = torch.export.Dim("items")
        jobs = (
            (user_tower, user_example, USER_FILE, USER_INPUTS, USER_OUTPUTS,
             ({0: batch}, {0: batch, 1: length}, {0: batch, 1: length})),
            (item_tower, item_example, ITEM_FILE, ITEM_INPUTS, ITEM_OUTPUTS, ({0: items},)),
        )  # fmt: skip
        translations = {
            torch.ops.aten.remainder.Scalar: remainder_scalar,
            **onnx_attention.TRANSLATIONS,
        }
        written = []
        for module, example, file, inputs, outputs, dynamic in jobs:
            path = Path(out_dir) / file
            with torch.no_grad(), quiet_exporter(), onnx_attention.one_node():
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_shapes=dynamic,
                    opset_version=OPSET,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    custom_translation_table=translations,
                )
            written.append(path)
        # the history axis is dynamic up to max_history_len; the graph says so itself
        graph = onnx.load(str(written[0]))
        onnx.helper.set_model_props(graph, {MAX_LENGTH_KEY: str(model.max_history_len)})
        onnx.save(graph, str(written[0]))
        for path in written:
            onnx.checker.check_model(str(path), full_check=True)
        return written

    def load(self, bundle_dir: Path, threads: int = 1) -> OnnxTowers:
        return OnnxTowers(bundle_dir, threads)

    def quantize(self, folder: Path, scheme: str, calibration: Calibration) -> None:
        """int8 weights in both graphs, in place, keeping their metadata.

        ``int8`` quantizes activations with a scale computed per call over the
        whole batch, so a user's vector depends a little on the other rows of
        its batch. ``int8-static`` fixes every activation's scale from the
        min/max it takes over ``calibration`` (the calibrating graph reduces each
        batch to those two numbers per tensor), so a vector depends on its own
        row only.
        """
        import onnx
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        # ONNX's standard Attention shares its name with onnxruntime's contrib
        # Attention, which the quantizer would turn into an invalid QAttention
        op_types = [op for op in IntegerOpsRegistry if op != "Attention"]
        feeds = {
            USER_FILE: [user_feed(*batch) for batch in calibration.user_batches],
            ITEM_FILE: [item_feed(batch) for batch in calibration.item_batches],
        }
        for name in self.files:
            source, target = Path(folder) / name, Path(folder) / f"{name}.{scheme}"
            metadata = {prop.key: prop.value for prop in onnx.load(str(source)).metadata_props}
            with quiet_exporter(""):
                if scheme == "int8-static":
                    quantize_static(
                        str(source),
                        str(target),
                        Feeds(feeds[name]),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                        op_types_to_quantize=op_types,
                        # the same operators as dynamic int8, and float outputs as it
                        # gives: the user vector is never rounded to 256 levels
                        extra_options={"OpTypesToExcludeOutputQuantization": op_types},
                    )
                else:
                    quantize_dynamic(
                        str(source),
                        str(target),
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=op_types,
                    )
            quantized = onnx.load(str(target))
            onnx.helper.set_model_props(quantized, metadata)
            onnx.save(quantized, str(source))
            target.unlink()


class Feeds:
    """onnxruntime's calibration reader over a list of graph inputs, each once."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.remaining = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.remaining, None)
