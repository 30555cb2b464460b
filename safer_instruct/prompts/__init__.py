"""Versioned prompt templates: one jinja2 file per prompt; the file's hash goes into provenance.

A template file (``<name>_v<N>.j2``) is a chat: each message starts with a line ``### system``,
``### user`` or ``### assistant``, so few-shot turns are written out in the file and the whole
prompt can be shown as is in the dataset card.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from safer_instruct.errors import SaferInstructError

PROMPTS_DIR = Path(__file__).parent
ROLE_LINE = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt template; ``sha`` identifies its exact text."""

    name: str
    path: Path
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    def render(self, **values: str) -> list[dict[str, str]]:
        """The chat messages with ``values`` filled in."""
        try:
            rendered = _ENV.from_string(self.text).render(**values)
        except jinja2.TemplateError as err:
            raise SaferInstructError(f"prompt template {self.path}: {type(err).__name__}: {err}") from err
        parts = ROLE_LINE.split(rendered)
        return [{"role": role, "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


@lru_cache(maxsize=None)
def load_template(name: str) -> PromptTemplate:
    """A shipped template by name (``judge_v1``) or a template file by path."""
    path = Path(name) if name.endswith(".j2") else PROMPTS_DIR / f"{name}.j2"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.j2")))
        raise SaferInstructError(f"prompt template {name!r} not found (shipped: {shipped})")
    text = path.read_text(encoding="utf-8").strip() + "\n"
    roles = ROLE_LINE.findall(text)
    if not roles or not text.startswith("###") or roles[-1] != "user":
        raise SaferInstructError(f"prompt template {path}: must start with a `### system|user` line and end with a user turn")
    return PromptTemplate(name=path.stem, path=path, text=text)
