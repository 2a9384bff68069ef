"""The IVG decoding engine: the base and every guide in one compiled program (spec §2-§3).

Rows are prompts × W beams × K candidates, row r = p·W·K + slot. One jitted function does everything:
prefill each model once per prompt with its own template and broadcast its cache to the W·K rows; then a
`lax.while_loop` over chunks, each a `lax.scan` over L token steps followed (between chunks) by a per-prompt
top-W over the W·K rows and one gather that reorders every model's cache, the tokens and the scores. No host
round trip until the result.

One token step: every model's next-token output is already in the state; the guided log-probabilities are
the base's plus the token-level value (Σ wᵢ(log π_tunedᵢ − log π_refᵢ) or w·S); sample; the chunk scores are
updated from the same numbers (implicit: the sampled token's weighted log-ratio; explicit: S at the sampled
token); then every model is fed the token. Rows that finished are frozen: they emit padding, their scores
stop changing, and their tiled copies are marked duplicates that selection never picks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ivg_jax.decoding.prompts import encode
from ivg_jax.decoding.retokenize import HostChunkScorer
from ivg_jax.decoding.sampling import Sampling, sample, step_keys
from ivg_jax.decoding.stops import Stops, advance, build_stops, trim
from ivg_jax.errors import InputError
from ivg_jax.guidance import Guidance, Search, host_scored_kind, n_chunks, per_prompt_weights, validate
from ivg_jax.model.api import Model
from ivg_jax.model.cache import KVCache
from ivg_jax.model.transformer import extend, prefill
from ivg_jax.sharding import constrain, put, shard_params, to_host


@dataclasses.dataclass(frozen=True)
class Program:
    """Static structure of one compiled decode program (hashable: the jit cache key)."""

    graphdefs: tuple  # base, (tuned_i, reference_i)*, value?
    n_implicit: int
    has_value: bool
    token: str
    chunk: str
    beams: int
    candidates: int
    chunk_length: int
    n_chunks: int
    max_new_tokens: int
    sampling: Sampling
    pad_id: int
    n_stop_strings: int = 0  # S: one match state per row per stop string
    mesh: Any = None  # jax.sharding.Mesh: rows over "data", weights and KV heads over "model"

    @property
    def width(self) -> int:  # W·K rows per prompt
        return self.beams * self.candidates

    @property
    def n_steps(self) -> int:
        return self.n_chunks * self.chunk_length

    def implicit_members(self) -> list[tuple[int, int]]:
        return [(1 + 2 * i, 2 + 2 * i) for i in range(self.n_implicit)]

    @property
    def value_member(self) -> int:
        return 1 + 2 * self.n_implicit


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    tokens: jax.Array  # [R, N] int32 generated ids, pad after a row's end
    caches: tuple  # one KVCache per model, rows R
    outputs: tuple  # one [R, V] float32 per model: next-token logits (token values S for the value model)
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
    cache = lambda c: KVCache(k=constrain(c.k, (None, "batch", "kv_heads", None, None), mesh),  # noqa: E731
                              v=constrain(c.v, (None, "batch", "kv_heads", None, None), mesh),
                              pos=rows(c.pos), index=c.index)
    return _map_rows(state, rows, cache, HYPOTHESIS_FIELDS + ("keys",))


# Per-row fields that belong to a hypothesis and move with it when beams are reordered. `keys` is per row too,
# but belongs to the slot: children of one parent must keep drawing different samples.
HYPOTHESIS_FIELDS = ("tokens", "implicit_score", "value", "done", "stop_state", "duplicate", "lengths", "log_ratio",
                     "kl")


def _map_rows(state: DecodeState, fn, cache_fn, fields: tuple[str, ...]) -> DecodeState:
    """Applies `fn` to the named row-axis fields and every model's output, `cache_fn` to every model's cache."""
    return dataclasses.replace(state, caches=tuple(cache_fn(c) for c in state.caches),
                               outputs=tuple(fn(o) for o in state.outputs),
                               **{f: fn(getattr(state, f)) for f in fields})


def _log_softmax(x):
    return jax.nn.log_softmax(x.astype(jnp.float32), axis=-1)


def _guided_logprobs(program: Program, outputs, w_implicit, w_explicit):
    """[R, V] base log-probs + token-level value, and the [R, V] per-token weighted implicit log-ratio."""
    base = _log_softmax(outputs[0])
    ratio = None
    if program.n_implicit:
        ratio = sum(w_implicit[:, i, None] * (_log_softmax(outputs[t]) - _log_softmax(outputs[r]))
                    for i, (t, r) in enumerate(program.implicit_members()))
    guided = base
    if program.token == "implicit":
        guided = base + ratio
    elif program.token == "explicit":
        guided = base + w_explicit[:, None] * outputs[program.value_member]
    return base, guided, ratio


def _token_step(program: Program, params, w_implicit, w_explicit, stops: Stops, state: DecodeState) -> DecodeState:
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
    if program.has_value:
        value = jnp.where(active, at_token(state.outputs[program.value_member]), value)
    temperature = program.sampling.temperature or 1.0
    guided_t = _log_softmax(guided / temperature)
    base_t = _log_softmax(base / temperature)
    log_ratio = jnp.where(active, at_token(guided_t) - at_token(base_t), 0.0)
    kl = jnp.where(active, jnp.sum(jnp.exp(guided_t) * (guided_t - base_t), axis=-1), 0.0)

    outputs, caches = [], []
    for graphdef, p, cache in zip(program.graphdefs, params, state.caches):
        out, cache = extend(graphdef, p, token[:, None], active[:, None], cache)
        outputs.append(out[:, 0])
        caches.append(cache)
    stop_state, stopped = advance(stops, state.stop_state, token, active)
    col = state.step  # < n_steps, the width of the token buffer, by construction of the loops
    return dataclasses.replace(
        state,
        tokens=state.tokens.at[:, col].set(jnp.where(active, token, state.tokens[:, col])),
        caches=tuple(caches),
        outputs=tuple(jnp.where(active[:, None], o, old) for o, old in zip(outputs, state.outputs)),
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
    return _map_rows(state, take, lambda c: c.take(rows), HYPOTHESIS_FIELDS)


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


def _init_state(program: Program, params, prompt_ids, prompt_masks, prompt_seeds) -> DecodeState:
    """Prefill every model once per prompt (own template) and broadcast to the prompt's W·K rows."""
    width = program.width
    n_prompts = prompt_seeds.shape[0]
    prompt_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s[0]), s[1]))(prompt_seeds)
    rows = jnp.repeat(jnp.arange(n_prompts), width)
    caches, outputs = [], []
    for graphdef, p, ids, mask in zip(program.graphdefs, params, prompt_ids, prompt_masks):
        out, cache = prefill(graphdef, p, ids, mask, capacity=ids.shape[1] + program.n_steps, last_only=True)
        caches.append(cache.take(rows))  # prefill once per prompt, broadcast to its W·K rows
        outputs.append(jnp.take(out, rows, axis=0))
    slot = jnp.tile(jnp.arange(width), n_prompts)
    keys = jax.vmap(jax.random.fold_in)(jnp.take(prompt_keys, rows), slot)
    n_rows = n_prompts * width
    zeros = jnp.zeros(n_rows, jnp.float32)
    state = DecodeState(
        tokens=jnp.full((n_rows, program.n_steps), program.pad_id, jnp.int32), caches=tuple(caches),
        outputs=tuple(outputs), implicit_score=zeros, value=zeros, done=jnp.zeros(n_rows, bool),
        stop_state=jnp.zeros((n_rows, program.n_stop_strings), jnp.int32),
        duplicate=jnp.zeros(n_rows, bool), lengths=jnp.zeros(n_rows, jnp.int32),
        log_ratio=jnp.zeros((n_rows, program.n_steps)), kl=jnp.zeros((n_rows, program.n_steps)), keys=keys,
        step=jnp.zeros((), jnp.int32), chunk=jnp.zeros((), jnp.int32), work=jnp.zeros(n_prompts, jnp.int32))
    return _constrain_rows(program, state)


