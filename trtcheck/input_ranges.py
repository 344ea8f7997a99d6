"""Value ranges from what the model does with each integer input.

Random integers in [0, 1] (Polygraphy's default) turn token ids into two tokens and masks into
noise, so a verdict on them says little. Here each integer or bool input is followed through the
graph (onnx-graphsurgeon links a tensor to its consumers, subgraphs of If/Loop included):

1. An input that reaches the indices of a Gather, GatherElements or OneHot, or is compared by
   Equal with a constant 0..K-1 (a one-hot, as jax2tf exports it), indexes a table: it gets
   [0, rows-1], the smallest over every table it indexes. Value-preserving ops on the way (Cast,
   Reshape, Unsqueeze, Flatten, Expand, Concat, Slice, ...) are followed; Add or Sub of a scalar
   constant shifts the range. The row count is read from the table's shape (an initializer's
   dims), never from its data, so external weights are not read.
2. An int or bool input that reaches the condition of a Where, or a Softmax through elementwise
   ops only (cast, 1 - mask, times a large negative, added to the scores), is an attention mask:
   it gets ones with a padded tail of zeros per row (`padded_mask`).
3. An integer input compared by Equal with one scalar constant selects a branch (silero-vad's
   `sr == 16000`): it gets that constant, the case the model is written for.

An input that matches neither keeps a default range for its dtype, which is a guess; the caller
warns about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx
    import onnx_graphsurgeon as gs

ValueRange = tuple[float, float]

INDEX = "index"
MASK = "mask"
SELECTOR = "selector"

# Ops whose output holds (some of) the values of this input, unchanged: position -> followed.
# None means any input position.
_VALUE_PRESERVING: dict[str, int | None] = {
    "Cast": 0, "CastLike": 0, "Identity": 0, "Unsqueeze": 0, "Squeeze": 0, "Reshape": 0,
    "Flatten": 0, "Expand": 0, "Transpose": 0, "Slice": 0, "Tile": 0, "Concat": None,
    "Gather": 0, "GatherElements": 0, "GatherND": 0, "Split": 0, "Pad": 0,
}
# Ops a mask passes through on its way to the attention scores.
_MASK_OPS = {"Not", "And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual",
             "GreaterOrEqual", "Sub", "Mul", "Add", "Div", "Neg", "Min", "Max", "Where"}
# Constants beyond this many elements are not read (a one-hot's iota is a few hundred).
_MAX_CONSTANT_READ = 1 << 20


@dataclass(frozen=True)
class InputRole:
    """What the graph does with one input, and the values that suit it."""

    kind: str  # INDEX, MASK or SELECTOR
    value_range: ValueRange
    # Where the range came from, for the report: "indexes model.wte.weight (50257 rows)".
    origin: str


def _constant_array(tensor: gs.Tensor, *, read: bool) -> tuple[tuple[int, ...], Any] | None:
    """(shape, values or None) of a constant tensor (initializer or Constant node), else None.

    The shape comes from the initializer's dims; values are read only when `read` is set and the
    tensor is small.
    """
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        shape = tuple(int(d) for d in tensor.shape)
        small = read and int(np.prod(shape, dtype=np.int64)) <= _MAX_CONSTANT_READ
        return shape, (np.asarray(tensor.values) if small else None)
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if producer is not None and producer.op == "Constant" and "value" in producer.attrs:
        value = producer.attrs["value"]
        return tuple(int(d) for d in value.shape), (np.asarray(value.values) if read else None)
    return None


def _table_rows(data: gs.Tensor, axis: int) -> tuple[int, str] | None:
    """(rows along `axis`, a name for the report) of a Gather's data, if its shape is known."""
    source = data
    # Quantized or cast tables: the rows are those of the stored constant.
    for _ in range(4):
        constant = _constant_array(source, read=False)
        if constant is not None:
            shape, _ = constant
            if -len(shape) <= axis < len(shape):
                return shape[axis], source.name
            return None
        producer = source.inputs[0] if len(source.inputs) == 1 else None
        if producer is None or producer.op not in ("DequantizeLinear", "Cast", "Identity"):
            break
        source = producer.inputs[0]
    shape = data.shape
    if shape is not None and -len(shape) <= axis < len(shape) and isinstance(shape[axis], int):
        return int(shape[axis]), data.name
    return None


def _scalar_int(tensor: gs.Tensor) -> int | None:
    constant = _constant_array(tensor, read=True)
    if constant is None or constant[1] is None:
        return None
    values = constant[1]
    if values.size != 1 or values.dtype.kind not in "iu":
        return None
    return int(values.reshape(()))


def _iota_length(tensor: gs.Tensor) -> int | None:
    """K if `tensor` is a constant holding 0, 1, ..., K-1 (any shape), else None."""
    constant = _constant_array(tensor, read=True)
    if constant is None or constant[1] is None:
        return None
    values = constant[1].ravel()
    if values.size < 2 or values.dtype.kind not in "iuf":
        return None
    return int(values.size) if np.array_equal(values, np.arange(values.size)) else None


def _subgraph_links(node: gs.Node, position: int) -> Iterator[gs.Tensor]:
    """The body input a Loop feeds its loop-carried value at `position` into."""
    if node.op == "Loop" and position >= 2:
        body = node.attrs.get("body")
        if body is not None and position < len(body.inputs):
            yield body.inputs[position]


def _positions(node: gs.Node, tensor: gs.Tensor) -> list[int]:
    return [i for i, t in enumerate(node.inputs) if t is tensor]


@dataclass(frozen=True)
class _IndexUse:
    low: float
    high: float
    origin: str
    rows: int


