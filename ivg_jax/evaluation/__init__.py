"""Evaluation: gold rewards, bootstrap intervals, fluency (base-model NLL), diversity (distinct-n)."""