def _run_chunk(program: Program, params, w_implicit, w_explicit, stops: Stops, state: DecodeState) -> DecodeState:
    """L token steps. w_implicit [P, n_implicit], w_explicit [P] are expanded to the prompt's rows."""
    rows = jnp.repeat(jnp.arange(w_explicit.shape[0]), program.width)
    step = functools.partial(_token_step, program, params, jnp.take(w_implicit, rows, axis=0),
                             jnp.take(w_explicit, rows, axis=0), stops)
    state, _ = jax.lax.scan(lambda s, _: (step(s), None), state, None, length=program.chunk_length)
    return state


def _best_rows(program: Program, scores: jax.Array) -> jax.Array:
    n_prompts = scores.shape[0] // program.width
    return jnp.arange(n_prompts) * program.width + jnp.argmax(scores.reshape(n_prompts, program.width), axis=1)


@functools.partial(jax.jit, static_argnames=("program",))
def run(program: Program, params, prompt_ids, prompt_masks, w_implicit, w_explicit, prompt_seeds, stops: Stops):
    """The whole search. prompt_ids/masks: one [P, T_m] pair per model (own template); w_implicit [P, n_implicit];
    w_explicit [P]; prompt_seeds [P, 2] (seed, index): prompt p's key is fold_in(key(seed), index).
    Returns the final `DecodeState` (rows R = P·W·K) and the best row per prompt [P]."""
    chunk = functools.partial(_run_chunk, program, params, w_implicit, w_explicit, stops)
    state = chunk(_init_state(program, params, prompt_ids, prompt_masks, prompt_seeds))
    state = jax.lax.while_loop(
        lambda s: (s.chunk + 1 < program.n_chunks) & ~jnp.all(s.done),
        lambda s: chunk(_select(program, s)[0]), state)
    return state, _best_rows(program, chunk_scores(program, state))


