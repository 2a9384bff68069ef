"""The IVG decoding engine: the base and every guide in one compiled program (spec §2-§3).

Rows are prompts × W beams × K candidates, row r = p·W·K + slot. One jitted function does everything:
prefill each model once per prompt with its own template, its cache read by the prompt's W·K rows (held once
per prompt, `KVPrefix`; the rows' caches hold only their new tokens); then a
`lax.while_loop` over chunks, each a `lax.scan` over L token steps followed (between chunks) by a per-prompt
top-W over the W·K rows and one gather that reorders every model's cache, the tokens and the scores. No host
round trip until the result.

One token step: every model's next-token output is already in the state; the guided log-probabilities are
the base's plus the token-level value (Σ wᵢ(log π_tunedᵢ − log π_refᵢ) or w·S); sample; the chunk scores are
updated from the same numbers (implicit: the sampled token's weighted log-ratio; explicit: S at the sampled
token); then every model is fed the token. Rows that finished are frozen: they emit padding, their scores
stop changing, and their tiled copies are marked duplicates that selection never picks.

Shapes (the glossary of the decoding package; model code adds B rows, T positions, S cache slots, D width,
Nq / Nkv query / KV heads, H head dim):
    P   prompts in the batch, bucketed (`Plan.n_prompts`)    W  beams kept per prompt
    K   candidates per beam                                    R  rows = P·W·K, row r = p·W·K + w·K + k
    L   tokens per chunk                                       C  chunks; N = C·L the new-token buffer
    T_m prompt length of member m (its own template)          V  vocabulary
    G   implicit guides (tuned/reference pairs)                S  stop strings (`Stops`)

`generate` runs in phases: `plan` (every check, the hashable `Program` that keys compilation), `encode_inputs` (each
member's prompt ids, per-prompt weights and seeds), `run` (one compiled search) or `_host_scored_search`
(chunk-level guides of another tokenizer), `_result` (host arrays and texts).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.decoding.members import Members
from ivg_jax.decoding.prompts import encode
from ivg_jax.decoding.retokenize import HostChunkScorer
from ivg_jax.decoding.sampling import Sampling, sample, step_keys
from ivg_jax.decoding.stops import Stops, advance, build_stops, trim
from ivg_jax.decoding.trunks import Trunk, shared_trunks
from ivg_jax.errors import InputError, require_count
from ivg_jax.guidance import Guidance, Search, host_scored_kind, n_chunks, per_prompt_weights, validate
from ivg_jax.model.api import Model
from ivg_jax.model.cache import KVCache
from ivg_jax.model.transformer import extend, extend_trunk, head_at, prefill, prefill_trunk, unstack_blocks
from ivg_jax.runtime import CPU_MATMULS, check_cpu_matmuls, free_memory_bytes
from ivg_jax.sharding import constrain, put, settle, shard_params, to_host


@dataclasses.dataclass(frozen=True)
class Program:
    """Static structure of one compiled decode program (hashable: the jit cache key)."""

    graphdefs: Members  # one graphdef per member, by role
    token: str
    chunk: str
    beams: int  # W
    candidates: int  # K
    chunk_length: int  # L
    n_chunks: int  # C
    max_new_tokens: int
    sampling: Sampling
    pad_id: int
    n_stop_strings: int = 0  # S: one match state per row per stop string
    mesh: Any = None  # jax.sharding.Mesh: rows over "data", weights and KV heads over "model"
    trunks: tuple[Trunk, ...] = ()  # groups of members whose bottom blocks run once (ivg_jax.decoding.trunks)
    compaction: int = 0  # halvings of the batch as rows finish (`_run_compacting`); 0 = every row runs to the end
    prompt_sharing: bool = True  # False: every row holds a copy of its prompt's cache (the measure to compare with)
    unroll_layers: bool = False  # blocks run one after another on per-layer weights (`unstack_blocks`)
    value_columns: bool = True  # False: the value model projects its whole vocabulary at every step even where
    # only the sampled tokens' values are read (the measure to compare with)

    @property
    def n_implicit(self) -> int:  # G
        return self.graphdefs.n_implicit

    @property
    def has_value(self) -> bool:
        return self.graphdefs.has_value

    @property
    def width(self) -> int:  # W·K rows per prompt
        return self.beams * self.candidates

    @property
    def n_steps(self) -> int:  # N = C·L
        return self.n_chunks * self.chunk_length

    @property
    def shares_prompts(self) -> bool:
        """Whether a prompt's W·K rows read one copy of its prompt's keys and values (`KVPrefix`): when it has
        several rows, and rows leave the batch (compaction) only in whole prompts, so rows stay grouped."""
        return self.prompt_sharing and self.width > 1 and (not self.compaction or _unit_rows(self) == self.width)

    @property
    def values_at_tokens(self) -> bool:
        """Whether the value model is read only at each row's sampled token (chunk-level explicit values, as in
        IVG and CBS): its step then keeps its final hidden [R, D] and skips its [R, V] vocab projection — one of
        the step's vocab projections — reading the head's one column per row instead (`head_at`)."""
        return self.value_columns and self.has_value and self.token != "explicit"

    def computes_head(self, member: int) -> bool:
        """Whether the member at this iteration index outputs its head ([R, V]) or its final hidden ([R, D])."""
        return not (self.values_at_tokens and member == len(self.graphdefs) - 1)

    def trunk_of(self, member: int) -> tuple[int, int] | None:
        """(trunk index, its depth) of the member at this iteration index, or None when it runs alone."""
        for t, trunk in enumerate(self.trunks):
            if member in trunk.members:
                return t, trunk.n_layers
        return None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Inputs:
    """The data of one call (`encode_inputs`): new values of any of these reuse the compiled program."""

    ids: Members  # [P, T_m] int32 prompt ids of each member under its own template
    masks: Members  # [P, T_m] bool
    w_implicit: jax.Array  # [P, G] implicit guide weights
    w_explicit: jax.Array  # [P] value model weight (token level)
    seeds: jax.Array  # [P, 2] uint32 (seed, index): prompt p's key is fold_in(key(seed), index)
    stops: Stops


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    tokens: jax.Array  # [R, N] int32 generated ids, pad after a row's end
    caches: Members  # one KVCache per member, rows R (a member on a shared trunk: its top blocks only)
    trunk_caches: tuple  # one KVCache per shared trunk (its bottom blocks), rows R
    outputs: Members  # one [R, V] per member: next-token logits (token values for the value model; its final
    # hidden [R, D] when it is read only at sampled tokens, `Program.values_at_tokens`)
    implicit_score: jax.Array  # [R] Σ_t Σ_i w_i (log π_tuned_i − log π_ref_i)(y_t)
    value: jax.Array  # [R] explicit value of the response so far, S at its last token
    done: jax.Array  # [R] bool: sampled a stop id or completed a stop string
    stop_state: jax.Array  # [R, S] int32 how much of each stop string ends the response (ivg_jax.decoding.stops)
    duplicate: jax.Array  # [R] bool: a tiled copy of a finished hypothesis, never selected
    lengths: jax.Array  # [R] int32 generated tokens, stop token included
    log_ratio: jax.Array  # [R, N] per-token log p_guided(y) − log p_base(y) (tempered distributions)
    kl: jax.Array  # [R, N] per-token KL(guided ‖ base) (tempered distributions)
    keys: jax.Array  # [R] per-slot PRNG keys (stay with the slot, not the hypothesis)
    step: jax.Array  # [] int32 tokens generated so far
    chunk: jax.Array  # [] int32 chunks completed
    work: jax.Array  # [P] int32 active (row, step) pairs per prompt: each costs one forward token per model


def _constrain_rows(program: Program, state: DecodeState) -> DecodeState:
    """Pins the row axis to "data" and KV heads to "model", so beam gathers stay inside each data shard."""
    if program.mesh is None:
        return state
    mesh = program.mesh
    rows = lambda x: constrain(x, ("batch",) + (None,) * (x.ndim - 1), mesh)  # noqa: E731
    # stacked [layers, B, Nkv, S, H] or per-layer [B, Nkv, S, H] keys and values (a tuple maps over its layers)
    heads = lambda kv: jax.tree.map(  # noqa: E731
        lambda x: constrain(x, (None,) * (x.ndim - 4) + ("batch", "kv_heads", None, None), mesh), kv)

    def cache(c: KVCache) -> KVCache:
        prefix = c.prefix
        if prefix is not None:  # prompts over "data" too, so each shard holds the prompts of its rows
            prefix = dataclasses.replace(prefix, k=heads(prefix.k), v=heads(prefix.v), pos=rows(prefix.pos))
        return dataclasses.replace(c, k=heads(c.k), v=heads(c.v), pos=rows(c.pos), prefix=prefix)

    return _map_rows(state, rows, cache, HYPOTHESIS_FIELDS + ("keys",))


# Per-row fields that belong to a hypothesis and move with it when beams are reordered. `keys` is per row too,
# but belongs to the slot: children of one parent must keep drawing different samples.
HYPOTHESIS_FIELDS = ("tokens", "implicit_score", "value", "done", "stop_state", "duplicate", "lengths", "log_ratio",
                     "kl")


def _map_rows(state: DecodeState, fn, cache_fn, fields: tuple[str, ...]) -> DecodeState:
    """Applies `fn` to the named row-axis fields and every model's output, `cache_fn` to every model's cache."""
    return dataclasses.replace(state, caches=state.caches.map(cache_fn), outputs=state.outputs.map(fn),
                               trunk_caches=tuple(cache_fn(c) for c in state.trunk_caches),
                               **{f: fn(getattr(state, f)) for f in fields})


def _log_softmax(x):
    """[..., V] -> float32 log-probabilities."""
    return jax.nn.log_softmax(x.astype(jnp.float32), axis=-1)


def _guided_logprobs(program: Program, outputs: Members, w_implicit, w_explicit):
    """outputs: [R, V] per member; w_implicit [R, G]; w_explicit [R] -> base log-probs [R, V], guided log-probs
    [R, V] (base + the token-level value) and the weighted implicit log-ratio Σ_i w_i (log π_tuned_i −
    log π_ref_i) [R, V] (None without implicit guides)."""
    base = _log_softmax(outputs.base)
    ratio = None
    if program.n_implicit:
        ratio = sum(w_implicit[:, i, None] * (_log_softmax(t) - _log_softmax(r))
                    for i, (t, r) in enumerate(zip(outputs.tuned, outputs.reference)))
    guided = base
    if program.token == "implicit":
        guided = base + ratio
    elif program.token == "explicit":
        guided = base + w_explicit[:, None] * outputs.value
    return base, guided, ratio


def _token_step(program: Program, params: Members, w_implicit, w_explicit, stops: Stops,
                state: DecodeState) -> DecodeState:
    """One new token for every row R. w_implicit [R, G], w_explicit [R]."""
    base, guided, ratio = _guided_logprobs(program, state.outputs, w_implicit, w_explicit)
    token = sample(step_keys(state.keys, state.step), guided, program.sampling)
    active = ~state.done & (state.step < program.max_new_tokens)
    token = jnp.where(active, token, program.pad_id)

    def at_token(x):
        return jnp.take_along_axis(x, token[:, None], axis=1)[:, 0]

    implicit_score = state.implicit_score
    if program.chunk == "implicit":
        implicit_score = implicit_score + jnp.where(active, at_token(ratio), 0.0)
    value = state.value
    if program.values_at_tokens:
        value = jnp.where(active, head_at(program.graphdefs.value, params.value, state.outputs.value, token), value)
    elif program.has_value:
        value = jnp.where(active, at_token(state.outputs.value), value)
    temperature = program.sampling.temperature or 1.0
    guided_t = _log_softmax(guided / temperature)
    base_t = _log_softmax(base / temperature)
    log_ratio = jnp.where(active, at_token(guided_t) - at_token(base_t), 0.0)
    kl = jnp.where(active, jnp.sum(jnp.exp(guided_t) * (guided_t - base_t), axis=-1), 0.0)

    g, p, c, tok, act = list(program.graphdefs), list(params), list(state.caches), token[:, None], active[:, None]
    stepped, trunk_caches = _forward_members(  # (out [R, 1, V] or [R, 1, D] (`computes_head`), cache) per member
        program, lambda i, start, x: extend(g[i], p[i], tok, act, c[i], from_layer=start, trunk=x,
                                            head=program.computes_head(i)),
        lambda t, first, depth: extend_trunk(g[first], p[first], tok, act, state.trunk_caches[t], n_layers=depth))
    stop_state, stopped = advance(stops, state.stop_state, token, active)
    col = state.step  # < n_steps, the width of the token buffer, by construction of the loops
    return dataclasses.replace(
        state,
        tokens=state.tokens.at[:, col].set(jnp.where(active, token, state.tokens[:, col])),
        caches=stepped.map(lambda x: x[1]),
        trunk_caches=trunk_caches,
        outputs=stepped.map(lambda x, old: jnp.where(active[:, None], x[0][:, 0], old), state.outputs),
        implicit_score=implicit_score,
        value=value,
        done=state.done | stopped,
        stop_state=stop_state,
        lengths=state.lengths + active.astype(jnp.int32),
        log_ratio=state.log_ratio.at[:, col].set(log_ratio),
        kl=state.kl.at[:, col].set(kl),
        step=state.step + 1,
        work=state.work + jnp.sum(active.reshape(state.work.shape[0], -1), axis=1, dtype=jnp.int32),
    )


def _forward_members(program: Program, run_member, run_trunk):
    """Runs each shared trunk once, then every member — from its trunk's output where it has one.

    `run_trunk(t, first, depth)` -> (trunk output, its cache) runs trunk t's bottom `depth` blocks on the weights of
    member `first`; `run_member(i, start, x)` -> (output, cache) runs member i from block `start` (0: from its
    own embedding; x is then None). -> (Members of the members' results, tuple of the trunks' caches)."""
    trunks = [run_trunk(t, trunk.members[0], trunk.n_layers) for t, trunk in enumerate(program.trunks)]
    results = []
    for i in range(len(program.graphdefs)):
        shared = program.trunk_of(i)
        results.append(run_member(i, 0, None) if shared is None else run_member(i, shared[1], trunks[shared[0]][0]))
    return Members.of(results, program.n_implicit, program.has_value), tuple(cache for _, cache in trunks)


def chunk_scores(program: Program, state: DecodeState) -> jax.Array:
    """[R] the chunk-level value of each row's whole response so far; −inf for duplicates."""
    if program.chunk == "implicit":
        score = state.implicit_score
    elif program.chunk == "explicit":
        score = state.value
    else:
        score = jnp.zeros_like(state.value)
    return jnp.where(state.duplicate, -jnp.inf, score)


