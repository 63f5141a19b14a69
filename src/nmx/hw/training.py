"""The operations of one training step (forward, backward, optimizer), with which GEMM operand is N:M.

    from nmx.hw.training import train_step, price_train_step
    step = train_step("llama-2-7b", batch=4, seq_len=2048, pattern="2:4", mask="transposable")
    step.workload            # an nmx.hw.workload.Workload (phase "train") every target's cost() prices
    step.gemms               # one TrainGemm per GEMM: role, shapes, which operand is sparse, which mask
    price_train_step("h100-sxm", "llama-2-7b", batch=4, seq_len=2048, pattern="2:4", mask="plain")

Every linear y = x Wᵀ (W [out, in]) of a step over T = batch x seq_len tokens runs three GEMMs,
written as the workload writes a GEMM, Y[m, n] = A[m, k] · B[n, k]ᵀ, with B the operand an Op
calls its weight (where a pattern applies):

    role          GEMM            A          B      (m, n, k)
    forward       Y  = X · Wᵀ     X          W      (T, out, in)     W N:M along `in` (the row-wise mask)
    input_grad    dX = dY · W     dY         Wᵀ     (T, in, out)     Wᵀ N:M along `out` (a column-wise mask)
    weight_grad   dW = dYᵀ · X    dYᵀ        Xᵀ     (out, in, T)     both operands dense activations

Mask kinds (`MASKS`), for the targeted linears (`Compression.targets`, default the attention and
MLP projections; never the LM head):

    dense          no operand sparse
    plain          forward only: the row-wise N:M mask is not N:M along `out`, so dY · W runs dense
                   (the zeros are stored and multiplied, as a masked dense weight is)
    transposable   forward and input gradient: one mask that is N:M along both dims (Hu et al.
                   ICML'24; torchao's runtime 2:4 tiles), so W and Wᵀ are both N:M
    bidirectional  forward with the row-wise mask, input gradient with a separate column-wise mask
                   (BDWP, Fang et al. TCAD 2023)

The weight gradient is dense in every kind: its operands are activations, and its output is the
dense gradient the optimizer (and SR-STE) needs. Transposable and bidirectional masks need `out`
and `in` both divisible by M; plain needs `in`.

Besides the GEMMs (`TrainStep.gemms`), a step holds (op names start with their group,
`fwd:` `recompute:` `dgrad:` `wgrad:` `optim:`):

- attention: the forward as in a prefill (causal, fused; no KV cache is written), the backward as
  one fused op with `ATTN_BWD_FLOPS` = 2.5x the forward's FLOPs (FlashAttention-2's backward:
  S = QKᵀ recomputed, dP = dO Vᵀ, dV = Pᵀ dO, dQ = dS K, dK = dSᵀ Q -- five GEMMs to the forward's
  two), reading Q, K, V, O, dO and the row log-sum-exp, writing dQ, dK, dV;
- norms, SiLU(gate) * up, the embedding, the loss: memory passes forward and backward;
- the optimizer (`OptimizerSpec`, AdamW): per parameter it reads the master weight, the gradient
  and both moments, writes the master weight, both moments and (mixed precision) the compute copy;
  a masked weight also reads its mask. With a sparse mask every masked linear is re-packed each step
  into the N:M storage the sparse GEMMs read (`optim:compress.*`: read the weight, write values +
  index per orientation: plain one (W), transposable and bidirectional two (W and Wᵀ));
- activation memory (`TrainStep.activation_bytes`), the tensors autograd saves for the backward,
  per decoder layer and token: the layer input, the normed input, Q, K, V, the attention output
  and its log-sum-exp (fp32), the residual after attention, its normed copy, gate, up and
  SiLU(gate)*up; plus the head's normed input and the bf16 logits. Gradient checkpointing (per
  decoder layer, as Hugging Face's `gradient_checkpointing_enable`) keeps only each layer's input
  and re-runs the layer's forward in the backward: the recomputed forward (`recompute:*` ops, exactly
  the per-layer forward ops again) is added, and the saved activations become the layer inputs of
  all layers plus one layer's full set (the one being back-propagated) plus the head's.

Activations, gradients flowing between ops and attention run in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from nmx.errors import InputError
from nmx.hw.workload import (
    BF16_BYTES,
    MAX_SIZE,
    Compression,
    ModelShape,
    Op,
    Workload,
    attention_op,
    check_size,
    gemm_op,
    resolve_model,
)

MASKS = ("dense", "plain", "transposable", "bidirectional")
#: the groups of a step's ops, in the order a step runs them (op names start with their prefix)
GROUPS = ("forward", "recompute", "input_grad", "weight_grad", "optimizer")
PREFIX = {"forward": "fwd", "recompute": "recompute", "input_grad": "dgrad", "weight_grad": "wgrad",
          "optimizer": "optim"}
_GROUP_OF = {v: k for k, v in PREFIX.items()}
#: FlashAttention-2's backward: five GEMMs of the forward's size to its two
ATTN_BWD_FLOPS = 2.5
TRAIN_PHASE = "train"


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW's traffic, in bytes per parameter of each tensor it touches.

    Default (mixed precision): fp32 master weights, fp32 gradients, fp32 first and second moments,
    and a bf16 copy of the weights written for the next forward. `ADAMW_BF16`: everything bf16, no
    copy. `mask_bytes`: the mask a masked weight reads (torch.bool). `flops_per_param`: the update's
    arithmetic (two moment updates, bias corrections, sqrt, divide, decay, step)."""

    master_bytes: float = 4.0
    grad_bytes: float = 4.0
    moment_bytes: float = 4.0
    compute_copy_bytes: float = 2.0
    mask_bytes: float = 1.0
    flops_per_param: float = 12.0

    def __post_init__(self) -> None:
        for f in ("master_bytes", "grad_bytes", "moment_bytes", "compute_copy_bytes", "mask_bytes",
                  "flops_per_param"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise InputError(f"optimizer: {f} must be a number >= 0, got {v!r}")
        if self.master_bytes <= 0 or self.moment_bytes <= 0 or self.grad_bytes <= 0:
            raise InputError("optimizer: master_bytes, grad_bytes and moment_bytes must be > 0")

    def bytes_read(self, masked: bool) -> float:
        """Per parameter: master weight, gradient, two moments (and the mask of a masked weight)."""
        return self.master_bytes + self.grad_bytes + 2 * self.moment_bytes + (self.mask_bytes if masked else 0.0)

    def bytes_written(self) -> float:
        """Per parameter: master weight, two moments, the compute copy."""
        return self.master_bytes + 2 * self.moment_bytes + self.compute_copy_bytes

    def state_bytes(self) -> float:
        """Memory per parameter: master, gradient, moments, compute copy."""
        return self.master_bytes + self.grad_bytes + 2 * self.moment_bytes + self.compute_copy_bytes

    @property
    def weight_read_bytes(self) -> float:
        """Bytes per weight the packing of sparse weights reads (the compute copy, else the master)."""
        return self.compute_copy_bytes or self.master_bytes


ADAMW_FP32 = OptimizerSpec()
ADAMW_BF16 = OptimizerSpec(master_bytes=2.0, grad_bytes=2.0, moment_bytes=2.0, compute_copy_bytes=0.0)
OPTIMIZERS = {"fp32": ADAMW_FP32, "bf16": ADAMW_BF16}


@dataclass(frozen=True)
class TrainGemm:
    """One GEMM of a training step, Y[m, n] = A[m, k] · B[n, k]ᵀ (`count` instances)."""

    name: str  # the op's name in the workload
    linear: str
    role: str  # forward | input_grad | weight_grad
    group: str  # forward | recompute | input_grad | weight_grad
    m: int
    n: int
    k: int
    count: int
    a: str  # what A is: X, dY or dYᵀ
    b: str  # what B is: W, Wᵀ or Xᵀ
    sparse_operand: str | None  # "W" (forward), "Wᵀ" (input gradient) or None
    mask: str | None  # "row" (N:M along in), "column" (a separate mask, N:M along out), "transposable"
    pattern: str | None

    @property
    def macs(self) -> float:
        return float(self.m) * self.n * self.k * self.count


@dataclass(frozen=True)
class TrainStep:
    """One training step: its workload (priced by any target) and what the workload cannot say."""

    workload: Workload
    mask: str
    pattern: str | None
    checkpointing: bool
    optimizer: OptimizerSpec | None
    gemms: tuple[TrainGemm, ...]
    #: bytes autograd holds for the backward at its peak (see the module doc), and without checkpointing
    activation_bytes: float
    activation_bytes_no_checkpointing: float
    parameters: int
    masked_parameters: int
    optimizer_state_bytes: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def ops_of(self, group: str) -> tuple[Op, ...]:
        return tuple(op for op in self.workload.ops if group_of(op.name) == group)

    def total(self, attr: str, group: str | None = None) -> float:
        ops = self.workload.ops if group is None else self.ops_of(group)
        return sum(getattr(op, attr) * op.count for op in ops)

    def linear_macs(self, role: str | None = None, recompute: bool = False) -> float:
        """MACs of the linears' GEMMs (of one role), without (default) or with the recomputed ones."""
        return sum(g.macs for g in self.gemms if (role is None or g.role == role)
                   and (recompute or g.group != "recompute"))

    def sparse_fraction(self, masked_only: bool = True) -> float:
        """The share of the linears' GEMM MACs (recompute excluded) that have an N:M operand: over the
        masked linears only (plain 1/3, transposable and bidirectional 2/3), or over every linear
        (the LM head and untargeted linears included) with `masked_only=False`."""
        masked = {g.linear for g in self.gemms if g.role == "forward" and g.sparse_operand}
        pool = [g for g in self.gemms if g.group != "recompute" and (not masked_only or g.linear in masked)]
        total = sum(g.macs for g in pool)
        return sum(g.macs for g in pool if g.sparse_operand) / total if total else 0.0

    def summary(self) -> dict[str, Any]:
        w = self.workload
        return {"model": w.model.name, "batch": w.batch, "seq_len": w.tokens, "tokens": w.batch * w.tokens,
                "mask": self.mask, "pattern": self.pattern, "checkpointing": self.checkpointing,
                "flops": w.total("flops"), "bytes": w.total("bytes_read") + w.total("bytes_written"),
                "parameters": self.parameters, "masked_parameters": self.masked_parameters,
                "sparse_mac_fraction": self.sparse_fraction(),
                "sparse_mac_fraction_all_linears": self.sparse_fraction(masked_only=False),
                "activation_bytes": self.activation_bytes,
                "activation_bytes_no_checkpointing": self.activation_bytes_no_checkpointing,
                "optimizer_state_bytes": self.optimizer_state_bytes}


def group_of(op_name: str) -> str:
    """The group (forward, recompute, input_grad, weight_grad, optimizer) of a step's op (or of a
    target's row for it: an accelerator names attention's GEMMs `<op>.qk` / `<op>.pv`)."""
    prefix = op_name.split(":", 1)[0]
    if prefix not in _GROUP_OF:
        raise InputError(f"{op_name!r} is not an op of a training step (nmx.hw.training)")
    return _GROUP_OF[prefix]


# ---------------------------------------------------------------- checks


def check_mask(mask: Any) -> str:
    if not isinstance(mask, str) or mask not in MASKS:
        raise InputError(f"mask kind (--mask) must be one of {', '.join(MASKS)}, got {mask!r}")
    return mask


def check_mask_and_pattern(mask: Any, pattern: Any) -> tuple[str, Any, str | None]:
    """(mask kind, NMPattern or None, pattern text or None): a dense mask drops the pattern and no
    pattern makes the mask dense."""
    mask = check_mask(mask)
    pat = check_pattern(pattern) if pattern is not None and mask != "dense" else None
    return ("dense" if pat is None else mask), pat, (str(pat) if pat is not None else None)


def check_pattern(pattern: Any) -> Any:
    """An N:M pattern (NMPattern) from text; unstructured ratios and malformed text are one line."""
    from nmx.sparsity.patterns import NMPattern, parse_pattern

    if isinstance(pattern, (int, float)) and not isinstance(pattern, bool):
        pattern = str(pattern)
    pat = parse_pattern(pattern)
    if not isinstance(pat, NMPattern):
        raise InputError(f"pattern (--pattern) must be N:M (e.g. 2:4 or 2:8) for a sparse training step, "
                         f"got {pattern!r}")
    return pat


def _check_dims(pat: Any, mask: str, name: str, out: int, inp: int) -> None:
    both = mask in ("transposable", "bidirectional")
    for label, dim in (("in", inp),) + ((("out", out),) if both else ()):
        if dim % pat.m:
            need = (f"a {mask} mask is N:M along both dims, so M = {pat.m} must divide out ({out}) and in ({inp})"
                    if both else f"M = {pat.m} must divide its input features ({inp})")
            raise InputError(f"{name} [{out} x {inp}]: {label} = {dim} is not divisible by {pat.m}; {need}")


# ---------------------------------------------------------------- ops


def _pass(group: str, name: str, kind: str, count: int, read: float, written: float, flops: float = 0.0,
          elements: int = 0, nonlinear: str | None = None) -> Op:
    """A memory pass (norm, activation, embedding, loss, optimizer) of `read` / `written` bytes."""
    return Op(f"{PREFIX[group]}:{name}", kind, count, flops=float(flops), bytes_read=float(read),
              bytes_written=float(written), elements=int(elements), nonlinear=nonlinear)


def linear_gemms(name: str, out: int, inp: int, tokens: int, count: int, mask: str, pattern: str | None,
                 group: str = "forward") -> tuple[list[Op], list[TrainGemm]]:
    """The forward GEMM of one linear (group "forward" or "recompute"), or its two backward GEMMs
    (group "backward"), with `mask` deciding which operand is N:M (`pattern`, None: dense)."""
    sparse = pattern is not None and mask != "dense"
    if group in ("forward", "recompute"):
        specs = [("forward", group, tokens, out, inp, "X", "W", sparse, "row" if sparse else None)]
    else:
        back = sparse and mask in ("transposable", "bidirectional")
        specs = [("input_grad", "input_grad", tokens, inp, out, "dY", "Wᵀ", back,
                  ("transposable" if mask == "transposable" else "column") if back else None),
                 ("weight_grad", "weight_grad", out, inp, tokens, "dYᵀ", "Xᵀ", False, None)]
    ops, gemms = [], []
    for role, grp, m, n, k, a, b, is_sparse, which in specs:
        op_name = f"{PREFIX[grp]}:{name}"
        pat = pattern if is_sparse else None
        ops.append(gemm_op(op_name, m, n, k, count, pattern=pat))
        gemms.append(TrainGemm(op_name, name, role, grp, m, n, k, count, a, b,
                               ("W" if role == "forward" else "Wᵀ") if is_sparse else None, which, pat))
    return ops, gemms


def _compress_op(name: str, out: int, inp: int, count: int, mask: str, pattern: str,
                 opt: OptimizerSpec) -> Op:
    """Re-packing a masked weight into the N:M storage its sparse GEMMs read, once per step."""
    from nmx.sparsity.patterns import parse_pattern
    from nmx.sparsity.storage import weight_storage

    density = parse_pattern(pattern).density
    shapes = [(out, inp)] + ([(inp, out)] if mask in ("transposable", "bidirectional") else [])
    written = sum(weight_storage(s, density, None, pattern)["bits"] / 8 for s in shapes)
    elements = out * inp
    return _pass("optimizer", f"compress.{name}", "activation", count, read=elements * opt.weight_read_bytes,
                 written=written, flops=len(shapes) * elements)


def _adamw_op(name: str, params: int, count: int, masked: bool, opt: OptimizerSpec) -> Op:
    return _pass("optimizer", f"adamw.{name}", "activation", count, read=params * opt.bytes_read(masked),
                 written=params * opt.bytes_written(), flops=params * opt.flops_per_param, elements=params,
                 nonlinear="rsqrt")


def saved_bytes_per_token(s: ModelShape) -> dict[str, float]:
    """Bytes autograd saves per token: one decoder layer's (see the module doc), one layer's input,
    and the head's (final norm input, LM-head input, bf16 logits)."""
    h, i, q, kv = s.hidden, s.intermediate, s.heads_q * s.head_dim, s.heads_kv * s.head_dim
    layer = BF16_BYTES * (h + h + q + 2 * kv + q + h + h + 3 * i) + 4.0 * s.heads_q
    return {"layer": float(layer), "layer_input": float(BF16_BYTES * h),
            "head": float(BF16_BYTES * (2 * h + s.vocab))}


def train_step(model: str | ModelShape | Any, *, batch: int, seq_len: int, pattern: str | None = None,
               mask: str = "plain", checkpointing: bool = False, optimizer: OptimizerSpec | None = ADAMW_FP32,
               compression: Compression | None = None) -> TrainStep:
    """The ops of one training step of a Llama-style decoder (`model`: a preset, ModelShape, HF
    config or `nmx run` folder, as `nmx.hw.workload.llm_workload` takes) on `batch` sequences of
    `seq_len` tokens. `pattern` (N:M) applies to the linears `compression.targets` selects (default
    the attention and MLP projections) as `mask` says; `mask="dense"` or no pattern: a dense step.
    `optimizer` None leaves the optimizer out (forward and backward only)."""
    shape, from_result = resolve_model(model)
    comp = compression or from_result or Compression()
    batch = check_size("batch (--batch)", batch)
    seq_len = check_size("sequence length (--seq-len)", seq_len)
    if batch * seq_len > MAX_SIZE:
        raise InputError(f"batch {batch} x {seq_len} tokens is beyond what nmx models (at most {MAX_SIZE:,} tokens)")
    mask, pat, pattern = check_mask_and_pattern(mask, comp.pattern if pattern is None else pattern)
    s, L, T = shape, shape.layers, batch * seq_len
    h, q_dim, kv_dim = s.hidden, s.heads_q * s.head_dim, s.heads_kv * s.head_dim
    targeted = {name: comp.targets_layer(name) for name in s.linears()}
    if pat is not None:
        for name, (out, inp) in s.linears().items():
            if targeted[name]:
                _check_dims(pat, mask, f"{s.name} {name}", out, inp)

    def lin(name: str) -> str | None:
        return pattern if targeted[name] else None

    gemms: list[TrainGemm] = []

    def layer_forward(group: str) -> list[Op]:
        ops: list[Op] = []
        norm = lambda nm: _pass(group, nm, "norm", L, (T * h + h) * BF16_BYTES, T * h * BF16_BYTES,  # noqa: E731
                                flops=4.0 * T * h, elements=T, nonlinear="rsqrt")
        ops.append(norm("input_layernorm"))
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            o, g = linear_gemms(name, *s.linears()[name], T, L, mask, lin(name), group)
            ops += o
            gemms.extend(g)
        fwd_attn = attention_op(f"{PREFIX[group]}:self_attn.attention", batch, seq_len, seq_len, s.heads_q,
                                s.heads_kv, s.head_dim, L, causal=True, model=s, kv_read_bytes=0.0,
                                kv_written_bytes=0.0)
        ops.append(fwd_attn)
        for name in ("self_attn.o_proj",):
            o, g = linear_gemms(name, *s.linears()[name], T, L, mask, lin(name), group)
            ops += o
            gemms.extend(g)
        ops.append(norm("post_attention_layernorm"))
        for name in ("mlp.gate_proj", "mlp.up_proj"):
            o, g = linear_gemms(name, *s.linears()[name], T, L, mask, lin(name), group)
            ops += o
            gemms.extend(g)
        ops.append(_pass(group, "mlp.act_fn", "activation", L, 2 * T * s.intermediate * BF16_BYTES,
                         T * s.intermediate * BF16_BYTES, flops=5.0 * T * s.intermediate,
                         elements=T * s.intermediate, nonlinear="sigmoid"))
        o, g = linear_gemms("mlp.down_proj", *s.linears()["mlp.down_proj"], T, L, mask, lin("mlp.down_proj"), group)
        ops += o
        gemms.extend(g)
        return ops

    # ---- forward
    ops: list[Op] = [_pass("forward", "embed_tokens", "embedding", 1, T * h * BF16_BYTES, T * h * BF16_BYTES)]
    ops += layer_forward("forward")
    ops.append(_pass("forward", "norm", "norm", 1, (T * h + h) * BF16_BYTES, T * h * BF16_BYTES, flops=4.0 * T * h,
                     elements=T, nonlinear="rsqrt"))
    o, g = linear_gemms("lm_head", s.vocab, h, T, 1, "dense", None, "forward")
    ops += o
    gemms.extend(g)
    ops.append(_pass("forward", "loss", "activation", 1, T * s.vocab * BF16_BYTES, T * 4.0, flops=5.0 * T * s.vocab,
                     elements=T * s.vocab, nonlinear="exp"))
    # ---- recompute (gradient checkpointing: each decoder layer's forward again, in the backward)
    if checkpointing:
        ops += layer_forward("recompute")
    # ---- backward: loss, head, then the decoder layers in reverse
    ops.append(_pass("input_grad", "loss", "activation", 1, T * s.vocab * BF16_BYTES, T * s.vocab * BF16_BYTES,
                     flops=5.0 * T * s.vocab, elements=T * s.vocab, nonlinear="exp"))
    o, g = linear_gemms("lm_head", s.vocab, h, T, 1, "dense", None, "backward")
    ops += o
    gemms.extend(g)

    def norm_bwd(name: str, count: int) -> Op:  # read x, dy and the weight; write dx (the weight's
        # gradient is a reduction over the tokens, written once)
        return _pass("input_grad", name, "norm", count, (2 * T * h + h) * BF16_BYTES, (T * h + h) * BF16_BYTES,
                     flops=8.0 * T * h, elements=T, nonlinear="rsqrt")

    def back(name: str) -> None:
        o, g = linear_gemms(name, *s.linears()[name], T, L, mask, lin(name), "backward")
        ops.extend(o)
        gemms.extend(g)

    ops.append(norm_bwd("norm", 1))
    back("mlp.down_proj")
    i_el = T * s.intermediate
    ops.append(_pass("input_grad", "mlp.act_fn", "activation", L, 3 * i_el * BF16_BYTES, 2 * i_el * BF16_BYTES,
                     flops=8.0 * i_el, elements=i_el, nonlinear="sigmoid"))
    back("mlp.up_proj")
    back("mlp.gate_proj")
    ops.append(norm_bwd("post_attention_layernorm", L))
    back("self_attn.o_proj")
    fwd_attn = next(op for op in ops if op.name == "fwd:self_attn.attention")
    qo = T * q_dim * BF16_BYTES
    kv = T * kv_dim * BF16_BYTES
    lse = T * s.heads_q * 4.0
    ops.append(replace(fwd_attn, name="dgrad:self_attn.attention", flops=ATTN_BWD_FLOPS * fwd_attn.flops,
                       bytes_read=3 * qo + 2 * kv + lse, bytes_written=qo + 2 * kv, elements=2 * fwd_attn.elements))
    back("self_attn.v_proj")
    back("self_attn.k_proj")
    back("self_attn.q_proj")
    ops.append(norm_bwd("input_layernorm", L))
    opt = optimizer
    ops.append(_pass("weight_grad", "embed_tokens", "embedding", 1, T * h * BF16_BYTES,
                     T * h * (opt.grad_bytes if opt else BF16_BYTES)))
    # ---- optimizer
    per_layer = sum(o * i for o, i in s.linears().values())
    masked = sum(o * i for n, (o, i) in s.linears().items() if targeted[n]) * L if pat is not None else 0
    if opt is not None:
        for name, (out, inp) in s.linears().items():
            ops.append(_adamw_op(name, out * inp, L, pat is not None and targeted[name], opt))
        other = s.parameters - L * per_layer
        ops.append(_adamw_op("embeddings_and_norms", other, 1, False, opt))
        if pat is not None:
            for name, (out, inp) in s.linears().items():
                if targeted[name]:
                    ops.append(_compress_op(name, out, inp, L, mask, pattern, opt))
    saved = saved_bytes_per_token(s)
    full = T * (L * saved["layer"] + saved["head"])
    ckpt = T * (L * saved["layer_input"] + saved["layer"] + saved["head"])
    work = Workload(s, TRAIN_PHASE, batch, seq_len, 0, replace(comp, pattern=pattern), tuple(ops))
    notes = ("dY·W runs dense under a plain mask: the row-wise N:M mask is not N:M along the output dim",) \
        if mask == "plain" else ()
    return TrainStep(work, mask, pattern, checkpointing, opt, tuple(gemms), ckpt if checkpointing else full, full,
                     s.parameters, masked, s.parameters * opt.state_bytes() if opt else 0.0, notes)


def linears_step(linears: Mapping[str, tuple[int, int]], tokens: int, *, pattern: str | None = None,
                 mask: str = "plain", count: int = 1, between: Callable[[str], list[Op]] | None = None,
                 optimizer: OptimizerSpec | None = None, name: str = "linears",
                 compress: bool = True) -> TrainStep:
    """Forward + backward of a stack of linears alone (name -> (out, in)) over `tokens` tokens, for
    layer-level comparisons (a ViT MLP: fc1 1024 -> 4096, fc2 4096 -> 1024). `between(group)` may add
    ops after each forward linear (e.g. GELU); `compress` adds the per-step re-packing of the sparse
    weights (a runtime-sparsified weight, as torchao's 2:4 training does, pays it every step)."""
    tokens = check_size("tokens", tokens)
    mask, pat, pattern = check_mask_and_pattern(mask, pattern)
    compress = compress and pat is not None
    for lname, (out, inp) in linears.items():
        check_size(f"{lname} out", out)
        check_size(f"{lname} in", inp)
        if pat is not None:
            _check_dims(pat, mask, lname, out, inp)
    ops: list[Op] = []
    gemms: list[TrainGemm] = []
    for lname, (out, inp) in linears.items():
        o, g = linear_gemms(lname, out, inp, tokens, count, mask, pattern, "forward")
        ops += o + (between("forward") if between and lname != list(linears)[-1] else [])
        gemms += g
    for lname, (out, inp) in reversed(list(linears.items())):
        o, g = linear_gemms(lname, out, inp, tokens, count, mask, pattern, "backward")
        ops += o + (between("input_grad") if between and lname != list(linears)[0] else [])
        gemms += g
    params = sum(o * i for o, i in linears.values()) * count
    opt = optimizer or ADAMW_FP32
    if optimizer is not None:
        for lname, (out, inp) in linears.items():
            ops.append(_adamw_op(lname, out * inp, count, pat is not None, opt))
    if compress and pattern is not None:
        for lname, (out, inp) in linears.items():
            ops.append(_compress_op(lname, out, inp, count, mask, pattern, opt))
    first_in = next(iter(linears.values()))[1]
    shape = ModelShape(name, first_in, max(o for o, _ in linears.values()), 1, 1, 1, 1, 1)
    work = Workload(shape, TRAIN_PHASE, 1, tokens, 0, Compression(pattern=pattern), tuple(ops))
    saved = float(tokens * sum(i for _, i in linears.values()) * BF16_BYTES * count)
    return TrainStep(work, mask, pattern, False, optimizer, tuple(gemms), saved, saved, params,
                     params if pat is not None else 0, params * opt.state_bytes() if optimizer else 0.0)


# ---------------------------------------------------------------- pricing


def group_costs(cost: Any) -> dict[str, dict[str, float | None]]:
    """A target's Cost of a training step summed per group: latency_s, energy_pj (None on a target
    without an energy model), bytes."""
    out: dict[str, dict[str, float | None]] = {}
    for row in cost.ops:
        g = out.setdefault(group_of(row.name), {"latency_s": 0.0, "energy_pj": 0.0, "bytes": 0.0})
        g["latency_s"] += row.latency_s
        g["bytes"] += row.bytes
        g["energy_pj"] = None if row.energy_pj is None or g["energy_pj"] is None else g["energy_pj"] + row.energy_pj
    return {k: out[k] for k in GROUPS if k in out}


def compare(target: Any, step: TrainStep, dense: TrainStep) -> dict[str, Any]:
    """`step` against the dense step on one target (anything nmx.hw.targets.get_target takes): per
    group and in total, latency and energy of each and the speedup (dense / sparse latency)."""
    from nmx.hw.targets import get_target

    t = target if hasattr(target, "cost") else get_target(target)
    c_sparse, c_dense = t.cost(step.workload), t.cost(dense.workload)
    gs, gd = group_costs(c_sparse), group_costs(c_dense)
    rows = {}
    for g in GROUPS:
        if g not in gs and g not in gd:
            continue
        s, d = gs.get(g, {"latency_s": 0.0, "energy_pj": 0.0, "bytes": 0.0}), gd.get(g, {"latency_s": 0.0,
                                                                                      "energy_pj": 0.0, "bytes": 0.0})
        rows[g] = _row(d["latency_s"], s["latency_s"], d["energy_pj"], s["energy_pj"], d["bytes"], s["bytes"])
    total = _row(c_dense.latency_s, c_sparse.latency_s, c_dense.energy_pj, c_sparse.energy_pj, c_dense.bytes,
                 c_sparse.bytes)
    return {"target": t.name, "kind": t.kind, **({"impl": t.impl} if hasattr(t, "impl") else {}),
            **step.summary(), "groups": rows, "total": total, "notes": list(step.notes)}


def _row(dense_s: float, sparse_s: float, dense_pj: float | None, sparse_pj: float | None, dense_b: float,
         sparse_b: float) -> dict[str, float | None]:
    return {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s if sparse_s and dense_s else None,
            "dense_energy_pj": dense_pj, "sparse_energy_pj": sparse_pj,
            "energy_ratio": (dense_pj / sparse_pj) if dense_pj is not None and sparse_pj else None,
            "dense_bytes": dense_b, "sparse_bytes": sparse_b}


def price_train_step(target: Any, model: Any, *, batch: int, seq_len: int, pattern: str = "2:4",
                     mask: str = "plain", checkpointing: bool = False, optimizer: OptimizerSpec | None = ADAMW_FP32,
                     gpu_impl: str = "pytorch") -> dict[str, Any]:
    """The sparse step (`pattern`, `mask`) against the dense step of the same shape on `target` (a
    preset name, a YAML file, a GpuTarget / AccelSpec or a Target); see `compare`."""
    from nmx.hw.targets import get_target

    t = get_target(target, gpu_impl)
    t.check_phase(TRAIN_PHASE)
    if check_mask(mask) == "dense":
        raise InputError("give a sparse mask kind (plain, transposable or bidirectional); the dense step is the "
                         "baseline every row is compared with")
    check_pattern(pattern)
    step = train_step(model, batch=batch, seq_len=seq_len, pattern=pattern, mask=mask, checkpointing=checkpointing,
                      optimizer=optimizer)
    dense = train_step(model, batch=batch, seq_len=seq_len, mask="dense", checkpointing=checkpointing,
                       optimizer=optimizer, compression=replace(step.workload.compression, pattern=None))
    return compare(t, step, dense)


#: ViT-L/16's MLP (timm `vit_large_patch16_224`: width 1024, MLP 4096, GELU, 197 tokens per image)
VIT_L_MLP = {"mlp.fc1": (4096, 1024), "mlp.fc2": (1024, 4096)}
VIT_L_TOKENS_PER_IMAGE = 197


def gelu_between(tokens: int, width: int = 4096) -> Callable[[str], list[Op]]:
    """The GELU between a ViT MLP's two linears: forward reads h, writes GELU(h); backward reads
    h and dGELU, writes dh (for `linears_step(between=...)`)."""
    n = tokens * width

    def ops(group: str) -> list[Op]:
        if group == "forward":
            return [_pass(group, "mlp.act", "activation", 1, n * BF16_BYTES, n * BF16_BYTES, 8.0 * n, n, "exp")]
        return [_pass(group, "mlp.act", "activation", 1, 2 * n * BF16_BYTES, n * BF16_BYTES, 10.0 * n, n, "exp")]

    return ops