# The same pieces, compiled separately, for searches whose chunk scores come from the host between chunks
# (chunk-level guides with another tokenizer, `ivg_jax.decoding.retokenize`).
init_state = jax.jit(_init_state, static_argnames=("program",))
run_chunk = jax.jit(_run_chunk, static_argnames=("program",), donate_argnames=("state",))
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


def _members(base: Model, guidance: Guidance) -> list[tuple[Model, str]]:
    members = [(base, guidance.base_template)]
    for g in guidance.implicit:
        members += [(g.tuned, g.templates[0]), (g.reference, g.templates[1])]
    if guidance.explicit is not None:
        members.append((guidance.explicit.value, guidance.explicit.template))
    return members


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
             mesh=None) -> Generation:
    """Guided generation for a batch of prompts (strings or token-id lists).

    `seed`: an int, or one int per prompt (a prompt's result then depends only on its own seed, whatever else is
    in the batch). `implicit_weights`: overrides the guides' weights, shape [n_guides] or [P, n_guides];
    `explicit_weight`: scalar or [P]. Weights are data: new values reuse the compiled program.
    `mesh`: a ("data", "model") mesh (`ivg_jax.sharding.make_mesh`); rows are split over data, every model's
    weights and KV heads over model (docs/sharding.md).
    """
    sampling = sampling or Sampling()
    search = search or Search()
    guidance, host_guidance, host_kind = _plan(base, prompts, guidance, search, max_new_tokens)
    n_real = len(prompts)
    n_prompts = prompt_bucket(n_real)
    # Dummy copies of the first prompt fill the bucket, so batches of nearby sizes share one program.
    prompts = list(prompts) + [prompts[0]] * (n_prompts - n_real)
    chunks, length = n_chunks(search, max_new_tokens)
    members = _members(base, guidance)
    pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    ids, masks, prompt_tokens = [], [], np.zeros(n_real, np.int64)
    for i, k in _encode_members(members, prompts, chunks * length, pad_id):
        prompt_tokens += k[:n_real].sum(1)
        ids.append(put(i, ("batch", None), mesh))
        masks.append(put(k, ("batch", None), mesh))
    n_implicit = len(guidance.implicit)
    w_imp = _implicit_weights(host_guidance.implicit, implicit_weights, n_real)
    if host_guidance.chunk == "implicit" and not np.all((w_imp > 0).any(axis=1)):
        p = int(np.argmin((w_imp > 0).any(axis=1)))
        raise InputError(f"prompt {p}: every implicit guide weight is <= 0 ({w_imp[p].tolist()}), so its implicit "
                         "chunk scores Σ w_i·(log π_tuned − log π_ref) are constant or inverted; give a guide a "
                         "positive weight or use another chunk-level mode")
    if host_kind == "implicit":
        w_host, w_imp = _pad_rows(w_imp, n_prompts), np.zeros((n_real, 0), np.float32)
    w_exp = per_prompt_weights(
        explicit_weight if explicit_weight is not None else
        (guidance.explicit.weight if guidance.explicit is not None else 0.0), n_real, "explicit weight")
    w_imp = _pad_rows(w_imp, n_prompts)
    w_exp = _pad_rows(w_exp, n_prompts)
    seeds = _pad_rows(_prompt_seeds(seed, n_real), n_prompts)
    stops = build_stops(base.tokenizer, stop_strings, base.config.eos_token_ids if stop_ids is None else stop_ids,
                        base.config.vocab_size)
    program = Program(
        graphdefs=tuple(m.graphdef for m, _ in members), n_implicit=n_implicit,
        has_value=guidance.explicit is not None, token=guidance.token, chunk=guidance.chunk,
        beams=search.beams, candidates=search.candidates, chunk_length=length, n_chunks=chunks,
        max_new_tokens=max_new_tokens, sampling=sampling, pad_id=pad_id, n_stop_strings=stops.n_strings, mesh=mesh)
    params = tuple((shard_params(m, mesh) if mesh is not None else m).params for m, _ in members)
    args = (program, params, tuple(ids), tuple(masks), put(w_imp, ("batch", None), mesh),
            put(w_exp, ("batch",), mesh), put(seeds, ("batch", None), mesh),
            jax.tree.map(lambda a: put(a, (None,) * a.ndim, mesh), stops))
    if host_kind is None:
        state, best = run(*args)
        return _result(program, state, to_host(best)[:n_real], base.tokenizer, stop_strings, len(members),
                       prompt_tokens, n_real)
    if host_kind == "implicit":
        g = host_guidance.implicit
        scorer = HostChunkScorer("implicit", [m for x in g for m in (x.tuned, x.reference)], w_host,
                                 g[0].template, prompts, program.width, program.n_steps)
    else:
        e = host_guidance.explicit
        scorer = HostChunkScorer("explicit", [e.value], np.zeros((n_prompts, 0)), e.template, prompts,
                                 program.width, program.n_steps)
    state, scores = _host_scored_search(args, scorer, base.tokenizer)
    best = to_host(_best_rows(program, jnp.where(state.duplicate, -jnp.inf, jnp.asarray(scores))))
    result = _result(program, state, best[:n_real], base.tokenizer, stop_strings, len(members), prompt_tokens,
                     n_real, scores=scores)
    result.forward_tokens += scorer.forward_tokens  # includes the dummy rows of the bucket: an upper bound
    result.forward_tokens_per_prompt += scorer.forward_tokens / n_real  # host scoring is shared evenly
    return result


