"""A model's log-density as a function of one flat unconstrained vector, traced once.

Pyro's HMC machinery (:func:`pyro.infer.mcmc.util.initialize_model`) already turns a model
into a potential energy ``U(params) = -log p(x, T(params)) - log|det J_T(params)|`` over a
*dict* of unconstrained site values, with the constraining transforms ``T`` chosen by
``biject_to(site.support)``, the same ones Pyro's autoguides use.
:mod:`pyrovi._potential` adds the flat layout (site names, unconstrained shapes and offsets,
in the autoguide's own order); this module traces the result once with
:func:`torch.fx.experimental.proxy_tensor.make_fx` into a graph of plain tensor operations,
so that no Pyro bookkeeping runs per step.

Tracing refuses data-dependent Python control flow (``if z > 0:`` raises while tracing);
:func:`trace_log_density` also checks the graph against Pyro's own potential at a second
point, which catches models whose structure changes between calls.
"""

from __future__ import annotations

import itertools
import math
import operator

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovi._potential import (
    FlatLayout,
    FlatPotential,
    SiteSlot,
    TraceError,
    build_potential,
    layout_from_trace,
)

__all__ = [
    "SiteSlot",
    "FlatLayout",
    "FlatPotential",
    "TraceError",
    "layout_from_trace",
    "build_potential",
    "trace_log_density",
    "contract_products",
    "fold_broadcasts",
    "hoist_constants",
]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not (bool(torch.isfinite(a)) and bool(torch.isfinite(b))):
        return bool(torch.isnan(a)) == bool(torch.isnan(b)) and (
            bool(torch.isnan(a)) or bool(a == b)
        )
    tol = 1e-4 * max(1.0, abs(float(b)))
    return abs(float(a) - float(b)) <= tol


