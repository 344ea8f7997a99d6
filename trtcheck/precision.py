"""Precision plans (which nodes run in reduced precision) and their two ONNX realisations.

A plan says "everything runs in fp16 (or bf16) except these nodes". It is realised:
- by `emulate`, for the ONNX Runtime targets: the model still computes in fp32, but every float
  tensor a reduced node reads or writes as data is rounded through the reduced type, so overflow
  (|x| > 65504 becomes inf in fp16) and rounding appear where TensorRT would show them;
- by `convert`, for TensorRT 11 (strongly typed only): reduced nodes really take and produce fp16
  or bf16 tensors, with Casts at the boundaries to fp32 nodes and graph outputs;
- by builder flags plus per-layer fp32 constraints on TensorRT 10 (see `backends`).

Both realisations make the same decisions, so `emulate` rounds exactly the tensors that `convert`
retypes. The rules, in the order they are applied (each has a test in tests/test_precision.py):

1. Nodes that stay fp32 whatever the plan: nodes outside the default ONNX domain (com.microsoft,
   ai.onnx.ml, model-local functions), ops without a non-deprecated schema at the model's opset,
   nodes holding subgraphs (If, Loop, Scan, SequenceMap: bodies are left untouched), nodes with
   a sequence, optional or map input or output (or one of unknown type where the schema allows
   those), and Constant nodes.
2. Nodes with a float output whose type no input binds (it comes from an attribute or the op's
   inference: ConstantOfShape, EyeLike, Random*, Bernoulli, BitCast, the windows,
   DequantizeLinear-23) stay fp32, since the type they would infer once their inputs change may
   follow those inputs (EyeLike without `dtype`) or be rejected (BitCast). Cast (`to`) and
   LayerNormalization (`stash_type` types Mean and InvStdDev) are exceptions: they keep those
   outputs as they are and reduce the rest.
3. Within a reduced node, inputs and outputs go by the op's schema at the model's opset
   (`onnx.defs.get_schema`): the tensors bound to one type constraint change together, and only
   when the constraint admits float and the reduced type and every one of them is float32. So
   inputs typed `tensor(float)` outright stay fp32 (NonMaxSuppression boxes, scores and
   thresholds; QLinearConv scales; DynamicQuantizeLinear's input; Upsample scales; Range, whose
   constraint has no float16), and so do int or bool tensors (TopK's indices, Where's
   condition). For bf16, a constraint admitting float16 counts as admitting bfloat16 when the
   op's newest schema admits bfloat16 for the same parameters: ONNX added bfloat16 to Conv, the
   pools and others only in opset 22, and TensorRT's parser takes bf16 for them at any opset (so
   a bf16 `convert` of an older model can fail `onnx.checker`'s full check).
4. Parameters: inputs TensorRT reads as shape tensors or scalar parameters
   (`_PARAMETER_INPUTS`: Resize roi, scales and sizes; Upsample scales; NonMaxSuppression
   max_output_boxes_per_class and thresholds; TopK K; OneHot depth; Dropout ratio; the int shape
   inputs of Reshape, Expand, Tile, Slice, Pad, ConstantOfShape, Range, Squeeze, Unsqueeze, the
   reductions, ...) stay fp32, with everything bound to the same constraint (Range's output).
5. A node whose outputs are read only as parameters, directly or through other such nodes, stays
   fp32: float shape arithmetic ending in a Cast to int64 before a Reshape, scales computed for a
   Resize. Shape math is not rounded.
6. Inputs that read only their tensor's shape or convert it (Shape, Size, Cast, CastLike's first
   input) take the tensor in whatever type it has: reduced if a reduced node produced it, fp32
   otherwise. Nothing is rounded or cast for them.
7. Constants (initializers that are not graph inputs, and outputs of Constant nodes) are treated
   alike: rounded (emulate) or converted (convert) by value, never through a Cast node, so
   ONNX Runtime still sees them as constants; empty ones are never cast. A constant that only
   reduced positions read is replaced (convert renames it `<name>__fp16`); otherwise the reduced
   positions get a copy. `emulate` rounds no tensor that is empty by its static shape; `convert`
   casts a computed empty tensor only where a reduced node needs its type to match.
8. A tensor produced reduced keeps its name, as an fp32 tensor, for everything that reads it in
   fp32: fp32 nodes, parameters, graph outputs and subgraph bodies (outer-scope references). The
   graph's inputs and outputs keep their types, and If/Loop/Scan bodies stay valid.
9. One reduced copy per tensor, shared by all its reduced readers: `Mul(s, s)` reads one copy.

Polygraphy's own `ConvertToFp16` (onnxconverter-common) produced models ORT rejects on a plain
Conv/Gemm graph, so it is not used here.

Limits: nodes inside If/Loop/Scan bodies are not rounded (the node holding the body stays fp32);
composite ops (LSTM, GRU, LayerNormalization, ...) round only at their boundaries, while
TensorRT may also compute their inner steps in reduced precision. Types come from ONNX shape
inference; a tensor whose type it cannot find stays as it is, with the positions bound to it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from trtcheck.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16")

_ONNX_TYPE = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# ONNX Runtime and numpy have no native bfloat16; ml_dtypes (an onnx dependency) provides one.
_NUMPY_TYPE = {"fp16": np.dtype(np.float16), "bf16": helper.tensor_dtype_to_np_dtype(
    TensorProto.BFLOAT16)}
# The Cast to bfloat16 exists from opset 13 on; older models are upgraded first.
_MIN_OPSET = {"fp16": 6, "bf16": 13}

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)")

# Rule 4: inputs (by their name in the op's schema) that TensorRT's ONNX parser reads as shape
# tensors or scalar parameters rather than as data.
_AXES = frozenset({"axes"})
_PARAMETER_INPUTS: dict[str, frozenset[str]] = {
    "Resize": frozenset({"roi", "scales", "sizes"}),
    "Upsample": frozenset({"scales"}),
    "NonMaxSuppression": frozenset({"max_output_boxes_per_class", "iou_threshold",
                                    "score_threshold"}),
    "TopK": frozenset({"K"}),
    "OneHot": frozenset({"depth"}),
    "Dropout": frozenset({"ratio", "training_mode"}),
    "Reshape": frozenset({"shape"}),
    "Expand": frozenset({"shape"}),
    "Tile": frozenset({"repeats"}),
    "ConstantOfShape": frozenset({"input"}),
    "Range": frozenset({"start", "limit", "delta"}),
    "Slice": frozenset({"starts", "ends", "axes", "steps"}),
    "Pad": frozenset({"pads", "axes"}),
    "Split": frozenset({"split"}),
    "CumSum": frozenset({"axis"}),
    "Trilu": frozenset({"k"}),
    "CenterCropPad": frozenset({"shape"}),
    "Col2Im": frozenset({"image_shape", "block_shape"}),
    "DFT": frozenset({"dft_length", "axis"}),
    "STFT": frozenset({"frame_step", "frame_length"}),
    "AffineGrid": frozenset({"size"}),
    **{op: _AXES for op in ("Squeeze", "Unsqueeze", "ReduceSum", "ReduceMean", "ReduceMax",
                            "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                            "ReduceLogSumExp", "ReduceSumSquare")},
}
# Rule 2's exceptions: ops whose attribute-typed outputs never follow an input's type (Cast's
# `to`, LayerNormalization's `stash_type` for Mean and InvStdDev).
_FIXED_OUTPUT_TYPES = frozenset({"Cast", "LayerNormalization"})
# Rule 6: inputs that take any tensor type and only read its shape or convert it.
_EITHER_TYPE_INPUTS: dict[str, frozenset[str]] = {
    "Shape": frozenset({"data"}),
    "Size": frozenset({"data"}),
    "Cast": frozenset({"input"}),
    "CastLike": frozenset({"input"}),
}


@dataclass(frozen=True)
class PrecisionPlan:
    """Which nodes compute in `precision`; `keep_fp32` names the nodes that stay in fp32."""

    precision: str = "fp32"
    keep_fp32: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"precision '{self.precision}' is unknown; use one of {', '.join(PRECISIONS)}"
            )

    @property
    def reduced(self) -> bool:
        return self.precision != "fp32"

    def is_reduced(self, node_name: str) -> bool:
        return self.reduced and node_name not in self.keep_fp32

    def check_nodes(self, model: onnx.ModelProto) -> None:
        """Raises `UsageError` if `keep_fp32` names a node that the model does not have."""
        names = {node.name for node in model.graph.node}
        unknown = sorted(self.keep_fp32 - names)
        if unknown:
            raise UsageError(
                f"--keep-fp32 names node(s) {', '.join(unknown)} that are not in the model; "
                "use node names as shown by Netron or `polygraphy inspect model`"
            )

    def at_supported_opset(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Returns `model`, upgraded with onnx.version_converter if its opset lacks the Cast."""
        needed = _MIN_OPSET[self.precision] if self.reduced else 0
        opset = _default_opset(model)
        if opset >= needed:
            return model
        from onnx import version_converter

        try:
            return version_converter.convert_version(model, needed)
        except Exception as err:
            raise UsageError(
                f"{self.precision} needs opset >= {needed} for its Cast; the model is opset "
                f"{opset} and onnx.version_converter could not upgrade it ({err}); convert it "
                "yourself or use fp16") from err


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class _NodePlan:
    """The input and output positions of one reduced node that compute in the reduced type."""

    inputs: frozenset[int]
    outputs: frozenset[int]


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == AttributeProto.GRAPHS:
            yield from attribute.graphs