def _reorder(state: DecodeState, rows: jax.Array) -> DecodeState:
    take = functools.partial(jnp.take, indices=rows, axis=0)
    return _map_rows(state, take, lambda c: c.permute(rows), HYPOTHESIS_FIELDS)


def _select(program: Program, state: DecodeState, scores: jax.Array | None = None):
    """Global top-W over each prompt's W·K rows (one parent may fill several slots), each survivor tiled K times;
    copies 2..K of a finished survivor are duplicates. `scores` [R] replaces the in-graph chunk scores (host
    scorers). Returns (reordered state, the parent row of every new row [R])."""
    width, k = program.width, program.candidates
    n_prompts = state.done.shape[0] // width
    scores = chunk_scores(program, state) if scores is None else jnp.where(state.duplicate, -jnp.inf, scores)
    _, top = jax.lax.top_k(scores.reshape(n_prompts, width), program.beams)
    parents = jnp.arange(n_prompts)[:, None] * width + top  # [P, W]
    rows = jnp.repeat(parents, k, axis=1).reshape(-1)  # [R]
    child = jnp.tile(jnp.arange(k), n_prompts * program.beams)
    state = _reorder(state, rows)
    return _constrain_rows(program, dataclasses.replace(
        state, duplicate=state.duplicate | (state.done & (child > 0)), chunk=state.chunk + 1)), rows