def _shape(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return (tuple(val.shape), val.dtype) if isinstance(val, torch.Tensor) else None


def contract_products(graph: torch.fx.GraphModule) -> int:
    """Rewrite ``(X * w).sum(-1)`` (``X`` of shape ``(..., D)``, ``w`` of ``(D,)``) into
    ``X @ w`` in a traced one-point graph; returns how many were rewritten.

    The broadcasting way of writing a linear predictor is the same number, but batched over
    draws with :func:`torch.vmap` it materializes a ``(P, N, D)`` product where ``X @ w``
    becomes one matrix product (measured 70x faster at P=1,000, N=569, D=30).  Only a
    product used by nothing but the sum is rewritten, operands of one dtype; the
    rewritten graph is checked against Pyro's potential like any traced graph
    (:func:`trace_log_density`).
    """
    aten = torch.ops.aten
    count = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target is not aten.sum.dim_IntList:
            continue
        src, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if (keepdim or node.kwargs.get("dtype") is not None or len(dims) != 1
                or not isinstance(src, torch.fx.Node) or src.op != "call_function"
                or src.target is not aten.mul.Tensor or len(src.users) != 1):
            continue
        out, operands = _shape(src), [_shape(a) for a in src.args]
        if out is None or None in operands or dims[0] % len(out[0]) != len(out[0]) - 1:
            continue
        (sa, da), (sb, db) = operands
        for (m, sm), (v, sv) in (((src.args[0], sa), (src.args[1], sb)),
                                 ((src.args[1], sb), (src.args[0], sa))):
            if (da == db == out[1] and len(sv) == 1 and len(sm) >= 2 and sm == out[0]
                    and sm[-1] == sv[0]):
                with graph.graph.inserting_before(node):
                    product = graph.graph.call_function(aten.matmul.default, (m, v))
                product.meta["val"] = node.meta.get("val")
                node.replace_all_uses_with(product)
                graph.graph.erase_node(node)
                graph.graph.erase_node(src)
                count += 1
                break
    if count:
        graph.graph.lint()
        graph.recompile()
    return count


_aten = torch.ops.aten

#: Elementwise ops of one tensor (the arithmetic ones with a Python number as the other
#: operand) that commute with ``expand``: ``op(x.expand(s)) == op(x).expand(s)``.
_POINTWISE = frozenset({
    _aten.neg.default, _aten.log.default, _aten.exp.default, _aten.pow.Tensor_Scalar,
    _aten.reciprocal.default, _aten.sqrt.default, _aten.rsqrt.default, _aten.log1p.default,
    _aten.expm1.default, _aten.sigmoid.default, _aten.tanh.default, _aten.abs.default,
    _aten.square.default, _aten.mul.Tensor, _aten.div.Tensor, _aten.add.Tensor,
    _aten.sub.Tensor,
})
_ARITHMETIC = frozenset({_aten.mul.Tensor, _aten.div.Tensor, _aten.add.Tensor, _aten.sub.Tensor})


def _is_node(x) -> bool:
    return isinstance(x, torch.fx.Node)


def _insert(graph: torch.fx.Graph, before, target, args, val=...) -> torch.fx.Node:
    """A new call of ``target`` before ``before``, its traced value ``val`` (by default
    ``before``'s; None: unknown)."""
    with graph.inserting_before(before):
        node = graph.call_function(target, tuple(args))
    val = before.meta.get("val") if val is ... else val
    if val is not None:
        node.meta["val"] = val
    return node


def _replace(graph: torch.fx.Graph, node, target, args) -> None:
    """``node`` replaced by a call of ``target`` with the same traced value."""
    node.replace_all_uses_with(_insert(graph, node, target, args))
    graph.erase_node(node)


def _constant_indices(module: torch.fx.GraphModule, node) -> bool:
    """Whether ``node`` is a graph constant holding a vector of nonnegative integers."""
    if not (_is_node(node) and node.op == "get_attr"):
        return False
    value = operator.attrgetter(node.target)(module)
    return (isinstance(value, torch.Tensor) and value.dim() == 1
            and value.dtype in (torch.int64, torch.int32) and bool((value >= 0).all()))


def _sink_expand(graph: torch.fx.Graph, node) -> None:
    """``op(x.expand(s))`` -> ``op(x).expand(s)``."""
    expand = node.args[0]
    src, rest = expand.args[0], node.args[1:]
    try:  # the op's result on the traced value, for the later rewrites
        val = node.target(src.meta.get("val"), *rest)
    except Exception:  # no shape known: the later rewrites leave it alone
        val = None
    inner = _insert(graph, node, node.target, (src, *rest), val)
    _replace(graph, node, _aten.expand.default, (inner, *expand.args[1:]))


def _fold_sum(graph: torch.fx.Graph, node) -> bool:
    """``sum(-x)`` -> ``-sum(x)``; ``sum(x * c)``, ``sum(x / c)`` -> ``sum(x) * c``,
    ``sum(x) / c``; ``sum(x +- c)`` -> ``sum(x) +- numel * c``: for ``c`` a number or a
    one-element tensor of ``x``'s dtype (no type promotion changes), and ``x``'s op used by
    the sum alone.  Whether it rewrote."""
    x = node.args[0]
    if not (_is_node(x) and x.op == "call_function" and len(x.users) == 1
            and not x.kwargs and _shape(x) is not None):
        return False
    if x.target is _aten.neg.default:
        _replace(graph, node, _aten.neg.default,
                 (_insert(graph, node, _aten.sum.default, x.args),))
        return True
    if x.target not in _ARITHMETIC or len(x.args) != 2 or _shape(x.args[0]) != _shape(x):
        return False
    c = x.args[1]
    if _is_node(c):
        shape = _shape(c)
        if shape is None or math.prod(shape[0]) != 1 or shape[1] != _shape(x)[1]:
            return False
        if shape[0] != ():  # a (1,)-shaped c as a 0-d tensor, so that the sum stays 0-d
            c = _insert(graph, node, _aten.sum.default, (c,))
    if x.target in (_aten.add.Tensor, _aten.sub.Tensor):
        n = math.prod(_shape(x)[0])
        c = _insert(graph, node, _aten.mul.Tensor, (c, n)) if _is_node(c) else c * n
    _replace(graph, node, x.target, (_insert(graph, node, _aten.sum.default, (x.args[0],)), c))
    return True


def _plain_bce(args) -> bool:
    """Whether a ``binary_cross_entropy_with_logits`` call is the one a Bernoulli's
    ``log_prob`` makes: no weights, no reduction."""
    return (len(args) == 5 and args[2] is None and args[3] is None and args[4] == 0
            and all(_shape(a) is not None for a in args[:2]))


def _expand_bce(graph: torch.fx.Graph, node) -> None:
    """``binary_cross_entropy_with_logits(l, y)`` -> ``(1 - y) l - logsigmoid(l)``: the
    same number (``log(1 - sigmoid(l)) = logsigmoid(l) - l``), two fused elementwise ops
    where torch's batching rule for the loss and its backward take about ten."""
    logits, target = node.args[:2]
    complement = _insert(graph, node, _aten.rsub.Scalar, (target, 1), val=None)
    linear = _insert(graph, node, _aten.mul.Tensor, (complement, logits))
    log_sigmoid = _insert(graph, node, _aten.log_sigmoid.default, (logits,))
    _replace(graph, node, _aten.sub.Tensor, (linear, log_sigmoid))


def _fold_once(module: torch.fx.GraphModule) -> int:
    """One sweep of :func:`fold_broadcasts`' rewrites; returns how many it made."""
    graph = module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        t, args, out = node.target, node.args, _shape(node)
        if out is None or not out[1].is_floating_point:
            continue
        if (t is _aten.index.Tensor and len(args) == 2 and len(args[1]) == 1
                and _constant_indices(module, args[1][0])):
            # x[idx] -> index_select: its backward is index_add, not an accumulating
            # index_put
            _replace(graph, node, _aten.index_select.default, (args[0], 0, args[1][0]))
        elif (t in _ARITHMETIC and len(args) == 2 and not _is_node(args[1])
                and args[1] == (0 if t in (_aten.add.Tensor, _aten.sub.Tensor) else 1)
                and _shape(args[0]) == out):
            # x + 0, x - 0, x * 1, x / 1 (the transforms' identity affine maps)
            node.replace_all_uses_with(args[0])
            graph.erase_node(node)
        elif t is _aten.binary_cross_entropy_with_logits.default and _plain_bce(args):
            _expand_bce(graph, node)
        elif (t in _POINTWISE and _is_node(args[0]) and args[0].target is _aten.expand.default
                and not any(_is_node(a) for a in args[1:])):
            _sink_expand(graph, node)
        elif t in _ARITHMETIC and len(args) == 2 and all(_is_node(a) for a in args):
            # x op y.expand(s), x of the result's shape and dtype: the op broadcasts y
            i = next((i for i in (0, 1) if args[1 - i].target is _aten.expand.default
                      and _shape(args[i]) == out), None)
            if i is None:
                continue
            new = list(args)
            new[1 - i] = args[1 - i].args[0]
            node.args = tuple(new)
        elif not (t is _aten.sum.default and len(args) == 1 and _fold_sum(graph, node)):
            continue
        count += 1
    graph.eliminate_dead_code()
    return count


def fold_broadcasts(graph: torch.fx.GraphModule) -> int:
    """Stop a traced one-point graph from computing per element what is one number;
    returns how many rewrites it made.

    A distribution's parameters are broadcast to its value's shape before its
    ``log_prob`` runs: ``Normal(mean, sigma).log_prob(y)`` with a scalar ``sigma`` and
    ``N`` observations takes ``sigma ** 2`` and ``log(sigma)`` of ``N`` copies, and a sum
    of ``N`` terms subtracts the constant ``N`` times.  Batched over ``P`` draws with
    :func:`torch.vmap`, each such op is a ``(P, N)`` array, forward and backward.  Exact
    rewrites, repeated until none applies:

    * ``op(x.expand(s))`` -> ``op(x).expand(s)`` for elementwise ops of one tensor;
    * ``x op y.expand(s)`` -> ``x op y`` when ``x`` already has the result's shape;
    * ``sum(-x)``, ``sum(x * c)``, ``sum(x / c)``, ``sum(x + c)``, ``sum(x - c)`` ->
      ``-sum(x)``, ``sum(x) * c``, ``sum(x) / c``, ``sum(x) + numel * c``, ... for a number
      or a one-element ``c`` that does not change ``x``'s shape;
    * ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1`` -> ``x``;
    * ``x[idx]`` with a constant vector of nonnegative indices -> ``index_select``, whose
      backward adds into the gathered rows instead of an accumulating ``index_put``;
    * a Bernoulli's ``binary_cross_entropy_with_logits(l, y)`` -> ``(1 - y) l -
      logsigmoid(l)``, the same formula in two fused ops (torch's batching rule for the
      loss and its backward take about ten): breast cancer and the benchmark's logistic
      regressions 1.2-1.3x at 62 draws, 1.4-1.5x at 496, 2.0-2.15x at 2,000.

    Measured on the benchmark's models (log density and gradient, batched, interleaved in
    one process): radon (1,000 houses, a scalar ``sigma``, a gather) 1.9x at 62 draws and
    3.3-5.2x at 228-2,000; the diabetes regression 1.2-2.3x; eight schools 1.15x; breast
    cancer (a Bernoulli on ``X @ w``, nothing broadcast) 1.05-1.2x.  DADVI's lowrank fit
    of radon went from 19.4 s to 6.5 s.  The result is checked against Pyro's
    potential like any traced graph (:func:`trace_log_density`), which keeps the graph
    as traced when the folded one disagrees or a rewrite fails.
    """
    total = 0
    while True:
        count = _fold_once(graph)
        if not count:
            break
        total += count
    if total:
        graph.graph.lint()
        graph.recompile()
    return total


#: Ops whose value does not depend on their tensor argument's values, only its shape.
_SHAPE_ONLY = frozenset({_aten.zeros_like.default, _aten.ones_like.default,
                         _aten.full_like.default})


def hoist_constants(module: torch.fx.GraphModule) -> int:
    """Compute once, at trace time, every op of a traced one-point graph whose value does
    not depend on the point; returns how many values it hoisted.

    Such ops are the data's own arithmetic (``log(sigma)`` of a known ``sigma``, ``1 - y``),
    copies of the model's constants, and the zeros of identity Jacobians; under
    :func:`torch.vmap` each is an op dispatch per call.  The frontier of that constant part
    (values that a point-dependent op reads) becomes graph constants, and sums of zeros
    then drop out.  Random draws stay in the graph, and nothing is hoisted when an in-place
    op writes into a constant.
    """
    graph = module.graph
    dynamic: set = set()
    for node in graph.nodes:
        if node.op == "placeholder" or (
            node.op == "call_function" and node.target not in _SHAPE_ONLY
            and any(a in dynamic for a in node.all_input_nodes)
        ) or node.op not in ("placeholder", "get_attr", "call_function", "output") or (
            torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())
        ):  # random draws are drawn anew at every call
            dynamic.add(node)
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        known = node.target is operator.getitem or (schema is not None and not schema.is_mutable)
        if node.op == "call_function" and not known and any(
            a not in dynamic for a in node.all_input_nodes
        ):
            return 0  # an in-place op on a constant (or an op of unknown effect)
    values: dict = {}
    count = 0
    for node in list(graph.nodes):
        if node in dynamic or node.op == "output":
            continue
        if node.op == "get_attr":
            values[node] = operator.attrgetter(node.target)(module)
            continue
        args, kwargs = torch.fx.node.map_arg(  # a shape-only op: any values of the shape
            (node.args, node.kwargs), lambda a: values[a] if a in values else _like(a)
        )
        values[node] = value = node.target(*args, **kwargs)
        if not isinstance(value, torch.Tensor) or not any(
            u in dynamic or u.op == "output" for u in node.users
        ):
            continue
        name = next(n for n in (f"_hoisted_{i}" for i in itertools.count(count))
                    if not hasattr(module, n))
        module.register_buffer(name, value.detach(), persistent=False)
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        constant.meta["val"] = values[constant] = value
        node.replace_all_uses_with(constant)
        count += 1
    if count:
        graph.eliminate_dead_code()
        _drop_zeros(module)
        graph.lint()
        module.recompile()
    return count


