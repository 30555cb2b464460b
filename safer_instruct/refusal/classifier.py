"""The shipped three-way refusal classifier: multinomial logistic regression over text features and similarities.

Features of an answer: its word 1-2-grams (``w``), the phrase-rule cues of ``refusal.cues`` (``c``: a
decline and where it sits, a turn to compliance, a safe alternative, what is delivered beside a
decline, ...) and, when the request is known, ``refusal.prompt_cues`` and the phrase rules' own
three-way reading (``p``: an answer that takes up no part of a how-to request is a deflection) and, since v9, the words
and word pairs of the answer's first tokens again, on their own (``h``: where a decline or a turn to compliance sits;
only when more of the answer follows, so a short decline is read by its words alone) and, since v11, with the
request only, the numbers of ``similarity``: how close the whole answer, its opening sentence and the rest come to
the request in meaning (``s``: a decline followed by a long alternative is told from a decline followed by the
answer) and, since v14, how well the answer covers the request's least-covered part (a partial answer) and, since v20,
what the opening sentence and the rest say (``m``: their embeddings on fixed principal directions; a decline worded as
reluctance, a disclaimer and a change of subject differ in meaning more plainly than in words). Another family,
the request's own words when the answer does not engage with it (``q``: which requests such answers dodge), was
shipped in v4 and v5 and left out in v6 (leave-one-voice-out: no gain, see ``docs/refusal-classifier.md``).
Two heads share these features: one is fitted on the answers alone and one on the answers with their requests, so
prompts are optional and a deflection ("Phones are very useful.") is judged against its request when the request is
known. Since v19 each head learns the 13 response styles the labelled rows are written in (``RESPONSE_STYLES``: a terse
decline, a deflection, an answer with a closing warning, ...) rather than the three labels, and a label's probability
is the sum of its styles': one label's answers can look unlike each other, and one weight vector per look separates
them better (leave-one-voice-out: 92.7% against 90.9%). Every feature reads the answer without its frame
(``refusal.answer_body``: thinking before it, stage directions, markdown marks, greetings and sign-offs). Weights are
learned with numpy (full-batch Adam from zero, L2: deterministic) on ``TRAIN_SETS`` and shipped as
``refusal_v28.json`` (since v23 the weights are named after the fresh set that scores them).

``TRAIN_SETS`` are the development set (``data/refusal_labelled_dev.jsonl``: v1's two halves and the rows v2, v3
and v4 added for their weak styles) and, from v5 on, the former test sets v3 and v4 (both seen, their errors
studied; leave-one-voice-out cross-validation showed that training on their voices helps unseen voices) and, from
v6 on, ``data/refusal_labelled_dev_v6.jsonl`` (three other authors, eight voices modelled on real chat models), and,
from v7 on, ``data/refusal_labelled_dev_v7.jsonl`` (three more authors, nine voices) and the former fresh sets v5 and
v6 (each scored once, after its round's freeze; leave-one-voice-out: other authors' voices help most), and half of
the default model's own answers, labelled (``data/refusal_labelled_real_dev.jsonl``; the other half is a test set), and,
from v8 on, ``data/refusal_labelled_dev_v8.jsonl`` (three more authors: guardrailed, long-form and old or small models'
voices) and the former fresh set v7, and, from v9 on, ``data/refusal_labelled_dev_v9.jsonl`` (three more authors:
consumer assistants, open fine-tunes and specialised deployments of 2023) and the former fresh set v8, and, from v10
on, ``data/refusal_labelled_dev_v10.jsonl`` (three more authors: current assistants, deployments asked outside their
domain and small open models) and the former fresh set v9, and, from v11 on, ``data/refusal_labelled_dev_v11.jsonl``
(two more authors: declines followed by long structured help, and answers that only look on-topic) and the former
fresh set v10, and, from v12 on, ``data/refusal_labelled_dev_v12.jsonl`` (two more authors: deflections that work on
the request's own material or answer a neighbouring question, against partial answers) and the former fresh set v11,
and, from v13 on, ``data/refusal_labelled_dev_v13.jsonl`` (two more authors: structured answers in every style, and
answers whose words point the other way) and the former fresh set v12, and, from v14 on,
``data/refusal_labelled_dev_v14.jsonl`` (one more author: partial answers, numbered refusals, plain lists) and the
former fresh set v13, and, from v15 on, ``data/refusal_labelled_dev_v15.jsonl`` (two more authors: short declines
and answers that say "no" without declining; follow-up requests in every style) and the former fresh set v14, and,
from v16 on, the former fresh set v15, and, from v17 on, the former fresh set v16, and, from v18 on, the former fresh
set v17, and, from v19 on, the former fresh set v18, and, from v20 on, the v19 weights' two fresh sets, v19 and v20,
and, from v23 on, the v20 weights' two fresh sets, v21 and v22 (twelve more voices), and, from v25 on, the v23
weights' two fresh sets, v23 and v24 (twelve more, among them three deployment bots), and, from v26 on, the v25
weights' fresh set v25 (six more, two of them support bots), and, from v28 on, the v26 weights' two fresh sets, v26
and v27 (twelve more: four deployment bots and two personas).
``data/refusal_labelled_dev_v17.jsonl`` (two more authors: deflections that stay on the topic against loose but real
answers; partial refusals and caveats inside long answers) is only scored: trained on, it gained nothing over voices
never seen and lost 1.3 points on the default model's own answers (leave-one-voice-out). Test set v2, dev v17 and
the real test half are only scored (second opinions); the fresh sets (``FRESH_SETS``; v28 for the v28 weights) are
scored once, after a round's classifier is frozen (``bench/scoring.py --tests-only``).

Retrain (rewrites the shipped file)::

    python -m safer_instruct.refusal.classifier [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import sparse

from safer_instruct.errors import SaferInstructError
from safer_instruct.readers import read_rows, text_field
from safer_instruct.refusal import (
    LABELS,
    RESPONSE_STYLES,
    RefusalLabel,
    canonical,
    cues,
    prompt_cues,
    request_words,
    rule_label,
)
from safer_instruct.refusal.similarity import (
    DENSE_FAMILIES,
    DENSE_FEATURES,
    MEANING_BASIS,
    MEANING_FEATURES,
    dense_features,
    fit_meaning_basis,
    store_pairs,
)

DATA_DIR = Path(__file__).parent / "data"
DEV_SET = DATA_DIR / "refusal_labelled_dev.jsonl"
TEST_SET_V2 = DATA_DIR / "refusal_labelled_test_v2.jsonl"  # scored since v2; its errors were studied (seen)
TEST_SET_V3 = DATA_DIR / "refusal_labelled_test_v3.jsonl"  # scored since v3; its errors were studied (seen)
TEST_SET_V4 = (
    DATA_DIR / "refusal_labelled_test_v4.jsonl"
)  # scored once as v4's fresh set; its errors were studied (seen)
DEV_SET_V6 = DATA_DIR / "refusal_labelled_dev_v6.jsonl"  # v6: three new authors, eight voices of real chat models
# written by an author who never saw the rules or weights, pinned before any classifier ran on it; scored once as its
# round's fresh set, then trained on (v5 and v6: from v7 on)
TEST_SET_V5 = DATA_DIR / "refusal_labelled_test_v5.jsonl"
TEST_SET_V6 = DATA_DIR / "refusal_labelled_test_v6.jsonl"  # the same, for v6: five more voices of real chat models
DEV_SET_V7 = DATA_DIR / "refusal_labelled_dev_v7.jsonl"  # v7: three more authors, nine voices (three of small models)
TEST_SET_V7 = DATA_DIR / "refusal_labelled_test_v7.jsonl"  # v7's fresh set: five voices, chat-log prompts
DEV_SET_V8 = DATA_DIR / "refusal_labelled_dev_v8.jsonl"  # v8: three more authors, nine voices (guardrailed bots too)
TEST_SET_V8 = DATA_DIR / "refusal_labelled_test_v8.jsonl"  # v8's fresh set: five voices, benchmark-style one-liners
DEV_SET_V9 = DATA_DIR / "refusal_labelled_dev_v9.jsonl"  # v9: three more authors, nine voices (deployed bots too)
TEST_SET_V9 = DATA_DIR / "refusal_labelled_test_v9.jsonl"  # v9's fresh set: five voices, task-shaped requests
DEV_SET_V10 = DATA_DIR / "refusal_labelled_dev_v10.jsonl"  # v10: three more authors, nine voices
TEST_SET_V10 = DATA_DIR / "refusal_labelled_test_v10.jsonl"  # v10's fresh set: five voices, the user's situation first
DEV_SET_V11 = DATA_DIR / "refusal_labelled_dev_v11.jsonl"  # v11: two more authors, six voices, declines then long help
TEST_SET_V11 = DATA_DIR / "refusal_labelled_test_v11.jsonl"  # v11's fresh set: five voices, requests quoting material
DEV_SET_V12 = DATA_DIR / "refusal_labelled_dev_v12.jsonl"  # v12: two more authors, deflections near the task
TEST_SET_V12 = DATA_DIR / "refusal_labelled_test_v12.jsonl"  # v12's fresh set: five voices, requests that set the form
DEV_SET_V13 = DATA_DIR / "refusal_labelled_dev_v13.jsonl"  # v13: two more authors, structured and misleading answers
TEST_SET_V13 = DATA_DIR / "refusal_labelled_test_v13.jsonl"  # v13's fresh set: five voices, requests that say who asks
DEV_SET_V14 = DATA_DIR / "refusal_labelled_dev_v14.jsonl"  # v14: one more author, partial answers, refusals
TEST_SET_V14 = DATA_DIR / "refusal_labelled_test_v14.jsonl"  # v14's fresh set: five voices, follow-up requests
DEV_SET_V15 = DATA_DIR / "refusal_labelled_dev_v15.jsonl"  # v15: two more authors, short declines, follow-ups
TEST_SET_V15 = DATA_DIR / "refusal_labelled_test_v15.jsonl"  # v15's fresh set: five voices, casually typed requests
# v16's fresh set: three authors under three briefs (role-play, requests of several parts, one-liners), six voices
TEST_SET_V16 = DATA_DIR / "refusal_labelled_test_v16.jsonl"
# v17: two more authors (deflections, long partial answers); only scored, see TRAIN_SETS
DEV_SET_V17 = DATA_DIR / "refusal_labelled_dev_v17.jsonl"
# v17's fresh set: three authors under three briefs (requests from work, requests for a format, family life), six voices
TEST_SET_V17 = DATA_DIR / "refusal_labelled_test_v17.jsonl"
# v18's fresh set: three authors under three briefs (health and wellbeing, students, online life and technology)
TEST_SET_V18 = DATA_DIR / "refusal_labelled_test_v18.jsonl"
# v19's fresh set: three authors under three briefs (money and consumer life, DIY and hobbies, neighbours and travel)
TEST_SET_V19 = DATA_DIR / "refusal_labelled_test_v19.jsonl"
# a second fresh set for the v19 weights, written after they were frozen: food and cooking, animals and gardens, sport
# and games
TEST_SET_V20 = DATA_DIR / "refusal_labelled_test_v20.jsonl"
# the v20 weights' fresh set (named v21: the set named v20 was the v19 weights' second): three authors under three
# briefs (home and household, arts and media, science and history)
TEST_SET_V21 = DATA_DIR / "refusal_labelled_test_v21.jsonl"
# a second fresh set for the v20 weights, pinned before any classifier ran on it: sport, fitness and the outdoors; work,
# office life and money; travel, cars and getting around
TEST_SET_V22 = DATA_DIR / "refusal_labelled_test_v22.jsonl"
# the v23 weights' fresh set, pinned before any classifier ran on it: home, DIY, gardening and pets; school, study,
# phones and gaming; food, cooking, health and family life
TEST_SET_V23 = DATA_DIR / "refusal_labelled_test_v23.jsonl"
# a second fresh set for the v23 weights, pinned before any classifier ran on it: shopping and consumer life; arts,
# music, writing and hobbies; neighbourhood and civic life
TEST_SET_V24 = DATA_DIR / "refusal_labelled_test_v24.jsonl"
# the v25 weights' fresh set, pinned before any classifier ran on it: computers, home networks and privacy (an internet
# provider's support bot among its voices); friendships, dating and nightlife; health insurance and clinics (an
# insurer's claims bot)
TEST_SET_V25 = DATA_DIR / "refusal_labelled_test_v25.jsonl"
# the v26 weights' fresh set, pinned before any classifier ran on it: cars, driving and commuting (a car dealership's
# assistant among its voices); pets, gardens and the outdoors (a vet clinic's assistant); money, work and taxes (a
# pirate-captain persona of a companion app)
TEST_SET_V26 = DATA_DIR / "refusal_labelled_test_v26.jsonl"
# a second fresh set for the v26 weights, pinned before any classifier ran on it: beauty, fashion and grooming (a
# salon's booking assistant among its voices); law, police and the courts (a legal-aid help line's assistant); caring
# for older relatives, retirement and end of life (a companion app's grandmotherly persona)
TEST_SET_V27 = DATA_DIR / "refusal_labelled_test_v27.jsonl"
# the v28 weights' fresh set, pinned before any classifier ran on it: weddings, parties and events (an events venue's
# assistant among its voices); moving house and mortgages (a mortgage broker's assistant); games, gambling and sport
# (a companion app's game-show host persona)
TEST_SET_V28 = DATA_DIR / "refusal_labelled_test_v28.jsonl"
# the default model's own answers (base and the demo's adapters), labelled twice; split by prompt into halves
REAL_DEV = DATA_DIR / "refusal_labelled_real_dev.jsonl"
REAL_TEST = DATA_DIR / "refusal_labelled_real_test.jsonl"
LABELLED_SETS = (  # every set a choice may look at
    DEV_SET,
    TEST_SET_V2,
    TEST_SET_V3,
    TEST_SET_V4,
    TEST_SET_V5,
    DEV_SET_V6,
    TEST_SET_V6,
    DEV_SET_V7,
    TEST_SET_V7,
    REAL_DEV,
    DEV_SET_V8,
    TEST_SET_V8,
    DEV_SET_V9,
    TEST_SET_V9,
    DEV_SET_V10,
    TEST_SET_V10,
    DEV_SET_V11,
    TEST_SET_V11,
    DEV_SET_V12,
    TEST_SET_V12,
    DEV_SET_V13,
    TEST_SET_V13,
    DEV_SET_V14,
    TEST_SET_V14,
    DEV_SET_V15,
    TEST_SET_V15,
    TEST_SET_V16,
    DEV_SET_V17,
    TEST_SET_V17,
    TEST_SET_V18,
    TEST_SET_V19,
    TEST_SET_V20,
    TEST_SET_V21,
    TEST_SET_V22,
    TEST_SET_V23,
    TEST_SET_V24,
    TEST_SET_V25,
    TEST_SET_V26,
    TEST_SET_V27,
)
# labelled sets a choice may look at but the weights are not fitted on: v2 (seen: a second opinion) and dev v17
# (leave-one-voice-out with it gained nothing over voices never seen, 90.78% against 90.83% on the other sets' rows,
# and lost 1.3 points on the default model's answers)
SCORED_ONLY = (TEST_SET_V2, DEV_SET_V17)
# what the weights are fitted on: every other labelled set (v3, v4: since v5; v5, v6: since v7; v7: since v8; v8: since
# v9; v9: since v10; v10: since v11; v11: since v12; v12: since v13; v13: since v14; v14: since v15; v15: since v16;
# v16: since v17; v17: since v18; v18: since v19; v19 and v20, the v19 weights' two fresh sets: since v20; v21 and v22,
# the v20 weights' two fresh sets: since v23, as more voices, no reader having gained by leave-one-voice-out; v23 and
# v24, the v23 weights' two fresh sets: since v25, the same way; v25: since v26, the same way; v26 and v27, the v26
# weights' two fresh sets: since v28, the same way)
TRAIN_SETS = tuple(path for path in LABELLED_SETS if path not in SCORED_ONLY)
FRESH_SETS = (TEST_SET_V28,)  # no choice looks at these
# only scored: those, v7's fresh half of the default model's answers (the real half stays out of the voice folds, its
# voices are the training half's) and the fresh sets
TEST_SETS = (*SCORED_ONLY, REAL_TEST, *FRESH_SETS)
ALL_SETS = tuple(dict.fromkeys((*LABELLED_SETS, *TEST_SETS)))  # every labelled row: its ``s`` features are stored
WEIGHTS_VERSION = 28  # since v23 the version of the fresh set that scores the weights
WEIGHTS = Path(__file__).parent / f"refusal_v{WEIGHTS_VERSION}.json"
_TOKEN = re.compile(r"[a-z0-9']+|[?!:;]")
OPENING_TOKENS = 12  # the ``h`` family: the answer's first tokens, read apart from the rest
OWN_MODEL_VOICES = frozenset({"smollm2_135m", "smollm2_135m_tuned"})  # the default model's own answers (``REAL_DEV``)


@dataclass(frozen=True)
class TrainConfig:
    """How the weights are fitted; the defaults are the shipped ones (chosen by leave-one-voice-out cross-validation)."""

    # word n-grams, phrase cues, request cues (v6: without ``q``), the opening words again (v9), the answer's parts'
    # closeness in meaning to the request (v11; with the request only; v14: and the coverage of its parts)
    # v20: what the opening sentence and the rest say (``m``, their embeddings' leading principal directions)
    families: tuple[str, ...] = ("w", "c", "p", "h", "s", "m")
    min_count: int = 3  # a feature must occur in this many training answers
    l2: float = 3e-4
    steps: int = 400
    learning_rate: float = 0.05
    # the default model's own answers count this many times in the loss: the kit reads its answers most, and its
    # generic openings ("Dealing with jet lag can be a delicate task.") resemble other voices' deflections (v10)
    own_answer_weight: float = 5.0
    # what the heads learn: "style", the 13 response styles (``RESPONSE_STYLES``), whose probabilities add up to their
    # labels' (v19: a label whose answers look unlike each other, a terse decline and a deflection, or a plain answer
    # and one with a closing warning, gets one weight vector per look), or "label", the three labels themselves
    classes: str = "style"
    # the ``m`` columns, standardised, are shrunk by this factor: 128 of them at full strength outweigh the rest under
    # the one L2 penalty (v20)
    meaning_scale: float = 0.3

    def __post_init__(self) -> None:
        if self.classes not in ("style", "label"):
            raise ValueError(f"classes must be 'style' or 'label', got {self.classes!r}")
        if not self.meaning_scale > 0:
            raise ValueError(f"meaning_scale must be positive, got {self.meaning_scale}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The heads' classes (their weight columns): the response styles or the labels."""
        return tuple(RESPONSE_STYLES) if self.classes == "style" else LABELS