def _init_state(program: Program, params: Members, inputs: Inputs) -> DecodeState:
    """Prefill every member once per prompt (own template) for the prompt's W·K rows (`rows_cache`)."""
    width = program.width
    n_prompts = inputs.seeds.shape[0]
    prompt_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s[0]), s[1]))(inputs.seeds)
    rows = jnp.repeat(jnp.arange(n_prompts), width)  # [R] each row's prompt

    g, p, ids, masks = list(program.graphdefs), list(params), list(inputs.ids), list(inputs.masks)
    shared = program.shares_prompts

    def rows_cache(prompt_cache: KVCache) -> KVCache:
        """The prompts' cache [P] as the rows' [R]: one copy per prompt that its rows read, or a copy per row."""
        if not shared:
            return prompt_cache.take(rows)
        return prompt_cache.empty_like(n_prompts * width, program.n_steps).with_prefix(prompt_cache)

    def capacity(prompt_ids):  # the prompt alone when it is shared, else room for the new tokens too
        return prompt_ids.shape[1] + (0 if shared else program.n_steps)

    def member(i, start, x):  # prefill once per prompt; its rows read it
        out, cache = prefill(g[i], p[i], ids[i], masks[i], capacity=capacity(ids[i]), last_only=True,
                             from_layer=start, trunk=x, head=program.computes_head(i))
        return jnp.take(out, rows, axis=0), rows_cache(cache)

    def trunk(t, first, depth):  # its output stays per prompt [P, T, D]: the members' prefills read it
        x, cache = prefill_trunk(g[first], p[first], ids[first], masks[first], capacity=capacity(ids[first]),
                                 n_layers=depth)
        return x, rows_cache(cache)

    prefilled, trunk_caches = _forward_members(program, member, trunk)
    caches, outputs = prefilled.map(lambda x: x[1]), prefilled.map(lambda x: x[0])
    slot = jnp.tile(jnp.arange(width), n_prompts)
    keys = jax.vmap(jax.random.fold_in)(jnp.take(prompt_keys, rows), slot)
    n_rows = n_prompts * width
    zeros = jnp.zeros(n_rows, jnp.float32)
    state = DecodeState(
        tokens=jnp.full((n_rows, program.n_steps), program.pad_id, jnp.int32), caches=caches,
        trunk_caches=trunk_caches, outputs=outputs, implicit_score=zeros, value=zeros, done=jnp.zeros(n_rows, bool),
        stop_state=jnp.zeros((n_rows, program.n_stop_strings), jnp.int32),
        duplicate=jnp.zeros(n_rows, bool), lengths=jnp.zeros(n_rows, jnp.int32),
        log_ratio=jnp.zeros((n_rows, program.n_steps)), kl=jnp.zeros((n_rows, program.n_steps)), keys=keys,
        step=jnp.zeros((), jnp.int32), chunk=jnp.zeros((), jnp.int32), work=jnp.zeros(n_prompts, jnp.int32))
    return _constrain_rows(program, state)


