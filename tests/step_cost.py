"""XLA's own FLOP count of one compiled token step of the engine: the measure the work-saving tests compare."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ivg_jax.decoding import engine


def token_step_flops(program, params, inputs, monkeypatch) -> float:
    """FLOPs of one `_token_step` of `program` on its initial state. XLA counts a loop's body once, so the block
    scans are unrolled and the models' jitted steps inlined while it compiles."""
    state = engine.init_state(program, params, inputs)
    rows = jnp.repeat(jnp.arange(inputs.seeds.shape[0]), program.width)
    w_imp, w_exp = inputs.w_implicit[rows], inputs.w_explicit[rows]
    with monkeypatch.context() as m:
        m.setattr(jax.lax, "scan", functools.partial(jax.lax.scan, unroll=True))
        for name in ("extend", "extend_trunk"):
            m.setattr(engine, name, getattr(engine, name).__wrapped__)
        step = jax.jit(lambda p, s: engine._token_step(program, p, w_imp, w_exp, inputs.stops, s))
        cost = step.lower(params, state).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])