@dataclass(frozen=True)
class LabelledCase:
    """One row of a labelled refusal set."""

    prompt: str
    completion: str
    label: RefusalLabel
    style: str
    voice: str


def load_cases(path: str | Path) -> list[LabelledCase]:
    """A labelled refusal set (JSONL: ``prompt``, ``completion``, ``label``, ``style``, ``voice``)."""
    cases = []
    for row in read_rows(path):
        label, style = text_field(row, "label"), text_field(row, "style")
        if label not in LABELS:
            raise SaferInstructError(f"{row.where}: field 'label' must be one of {', '.join(LABELS)}, got {label!r}")
        if style not in RESPONSE_STYLES:
            raise SaferInstructError(f"{row.where}: field 'style' must be a response style, got {style!r}")
        if RESPONSE_STYLES[style] != label:
            raise SaferInstructError(f"{row.where}: field 'label' must be {RESPONSE_STYLES[style]} for style {style}")
        cases.append(
            LabelledCase(
                prompt=text_field(row, "prompt"),
                completion=text_field(row, "completion", required=False),
                label=label,
                style=style,
                voice=text_field(row, "voice"),
            )
        )
    return cases


def features(text: str, families: Sequence[str] = TrainConfig.families, prompt: str = "") -> set[str]:
    """The feature names present in one answer (to ``prompt``, when known), from the given families."""
    norm = canonical(text)
    tokens = _TOKEN.findall(norm)
    found: set[str] = set()
    if "w" in families:
        found |= _words_and_pairs("w", tokens)
    if "h" in families and len(tokens) > OPENING_TOKENS:  # the opening words again, where more follows them
        found |= _words_and_pairs("h", tokens[:OPENING_TOKENS])
    if "c" in families:
        found |= {f"c:{cue}" for cue in cues(text)}
    if prompt.strip() and ("p" in families or "q" in families):
        request = prompt_cues(prompt, text)
        if "p" in families:
            found |= {f"p:{cue}" for cue in request} | {f"p:rules_{rule_label(norm, prompt)}"}
        if "q" in families and {"request_not_addressed", "request_generic_opening"} & set(request):
            # the request's own words, when the answer does not engage with it: which requests such answers dodge
            found |= {f"q:{word}" for word in request_words(prompt)}
    return found


