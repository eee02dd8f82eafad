"""Generated stand-ins for IMDB and TinyStories, for runs and demos without the real data.

The reviews carry their label in a few sentiment sentences hidden among neutral filler; some
of those sentences are negated ("was not great") and some contradict the label, so a model has
to weigh words in context rather than spot one keyword. A tiny model still learns them well in
a minute. The stories are short templated children's stories a tiny LM learns quickly.
Deterministic for a given seed (``random.Random``), pure Python.
"""
from __future__ import annotations

import random
from typing import Dict, List, Tuple

MIN_REVIEW_WORDS, MAX_REVIEW_WORDS = 20, 200
NEGATION_RATE = 0.25  # sentiment sentences that carry their meaning through "not"/"never"
CONTRADICTION_RATE = 0.3  # reviews with 3+ sentiment sentences where one disagrees

POSITIVE_ADJ = ("great wonderful brilliant moving superb excellent charming gripping delightful "
                "beautiful clever memorable touching funny stunning").split()
NEGATIVE_ADJ = ("awful terrible boring dull weak clumsy painful forgettable dreadful poor lazy "
                "tedious messy bland silly").split()
# (past, base) forms: "I loved X" / "I did not love X"
POSITIVE_VERB = (("loved", "love"), ("enjoyed", "enjoy"), ("adored", "adore"),
                 ("admired", "admire"), ("liked", "like"))
NEGATIVE_VERB = (("hated", "hate"), ("disliked", "dislike"), ("regretted", "regret"),
                 ("resented", "resent"), ("could not stand", "mind"))
ASPECTS = ("the acting", "the plot", "the soundtrack", "the direction", "the ending",
           "the camera work", "the dialogue", "the cast", "this film", "the pacing",
           "the script", "the lead performance", "the story")
INTENSIFIERS = ("", "", "", "very ", "really ", "truly ", "rather ", "quite ")
NAMES = ("Anna", "Marco", "Jules", "Priya", "Tom", "Elena", "Kofi", "Mei", "Omar", "Sara",
         "Lucas", "Ines", "Ravi", "Greta", "Hugo")
JOBS = ("detective", "teacher", "pilot", "farmer", "doctor", "painter", "soldier", "chef",
        "journalist", "student", "sailor", "lawyer")
PLACES = ("a small town", "Paris", "a space station", "the desert", "a boarding school",
          "New York", "a fishing village", "the mountains", "an old castle", "a big hospital")
PLOTS = ("searches for a lost brother", "tries to save a failing business",
         "falls in love with a stranger", "uncovers a secret about the family",
         "plans a daring escape", "returns home after many years",
         "fights to win a championship", "investigates a strange murder")
FILLER = (
    "The story follows {name}, a {job} who {plot}.",
    "It is set in {place} and runs for about {minutes} minutes.",
    "I watched it on a {day} evening with {who}.",
    "{name} plays the {job}, and {name2} plays the best friend.",
    "The film was released in {year} and was shot in {place}.",
    "Most of the scenes take place in {place}.",
    "There is a long scene where the {job} talks to {name2} about the past.",
    "I had read about it before and knew the director's earlier work.",
    "The second half moves to {place}, where {name} meets an old friend.",
    "It is based on a novel that I have not read.",
    "The running time is {minutes} minutes, with a short scene after the credits.",
    "My {who_short} picked it because of the poster.",
)
DAYS = "Monday Tuesday Friday Saturday Sunday rainy quiet".split()
WHO = ("my sister", "some friends", "my parents", "my partner", "a colleague", "nobody")


def sample_imdb(
    n_train: int = 2000, n_test: int = 500, seed: int = 0
) -> Dict[str, Tuple[List[str], List[int]]]:
    """``{"train": (texts, labels), "test": (texts, labels)}``, labels balanced, 1 = positive."""
    rng = random.Random(seed)
    return {"train": _reviews(rng, n_train), "test": _reviews(rng, n_test)}


def _reviews(rng: random.Random, n: int) -> Tuple[List[str], List[int]]:
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    return [_review(rng, label) for label in labels], labels


def _review(rng: random.Random, label: int) -> str:
    """Filler plus sentiment sentences (more in longer reviews); sometimes one of three or
    more sentiment sentences contradicts ``label``, never the majority."""
    target_words = rng.randint(MIN_REVIEW_WORDS, MAX_REVIEW_WORDS)
    n_sentiment = 1 + target_words // 50 + rng.randint(0, 1)  # 1-6
    n_against = 1 if n_sentiment >= 3 and rng.random() < CONTRADICTION_RATE else 0
    polarities = [label] * (n_sentiment - n_against) + [1 - label] * n_against
    sentences = [_sentiment_sentence(rng, p) for p in polarities]
    filler: List[str] = []
    while _word_count(sentences + filler) < target_words:
        filler.append(_filler_sentence(rng))
    while filler and _word_count(sentences + filler) > MAX_REVIEW_WORDS:
        filler.pop()
    for sentence in filler:
        sentences.insert(rng.randint(0, len(sentences)), sentence)
    return " ".join(sentences)


