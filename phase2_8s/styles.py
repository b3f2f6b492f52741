"""Seed 002's reasoning styles: the prompt that asks for each, the neutral one it is contrasted with, the statistic
that says how much of the style an answer shows, and the questions (written for this project) they are asked.

Each statistic is declared here, before any answer is read, and measured the same way on every answer:
- `step_by_step_reasoning`: numbered steps, lines that start "1. " / "2) " / "Step 3:" (not "10:30", "1984." or
  "3.5 million");
- `researcher_style`: words of analysis and evidence per 100 words;
- `creative_explorer`: words of exploration and imagination per 100 words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

NEUTRAL_PROMPT = "Answer the question directly and briefly."
HELD_OUT_QUESTIONS = 12  # split once by the seed; never used to build a vector
RANDOM_EDITS = 3  # per style: edits of its norms, calibrated to the same disruption, that its effect must beat

_STEP_LINE = re.compile(r"^\s*(?:\*\*)?(?:step\s*\d+\s*[.):]|\d{1,2}[.)](?=[\s*]))", re.IGNORECASE | re.MULTILINE)
_WORD = re.compile(r"[a-z']+")


def numbered_steps(text: str) -> float:
    return float(len(_STEP_LINE.findall(text)))


def _per_100_words(markers: frozenset[str]) -> Callable[[str], float]:
    def statistic(text: str) -> float:
        words = _WORD.findall(text.lower())
        return 100.0 * sum(word in markers for word in words) / len(words) if words else 0.0
    return statistic


ANALYTIC_WORDS = frozenset({
    "analysis", "analyse", "analyze", "analyzing", "analysing", "evidence", "research", "study", "studies", "data",
    "hypothesis", "factors", "factor", "however", "therefore", "suggests", "suggest", "systematic", "systematically",
    "perspective", "perspectives", "conclusion", "limitations", "consider", "considering", "findings", "method"})
EXPLORATORY_WORDS = frozenset({
    "imagine", "perhaps", "alternatively", "creative", "creatively", "unconventional", "explore", "exploring",
    "possibility", "possibilities", "wonder", "whimsical", "playful", "invent", "inventive", "dream", "magic",
    "unusual", "surprising", "curious", "novel", "reimagine"})


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str  # the system prompt that asks for the style (the template's positive side)
    statistic_name: str
    statistic: Callable[[str], float]


STYLES: dict[str, Style] = {style.name: style for style in (
    Style("researcher_style",
          "Answer like a careful researcher: analyse the question systematically, weigh the evidence and other "
          "perspectives, and end with a conclusion and its limitations.",
          "analysis and evidence words per 100 words", _per_100_words(ANALYTIC_WORDS)),
    Style("step_by_step_reasoning",
          "Answer step by step: write numbered steps (1., 2., 3., ...) and give the reasoning of each step.",
          "numbered steps", numbered_steps),
    Style("creative_explorer",
          "Answer like a creative explorer: imagine unusual angles, propose surprising alternatives and ask "
          "'what if', using vivid comparisons.",
          "exploration and imagination words per 100 words", _per_100_words(EXPLORATORY_WORDS)),
)}

QUESTIONS = (
    "Why do leaves change colour in autumn?",
    "How should someone prepare for a job interview?",
    "What makes bread rise?",
    "How can a small town reduce traffic jams?",
    "Why is the sky blue during the day?",
    "How do you learn a new language as an adult?",
    "What causes ocean tides?",
    "How should a team decide which feature to build first?",
    "Why do cats purr?",
    "How can a household use less water?",
    "What happens to plastic that is thrown away?",
    "How do you plan a week of healthy meals?",
    "Why do we dream?",
    "How can a student remember what they read?",
    "What makes a bridge strong?",
    "How should a library attract more young visitors?",
    "Why does ice float on water?",
    "How do you choose a good password?",
    "What makes some songs stick in your head?",
    "How can a city keep cool during a heat wave?",
    "Why do birds migrate?",
    "How should you fix a bicycle chain that keeps slipping?",
    "What causes inflation?",
    "How can a beginner start growing vegetables?",
    "Why do onions make people cry?",
    "How do vaccines train the immune system?",
    "What makes a good teacher?",
    "How can a museum make history exciting for children?",
    "Why does a compass point north?",
    "How should a small shop compete with online stores?",
    "What causes earthquakes?",
    "How can someone get better sleep?",
    "Why is exercise good for the brain?",
    "How do you organise a neighbourhood clean-up?",
    "What makes a story memorable?",
    "How can a remote team feel connected?",
)