def _index_uses(start: gs.Tensor) -> list[_IndexUse]:
    """Every table the values of `start` index, with the offset added on the way."""
    uses: list[_IndexUse] = []
    pending: list[tuple[gs.Tensor, int]] = [(start, 0)]
    seen: set[tuple[int, int]] = set()
    while pending:
        tensor, offset = pending.pop()
        if (id(tensor), offset) in seen:
            continue
        seen.add((id(tensor), offset))
        for node in tensor.outputs:
            for position in _positions(node, tensor):
                pending.extend((t, offset) for t in _subgraph_links(node, position))
                use = _index_use(node, position, offset)
                if use is not None:
                    uses.append(use)
                    continue
                followed = _VALUE_PRESERVING.get(node.op, -1)
                if followed is None or followed == position:
                    pending.extend((out, offset) for out in node.outputs)
                elif node.op in ("Add", "Sub") and len(node.inputs) == 2:
                    shift = _scalar_int(node.inputs[1 - position])
                    if shift is not None and (node.op == "Add" or position == 0):
                        new = offset + shift if node.op == "Add" else offset - shift
                        pending.append((node.outputs[0], new))
    return uses


def _index_use(node: gs.Node, position: int, offset: int) -> _IndexUse | None:
    rows: int | None = None
    origin = ""
    if node.op in ("Gather", "GatherElements") and position == 1:
        found = _table_rows(node.inputs[0], int(node.attrs.get("axis", 0)))
        if found is not None:
            rows, table = found
            origin = f"indexes {table} ({rows} rows)"
    elif node.op == "OneHot" and position == 0:
        depth = _scalar_int(node.inputs[1])
        if depth is not None:
            rows, origin = depth, f"one-hot of depth {depth} in {node.name}"
    elif node.op == "Equal" and len(node.inputs) == 2:
        length = _iota_length(node.inputs[1 - position])
        if length is not None:
            rows, origin = length, f"one-hot over {length} values (Equal {node.name})"
        value = _scalar_int(node.inputs[1 - position])
        if value is not None:
            # Not a table: one value, the one the model tests for (rows = 0 marks it).
            return _IndexUse(float(value - offset), float(value - offset),
                             f"compared with {value} in Equal {node.name}", 0)
    if rows is None or rows < 1:
        return None
    return _IndexUse(float(-offset), float(rows - 1 - offset), origin, rows)


def _reaches_attention(start: gs.Tensor, limit: int = 64) -> str | None:
    """How `start` reaches a Where condition or a Softmax through elementwise ops, else None."""
    pending = [start]
    seen: set[int] = set()
    while pending and len(seen) < limit:
        tensor = pending.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.outputs:
            for position in _positions(node, tensor):
                pending.extend(_subgraph_links(node, position))
                if node.op == "Softmax":
                    return f"reaches Softmax {node.name}"
                if node.op == "Where" and position == 0:
                    return f"selects in Where {node.name}"
                followed = _VALUE_PRESERVING.get(node.op, -1)
                if (node.op in _MASK_OPS or followed is None or followed == position) and not (
                        node.op in ("Gather", "GatherElements") and position == 1):
                    pending.extend(node.outputs)
    return None


def infer_roles(model: onnx.ModelProto) -> dict[str, InputRole]:
    """The role of every integer and bool graph input that the graph shows (see the module doc)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    roles: dict[str, InputRole] = {}
    for tensor in graph.inputs:
        if tensor.dtype is None or np.dtype(tensor.dtype).kind not in "biu":
            continue
        role = _role(tensor)
        if role is not None:
            roles[tensor.name] = role
    return roles


def _role(tensor: gs.Tensor) -> InputRole | None:
    found = _index_uses(tensor)
    uses = [use for use in found if use.rows > 0]
    selectors = [use for use in found if use.rows == 0]
    if uses:
        smallest = min(uses, key=lambda use: use.rows)
        low = max(use.low for use in uses)
        high = min(use.high for use in uses)
        if low > high:  # tables disagree once offsets are added: keep the smallest table's
            low, high = smallest.low, smallest.high
        origin = smallest.origin + (f" and {len(uses) - 1} more" if len(uses) > 1 else "")
        # A two-row table (token types) takes a mask's values too; anything larger is an index.
        if high - low > 1:
            return InputRole(INDEX, (low, high), origin)
    path = _reaches_attention(tensor)
    if path is not None:
        return InputRole(MASK, (0.0, 1.0), f"attention mask: ones with a padded tail ({path})")
    if uses:
        return InputRole(INDEX, (low, high), origin)
    if selectors:
        first = selectors[0]
        return InputRole(SELECTOR, (first.low, first.high), first.origin)
    return None


def padded_mask(shape: tuple[int, ...], dtype: np.dtype, seed: int, name: str) -> np.ndarray:
    """Ones with a tail of zeros along the last axis, a different length per row where it can.

    Lengths are drawn (deterministically from `seed` and `name`) from the upper half of the last
    axis, without repetition while there are enough lengths, and every row keeps at least one 1,
    so no attention row is masked out entirely (which would be a NaN in any precision).
    """
    import zlib

    if not shape:
        return np.ones((), dtype)
    length = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if length == 0 or rows == 0:
        return np.ones(shape, dtype)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    candidates = np.arange(max(1, (length + 1) // 2), length + 1)
    kept = rng.choice(candidates, size=rows, replace=rows > candidates.size)
    mask = np.arange(length)[None, :] < kept[:, None]
    return mask.reshape(shape).astype(dtype)
