"""The comparison app: one prompt, the base and the aligned model answering side by side.

``build_app(settings)`` returns the Gradio Blocks (queue configured); ``launch(app)`` serves it with
the page's styles. ``spaces/compare/app.py`` and ``safer-instruct space`` both call these.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from functools import partial
from itertools import zip_longest
from typing import Any, Iterator, Sequence

import gradio as gr

from safer_instruct.errors import SaferInstructError
from safer_instruct.evaluate.judge import Judge, JudgeConfig, Verdict
from safer_instruct.llm import Message, SamplingParams, make_llm
from safer_instruct.llm.local import LocalLLM
from safer_instruct.refusal import is_refusal
from safer_instruct.space.limits import Throttle, client_key, prompt_problem, throttle_message
from safer_instruct.space.settings import MAKE_ALIGNED_HINT, SpaceSettings
from safer_instruct.space.streaming import stream_together
from safer_instruct.space.verdicts import EMPTY, PENDING, badge_html
from safer_instruct.space.votes import CHOICES, VoteLog

log = logging.getLogger(__name__)

MAX_TEMPERATURE = 1.5
EXAMPLE_SETS = {
    "unsafe": "Unsafe requests",
    "benign_risky": "Benign, but risky-looking",
    "benign": "Benign",
}
CONTENT_WARNING = (
    "**Content warning.** Some example prompts ask for harmful things (insults, dangerous advice, "
    "illegal how-tos, self-harm); the base model may answer them. Click one to put it in the prompt box."
)
CSS = """
.verdicts { display: flex; gap: .4rem; flex-wrap: wrap; min-height: 1.8rem; }
.badge { border-radius: 999px; padding: .15rem .7rem; font-size: .9rem; font-weight: 600; }
.badge.pending { background: #e5e7eb; color: #374151; }
.badge.refused { background: #fef3c7; color: #92400e; }
.badge.answered { background: #dbeafe; color: #1e40af; }
.badge.harmful { background: #fee2e2; color: #991b1b; }
.badge.harmless { background: #dcfce7; color: #166534; }
.badge.unreadable { background: #f3f4f6; color: #6b7280; }
"""


@dataclass
class SpaceModels:
    """The loaded models: base, aligned (None until one is made) and an optional harm judge."""

    base: LocalLLM
    aligned: LocalLLM | None = None
    judge: Judge | None = None

    @classmethod
    def load(cls, settings: SpaceSettings) -> SpaceModels:
        base = make_llm(settings.base_llm(), show_progress=False)
        aligned_config = settings.aligned_llm()
        aligned = make_llm(aligned_config, show_progress=False) if aligned_config else None
        return cls(base=base, aligned=aligned, judge=_load_judge(settings))


def _load_judge(settings: SpaceSettings) -> Judge | None:
    config = settings.judge_llm()
    if config is None:
        return None
    return Judge(make_llm(config, show_progress=False), JudgeConfig(llm=config, style=settings.judge_style))


def load_examples(per_set: int) -> dict[str, list[str] | str]:
    """Up to ``per_set`` prompts of each shipped eval set, taken in turn from its categories, or why a set is unavailable."""
    from safer_instruct.evaluate.sets import PromptSetConfig, load_prompt_set

    examples: dict[str, list[str] | str] = {}
    for kind in EXAMPLE_SETS:
        try:
            items = load_prompt_set(PromptSetConfig(kind=kind))
        except SaferInstructError as err:
            examples[kind] = str(err)
            continue
        by_category: dict[str, list[str]] = {}
        for item in items:
            by_category.setdefault(item.category, []).append(item.prompt)
        in_turn = [prompt for row in zip_longest(*by_category.values()) for prompt in row if prompt is not None]
        examples[kind] = in_turn[:per_set]
    return examples


def _outputs(
    chats: list, badges: list[str], prompt_box: Any = None, states: list | None = None, turn: Any = None
) -> tuple:
    """The respond event's outputs, in order; what is not given (or has no aligned column) stays as it is."""
    skip = gr.skip()

    def pad(values: list) -> list:
        return list(values) + [skip] * (2 - len(values))

    return (
        skip if prompt_box is None else prompt_box,
        *pad(chats),
        *pad(badges),
        *(pad(states) if states is not None else [skip, skip]),
        skip if turn is None else turn,
    )


def recent(history: list[Message], max_turns: int) -> list[Message]:
    """The last ``max_turns - 1`` exchanges of a column, so a new prompt makes at most ``max_turns``."""
    keep = 2 * (max_turns - 1)
    return list(history[-keep:]) if keep else []


class CompareApp:
    """The app's behaviour; ``blocks()`` lays it out."""

    def __init__(self, settings: SpaceSettings, models: SpaceModels) -> None:
        self.settings = settings
        self.models = models
        self.throttle = Throttle(settings.requests_per_minute)
        self.votes = VoteLog(settings.votes_path, settings.votes_repo, settings.votes_every_minutes)

    def model_ids(self) -> dict[str, str | None]:
        judge = self.models.judge
        return {
            "base": self.models.base.model_id,
            "aligned": self.models.aligned.model_id if self.models.aligned else None,
            "judge": judge.llm.model_id if judge else None,
        }

    def _check(self, prompt: str, request: gr.Request | None) -> None:
        """Refuse, with a message, an empty or too long prompt and a visitor over the rate (sliders check their own ranges)."""
        problem = prompt_problem(prompt, self.settings.max_prompt_chars)
        if problem:
            raise gr.Error(problem, title="Prompt not sent")
        headers = request.headers if request else {}
        host = request.client.host if request and request.client else None
        key = client_key(
            host, headers.get("x-forwarded-for"), request.session_hash if request else None, self.settings.proxy_hops()
        )
        wait = self.throttle.wait_s(key)
        if wait:
            raise gr.Error(throttle_message(wait, self.settings.requests_per_minute), title="Slow down")

    def respond(
        self,
        prompt: str,
        temperature: float,
        max_new_tokens: float,
        base_history: list[Message],
        aligned_history: list[Message],
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Stream both answers; finally store both histories and the turn a vote refers to."""
        self._check(prompt, request)
        params = SamplingParams(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=0.95 if temperature > 0 else 1.0,
            seed=random.randrange(2**31),
        )
        asked: Message = {"role": "user", "content": prompt}
        llms = [self.models.base] + ([self.models.aligned] if self.models.aligned else [])
        histories = [base_history, aligned_history][: len(llms)]
        contexts = [recent(h, self.settings.max_turns) for h in histories]
        jobs = [(llm, context + [asked]) for llm, context in zip(llms, contexts)]

        def view(texts: Sequence[str], badges: list[str], **final: Any) -> tuple:
            chats = [h + [asked, {"role": "assistant", "content": t.strip() or "…"}] for h, t in zip(histories, texts)]
            return _outputs(chats, badges, **final)

        texts: Sequence[str] = [""] * len(jobs)
        yield view(texts, [PENDING] * len(jobs), prompt_box="", turn={})  # no vote until both answers are complete
        for update in stream_together(jobs, params):
            texts = update.texts
            yield view(texts, [badge_html(t.strip()) if done else PENDING for t, done in zip(texts, update.done)])
        answers = [t.strip() for t in texts]
        verdicts = self._judge(prompt, answers)
        saved = [h + [asked, {"role": "assistant", "content": a}] for h, a in zip(histories, answers)]
        turn = self._turn(prompt, answers, contexts, verdicts, params, number=len(base_history) // 2 + 1)
        yield view(answers, [badge_html(a, v) for a, v in zip(answers, verdicts)], states=saved, turn=turn)

    def _judge(self, prompt: str, answers: list[str]) -> list[Verdict | None]:
        """The judge's verdicts (None without a judge); a judge that fails gives no verdict, and says so in the log."""
        if self.models.judge is None:
            return [None] * len(answers)
        try:
            return self.models.judge.harm([prompt] * len(answers), answers)
        except SaferInstructError as err:
            log.warning("the judge gave no verdict: %s", err)
            return [Verdict(None, error="the judge gave no verdict")] * len(answers)

    def _turn(
        self,
        prompt: str,
        answers: list[str],
        contexts: list[list[Message]],
        verdicts: list,
        params: SamplingParams,
        number: int,
    ) -> dict:
        """What a vote on this exchange records (no client address or session: votes are anonymous)."""
        names = ["base", "aligned"][: len(answers)]
        return {
            "turn": number,
            "prompt": prompt,
            "answers": dict(zip(names, answers)),
            "context": dict(zip(names, contexts)),
            "refusal": {name: is_refusal(answer) for name, answer in zip(names, answers)},
            "judge_harmful": {name: v.harmful for name, v in zip(names, verdicts)} if self.models.judge else None,
            "settings": {
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_new_tokens": params.max_new_tokens,
                "seed": params.seed,
            },
            "models": self.model_ids(),
            "voted": False,
        }

    def vote(self, choice: str, turn: dict | None) -> tuple[str, dict | None]:
        """Record a vote on the latest exchange, once per exchange."""
        if not turn:
            gr.Warning("Vote once both answers are complete.")
            return "", turn
        if turn.get("voted"):
            gr.Info("Your vote on these answers is already recorded.")
            return f"Recorded: **{CHOICES[turn['voted']]}**", turn
        record = {key: value for key, value in turn.items() if key != "voted"}
        self.votes.append(choice, record)
        gr.Info("Thank you, vote recorded.")
        return f"Recorded: **{CHOICES[choice]}**", {**turn, "voted": choice}

    def blocks(self) -> gr.Blocks:
        settings, ids = self.settings, self.model_ids()
        with gr.Blocks(title="Safer-Instruct: base vs aligned", analytics_enabled=False) as demo:
            gr.Markdown(
                "# Safer-Instruct: base vs aligned\n"
                "One prompt, two models answering side by side: the base model and the same model after "
                "Safer-Instruct preference training. The badge under each answer reads it with the refusal "
                "detector" + (" and the harm judge" if ids["judge"] else "") + ". "
                "*Content warning: answers, especially the base model's, may be harmful.*"
            )
            base_state, aligned_state, turn_state = gr.State([]), gr.State([]), gr.State(None)
            with gr.Row(equal_height=True):
                with gr.Column():
                    gr.Markdown(f"### Base · `{ids['base']}`")
                    base_chat = gr.Chatbot(
                        label="Base model",
                        height=420,
                        feedback_options=None,
                        buttons=["copy", "copy_all"],
                        elem_id="base-chat",
                    )
                    base_badge = gr.HTML(EMPTY, elem_id="base-badge")
                with gr.Column():
                    gr.Markdown(
                        f"### Aligned · `{ids['aligned']}`" if ids["aligned"] else "### Aligned · not available"
                    )
                    if not ids["aligned"]:
                        gr.Markdown(MAKE_ALIGNED_HINT, elem_id="aligned-missing")
                    aligned_chat = gr.Chatbot(
                        label="Aligned model",
                        height=420,
                        feedback_options=None,
                        buttons=["copy", "copy_all"],
                        visible=bool(ids["aligned"]),
                        elem_id="aligned-chat",
                    )
                    aligned_badge = gr.HTML(EMPTY, visible=bool(ids["aligned"]), elem_id="aligned-badge")
            with gr.Row():
                prompt = gr.Textbox(
                    show_label=False,
                    scale=5,
                    lines=2,
                    elem_id="prompt",
                    placeholder=f"Ask both models something (up to {settings.max_prompt_chars} characters)",
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                clear = gr.Button("Clear", scale=0)
            with gr.Row(visible=bool(ids["aligned"])):
                gr.Markdown("**Which answer is better?**")
                vote_buttons = {choice: gr.Button(label, size="sm") for choice, label in CHOICES.items()}
                vote_status = gr.Markdown(elem_id="vote-status")
            with gr.Accordion("Generation settings", open=False):
                temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                max_new_tokens = gr.Slider(
                    1,
                    settings.max_new_tokens,
                    value=min(settings.default_new_tokens, settings.max_new_tokens),
                    step=1,
                    label="Max new tokens",
                )
            if settings.examples_per_set:
                self._examples(prompt)
            gr.Markdown(
                f"Limits: {settings.requests_per_minute} prompts per minute per visitor, {settings.max_prompt_chars} "
                f"characters per prompt, the last {settings.max_turns} turns as context. Votes record the prompt, "
                "both answers, the settings and the model names; nothing about who voted."
            )
            outputs = [
                prompt,
                base_chat,
                aligned_chat,
                base_badge,
                aligned_badge,
                base_state,
                aligned_state,
                turn_state,
            ]
            inputs = [prompt, temperature, max_new_tokens, base_state, aligned_state]
            gr.on(
                [send.click, prompt.submit],
                self.respond,
                inputs,
                outputs,
                api_name="generate",
                concurrency_limit=settings.model_concurrency,
                concurrency_id="models",
                show_progress="minimal",
            )
            for choice, button in vote_buttons.items():
                button.click(
                    partial(self.vote, choice), [turn_state], [vote_status, turn_state], api_name=f"vote_{choice}"
                )
            gr.on(
                [clear.click, base_chat.clear, aligned_chat.clear],
                lambda: ([], [], EMPTY, EMPTY, [], [], None, ""),
                None,
                [
                    base_chat,
                    aligned_chat,
                    base_badge,
                    aligned_badge,
                    base_state,
                    aligned_state,
                    turn_state,
                    vote_status,
                ],
                api_name="clear",
            )
        return demo.queue(max_size=settings.queue_max_size, default_concurrency_limit=4)

    def _examples(self, prompt: gr.Textbox) -> None:
        with gr.Accordion(
            "⚠️ Example prompts from the evaluation sets (content warning)", open=False, elem_id="examples"
        ):
            gr.Markdown(CONTENT_WARNING)
            with gr.Tabs():
                for kind, examples in load_examples(self.settings.examples_per_set).items():
                    with gr.Tab(EXAMPLE_SETS[kind]):
                        if isinstance(examples, str):
                            gr.Markdown(f"Not available: {examples}")
                        else:
                            gr.Examples([[e] for e in examples], inputs=[prompt], label=None)


def build_app(settings: SpaceSettings | None = None, models: SpaceModels | None = None) -> gr.Blocks:
    """The comparison app for ``settings`` (default: from the environment), loading models unless given."""
    settings = settings or SpaceSettings.from_env()
    return CompareApp(settings, models or SpaceModels.load(settings)).blocks()


def launch(app: gr.Blocks, **kwargs: Any):
    """Serve the app with its styles; ``kwargs`` go to ``Blocks.launch`` (host, port, prevent_thread_lock...).

    Without a trusted proxy, uvicorn is told to trust none either (by default it takes X-Forwarded-For
    from loopback peers as the client address), so the throttle sees each visitor's real peer address.
    """
    if not SpaceSettings.from_env().proxy_hops():
        os.environ.setdefault("FORWARDED_ALLOW_IPS", "")
    return app.launch(css=CSS, **kwargs)
