"""Text rules both the rule reasoner and the validator apply (`annotation.faithfulness`): what makes one text
degenerate. Below both, so the reasoner can check a user's words before quoting them."""

from __future__ import annotations

import re
from collections import Counter

QUOTE = re.compile(r"\bAU(\d+)\b(?:\s+[A-Za-z]+){0,4}?\s*[(:=]?\s*(?:peak\s*(?:of\s*)?|at\s*)?(\d+\.\d+)")
PLACEHOLDER = re.compile(
    r"\b\w*_id_\d+\b|\d{6,}|<[a-z_]{2,}>|\{\{|\}\}|\b(?:TODO|PLACEHOLDER|lorem ipsum)\b", re.I
)


def phrase_problems(text: str) -> list[str]:
    """What makes one text degenerate: a 4-word phrase three times, a placeholder-like token, or a quoted
    measurement ("AU12 (2.4)"; the rule reasoner checks a user's words with this before quoting them)."""
    problems = []
    words = re.findall(r"[a-z0-9']+", text.lower())  # "AU1 AU2 AU4 AU5" is four AUs, not "au" x4
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    if grams:
        gram, n = grams.most_common(1)[0]
        if n >= 3:
            problems.append(f"repeated phrase: {' '.join(gram)!r} {n} times")
    token = PLACEHOLDER.search(text)
    if token:
        problems.append(f"placeholder-like token: {token.group(0)!r}")
    if QUOTE.search(text):
        problems.append("a quoted measurement")
    return problems
