"""Process settings the entry points opt into (`ivg_jax.runtime`): a flag the user set in XLA_FLAGS wins."""

import os

from ivg_jax.runtime import CPU_FLAGS, tune_cpu, with_xla_flags


def test_flags_are_added_unless_the_user_named_them():
    assert with_xla_flags("", ["--xla_a=1", "--xla_b=true"]) == "--xla_a=1 --xla_b=true"
    # The user's value wins, whichever form it takes (with a value or a bare boolean flag).
    assert with_xla_flags("--xla_a=7", ["--xla_a=1", "--xla_b=true"]) == "--xla_a=7 --xla_b=true"
    assert with_xla_flags("--xla_b", ["--xla_b=true"]) == "--xla_b"
    assert with_xla_flags("  --xla_a=7  ", ["--xla_a=1"]) == "  --xla_a=7  "


def test_flags_are_matched_by_whole_name_not_by_substring():
    # A longer flag that starts with the same words, or a value that spells a flag name, does not hide ours.
    assert with_xla_flags("--xla_cpu_use_xnnpack_extra=1", ["--xla_cpu_use_xnnpack=true"]) == (
        "--xla_cpu_use_xnnpack_extra=1 --xla_cpu_use_xnnpack=true")
    assert with_xla_flags("--xla_dump_to=/tmp/--xla_a", ["--xla_a=1"]) == "--xla_dump_to=/tmp/--xla_a --xla_a=1"


def test_tune_cpu_keeps_what_the_user_set(monkeypatch):
    name = CPU_FLAGS[0].split("=")[0]
    monkeypatch.setenv("XLA_FLAGS", f"{name}=false --xla_other=3")
    tune_cpu()
    assert os.environ["XLA_FLAGS"] == f"{name}=false --xla_other=3"
    monkeypatch.delenv("XLA_FLAGS")
    tune_cpu()
    assert os.environ["XLA_FLAGS"] == " ".join(CPU_FLAGS)
