"""The offline gold reward of the sentiment task: VADER's compound score on a logit-like scale.

VADER (a rule-based analyser shipped with its lexicon) gives compound ∈ [-1, 1]. Reading (1 + compound) / 2 as
the probability that the text is positive, the reward is its logit, log((1 + c) / (1 - c)) = 2·atanh(c), with c
clipped to ±0.99 — so the reward lies in [-5.29, 5.29], like a classifier's positive-minus-negative logit (the
paper's gold reward), and Bradley–Terry labels σ(r1 − r2) are as decisive as the paper's.
"""

from __future__ import annotations

import numpy as np

from ivg_jax.errors import InputError

CLIP = 0.99


class VaderReward:
    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise InputError("the sentiment gold reward needs vaderSentiment: pip install vaderSentiment==3.3.2") \
                from None
        self.analyzer = SentimentIntensityAnalyzer()

    def compound(self, texts) -> np.ndarray:
        return np.asarray([self.analyzer.polarity_scores(t)["compound"] for t in texts], np.float64)

    def __call__(self, texts) -> np.ndarray:
        return compound_to_logit(self.compound(texts))


def compound_to_logit(compound) -> np.ndarray:
    c = np.clip(np.asarray(compound, np.float64), -CLIP, CLIP)
    return np.log1p(c) - np.log1p(-c)
