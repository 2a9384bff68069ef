"""How the shipped movie-review openings were made (run once; the output files are committed).

IMDB itself cannot be downloaded here, so the openings are composed: each is a subject phrase (what the
reviewer starts from: the film, its parts, the viewing situation) followed by a short verb phrase, both drawn
from hand-written lists that mirror how IMDB reviews open — mostly neutral, some leaning positive or negative,
as real truncated reviews do. Every opening is 2-8 words, unique, and the split is a seeded shuffle:
400 train / 100 validation / 200 test. Then 4000 more train openings (another seed, none equal to an opening of
any split) follow the first 400 in train.txt: preference data at scale is what makes the guides generalise
(benchmarks/dpo_recipes.py), and a run with n_train <= 400 reads exactly the original ones.

    python ivg_jax/experiments/sentiment/prompts/make_prompts.py
"""

import os
import random

# (subject, grammatical person: "s" third singular, "p" plural / first person)
SUBJECTS = [(x, "s") for x in (
    "This movie", "The film", "This film", "The director", "The script", "The acting", "The plot", "The ending",
    "The first half", "The soundtrack", "The cast", "The lead actress", "The lead actor", "The villain",
    "The cinematography", "The dialogue", "The sequel", "The remake", "The original", "This documentary",
    "This horror flick", "This comedy", "This western", "This war film", "This thriller", "This cartoon",
    "The story", "The premise", "The trailer", "The opening scene", "The love story", "The title", "The music",
    "The pacing", "The editing", "The screenplay", "This adaptation", "The book", "The TV version",
    "The supporting cast", "Its star", "This low budget film", "This musical", "This animated feature",
    "The plot twist", "The second act", "The camera work", "This indie drama", "Her performance",
    "His performance", "The final scene", "This picture", "The whole thing", "This mess", "This gem",
)] + [(x, "p") for x in (
    "The special effects", "The costumes", "The child actors", "The last twenty minutes", "The songs",
    "The critics", "The characters", "The jokes", "The battle scenes", "The actors",
)]
VIEWERS = ["I", "We", "My wife and I", "My kids and I", "My friends and I", "My husband and I"]

# verb phrase (third singular form, plural form) -> tails that read naturally after it ("" = stop there)
PREDICATES = {
    ("was", "were"): ["", "a", "the", "not", "one of the", "so", "nothing like", "much better than",
                      "supposed to be", "far too", "easily the", "a real", "surprisingly", "the only"],
    ("is", "are"): ["", "a", "the", "not", "one of the", "so", "nothing like", "by far the", "what",
                    "easily the", "supposed to be", "a total", "simply"],
    ("starts with", "start with"): ["", "a", "the", "an old"],
    ("tries to", "try to"): ["", "be", "tell", "make"],
    ("reminds me of", "remind me of"): ["", "the", "a", "my"],
    ("made me", "made me"): ["", "want to", "think about", "laugh", "cry", "wish"],
    ("could have been", "could have been"): ["", "a", "so much", "great", "much"],
    ("had", "had"): ["", "a", "the", "no", "some", "so much", "me"],
    ("seems to", "seem to"): ["", "be", "think", "have"],
    ("feels like", "feel like"): ["", "a", "the", "an", "something"],
    ("never quite", "never quite"): ["", "works", "makes it", "comes together"],
    ("left me", "left me"): ["", "cold", "wanting", "speechless", "with"],
    ("has", "have"): ["a", "the", "no", "some", "its", "nothing", "everything"],
    ("turns out to be", "turn out to be"): ["", "a", "the", "one of the"],
    ("surprised me", "surprised me"): ["", "more than", "in", "because"],
    ("deserves", "deserve"): ["", "a", "better", "more", "every"],
    ("kept me", "kept me"): ["", "guessing", "awake", "on the edge", "watching"],
    ("does not", "do not"): ["", "work", "make sense", "deserve", "hold up"],
    ("is based on", "are based on"): ["", "a", "the", "an old"],
    ("opens with", "open with"): ["", "a", "the"],
    ("plays like", "play like"): ["", "a", "an"],
    ("manages to", "manage to"): ["", "be", "make", "turn"],
    ("goes on", "go on"): ["", "and on", "for", "far too long"],
    ("falls", "fall"): ["", "flat", "apart", "short of"],
    ("works", "work"): ["", "because", "well", "only"],
}
VIEWING = ["rented this because", "watched this on", "saw this at", "expected", "heard about this",
           "picked this up", "went to see this", "remember this from", "caught this on", "finally watched this",
           "really wanted to", "have seen this", "did not expect", "loved the book, so", "bought this on"]
VIEWING_TAILS = {"": 3, "a": 1, "the": 1, "last night": 1, "after": 1, "with": 1, "because": 1, "years ago": 1}


def _compose(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    """n unique openings, none in `exclude`, in draw order."""
    out, seen = [], set(exclude)
    tails = [t for t, w in VIEWING_TAILS.items() for _ in range(w)]
    while len(out) < n:
        if rng.random() < 0.2:
            text = " ".join(x for x in (rng.choice(VIEWERS), rng.choice(VIEWING), rng.choice(tails)) if x)
        else:
            (subject, person), (forms, after) = rng.choice(SUBJECTS), rng.choice(list(PREDICATES.items()))
            verb = forms[0] if person == "s" else forms[1]
            text = " ".join(x for x in (subject, verb, rng.choice(after)) if x)
        if 2 <= len(text.split()) <= 8 and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def openings(seed: int = 2409) -> list[str]:
    rng = random.Random(seed)
    out = _compose(rng, 700, set())
    rng.shuffle(out)
    return out


def extra_train_openings(existing: list[str], n: int = 4000, seed: int = 7) -> list[str]:
    return _compose(random.Random(seed), n, set(existing))


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    all_openings = openings()
    splits = {"train": all_openings[:400] + extra_train_openings(all_openings), "val": all_openings[400:500],
              "test": all_openings[500:700]}
    for name, rows in splits.items():
        with open(os.path.join(here, f"{name}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
        print(name, len(rows))