def _like(node) -> torch.Tensor:
    """An uninitialized tensor of a node's traced shape, dtype and device."""
    val = node.meta["val"]
    return torch.empty(val.shape, dtype=val.dtype, device=val.device)


def _is_zero(module: torch.fx.GraphModule, node) -> bool:
    """Whether ``node`` is a hoisted 0-d zero."""
    if not (_is_node(node) and node.op == "get_attr"):
        return False
    value = operator.attrgetter(node.target)(module)
    return value.dim() == 0 and not value.is_complex() and float(value) == 0.0


def _drop_zeros(module: torch.fx.GraphModule) -> None:
    """``x + 0``, ``0 + x``, ``x - 0`` for a hoisted 0-d zero and ``x`` of the result's
    shape and dtype, and ``-(-x)``, -> ``x``."""
    graph = module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        t, args = node.target, node.args
        if t is _aten.neg.default and _is_node(args[0]) and (
            args[0].op == "call_function" and args[0].target is _aten.neg.default
        ):
            node.replace_all_uses_with(args[0].args[0])
        elif t in (_aten.add.Tensor, _aten.sub.Tensor) and len(args) == 2:
            keep = [i for i in ((0, 1) if t is _aten.add.Tensor else (0,))
                    if _is_zero(module, args[1 - i]) and _shape(args[i]) == _shape(node)]
            if keep:
                node.replace_all_uses_with(args[keep[0]])
    graph.eliminate_dead_code()