def _encode_members(members: list[tuple[Model, str]], prompts, new_tokens: int, pad_id: int):
    """Yields each model's (ids, mask) [B, T_m] of the prompts under its own template, checking that every id is in
    its vocabulary and that prompt + `new_tokens` fits its context. Needs tokenizers and configs only."""
    for m, template in members:
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


def _plan(base: Model, prompts, guidance: Guidance | None, search: Search, max_new_tokens: int):
    """Validated settings -> (guidance the compiled program runs, guidance as given minus unused guides, the
    chunk-level kind scored on the host or None)."""
    guidance = guidance or Guidance()
    validate(base, guidance, search, max_new_tokens)
    guidance = _used_guides(guidance)
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise InputError("prompts must be a non-empty list of strings or of token-id lists")
    # Chunk-level guides of another tokenizer are scored on the host between chunks; the program runs the rest.
    host_kind = host_scored_kind(base, guidance)
    in_graph = guidance
    if host_kind is not None:
        in_graph = dataclasses.replace(
            guidance, chunk="none", implicit=() if host_kind == "implicit" else guidance.implicit,
            explicit=None if host_kind == "explicit" else guidance.explicit)
    return in_graph, guidance, host_kind


def preflight(base: Model, prompts, guidance: Guidance | None = None, search: Search | None = None,
              max_new_tokens: int = 50) -> None:
    """Every check `generate` makes before compiling — settings, templates, vocabularies, prompt ids and lengths
    against each model's context — on models that need only configs and tokenizers (`ivg_jax.loading.
    inspect_model`), so a job refuses bad input before it loads any weights."""
    search = search or Search()
    guidance, _, _ = _plan(base, prompts, guidance, search, max_new_tokens)
    chunks, length = n_chunks(search, max_new_tokens)
    pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    for _ in _encode_members(_members(base, guidance), list(prompts), chunks * length, pad_id):
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