def _names_read_inside(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph and its nested subgraphs read (a superset of their outer references)."""
    names = {value.name for value in graph.output}
    for node in graph.node:
        names.update(node.input)
        for subgraph in _subgraphs(node):
            names |= _names_read_inside(subgraph)
    return names


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of the main graph's values, with shape inference's help where it succeeds.

    Inference reads the model without its weights' values (kept: their types and shapes, and
    small tensors such as Reshape's shapes): with them, it serialises the whole model twice
    (1.4 s of 2.9 s emulating BERT-base; 7 ms without, and the same types).
    """
    from trtcheck.lint import _without_weights

    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model), strict_mode=False)
    except Exception:  # a model shape inference rejects (or over 2 GB): declared types only
        inferred = model
    graph = inferred.graph
    types: dict[str, onnx.TypeProto] = {}
    for init in graph.initializer:
        types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    for value in [*graph.value_info, *graph.output, *graph.input]:
        types[value.name] = value.type
    return types


@functools.cache
def _newest_schema(op_type: str):
    try:
        return onnx.defs.get_schema(op_type, onnx.defs.onnx_opset_version(), "")
    except onnx.defs.SchemaError:
        return None


def _formal(parameters, index: int):
    if index < len(parameters):
        return parameters[index]
    if parameters and parameters[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return parameters[-1]
    return None


class _Analysis:
    """Decides, for one model and plan, which node positions compute in the reduced type."""

    def __init__(self, model: onnx.ModelProto, plan: PrecisionPlan) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.opset = _default_opset(model)
        self.wanted = f"tensor({'float16' if plan.precision == 'fp16' else 'bfloat16'})"
        self.types = _value_types(model)
        self.graph_inputs = {value.name for value in self.graph.input}
        self.graph_outputs = {value.name for value in self.graph.output}
        # Names that subgraph bodies read from this graph (their outer-scope references).
        self.outer = {name for node in self.nodes for subgraph in _subgraphs(node)
                      for name in _names_read_inside(subgraph)}
        # tensor name -> [(node index, input position)]
        self.readers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            for k, name in enumerate(node.input):
                if name:
                    self.readers.setdefault(name, []).append((i, k))
        self.initializers = {init.name: init for init in self.graph.initializer
                             if init.name not in self.graph_inputs}
        self.constant_nodes = {node.output[0]: node for node in self.nodes
                               if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS
                               and len(node.output) == 1}
        schemas = [self._schema(node) for node in self.nodes]
        self.parameters: set[tuple[int, int]] = set()  # rule 4
        self.either: set[tuple[int, int]] = set()  # rule 6
        for i, (node, schema) in enumerate(zip(self.nodes, schemas, strict=True)):
            for k, formal in self._formal_inputs(node, schema):
                if formal.name in _PARAMETER_INPUTS.get(node.op_type, ()):
                    self.parameters.add((i, k))
                if formal.name in _EITHER_TYPE_INPUTS.get(node.op_type, ()) and \
                        self.wanted in self._allowed(schema, formal.type_str):
                    self.either.add((i, k))
        computes_parameters = self._parameter_nodes()
        self.plans: list[_NodePlan | None] = [
            None if i in computes_parameters or not plan.is_reduced(node.name)
            else self._plan_node(i, node, schema)
            for i, (node, schema) in enumerate(zip(self.nodes, schemas, strict=True))
        ]

    @property
    def any_reduced(self) -> bool:
        return any(plan is not None for plan in self.plans)

    def _schema(self, node: onnx.NodeProto):
        if node.domain not in _DEFAULT_DOMAINS:
            return None
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return None
        return None if schema.deprecated else schema

    @staticmethod
    def _formal_inputs(node: onnx.NodeProto, schema):
        """(position, formal parameter) of each input the node gives, per its schema."""
        if schema is None:
            return
        for k, name in enumerate(node.input):
            formal = _formal(schema.inputs, k)
            if name and formal is not None:
                yield k, formal

    @staticmethod
    def _allowed(schema, type_str: str) -> list[str]:
        """The types a formal parameter admits: its constraint's, or its literal type."""
        for constraint in schema.type_constraints:
            if constraint.type_param_str == type_str:
                return list(constraint.allowed_type_strs)
        return [type_str]  # a literal type such as tensor(float)

    def _admits(self, op_type: str, allowed: list[str], formals: set[str]) -> bool:
        """Whether tensors of one constraint can go from float to the reduced type (rule 3).

        bfloat16 counts as admitted where the model's opset admits float16 and the op's newest
        schema admits bfloat16 for the same parameters: ONNX added bfloat16 to Conv, the pools
        and others only in opset 22, and TensorRT's parser takes bf16 for them at any opset.
        """
        if "tensor(float)" not in allowed:
            return False
        if self.wanted in allowed:
            return True
        if self.wanted != "tensor(bfloat16)" or "tensor(float16)" not in allowed:
            return False
        newest = _newest_schema(op_type)
        if newest is None:
            return False
        by_name = {formal.name: formal for formal in [*newest.inputs, *newest.outputs]}
        return all(name in by_name and self.wanted in self._allowed(newest, by_name[name].type_str)
                   for name in formals)

    @staticmethod
    def _is_constraint(schema, type_str: str) -> bool:
        return any(c.type_param_str == type_str for c in schema.type_constraints)

    def kind(self, name: str) -> str | None:
        """'float' (float32 tensor), 'tensor' (another tensor), 'other' (non-tensor) or None."""
        value_type = self.types.get(name)
        if value_type is None:
            return None
        if value_type.WhichOneof("value") != "tensor_type":
            return "other" if value_type.WhichOneof("value") else None
        elem_type = value_type.tensor_type.elem_type
        if elem_type == TensorProto.UNDEFINED:
            return None
        return "float" if elem_type == TensorProto.FLOAT else "tensor"

    def _parameter_nodes(self) -> set[int]:
        """Rule 5: nodes whose outputs are read only as parameters, directly or transitively."""
        found: set[int] = set()
        for i in reversed(range(len(self.nodes))):
            outputs = [name for name in self.nodes[i].output if name]
            if not outputs or any(name in self.graph_outputs or name in self.outer
                                  for name in outputs):
                continue
            reads = [read for name in outputs for read in self.readers.get(name, [])]
            if reads and all(read in self.parameters or read[0] in found for read in reads):
                found.add(i)
        return found

    def _plan_node(self, i: int, node: onnx.NodeProto, schema) -> _NodePlan | None:
        """Rules 1-4 and 6 for one node the plan reduces; None when it stays fp32."""
        if schema is None or node.op_type == "Constant" or any(_subgraphs(node)):
            return None
        groups = self._groups(node, schema)
        if groups is None:
            return None
        inputs: set[int] = set()
        outputs: set[int] = set()
        for type_str, slots in groups.items():
            if not any(is_input for is_input, *_rest in slots):
                if self._typed_by_attribute(node.op_type, schema, type_str):
                    return None  # rule 2
                continue
            if self._group_is_reduced(i, node.op_type, schema, type_str, slots):
                inputs.update(k for is_input, k, _n, _f in slots if is_input)
                outputs.update(k for is_input, k, _n, _f in slots if not is_input)
        if not inputs and not outputs:
            return None
        return _NodePlan(frozenset(inputs), frozenset(outputs))

    def _groups(self, node: onnx.NodeProto,
                schema) -> dict[str, list[tuple[bool, int, str, str]]] | None:
        """The node's tensors by type constraint: [(is_input, position, name, formal name)].

        None when a tensor is a sequence, optional or map, or of unknown type where the schema
        allows those (rule 1), or when the node has more tensors than its schema declares.
        """
        groups: dict[str, list[tuple[bool, int, str, str]]] = {}
        for is_input, names, formals in ((True, node.input, schema.inputs),
                                         (False, node.output, schema.outputs)):
            for k, name in enumerate(names):
                if not name:
                    continue
                formal = _formal(formals, k)
                if formal is None:
                    return None
                kind = self.kind(name)
                if kind == "other" or (kind is None and any(
                        not t.startswith("tensor(")
                        for t in self._allowed(schema, formal.type_str))):
                    return None
                groups.setdefault(formal.type_str, []).append((is_input, k, name, formal.name))
        return groups

    def _typed_by_attribute(self, op_type: str, schema, type_str: str) -> bool:
        """Rule 2: an output constraint no input binds, admitting float types."""
        return op_type not in _FIXED_OUTPUT_TYPES and self._is_constraint(schema, type_str) and \
            any(t in _FLOAT_TYPES for t in self._allowed(schema, type_str))

    def _group_is_reduced(self, i: int, op_type: str, schema, type_str: str,
                          slots: list[tuple[bool, int, str, str]]) -> bool:
        """Rules 3, 4 and 6 for the tensors of one node bound to one type constraint."""
        if not self._admits(op_type, self._allowed(schema, type_str),
                            {formal for *_rest, formal in slots}):
            return False
        if any(self.kind(name) != "float" for _i, _k, name, _f in slots):
            return False
        return not any(is_input and ((i, k) in self.parameters or (i, k) in self.either)
                       for is_input, k, _n, _f in slots)

    def reads_reduced(self, read: tuple[int, int]) -> bool:
        """Whether node position `read` takes the reduced version of a tensor produced reduced."""
        plan = self.plans[read[0]]
        return read in self.either or (plan is not None and read[1] in plan.inputs)

    def only_reduced_readers(self, name: str) -> bool:
        return name not in self.graph_outputs and name not in self.outer and all(
            self.reads_reduced(read) for read in self.readers.get(name, []))

    def constant_value(self, name: str) -> np.ndarray | None:
        """The float32 value of a constant (initializer or Constant output), if it is one."""
        if name in self.initializers:
            init = self.initializers[name]
            if init.data_location == TensorProto.EXTERNAL or init.data_type != TensorProto.FLOAT:
                return None
            return numpy_helper.to_array(init)
        node = self.constant_nodes.get(name)
        if node is None:
            return None
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                return numpy_helper.to_array(attribute.t)
            if attribute.name == "value_float":
                return np.array(attribute.f, np.float32)
            if attribute.name == "value_floats":
                return np.array(list(attribute.floats), np.float32)
        return None

    def is_empty(self, name: str) -> bool:
        """Whether the tensor is known to hold no element (from its type's static shape)."""
        value_type = self.types.get(name)
        if value_type is None or value_type.WhichOneof("value") != "tensor_type" or \
                not value_type.tensor_type.HasField("shape"):
            return False
        return any(dim.HasField("dim_value") and dim.dim_value == 0
                   for dim in value_type.tensor_type.shape.dim)


# --------------------------------------------------------------------------- rewriting


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    from trtcheck.model import copy_model  # CopyFrom fails over 2 GB

    return copy_model(model)


class _Rewrite:
    """A copy of a model being rewritten for a plan: its analysis, and the nodes to add."""

    def __init__(self, model: onnx.ModelProto, plan: PrecisionPlan, tag: str) -> None:
        copy = _copy(model)
        self.plan = plan
        self.tag = f"{tag}_{plan.precision}"
        self.reduced_type = _ONNX_TYPE[plan.precision]
        self.reduced_dtype = _NUMPY_TYPE[plan.precision]
        if not any(node.domain in _DEFAULT_DOMAINS for node in copy.graph.node):
            self.model = copy  # nothing could be reduced: no opset needed
        else:
            self.model = plan.at_supported_opset(copy)
        self.analysis = _Analysis(self.model, plan)
        self.before: dict[int, list[onnx.NodeProto]] = {}
        self.after: dict[int, list[onnx.NodeProto]] = {}
        self.taken = self._all_names(self.model.graph)

    @classmethod
    def _all_names(cls, graph: onnx.GraphProto) -> set[str]:
        names = {value.name for value in [*graph.input, *graph.output, *graph.value_info]}
        names.update(init.name for init in graph.initializer)
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
            for subgraph in _subgraphs(node):
                names |= cls._all_names(subgraph)
        return names

    def fresh(self, base: str) -> str:
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name

    def cast(self, source: str, to: int, out: str | None = None) -> tuple[onnx.NodeProto, str]:
        if out is None:
            out = self.fresh(f"{source}__{self.tag}")
        node = helper.make_node("Cast", [source], [out], name=self.fresh(f"trtcheck_{self.tag}"),
                                to=to)
        return node, out

    def replace_constant(self, name: str, value: np.ndarray, new_name: str,
                         in_place: bool) -> str:
        """Stores `value` for constant `name` as `new_name`, replacing `name` if `in_place`."""
        tensor = numpy_helper.from_array(value, new_name)
        if not in_place:
            self.model.graph.initializer.append(tensor)
        elif name in self.analysis.initializers:
            self.analysis.initializers[name].CopyFrom(tensor)
        else:
            node = self.analysis.constant_nodes[name]
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", tensor))
            node.output[0] = new_name
        return new_name

    def export(self) -> onnx.ModelProto:
        graph = self.model.graph
        nodes: list[onnx.NodeProto] = []
        for i, node in enumerate(self.analysis.nodes):
            nodes += self.before.get(i, []) + [node] + self.after.get(i, [])
        del graph.node[:]
        graph.node.extend(nodes)
        return self.model


def emulate(model: onnx.ModelProto, plan: PrecisionPlan) -> onnx.ModelProto:
    """Returns a copy of `model` in which reduced nodes round every float tensor they touch.

    Rules (see the module docstring for which positions are reduced): each reduced output is
    rounded in place by a Cast pair (every consumer and graph output sees the rounded value, as
    in TensorRT); each reduced input that no reduced output produced (graph inputs, outputs of
    fp32 nodes) is rounded by a Cast pair for the reduced readers only, one copy per tensor.
    Constants are rounded by value, empty ones not at all.
    """
    if not plan.reduced:
        return model
    rewrite = _Rewrite(model, plan, "round")
    analysis = rewrite.analysis
    if not analysis.any_reduced:
        return _copy(model)
    rounded: set[str] = set()
    for i, node_plan in enumerate(analysis.plans):
        if node_plan is None:
            continue
        node = analysis.nodes[i]
        for k in sorted(node_plan.outputs):
            name = node.output[k]
            if analysis.is_empty(name):
                continue
            raw = rewrite.fresh(f"{name}__unrounded")
            node.output[k] = raw
            down, reduced = rewrite.cast(raw, rewrite.reduced_type)
            up, _ = rewrite.cast(reduced, TensorProto.FLOAT, out=name)
            rewrite.after.setdefault(i, []).extend([down, up])
            rounded.add(name)

    def rounded_copy(name: str, first_reader: int) -> str:
        value = analysis.constant_value(name)
        if value is not None:
            if value.size == 0:
                return name
            with np.errstate(over="ignore"):  # fp16 overflow to inf is the point
                value = value.astype(rewrite.reduced_dtype).astype(np.float32)
            if analysis.only_reduced_readers(name):
                return rewrite.replace_constant(name, value, name, in_place=True)
            return rewrite.replace_constant(name, value, rewrite.fresh(f"{name}__{rewrite.tag}"),
                                            in_place=False)
        if analysis.is_empty(name):
            return name
        down, reduced = rewrite.cast(name, rewrite.reduced_type)
        up, copy = rewrite.cast(reduced, TensorProto.FLOAT)
        rewrite.before.setdefault(first_reader, []).extend([down, up])
        return copy

    _replace_inputs(analysis, rounded, rounded_copy)
    return rewrite.export()


def convert(model: onnx.ModelProto, plan: PrecisionPlan) -> onnx.ModelProto:
    """Returns a copy of `model` whose reduced nodes compute in the plan's type (for TensorRT 11).

    Rules (see the module docstring for which positions are reduced): a reduced output becomes a
    new reduced tensor, and its old name becomes a Cast back to fp32 wherever something reads
    it in fp32 (fp32 nodes, parameters, subgraph bodies, graph outputs); a reduced input that
    no reduced output produced gets one reduced copy, shared by its reduced readers: constants
    are converted by value (in place when only reduced readers read them), other tensors by a
    Cast. The graph's inputs and outputs keep their types.

    Limitation: many ONNX ops (Conv among them) accept bfloat16 only from opset 22; a bf16 plan
    converts them at older opsets too (module docstring, rule 3), as TensorRT's parser takes
    them, so such a model fails `onnx.checker`'s full check; fp16 conversions pass it.
    """
    if not plan.reduced:
        return model
    rewrite = _Rewrite(model, plan, "to")
    analysis = rewrite.analysis
    if not analysis.any_reduced:
        return _copy(model)
    reduced_names: set[str] = set()
    for i, node_plan in enumerate(analysis.plans):
        if node_plan is None:
            continue
        node = analysis.nodes[i]
        for k in sorted(node_plan.outputs):
            name = node.output[k]
            reduced = rewrite.fresh(f"{name}__{plan.precision}")
            node.output[k] = reduced
            reduced_names.add(reduced)
            if not analysis.only_reduced_readers(name):
                back, _ = rewrite.cast(reduced, TensorProto.FLOAT, out=name)
                rewrite.after.setdefault(i, []).append(back)
            for j, position in analysis.readers.get(name, []):
                if analysis.reads_reduced((j, position)):
                    analysis.nodes[j].input[position] = reduced

    def reduced_copy(name: str, first_reader: int) -> str:
        value = analysis.constant_value(name)
        if value is not None:
            with np.errstate(over="ignore"):
                value = value.astype(rewrite.reduced_dtype)
            in_place = analysis.only_reduced_readers(name)
            copy = rewrite.replace_constant(name, value, rewrite.fresh(f"{name}__{plan.precision}"),
                                            in_place=in_place)
            if in_place:  # the old name is gone: Shape or Cast readers take the new one too
                for j, position in analysis.readers.get(name, []):
                    analysis.nodes[j].input[position] = copy
            return copy
        down, copy = rewrite.cast(name, rewrite.reduced_type)
        rewrite.before.setdefault(first_reader, []).append(down)
        return copy

    _replace_inputs(analysis, reduced_names, reduced_copy)
    # Shape inference recorded fp32 for tensors that are reduced now.
    del rewrite.model.graph.value_info[:]
    return rewrite.export()


def _replace_inputs(analysis: _Analysis, already_reduced: set[str], make_copy) -> None:
    """Feeds reduced inputs a copy of each tensor that no reduced output produced.

    One copy per tensor, made at its first reduced reader and shared by all of them; other
    readers keep the original.
    """
    copies: dict[str, str] = {}
    for i, node_plan in enumerate(analysis.plans):
        if node_plan is None:
            continue
        node = analysis.nodes[i]
        for k in sorted(node_plan.inputs):
            name = node.input[k]
            if name in already_reduced:
                continue
            if name not in copies:
                copies[name] = make_copy(name, i)
            node.input[k] = copies[name]
