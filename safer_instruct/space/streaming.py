"""Stream answers from several local models at the same time, one thread per model."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from safer_instruct.llm import Prompt, SamplingParams
from safer_instruct.llm.local import LocalLLM


@dataclass(frozen=True)
class PairUpdate:
    """Every answer so far; ``done[i]`` once answer ``i`` is complete."""

    texts: tuple[str, ...]
    done: tuple[bool, ...]


_FINISHED = object()


def stream_together(jobs: Sequence[tuple[LocalLLM, Prompt]], params: SamplingParams) -> Iterator[PairUpdate]:
    """Run every (model, prompt) job in its own thread; yield all answers each time any grows.

    Pieces that arrive together are merged into one update. Closing the iterator stops every
    model at its next token. A model's error is raised here once the others are stopped.
    """
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def run(index: int, llm: LocalLLM, prompt: Prompt) -> None:
        stream = llm.stream(prompt, params)
        try:
            for piece in stream:
                events.put((index, piece))
                if cancelled.is_set():
                    break
        except Exception as err:  # handed to the consuming thread
            events.put((index, err))
        finally:
            stream.close()
            events.put((index, _FINISHED))

    texts, done = [""] * len(jobs), [False] * len(jobs)
    threads = [
        threading.Thread(target=run, args=(i, llm, prompt), daemon=True, name=f"answer-{i}")
        for i, (llm, prompt) in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    try:
        while not all(done):
            batch = [events.get()]
            while not events.empty():
                batch.append(events.get())
            for index, item in batch:
                if isinstance(item, Exception):
                    raise item
                if item is _FINISHED:
                    done[index] = True
                else:
                    texts[index] += item
            yield PairUpdate(tuple(texts), tuple(done))
    finally:
        cancelled.set()
        for thread in threads:
            thread.join()