def _decode_layout(program: Program, params: Members) -> Members:
    """The weights as the program's blocks read them. Called once at the top of each compiled entry point, so
    the per-layer slices (a copy of every block) are made once per call, outside the token loops."""
    if not program.unroll_layers:
        return params
    return params.map(unstack_blocks)


def _run_chunk(program: Program, params: Members, inputs: Inputs, state: DecodeState) -> DecodeState:
    """L token steps; the per-prompt weights [P, G] and [P] are expanded to the prompts' rows."""
    rows = jnp.repeat(jnp.arange(inputs.w_explicit.shape[0]), program.width)
    step = functools.partial(_token_step, program, params, jnp.take(inputs.w_implicit, rows, axis=0),
                             jnp.take(inputs.w_explicit, rows, axis=0), inputs.stops)
    state, _ = jax.lax.scan(lambda s, _: (step(s), None), state, None, length=program.chunk_length)
    return state


def _best_rows(program: Program, scores: jax.Array) -> jax.Array:
    n_prompts = scores.shape[0] // program.width
    return jnp.arange(n_prompts) * program.width + jnp.argmax(scores.reshape(n_prompts, program.width), axis=1)


def _search(program: Program, params: Members, inputs: Inputs):
    """The whole search -> the final `DecodeState` (rows R = P·W·K) and the best row of each prompt [P]."""
    params = _decode_layout(program, params)
    if program.compaction:
        return _run_compacting(program, params, inputs)
    chunk = functools.partial(_run_chunk, program, params, inputs)
    state = chunk(_init_state(program, params, inputs))
    state = jax.lax.while_loop(
        lambda s: (s.chunk + 1 < program.n_chunks) & ~jnp.all(s.done),
        lambda s: chunk(_select(program, s)[0]), state)
    return state, _best_rows(program, chunk_scores(program, state))


run = jax.jit(_search, static_argnames=("program",))


@functools.cache
def _run_with(cpu_matmuls: str):
    """`run` compiled with the XLA:CPU options of another matmul library (one jitted function, and its cache, per
    library)."""
    return jax.jit(_search, static_argnames=("program",), compiler_options=CPU_MATMULS[cpu_matmuls])


# ------------------------------------------------------------------------------- finished-row compaction
# Rows that finished still run through every model: the batch is static. With `Program.compaction` = n, the
# search runs in up to n + 1 levels of shrinking batch, all in the same compiled program: when no more than half
# of the current units are still running, the running ones are gathered (with their caches, keys and per-row
# weights) into a batch half the size and the search continues there; what the finished ones hold is written back
# to full-size result arrays first. A unit is a prompt's W·K rows when selections follow (a search of several
# chunks: selection needs all of a prompt's rows), else one row. Each level's step compiles once (compile time
# grows with n); the numbers are those of the uncompacted search, up to float rounding of the smaller batch.

def _unit_rows(program: Program) -> int:  # u: rows that leave the batch together
    return program.width if program.n_chunks > 1 else 1


def _alive_units(state: DecodeState, u: int) -> jax.Array:
    """[U] whether each unit of u rows still has a running row."""
    return ~jnp.all(state.done.reshape(-1, u), axis=1)


def _running(program: Program, state: DecodeState) -> jax.Array:
    return (state.step < program.n_steps) & ~jnp.all(state.done)


