"""The hardware half of co-design: what a model + recipe costs.

    workload   the operations of a prefill or a decode step (GEMMs, attention, KV bytes, norms)
    kvcache    the bytes a compressed KV cache (the whole nmx.kv policy) keeps at a context
    cost       `Cost`: what every target answers (latency, energy or None, bytes, bound, per-op rows)
    targets    the one protocol `cost(workload) -> Cost` over GPUs, accelerators, Timeloop cases;
               the registry of presets and YAML target files
    pricing    a run's workload on a recipe's targets and phases (result.json's `hardware` block)
    gpu        roofline GPU targets calibrated on measured kernels (H100)
    accel      a parametric, vectorized sparse accelerator model (PEs, memory, dataflow)
    timeloop   a reader/evaluator for the Timeloop/Sparseloop v0.3 YAML dialect
    nonlinear  softmax / SiLU / GELU units: LUT, piecewise-linear, CORDIC, with their cost
    explore    many design points at once, Pareto fronts, accuracy joined with cost
"""
