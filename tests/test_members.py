"""`Members`: the models of a decode program by role, as a pytree."""

import jax
import jax.numpy as jnp
import pytest

from ivg_jax.decoding.members import Members


def test_iteration_order_and_its_inverse():
    m = Members("base", ("t0", "t1"), ("r0", "r1"), "value")
    assert list(m) == ["base", "t0", "r0", "t1", "r1", "value"] and len(m) == 6
    assert Members.of(list(m), 2, True) == m
    assert Members.of(["base"], 0, False) == Members("base")
    with pytest.raises(ValueError):
        Members.of(["base", "t0"], 1, False)
    with pytest.raises(ValueError):
        Members("base", ("t0",), ())


def test_map_aligns_roles_across_members():
    a = Members(1, (2,), (3,), 4)
    b = Members(10, (20,), (30,), 40)
    assert a.map(lambda x, y: x + y, b) == Members(11, (22,), (33,), 44)
    assert Members(1).map(str) == Members("1")  # an absent value model stays absent


def test_is_a_pytree_that_crosses_jit():
    m = Members(jnp.ones(2), (jnp.zeros(2),), (jnp.full(2, 3.0),))
    assert len(jax.tree.leaves(m)) == 3
    out = jax.jit(lambda x: x.map(lambda a: a * 2))(m)
    assert isinstance(out, Members) and out.value is None
    assert [float(x[0]) for x in out] == [2.0, 0.0, 6.0]
    assert hash(Members("g0", ("g1",), ("g2",))) == hash(Members("g0", ("g1",), ("g2",)))  # keys compilation