def _level_capacities(program: Program, n_units: int) -> list[int]:
    """Unit counts of the levels after the first: halvings, rounded up to the mesh's data shards."""
    shards = program.mesh.shape["data"] if program.mesh is not None else 1
    caps = []
    for i in range(1, program.compaction + 1):
        halved = -(-n_units // 2 ** i)  # ceil
        cap = -(-halved // shards) * shards
        if cap < (caps[-1] if caps else n_units):
            caps.append(cap)
    return caps


def _run_level(program: Program, step, state: DecodeState, capacity: int, u: int) -> DecodeState:
    """Token steps, with a selection after each chunk that another follows (as `run` does), until the search
    ends or at most `capacity` units run."""
    length = program.chunk_length
    going = lambda s: _running(program, s) & (jnp.sum(_alive_units(s, u)) > capacity)  # noqa: E731

    def chunk(s):  # to the end of the current chunk, then its selection
        s = jax.lax.while_loop(lambda c: ((c[1] == 0) | (c[0].step % length != 0)) & going(c[0]),
                               lambda c: (step(c[0]), c[1] + 1), (s, 0))[0]
        ended = (s.step % length == 0) & _running(program, s)
        return jax.lax.cond(ended, lambda s: _select(program, s)[0], lambda s: s, s)

    return jax.lax.while_loop(going, chunk, state)


def _write_back(full: DecodeState, level: DecodeState, origin: jax.Array, width: int) -> DecodeState:
    """The level's hypotheses into the full-size result at their original rows `origin` [R_level]; its work
    (per unit of its batch) added to the prompts it belongs to."""
    fields = {f: getattr(full, f).at[origin].set(getattr(level, f)) for f in HYPOTHESIS_FIELDS}
    owner = origin.reshape(level.work.shape[0], -1)[:, 0] // width
    return dataclasses.replace(full, work=full.work.at[owner].add(level.work), step=level.step,
                               chunk=level.chunk, **fields)


def _run_compacting(program: Program, params: Members, inputs: Inputs):
    """`run` in levels of shrinking batch (see above) -> (state holding the hypotheses of every row R, without
    caches; the best row of each prompt [P])."""
    width, u = program.width, _unit_rows(program)
    state = _init_state(program, params, inputs)
    n_rows = state.done.shape[0]
    origin = jnp.arange(n_rows)  # [R_level] the full-size row of each row of the level's batch
    full = dataclasses.replace(state, caches=state.caches.map(lambda _: None), trunk_caches=(),
                               outputs=state.outputs.map(lambda _: None), work=jnp.zeros_like(state.work))
    caps = _level_capacities(program, n_rows // u)
    for level, next_cap in enumerate([*caps, 0]):
        if level:  # gather the running units into a batch of `caps[level - 1]` units
            full = _write_back(full, state, origin, width)
            units = jnp.argsort(~_alive_units(state, u), stable=True)[:caps[level - 1]]
            rows = (units[:, None] * u + jnp.arange(u)).reshape(-1)
            take = functools.partial(jnp.take, indices=rows, axis=0)
            state = _map_rows(state, take, lambda c, rows=rows: c.take(rows), HYPOTHESIS_FIELDS + ("keys",))
            state = _constrain_rows(program, dataclasses.replace(state, work=jnp.zeros(len(units), jnp.int32)))
            origin = jnp.take(origin, rows)
        prompt = origin // width
        step = functools.partial(_token_step, program, params, jnp.take(inputs.w_implicit, prompt, axis=0),
                                 jnp.take(inputs.w_explicit, prompt, axis=0), inputs.stops)
        state = _run_level(program, step, state, next_cap, u)
    full = _write_back(full, state, origin, width)
    return full, _best_rows(program, chunk_scores(program, full))


# The same pieces, compiled separately, for searches whose chunk scores come from the host between chunks
# (chunk-level guides with another tokenizer, `ivg_jax.decoding.retokenize`).
@functools.partial(jax.jit, static_argnames=("program",))
def init_state(program: Program, params: Members, inputs: Inputs) -> DecodeState:
    return _init_state(program, _decode_layout(program, params), inputs)


@functools.partial(jax.jit, static_argnames=("program",), donate_argnames=("state",))
def run_chunk(program: Program, params: Members, inputs: Inputs, state: DecodeState) -> DecodeState:
    return _run_chunk(program, _decode_layout(program, params), inputs, state)

select = jax.jit(lambda program, state, scores: _select(program, state, scores), static_argnums=(0,))


@dataclasses.dataclass
class Generation:
    """Per prompt: the chosen row's tokens [P, N], lengths [P], text (stop strings trimmed), its final chunk
    score [P], per-token log-ratio and KL(guided ‖ base) [P, N]; `rows` holds every row's tokens and scores."""

    tokens: np.ndarray
    lengths: np.ndarray
    texts: list[str] | None
    scores: np.ndarray
    log_ratio: np.ndarray
    kl: np.ndarray
    forward_tokens: int  # tokens run through models: prompts once per model + active rows × models per step
    forward_tokens_per_prompt: np.ndarray  # [P] the same per prompt (independent of what else is in the batch)
    rows: dict[str, np.ndarray]


def _used_guides(guidance: Guidance) -> Guidance:
    """Drops guides that neither level uses, so a cell of the grid runs only its own models."""
    modes = (guidance.token, guidance.chunk)
    return dataclasses.replace(guidance, implicit=guidance.implicit if "implicit" in modes else (),
                               explicit=guidance.explicit if "explicit" in modes else None)


def _prompt_seeds(seed, n_prompts: int) -> np.ndarray:
    """[P, 2] uint32 (seed, index): one int seeds prompt p with (seed, p); per-prompt seeds use (seed_p, 0), so a
    prompt's randomness never depends on its place in the batch."""
    seeds = np.asarray(seed)
    if seeds.ndim == 0:
        return np.stack([np.full(n_prompts, int(seeds)), np.arange(n_prompts)], 1).astype(np.uint32)
    if seeds.shape != (n_prompts,):
        raise InputError(f"seed must be an int or one int per prompt ({n_prompts}); got shape {seeds.shape}")
    return np.stack([seeds, np.zeros(n_prompts)], 1).astype(np.uint32)


def generate(base: Model, prompts, guidance: Guidance | None = None, search: Search | None = None,
             sampling: Sampling | None = None, max_new_tokens: int = 50, seed=0, stop_strings: Sequence[str] = (),
             stop_ids: Sequence[int] | None = None, implicit_weights=None, explicit_weight=None,
             mesh=None, compaction: int = 0, unroll_layers: bool = False, cpu_matmuls: str = "xla") -> Generation:
    """Guided generation for a batch of prompts (strings or token-id lists).

    `seed`: an int, or one int per prompt (a prompt's result then depends only on its own seed, whatever else is
    in the batch). `implicit_weights`: overrides the guides' weights, shape [n_guides] or [P, n_guides];
    `explicit_weight`: scalar or [P]. Weights are data: new values reuse the compiled program.
    `mesh`: a ("data", "model") mesh (`ivg_jax.sharding.make_mesh`); rows are split over data, every model's
    weights and KV heads over model (docs/sharding.md).
    `compaction`: up to this many halvings of the batch as rows finish (each a compiled level; see
    `_run_compacting`) — for long budgets where rows stop early; 0 runs every row to the end.
    `unroll_layers`: run each model's blocks one after another on per-layer weights instead of as a loop over
    the stacked weights, each with its own KV-cache array: on CPU 1.06-1.76x faster IVG (bf16 matmuls stay bf16;
    no weight or cache copies per token), at the price of ~3x the compile time (benchmarks/ivg_peak.py) and,
    for models whose blocks are stacked, one copy of them for the call. Models that hold their blocks per layer
    (`load_model(per_layer=True)`, `Model.with_layout`) run that way without a copy, whatever this flag says.
    `cpu_matmuls`: the library XLA:CPU runs the search's matmuls with — "xla" (its default, YNNPACK) or "eigen"
    (XLA's own dots); on an AVX2 EPYC Eigen ran one prompt's 16-row SmolLM2 search 1.3-1.5x faster and 4 or
    64 rows slower (measure on yours with benchmarks/cpu_matmuls.py). Results equal up to float rounding.
    Ignored off CPU and for chunk scores of another tokenizer (scored on the host between compiled chunks).
    """
    check_cpu_matmuls(cpu_matmuls)
    call = plan(base, prompts, guidance, search, sampling, max_new_tokens, stop_strings, stop_ids, mesh, compaction,
                unroll_layers)
    inputs, prompt_tokens, w_host = encode_inputs(call, prompts, seed, implicit_weights, explicit_weight)
    mesh = call.program.mesh  # each sharded dispatch settles before the next on CPU meshes (sharding.settle)
    params = settle((placed_params(call), inputs), mesh)[0]
    check_memory(call.program, params, inputs)
    if call.host_kind is None:
        search = run if CPU_MATMULS[cpu_matmuls] is None or jax.default_backend() != "cpu" else _run_with(cpu_matmuls)
        state, best = settle(search(call.program, params, inputs), mesh)
        return _result(call, state, to_host(best), prompt_tokens)
    return _run_host_scored(call, params, inputs, _bucketed(prompts, call.n_prompts), w_host, prompt_tokens)


def check_memory(program: Program, params: Members, inputs: Inputs) -> None:
    """Refuses, in one line, a search whose decode state alone exceeds the memory free where it would run (the
    weights are placed already). Without it such a search compiles and is then killed by the OS on CPU, with no
    message, or fails with a long allocation error on an accelerator. The state — every member's KV caches and
    outputs, the rows' tokens and scores — is sized from shapes (nothing is allocated); it is a lower bound of
    what the search needs, so only searches that cannot fit are refused."""
    need = _state_bytes(program, params, inputs)
    devices = program.mesh.devices.flat if program.mesh is not None else jax.tree.leaves(params)[0].devices()
    free = free_memory_bytes(devices)
    if free is not None and need > free:
        raise InputError(
            f"this search needs at least {_size(need)} for its decode state ({inputs.seeds.shape[0]} prompts x "
            f"{program.width} rows, {program.n_steps} new tokens, {len(program.graphdefs)} models' KV caches) but "
            f"{_size(free)} is free; decode fewer prompts per call, fewer beams or candidates, or fewer new tokens")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@functools.lru_cache(maxsize=64)
def _state_bytes_cached(program: Program, treedef, leaves: tuple) -> int:
    params, inputs = jax.tree.unflatten(treedef, list(leaves))
    state = jax.eval_shape(lambda p, i: init_state(program, p, i), params, inputs)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _state_bytes(program: Program, params, inputs) -> int:
    """Bytes of the search's decode state, from the shapes of its weights and inputs (arrays or shapes; traced
    once per program and shapes)."""
    leaves, treedef = jax.tree.flatten(_shapes((params, inputs)))
    return _state_bytes_cached(program, treedef, tuple(leaves))


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """One validated call of `generate`: the hashable `program` that keys compilation, the members it runs, and
    what the host needs around it (guides scored on the host, stop strings for trimming, the tokenizer)."""

    program: Program
    models: Members  # Model per in-graph member
    templates: Members  # str per in-graph member
    guidance: Guidance  # as given, minus unused guides: the weights and the host-scored guides come from here
    host_kind: str | None  # the chunk-level kind scored on the host (guides of another tokenizer), or None
    n_real: int  # prompts as given
    n_prompts: int  # prompts the program runs: n_real bucketed (`prompt_bucket`), copies of the first after them
    stop_strings: tuple[str, ...]
    stops: Stops  # host arrays
    tokenizer: Any  # the base's


def plan(base: Model, prompts, guidance: Guidance | None = None, search: Search | None = None,
         sampling: Sampling | None = None, max_new_tokens: int = 50, stop_strings: Sequence[str] = (),
         stop_ids: Sequence[int] | None = None, mesh=None, compaction: int = 0, unroll_layers: bool = False) -> Plan:
    """Every check of a call, before anything compiles -> its `Plan`."""
    require_count(compaction, "compaction", "halvings of the batch as rows finish")
    sampling = sampling or Sampling()
    search = search or Search()
    models, templates, guidance, host_kind, in_graph = _settle(base, prompts, guidance, search, max_new_tokens)
    chunks, length = n_chunks(search, max_new_tokens)
    stops = build_stops(base.tokenizer, stop_strings, base.config.eos_token_ids if stop_ids is None else stop_ids,
                        base.config.vocab_size, check_ids=stop_ids is not None)
    n_prompts = prompt_bucket(len(prompts))
    encoded = list(_encode_members(models, templates, _bucketed(prompts, n_prompts), chunks * length, _pad_id(base)))
    program = Program(
        graphdefs=models.map(lambda m: m.graphdef), token=in_graph.token, chunk=in_graph.chunk,
        beams=search.beams, candidates=search.candidates, chunk_length=length, n_chunks=chunks,
        max_new_tokens=max_new_tokens, sampling=sampling, pad_id=_pad_id(base), n_stop_strings=stops.n_strings,
        mesh=mesh, trunks=shared_trunks(models, encoded), compaction=compaction, unroll_layers=bool(unroll_layers))
    return Plan(program=program, models=models, templates=templates, guidance=guidance, host_kind=host_kind,
                n_real=len(prompts), n_prompts=n_prompts, stop_strings=tuple(stop_strings), stops=stops,
                tokenizer=base.tokenizer)


def _pad_id(base: Model) -> int:
    return base.config.pad_token_id if base.config.pad_token_id is not None else 0


def _settle(base: Model, prompts, guidance: Guidance | None, search: Search, max_new_tokens: int):
    """Validated settings -> (Model per in-graph member, template per member, the guidance as given minus unused
    guides, the chunk-level kind scored on the host or None, the guidance the program runs). Needs configs and
    tokenizers only."""
    guidance = guidance or Guidance()
    validate(base, guidance, search, max_new_tokens)
    guidance = _used_guides(guidance)
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise InputError("prompts must be a non-empty list of strings or of token-id lists")
    # Chunk-level guides of another tokenizer are scored on the host between chunks; the program runs the rest.
    host_kind = host_scored_kind(base, guidance)
    in_graph = _in_graph(guidance, host_kind)
    explicit = in_graph.explicit
    models = Members(base, tuple(g.tuned for g in in_graph.implicit), tuple(g.reference for g in in_graph.implicit),
                     explicit.value if explicit is not None else None)
    templates = Members(in_graph.base_template, tuple(g.templates[0] for g in in_graph.implicit),
                        tuple(g.templates[1] for g in in_graph.implicit),
                        explicit.template if explicit is not None else None)
    return models, templates, guidance, host_kind, in_graph


def _in_graph(guidance: Guidance, host_kind: str | None) -> Guidance:
    """The part of the guidance the compiled program runs: without the host-scored chunk-level guides."""
    if host_kind is None:
        return guidance
    return dataclasses.replace(
        guidance, chunk="none", implicit=() if host_kind == "implicit" else guidance.implicit,
        explicit=None if host_kind == "explicit" else guidance.explicit)


def _bucketed(prompts, n_prompts: int) -> list:
    """The prompts padded to `n_prompts` (`Plan.n_prompts`) with copies of the first, so batches of nearby sizes
    share one program (the copies' results are dropped)."""
    return list(prompts) + [prompts[0]] * (n_prompts - len(prompts))


def encode_inputs(call: Plan, prompts, seed=0, implicit_weights=None, explicit_weight=None):
    """-> (`Inputs` on the devices, prompt tokens per real prompt [P_real] summed over members, the host-scored
    implicit guides' weights [P, G_host] or None)."""
    mesh, n_real = call.program.mesh, call.n_real
    n_prompts = call.n_prompts
    ids, masks, prompt_tokens = [], [], np.zeros(n_real, np.int64)
    for i, k in _encode_members(call.models, call.templates, _bucketed(prompts, n_prompts), call.program.n_steps,
                                call.program.pad_id):
        prompt_tokens += k[:n_real].sum(1)
        ids.append(put(i, ("batch", None), mesh))
        masks.append(put(k, ("batch", None), mesh))
    guidance = call.guidance
    w_imp = _implicit_weights(guidance.implicit, implicit_weights, n_real)
    if guidance.chunk == "implicit" and not np.all((w_imp > 0).any(axis=1)):
        p = int(np.argmin((w_imp > 0).any(axis=1)))
        raise InputError(f"prompt {p}: every implicit guide weight is <= 0 ({w_imp[p].tolist()}), so its implicit "
                         "chunk scores Σ w_i·(log π_tuned − log π_ref) are constant or inverted; give a guide a "
                         "positive weight or use another chunk-level mode")
    w_host = None
    if call.host_kind == "implicit":
        w_host, w_imp = _pad_rows(w_imp, n_prompts), np.zeros((n_real, 0), np.float32)
    explicit = call.models.value is not None
    w_exp = per_prompt_weights(
        explicit_weight if explicit_weight is not None else (guidance.explicit.weight if explicit else 0.0),
        n_real, "explicit weight")
    g, v = call.models.n_implicit, call.models.has_value
    inputs = Inputs(
        ids=Members.of(ids, g, v), masks=Members.of(masks, g, v),
        w_implicit=put(_pad_rows(w_imp, n_prompts), ("batch", None), mesh),
        w_explicit=put(_pad_rows(w_exp, n_prompts), ("batch",), mesh),
        seeds=put(_pad_rows(_prompt_seeds(seed, n_real), n_prompts), ("batch", None), mesh),
        stops=jax.tree.map(lambda a: put(a, (None,) * a.ndim, mesh), call.stops))
    return inputs, prompt_tokens, w_host


def placed_params(call: Plan) -> Members:
    """Each member's weights, placed on the program's mesh (shardings derived once per config and mesh)."""
    mesh = call.program.mesh
    return call.models.map(lambda m: (shard_params(m, mesh) if mesh is not None else m).params)


def _encode_members(models: Members, templates: Members, prompts, new_tokens: int, pad_id: int):
    """Yields each member's (ids, mask) [P, T_m] of the prompts under its own template, checking that every id is
    in its vocabulary and that prompt + `new_tokens` fits its context. Needs tokenizers and configs only."""
    for m, template in zip(models, templates):
        if template != "{prompt}" and not isinstance(prompts[0], str):
            raise InputError(f"templates apply to string prompts; token-id prompts need template '{{prompt}}' "
                             f"(got {template!r})")
        ids, mask = encode(m.tokenizer, prompts, template, pad_id=pad_id, vocab_size=m.config.vocab_size)
        limit = m.config.max_positions
        if ids.shape[1] + new_tokens > limit:
            longest = int(np.argmax(mask.sum(1)))
            raise InputError(f"prompt {longest} ({ids.shape[1]} tokens after bucketing) + {new_tokens} new tokens "
                             f"exceed the context of {m.source} ({limit} positions); shorten the prompt or the "
                             "budget")
        yield ids, mask


def preflight(base: Model, prompts, guidance: Guidance | None = None, search: Search | None = None,
              max_new_tokens: int = 50) -> None:
    """Every check `generate` makes before compiling — settings, templates, vocabularies, prompt ids and lengths
    against each model's context — on models that need only configs and tokenizers (`ivg_jax.loading.
    inspect_model`), so a job refuses bad input before it loads any weights."""
    search = search or Search()
    models, templates, *_ = _settle(base, prompts, guidance, search, max_new_tokens)
    chunks, length = n_chunks(search, max_new_tokens)
    for _ in _encode_members(models, templates, list(prompts), chunks * length, _pad_id(base)):
        pass


def _implicit_weights(guides, override, n_real: int) -> np.ndarray:
    """[P, n_guides] from the guides' own weights, or from `implicit_weights` ([n_guides] or [P, n_guides])."""
    n = len(guides)
    if override is None:
        if not n:
            return np.zeros((n_real, 0), np.float32)
        return np.stack([per_prompt_weights(g.weight, n_real, f"implicit guide {i} weight")
                         for i, g in enumerate(guides)], axis=1)
    w = np.asarray(override, np.float32)
    w = np.broadcast_to(w, (n_real, n)) if w.ndim == 1 else w
    if w.shape != (n_real, n) or not np.all(np.isfinite(w)):
        raise InputError(f"implicit_weights must be finite with shape [{n}] or [{n_real}, {n}]; "
                         f"got {np.shape(override)}")
    return w


def _run_host_scored(call: Plan, params: Members, inputs: Inputs, prompts: list, w_host, prompt_tokens):
    """The search whose chunk-level guides have another tokenizer -> its `Generation` (their forward tokens
    included)."""
    program, guidance = call.program, call.guidance
    if call.host_kind == "implicit":
        g = guidance.implicit
        scorer = HostChunkScorer("implicit", [m for x in g for m in (x.tuned, x.reference)], w_host,
                                 g[0].template, prompts, program.width, program.n_steps)
    else:
        e = guidance.explicit
        scorer = HostChunkScorer("explicit", [e.value], np.zeros((len(prompts), 0)), e.template, prompts,
                                 program.width, program.n_steps)
    state, scores = _host_scored_search(program, params, inputs, scorer, call.tokenizer)
    best = to_host(_best_rows(program, jnp.where(state.duplicate, -jnp.inf, jnp.asarray(scores))))
    result = _result(call, state, best, prompt_tokens, scores=scores)
    result.forward_tokens += scorer.forward_tokens  # includes the dummy rows of the bucket: an upper bound
    result.forward_tokens_per_prompt += scorer.forward_tokens / call.n_real  # host scoring is shared evenly
    return result


def _host_scored_search(program: Program, params: Members, inputs: Inputs, scorer: HostChunkScorer, tokenizer):
    """The chunk loop on the host: a compiled chunk, the rows' text re-scored by the scorer (its caches roll
    forward incrementally), a compiled selection with those scores, the scorer's rows reordered to match.
    -> (final state, the last chunk's scores [R])."""
    state = settle(init_state(program, params, inputs), program.mesh)
    scores = None
    for c in range(program.n_chunks):
        state = settle(run_chunk(program, params, inputs, state), program.mesh)
        tokens, lengths, done = to_host(state.tokens), to_host(state.lengths), to_host(state.done)
        ended = done & np.isin(tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)], tokenizer.all_special_ids)
        texts = [tokenizer.decode(t[:n], skip_special_tokens=True) for t, n in zip(tokens, lengths)]
        scores = scorer.score(texts, ended)
        if c + 1 == program.n_chunks or done.all():
            break
        state, rows = settle(select(program, state, jnp.asarray(scores)), program.mesh)
        scorer.reorder(to_host(rows))
    return state, scores


def prompt_bucket(n: int) -> int:
    """Prompt-count bucket: powers of two up to 8, then multiples of 8."""
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)]) if n > len(x) else x


