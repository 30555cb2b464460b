"""Text hygiene: unicode/whitespace normalisation, personal-data scrubbing, near-duplicates, decontamination."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Iterable

from datasketch import MinHash, MinHashLSH

# Personal data -> placeholders. Order matters: URLs before e-mails before @handles.
PII_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("URL", re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]]", re.IGNORECASE)),
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.IGNORECASE)),
    ("PHONE", re.compile(r"(?<![\w+(])(?:\+|\()?\d(?:[\s().-]*\d){6,14}(?!\w)")),
    ("USERNAME", re.compile(r"(?<![\w/])/?u/[A-Za-z0-9_-]{2,}")),
    ("HANDLE", re.compile(r"(?<![\w@])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,29}[A-Za-z0-9_])?")),
)
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200f\u2028\u2029\ufeff]")
_WORD = re.compile(r"[^\W_]+")


def normalise(text: str) -> str:
    """NFKC, no control or zero-width characters, runs of spaces/tabs collapsed, at most one blank line."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n"))
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def scrub_pii(text: str) -> tuple[str, Counter[str]]:
    """Replace e-mails, phone numbers, URLs, @handles and u/usernames with ``<KIND>``; count replacements."""
    found: Counter[str] = Counter()

    for kind, pattern in PII_PATTERNS:

        def replace(match: re.Match[str], kind: str = kind) -> str:
            if kind == "PHONE" and _DATE.fullmatch(match.group()):
                return match.group()
            found[kind] += 1
            return f"<{kind}>"

        text = pattern.sub(replace, text)
    return text, found


def words(text: str) -> list[str]:
    """Lower-case word tokens (punctuation ignored)."""
    return _WORD.findall(text.lower())


def exact_key(text: str) -> str:
    """Equal for texts that differ only in case, punctuation and spacing."""
    return hashlib.sha256(" ".join(words(text)).encode()).hexdigest()


def shingles(text: str, size: int) -> set[str]:
    """Character shingles of the word-normalised text (robust on short texts)."""
    joined = " ".join(words(text))
    return {joined[i : i + size] for i in range(max(1, len(joined) - size + 1))}


def jaccard(a: str, b: str, size: int = 5) -> float:
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


class NearDuplicates:
    """MinHash LSH over character shingles; ``first_match`` returns the earlier similar text's key."""

    def __init__(self, threshold: float, shingle: int = 5, num_perm: int = 128, seed: int = 1) -> None:
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.shingle, self.num_perm, self.seed = shingle, num_perm, seed

    def _minhash(self, text: str) -> MinHash:
        minhash = MinHash(num_perm=self.num_perm, seed=self.seed)
        minhash.update_batch([s.encode() for s in sorted(shingles(text, self.shingle))])
        return minhash

    def first_match(self, key: str, text: str) -> str | None:
        """The key of an already added near-duplicate, else None (and ``text`` is added)."""
        minhash = self._minhash(text)
        matches = sorted(self.lsh.query(minhash))
        if matches:
            return matches[0]
        self.lsh.insert(key, minhash)
        return None


class Decontaminator:
    """Flags texts that overlap evaluation prompts: the same words, or a shared word n-gram.

    An evaluation prompt shorter than ``n`` words counts as one whole n-gram of its own length.
    """

    def __init__(self, prompts: Iterable[str], n: int = 8) -> None:
        self.n = n
        self.exact: set[str] = set()
        self.grams: dict[int, set[tuple[str, ...]]] = {}
        for prompt in prompts:
            tokens = words(normalise(prompt))
            if not tokens:
                continue
            self.exact.add(" ".join(tokens))
            size = min(n, len(tokens))
            self.grams.setdefault(size, set()).update(_ngrams(tokens, size))

    def __len__(self) -> int:
        return len(self.exact)

    def overlap(self, text: str) -> str | None:
        """``'exact'`` or ``'ngram'`` when ``text`` overlaps an evaluation prompt, else None."""
        tokens = words(normalise(text))
        if " ".join(tokens) in self.exact:
            return "exact"
        for size, grams in self.grams.items():
            if any(gram in grams for gram in _ngrams(tokens, size)):
                return "ngram"
        return None


def _ngrams(tokens: list[str], size: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}