def trace_log_density(
    potential: FlatPotential,
    u0: torch.Tensor,
    *,
    jacobian: bool = True,
    num_checks: int = 2,
    check_scale: float = 0.5,
) -> torch.fx.GraphModule:
    """Trace ``potential.log_density(·, jacobian)`` at ``u0`` into a graph of tensor ops.

    The graph is checked against Pyro's potential at ``u0`` and at ``num_checks`` points
    ``u0 + check_scale * noise``: a model whose Python code takes another branch, or draws
    its own random numbers, gives a different value there.

    Raises
    ------
    TraceError
        When tracing fails (typically data-dependent control flow such as ``if z > 0``)
        or the traced graph disagrees with Pyro's potential.
    """
    u0 = u0.detach()

    def log_density(u):
        return potential.log_density(u, jacobian=jacobian)

    def trace(fold: bool) -> tuple[torch.fx.GraphModule, int]:
        try:
            with pyro.validation_enabled(False):
                graph = make_fx(log_density)(u0)
        except Exception as err:  # tracing failed: data-dependent control flow or the like
            raise TraceError(
                f"the model could not be traced into a static graph ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); it probably has control "
                "flow that depends on latent values"
            ) from err
        contract_products(graph)
        if not fold:
            return graph, 0
        try:
            return graph, fold_broadcasts(graph) + hoist_constants(graph)
        except Exception:  # a graph the rewrites do not understand: keep it as traced
            return trace(False)

    def mismatch(graph) -> str | None:
        with pyro.validation_enabled(False), torch.no_grad():
            for u in points:
                traced, eager = graph(u), log_density(u)
                if traced.shape != () or not _close(traced, eager):
                    return f"{float(traced):.6g} vs {float(eager):.6g}"
        return None

    graph, folded = trace(True)
    points = [u0] + [u0 + check_scale * torch.randn_like(u0) for _ in range(num_checks)]
    differs = mismatch(graph)
    if differs and folded:  # never worse than the graph as traced
        plain, _ = trace(False)
        if not mismatch(plain):
            graph, differs = plain, None
    if differs:
        raise TraceError(
            f"the traced log-density differs from Pyro's at a second point ({differs}): the "
            "model's control flow or randomness changes between calls"
        )
    return graph