def _host_scored_search(args, scorer, tokenizer):
    """The chunk loop on the host: a compiled chunk, the rows' text re-scored by the scorer (its caches roll
    forward incrementally), a compiled selection with those scores, the scorer's rows reordered to match."""
    program, params, ids, masks, w_imp, w_exp, seeds, stops = args
    state = init_state(program, params, ids, masks, seeds)
    scores = None
    for c in range(program.n_chunks):
        state = run_chunk(program, params, w_imp, w_exp, stops, state)
        tokens, lengths, done = to_host(state.tokens), to_host(state.lengths), to_host(state.done)
        ended = done & np.isin(tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)], tokenizer.all_special_ids)
        texts = [tokenizer.decode(t[:n], skip_special_tokens=True) for t, n in zip(tokens, lengths)]
        scores = scorer.score(texts, ended)
        if c + 1 == program.n_chunks or done.all():
            break
        state, rows = select(program, state, jnp.asarray(scores))
        scorer.reorder(to_host(rows))
    return state, scores


def prompt_bucket(n: int) -> int:
    """Prompt-count bucket: powers of two up to 8, then multiples of 8."""
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)]) if n > len(x) else x


def _result(program: Program, state: DecodeState, best: np.ndarray, tokenizer, stop_strings, n_models: int,
            prompt_tokens: np.ndarray, n_real: int, scores: np.ndarray | None = None) -> Generation:
    host = {k: to_host(v) for k, v in dict(
        tokens=state.tokens, lengths=state.lengths, log_ratio=state.log_ratio, kl=state.kl,
        scores=chunk_scores(program, state) if scores is None else jnp.where(state.duplicate, -jnp.inf, scores),
        done=state.done, duplicate=state.duplicate, work=state.work).items()}
    tokens = host["tokens"][best, :program.max_new_tokens]
    lengths = host["lengths"][best]
    per_prompt = prompt_tokens + host["work"][:n_real].astype(np.int64) * n_models
    texts = None
    if tokenizer is not None:
        texts = [trim(tokenizer.decode(t[:n], skip_special_tokens=True), stop_strings)
                 for t, n in zip(tokens, lengths)]
    return Generation(
        tokens=tokens, lengths=lengths, texts=texts, scores=host["scores"][best],
        log_ratio=host["log_ratio"][best, :program.max_new_tokens], kl=host["kl"][best, :program.max_new_tokens],
        forward_tokens=int(per_prompt.sum()), forward_tokens_per_prompt=per_prompt.astype(np.float64),
        rows={k: host[k][:n_real * program.width] for k in ("tokens", "lengths", "scores", "done", "duplicate")})
