"""XLA's count of the work in one token step of a planned search: FLOPs and bytes accessed from `cost_analysis()`.

The measure the benchmarks report against a machine's peak and the work-saving tests compare (shared trunks,
value columns). One place, so every figure counts the same program the same way.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from ivg_jax.decoding import engine


@contextlib.contextmanager
def loops_unrolled() -> Iterator[None]:
    """While active, every `lax.scan` traced is unrolled and the models' jitted steps are traced anew.

    XLA's cost analysis counts a loop's body once, so a scan over blocks would count one block; the jitted
    `extend` / `extend_trunk` are swapped for their unjitted bodies so that jit's cache of earlier (rolled)
    traces is not reused. Swaps module attributes: not for use while another thread traces."""
    saved = jax.lax.scan, engine.extend, engine.extend_trunk
    jax.lax.scan = functools.partial(saved[0], unroll=True)
    engine.extend, engine.extend_trunk = saved[1].__wrapped__, saved[2].__wrapped__
    try:
        yield
    finally:
        jax.lax.scan, engine.extend, engine.extend_trunk = saved


def token_step_cost(program: engine.Program, params, inputs, state=None) -> dict[str, float]:
    """{"flops", "bytes"} of one token step of `program` (every member's model step, guidance, sampling,
    stops) on `state` — by default the search's initial state for `inputs` — with every loop unrolled."""
    if state is None:
        state = engine.init_state(program, params, inputs)
    rows = jnp.repeat(jnp.arange(inputs.w_explicit.shape[0]), program.width)  # prompt of each row R
    w_implicit, w_explicit = inputs.w_implicit[rows], inputs.w_explicit[rows]
    with loops_unrolled():
        step = jax.jit(lambda p, s: engine._token_step(program, p, w_implicit, w_explicit, inputs.stops, s))
        cost = step.lower(params, state).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops": float(cost.get("flops", float("nan"))), "bytes": float(cost.get("bytes accessed", float("nan")))}