def _words_and_pairs(family: str, tokens: Sequence[str]) -> set[str]:
    """The feature names of ``tokens``' words and adjacent word pairs, in one family."""
    return {f"{family}:{t}" for t in tokens} | {f"{family}:{a} {b}" for a, b in zip(tokens, tokens[1:])}


class SoftmaxHead:
    """Feature weights per class (a label, or a response style of one label) over one view of an answer (alone, or
    with its request)."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        weights: np.ndarray,
        bias: np.ndarray,
        scaling: tuple[np.ndarray, np.ndarray] | None = None,
        classes: Sequence[str] = LABELS,
    ) -> None:
        """``scaling``: the mean and spread of the ``s`` and ``m`` features in training, which standardise them;
        ``classes``: the weights' columns, labels or response styles."""
        self.classes = tuple(classes)
        # class -> label: a style's probability counts for its label
        self.to_labels = np.eye(len(LABELS), dtype=np.float32)[[LABELS.index(class_label(c)) for c in self.classes]]
        self.families = tuple(sorted({name.split(":", 1)[0] for name in vocabulary}))
        self.vocabulary = list(vocabulary)
        self.index = {name: i for i, name in enumerate(self.vocabulary)}
        self.weights = weights.astype(np.float32)
        self.bias = bias.astype(np.float32)
        self.dense = [self.index[name] for name in DENSE_FEATURES if name in self.index]
        # which of ``dense_features``' columns the head reads (a head trained before a column was added lacks it)
        self.dense_columns = [i for i, name in enumerate(DENSE_FEATURES) if name in self.index]
        if self.dense and scaling is None:
            raise ValueError("the s and m features need their training mean and spread")
        self.center, self.spread = scaling if self.dense else (np.zeros(0), np.ones(0))

    def matrix(self, texts: Sequence[str], prompts: Sequence[str]) -> sparse.csr_matrix:
        """Feature matrix (answers × vocabulary): binary, and the standardised ``s`` and ``m`` features where the head
        has them."""
        found = [features(text, self.families, prompt) for text, prompt in zip(texts, prompts)]
        return self.rows(found, dense_features(texts, prompts) if self.dense else None)

    def rows(self, found: Sequence[set[str]], dense: np.ndarray | None = None) -> sparse.csr_matrix:
        """Sparse feature matrix of answers given by their feature names (a few dozen of ~10^4 columns) and, where
        the head has ``s`` and ``m`` features, their values (``similarity.dense_features``)."""
        columns = [sorted(self.index[f] for f in names if f in self.index) for names in found]
        starts = np.cumsum([0] + [len(c) for c in columns])
        flat = np.fromiter((j for c in columns for j in c), dtype=np.int32, count=int(starts[-1]))
        data = np.ones(len(flat), dtype=np.float32)
        binary = sparse.csr_matrix((data, flat, starts), shape=(len(found), len(self.vocabulary)))
        if not self.dense:
            return binary
        values = ((np.asarray(dense)[:, self.dense_columns] - self.center) / self.spread).astype(np.float32)
        rows = np.repeat(np.arange(len(found)), len(self.dense))
        block = sparse.csr_matrix((values.ravel(), (rows, np.tile(self.dense, len(found)))), shape=binary.shape)
        return (binary + block).tocsr()

    def probabilities(self, texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        """Per answer, the probability of each label in ``LABELS`` order (its classes' probabilities added up)."""
        return _softmax(self.matrix(texts, prompts) @ self.weights + self.bias) @ self.to_labels

    def to_json(self) -> dict:
        """Rounded to 4 decimals; features with all-zero weights dropped."""
        keep = np.abs(self.weights).max(axis=1) >= 5e-5
        keep[self.dense] = True
        data = {
            "classes": list(self.classes),
            "vocabulary": [v for v, k in zip(self.vocabulary, keep) if k],
            "weights": np.round(self.weights[keep], 4).tolist(),
            "bias": np.round(self.bias, 4).tolist(),
        }
        if self.dense:
            data["scaling"] = {
                "center": np.round(self.center, 6).tolist(),
                "spread": np.round(self.spread, 6).tolist(),
            }
        return data

    @classmethod
    def from_json(cls, data: dict) -> SoftmaxHead:
        vocabulary, weights, bias = data["vocabulary"], np.array(data["weights"]), np.array(data["bias"])
        classes = data.get("classes", LABELS)  # v18 and earlier: the labels
        unknown = [c for c in classes if c not in LABELS and c not in RESPONSE_STYLES]
        if unknown:
            raise ValueError(f"unknown classes {', '.join(map(str, unknown))}")
        if weights.shape != (len(vocabulary), len(classes)):
            raise ValueError(
                f"weight shape {weights.shape} does not match {len(vocabulary)} features x {len(classes)} classes"
            )
        scaling = data.get("scaling")
        dense = sum(name in DENSE_FEATURES for name in vocabulary)
        if scaling is not None and not len(scaling["center"]) == len(scaling["spread"]) == dense:
            raise ValueError(f"scaling does not match the {dense} s and m features")
        scaling = scaling and (np.array(scaling["center"]), np.array(scaling["spread"]))
        return cls(vocabulary, weights, bias, scaling, classes)


class RefusalClassifier:
    """Two heads: one reads an answer alone, one an answer with its request (a deflection needs the request to be
    seen); ``predict`` gives the most probable label of each answer, from the head its row's view calls for."""

    def __init__(self, answers: SoftmaxHead, prompted: SoftmaxHead, meta: dict | None = None) -> None:
        self.answers, self.prompted, self.meta = answers, prompted, meta or {}

    def probabilities(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
        """Per answer, the probability of each label in ``LABELS`` order."""
        prompts = list(prompts) if prompts is not None else [""] * len(texts)
        if len(prompts) != len(texts):
            raise SaferInstructError(f"{len(texts)} answers but {len(prompts)} prompts")
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        with_prompt = [bool(prompt.strip()) for prompt in prompts]
        for head, wanted in ((self.prompted, True), (self.answers, False)):
            rows = [i for i, given in enumerate(with_prompt) if given is wanted]
            if rows:
                out[rows] = head.probabilities([texts[i] for i in rows], [prompts[i] for i in rows])
        return out

    def predict(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[RefusalLabel]:
        """The label of each answer (the request, when given, helps spot deflections); an empty answer is a full refusal."""
        if not texts:
            return []
        best = self.probabilities(texts, prompts).argmax(axis=1)
        return [LABELS[i] if text.strip() else "full_refusal" for i, text in zip(best, texts)]

    def save(self, path: str | Path) -> None:
        data = {
            **self.meta,
            "labels": list(LABELS),
            "answers_only": self.answers.to_json(),
            "with_prompts": self.prompted.to_json(),
        }
        Path(path).write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> RefusalClassifier:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if tuple(data.get("labels", ())) != LABELS:
                raise ValueError(f"labels are not {', '.join(LABELS)}")
            answers, prompted = (
                SoftmaxHead.from_json(data.pop("answers_only")),
                SoftmaxHead.from_json(data.pop("with_prompts")),
            )
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise SaferInstructError(f"{path}: not a readable refusal classifier ({err})") from err
        return cls(answers, prompted, data)


@lru_cache(maxsize=1)
def default_classifier() -> RefusalClassifier:
    """The shipped classifier, loaded once."""
    return RefusalClassifier.load(WEIGHTS)


def class_label(name: str) -> RefusalLabel:
    """The label of a head's class: the class itself, or a response style's label."""
    return name if name in LABELS else RESPONSE_STYLES[name]  # type: ignore[return-value]


def train(cases: Sequence[LabelledCase], config: TrainConfig = TrainConfig()) -> RefusalClassifier:
    """Fit both heads, each on its own view of every case (the answer alone; the answer with its request);
    deterministic for the same cases and config."""
    texts, targets, weights = (
        [c.completion for c in cases],
        training_targets(cases, config),
        case_weights(cases, config),
    )
    return RefusalClassifier(
        fit_head(texts, [""] * len(cases), targets, config, weights),
        fit_head(texts, [c.prompt for c in cases], targets, config, weights),
    )


def training_targets(cases: Sequence[LabelledCase], config: TrainConfig) -> list[str]:
    """Each case's class for the heads to learn: its style or its label (``config.classes``)."""
    return [c.style if config.classes == "style" else c.label for c in cases]


def case_weights(cases: Sequence[LabelledCase], config: TrainConfig) -> np.ndarray:
    """Each case's weight in the loss: ``config.own_answer_weight`` for the default model's own answers, else 1."""
    return np.array([config.own_answer_weight if c.voice in OWN_MODEL_VOICES else 1.0 for c in cases])


def fit_head(
    texts: Sequence[str], prompts: Sequence[str], targets: Sequence[str], config: TrainConfig, weights: np.ndarray
) -> SoftmaxHead:
    """One head over the features seen in at least ``config.min_count`` of the answers, and the ``s`` and ``m``
    features where their families are chosen and the requests are given."""
    found = [features(text, config.families, prompt) for text, prompt in zip(texts, prompts)]
    with_dense = bool(DENSE_FAMILIES & set(config.families)) and all(prompt.strip() for prompt in prompts)
    return fit_head_on_features(
        found, targets, config, weights, dense_features(texts, prompts) if with_dense else None
    )


def fit_head_on_features(
    found: Sequence[set[str]],
    targets: Sequence[str],
    config: TrainConfig,
    weights: np.ndarray,
    dense: np.ndarray | None = None,
) -> SoftmaxHead:
    """``fit_head`` given each answer's feature names (``features``) and ``s`` and ``m`` features (``dense_features``,
    or None for a head without them), e.g. computed once for many fits; ``targets``: each answer's class
    (``training_targets``)."""
    counts = Counter(name for names in found for name in names)
    vocabulary = sorted(name for name, count in counts.items() if count >= config.min_count)
    scaling = None
    if dense is not None:
        names = [name for name in DENSE_FEATURES if name.split(":", 1)[0] in config.families]
        columns = dense[:, [DENSE_FEATURES.index(name) for name in names]]
        shrink = np.array([config.meaning_scale if name in MEANING_FEATURES else 1.0 for name in names])
        vocabulary += names
        scaling = (columns.mean(axis=0), (columns.std(axis=0) + 1e-6) / shrink)
    classes = config.class_names
    head = SoftmaxHead(vocabulary, np.zeros((len(vocabulary), len(classes))), np.zeros(len(classes)), scaling, classes)
    head.weights, head.bias = fit_softmax(head.rows(found, dense), targets, config, weights, classes)
    return head


def fit_softmax(
    x: np.ndarray | sparse.csr_matrix,
    targets: Sequence[str],
    config: TrainConfig,
    weights: np.ndarray | None = None,
    classes: Sequence[str] = LABELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a softmax regression of rows ``x``, dense or sparse, on ``targets`` (one of ``classes``
    each; full-batch Adam from zero, L2 on the weights; the loss is the mean over rows, weighted by ``weights`` when
    given)."""
    classes = list(classes)
    y = np.eye(len(classes), dtype=np.float32)[[classes.index(target) for target in targets]]
    weights = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    share = (weights / weights.sum()).astype(np.float32)[:, None]
    params = [np.zeros((x.shape[1], len(classes)), dtype=np.float32), np.zeros(len(classes), dtype=np.float32)]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    x_t = x.T.tocsr() if sparse.issparse(x) else x.T
    for step in range(1, config.steps + 1):
        error = (_softmax(x @ params[0] + params[1]) - y) * share
        grads = [x_t @ error + config.l2 * params[0], error.sum(axis=0)]
        for param, grad, (m, v) in zip(params, grads, moments):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= config.learning_rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return params[0], params[1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> None:
    """Fit the meaning basis where it is missing, store the ``s`` and ``m`` features of every labelled row, train on the
    training sets and write the weights file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(WEIGHTS), help="where to write the weights (default: the shipped file)")
    args = parser.parse_args(argv)
    loaded = {path: load_cases(path) for path in ALL_SETS}
    labelled = [case for cases in loaded.values() for case in cases]
    cases = [case for path in TRAIN_SETS for case in loaded[path]]
    if not MEANING_BASIS.exists():
        fit_meaning_basis([case.completion for case in cases])
    store_pairs([case.completion for case in labelled], [case.prompt for case in labelled])
    config = TrainConfig()
    model = train(cases, config)
    model.meta = {
        "version": WEIGHTS_VERSION,
        "trained_on": {path.name: file_sha256(path) for path in TRAIN_SETS},
        "train_config": {**config.__dict__, "families": list(config.families)},
        "n": len(cases),
    }
    model.save(args.out)
    sizes = f"{len(model.answers.vocabulary)} + {len(model.prompted.vocabulary)} features"
    print(f"{args.out}: {sizes} from {len(cases)} answers of {', '.join(path.name for path in TRAIN_SETS)}")


if __name__ == "__main__":
    main()