def _result(call: Plan, state: DecodeState, best: np.ndarray, prompt_tokens: np.ndarray,
            scores: np.ndarray | None = None) -> Generation:
    """The final state on the host -> a `Generation` of the real prompts. best: [P] chosen row per prompt."""
    program, n_real, tokenizer = call.program, call.n_real, call.tokenizer
    best = best[:n_real]
    host = {k: to_host(v) for k, v in dict(
        tokens=state.tokens, lengths=state.lengths, log_ratio=state.log_ratio, kl=state.kl,
        scores=settle(chunk_scores(program, state) if scores is None else jnp.where(state.duplicate, -jnp.inf,
                                                                                    scores), program.mesh),
        done=state.done, duplicate=state.duplicate, work=state.work).items()}
    tokens = host["tokens"][best, :program.max_new_tokens]
    lengths = host["lengths"][best]
    per_prompt = prompt_tokens + host["work"][:n_real].astype(np.int64) * len(call.models)
    texts = None
    if tokenizer is not None:
        texts = [trim(tokenizer.decode(t[:n], skip_special_tokens=True), call.stop_strings)
                 for t, n in zip(tokens, lengths)]
    return Generation(
        tokens=tokens, lengths=lengths, texts=texts, scores=host["scores"][best],
        log_ratio=host["log_ratio"][best, :program.max_new_tokens], kl=host["kl"][best, :program.max_new_tokens],
        forward_tokens=int(per_prompt.sum()), forward_tokens_per_prompt=per_prompt.astype(np.float64),
        rows={k: host[k][:n_real * program.width] for k in ("tokens", "lengths", "scores", "done", "duplicate")})