def _word_count(sentences: List[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def _sentiment_sentence(rng: random.Random, polarity: int) -> str:
    """A sentence whose meaning is ``polarity``, sometimes said through a negation."""
    negated = rng.random() < NEGATION_RATE
    positive_words = (polarity == 1) != negated
    adj = rng.choice(POSITIVE_ADJ if positive_words else NEGATIVE_ADJ)
    past, base = rng.choice(POSITIVE_VERB if positive_words else NEGATIVE_VERB)
    aspect = rng.choice(ASPECTS)
    intensity = rng.choice(INTENSIFIERS)
    form = rng.randrange(4)
    if form == 0:
        not_ = "not " if negated else ""
        return f"{aspect.capitalize()} was {not_}{intensity}{adj}."
    if form == 1:
        return f"I did not {base} {aspect}." if negated else f"I {past} {aspect}."
    if form == 2:
        never = "never " if negated else ""
        return f"I {never}found {aspect} {intensity}{adj}."
    would = "would not" if (polarity == 0) else "would"
    return f"Overall I {would} recommend it to anyone."


def _filler_sentence(rng: random.Random) -> str:
    return rng.choice(FILLER).format(
        name=rng.choice(NAMES), name2=rng.choice(NAMES), job=rng.choice(JOBS),
        place=rng.choice(PLACES), plot=rng.choice(PLOTS), minutes=rng.randint(80, 180),
        day=rng.choice(DAYS), who=rng.choice(WHO), who_short=rng.choice(("sister", "friend")),
        year=rng.randint(1950, 2023),
    )


STORY_NAMES = {"girl": ("Lily", "Mia", "Sue", "Anna", "Lucy", "Zoe", "Emma", "Rosie"),
               "boy": ("Tim", "Ben", "Max", "Sam", "Leo", "Jack", "Tom", "Finn")}
PRONOUNS = {"girl": ("she", "her"), "boy": ("he", "his")}
ANIMALS = ("dog", "cat", "bird", "bunny", "frog", "duck", "puppy", "kitten")
OBJECTS = ("red ball", "big kite", "toy car", "blue hat", "shiny stone", "small boat",
           "teddy bear", "yellow balloon")
STORY_PLACES = ("park", "garden", "beach", "forest", "farm", "lake", "hill", "yard")
ACTIVITIES = ("play outside", "draw pictures", "sing songs", "run fast", "climb trees",
              "look at the sky", "build sand castles", "read books")
GOOD_FEELINGS = ("happy", "glad", "proud", "excited")
BAD_FEELINGS = ("sad", "scared", "worried", "upset")
PROBLEMS = ("the {object} got stuck in a tree", "the {object} fell into the water",
            "a strong wind took the {object} away", "the {object} was lost in the grass")


def sample_tinystories(
    n_train: int = 1500, n_valid: int = 200, seed: int = 0
) -> Dict[str, List[str]]:
    """``{"train": stories, "valid": stories}``, each a templated story of 3-8 sentences."""
    rng = random.Random(seed)
    return {"train": [_story(rng) for _ in range(n_train)],
            "valid": [_story(rng) for _ in range(n_valid)]}


def _story(rng: random.Random) -> str:
    kind = rng.choice(("girl", "boy"))
    he, his = PRONOUNS[kind]
    words = dict(
        name=rng.choice(STORY_NAMES[kind]), kind=kind, he=he, He=he.capitalize(), his=his,
        animal=rng.choice(ANIMALS), object=rng.choice(OBJECTS), place=rng.choice(STORY_PLACES),
        activity=rng.choice(ACTIVITIES), good=rng.choice(GOOD_FEELINGS),
        bad=rng.choice(BAD_FEELINGS),
    )
    words["problem"] = rng.choice(PROBLEMS).format(**words)
    opening = "Once upon a time, there was a little {kind} named {name}."
    middle = [
        "{He} loved to {activity}.",
        "One day, {name} went to the {place} with {his} {object}.",
        "At the {place}, {name} met a friendly {animal}.",
        "Then {problem}.",
        "{name} felt {bad}.",
        "The {animal} wanted to help {name}.",
        "Together they looked and looked, and soon they found the {object}.",
    ]
    endings = ("{name} felt {good} and hugged the {animal}.",
               "From that day on, {name} and the {animal} were best friends.",
               "{name} smiled and went home with {his} {object}.")
    n_middle = rng.randint(1, len(middle) - 1)  # 3-8 sentences with the opening and ending
    kept = sorted(rng.sample(range(len(middle)), n_middle))
    template = [opening] + [middle[i] for i in kept] + [rng.choice(endings)]
    return " ".join(sentence.format(**words) for sentence in template)
