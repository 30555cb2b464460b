"""Versioned prompt templates: one file per prompt; the file's hash goes into provenance.

Two formats, one class (``PromptTemplate``) and one loader (``load_template``):

- ``<name>_v<N>.j2`` is a chat: each message starts with a line ``### system``, ``### user`` or
  ``### assistant`` and fills jinja2 values (``{{ instruction }}``), so few-shot turns are written out
  in the file and the whole prompt can be shown as is in the dataset card.
- ``<name>_v<N>.txt`` is one text with ``{name}`` placeholders (the judge's templates, WildGuard's
  published input format): a single user message, or the raw text for a model without a chat template.

Values (source texts, induced instructions, answers) are data, never structure: a chat template is cut
into its messages before they are filled in, so a ``### assistant`` line inside a value stays text in
its message; a text template is filled in one pass, so a value containing ``{answer}`` stays as it is;
and ``as_data`` breaks chat-template control markers (``<|im_start|>``, ``[INST]``, ...) so that no
tokenizer reads them as turn boundaries.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import jinja2

from safer_instruct.errors import SaferInstructError

PROMPTS_DIR = Path(__file__).parent
SUFFIXES = (".j2", ".txt")
ROLE_LINE = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)
PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
# control markers of common chat templates: ChatML / Llama 3 / Phi (<|...|>), Llama 2 ([INST], <<SYS>>, <s>), Gemma
CONTROL_MARKER = re.compile(r"<\|[A-Za-z0-9_.:/-]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>")
ZERO_WIDTH_SPACE = "\u200b"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template file; ``sha`` identifies its exact text."""

    name: str
    path: Path
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    @property
    def is_chat(self) -> bool:
        return self.path.suffix == ".j2"

    def render(self, **values: str) -> list[dict[str, str]]:
        """The chat messages with ``values`` filled in as data (a text template is one user message)."""
        if not self.is_chat:
            return [{"role": "user", "content": self.render_text(**values).strip()}]
        parts = ROLE_LINE.split(self.text)
        data = {key: as_data(value) if isinstance(value, str) else value for key, value in values.items()}
        try:
            return [
                {"role": role, "content": compiled(body).render(**data).strip()}
                for role, body in zip(parts[1::2], parts[2::2])
            ]
        except jinja2.TemplateError as err:
            raise SaferInstructError(f"prompt template {self.path}: {type(err).__name__}: {err}") from err

    def render_text(self, **values: str) -> str:
        """A text template's text with its ``{name}`` placeholders filled in one pass, as data."""
        if self.is_chat:
            raise SaferInstructError(
                f"prompt template {self.path}: a chat (.j2) template has no single text; use a .txt"
            )
        missing = sorted({name for name in PLACEHOLDER.findall(self.text) if name not in values})
        if missing:
            raise SaferInstructError(f"prompt template {self.path}: no value for {', '.join(missing)}")
        return PLACEHOLDER.sub(lambda match: as_data(values[match.group(1)]), self.text)


@lru_cache(maxsize=256)
def compiled(body: str) -> jinja2.Template:
    """A message body's compiled template: compiling costs far more than rendering, and every item renders the same bodies."""
    return _ENV.from_string(body)


def as_data(text: str) -> str:
    """``text`` with each chat-template control marker broken by a zero-width space: a tokenizer reads it as text."""
    return CONTROL_MARKER.sub(lambda match: match.group(0)[0] + ZERO_WIDTH_SPACE + match.group(0)[1:], text)


@cache
def load_template(name: str, shipped: Path = PROMPTS_DIR) -> PromptTemplate:
    """A template file by path (``.j2`` or ``.txt``), or one shipped in ``shipped`` by name (``judge_v1``)."""
    candidates = [Path(name)] if name.endswith(SUFFIXES) else [shipped / f"{name}{suffix}" for suffix in SUFFIXES]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        names = ", ".join(sorted(p.stem for p in shipped.iterdir() if p.suffix in SUFFIXES))
        raise SaferInstructError(f"prompt template {name!r} not found (shipped: {names})")
    text = path.read_text(encoding="utf-8").strip() + "\n"
    roles = ROLE_LINE.findall(text)
    if path.suffix == ".j2" and (not roles or not text.startswith("###") or roles[-1] != "user"):
        raise SaferInstructError(
            f"prompt template {path}: must start with a `### system|user` line and end with a user turn"
        )
    return PromptTemplate(name=path.stem, path=path, text=text)
