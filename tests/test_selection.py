"""Robust by design: precision by the CPU's capability, a validation split, the checkpoint chosen on it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import ContextManager, Iterator

import pytest
import torch

from safer_instruct import device
from safer_instruct.errors import SaferInstructError
from safer_instruct.evaluate.runner import helpfulness_verdict
from safer_instruct.evaluate.select import Scored, choose
from safer_instruct.evaluate.stats import rate
from safer_instruct.pipeline.assemble import split_rows
from safer_instruct.pipeline.config import AssembleConfig


@pytest.fixture(autouse=True)
def fresh_announcement():
    device.announce_dtype.cache_clear()
    yield
    device.announce_dtype.cache_clear()


@pytest.mark.parametrize(
    "native, expected", [(True, torch.bfloat16), (False, torch.float32)], ids=["cpu-with-bf16", "cpu-avx2-only"]
)
def test_auto_precision_follows_the_cpu_kind(monkeypatch, capsys, native, expected) -> None:
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: native)
    assert device.pick_dtype("auto", "cpu") == expected
    assert device.pick_dtype("auto", "cpu") == expected
    assert device.resolve_bf16("auto", "cpu") is native
    assert (
        device.pick_dtype("float32", "cpu") == torch.float32 and device.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    )
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("precision:")]
    assert said == [
        f"precision: {str(expected).removeprefix('torch.')} on cpu "
        f"({'native bfloat16' if native else 'no native bfloat16'}; dtype/bf16: auto)"
    ]  # once


@pytest.mark.slow  # a fresh Python that imports torch
def test_a_cpu_limited_to_avx2_reads_as_the_slow_kind() -> None:
    """The probe is the one oneDNN uses: the env that makes a fast CPU behave like an AVX2-only one turns it off."""
    code = "from safer_instruct.device import cpu_bf16_native, pick_dtype; print(cpu_bf16_native(), pick_dtype('auto', 'cpu'))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "torch.float32"]


def test_thread_cap_reads_the_environment(monkeypatch) -> None:
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))  # torch read it: the kit leaves it
        monkeypatch.delenv(device.THREADS_ENV, raising=False)
        assert device.configure_threads() is None and torch.get_num_threads() == threads
        monkeypatch.setenv(device.THREADS_ENV, "lots")
        assert device.configure_threads() is None and torch.get_num_threads() == threads
        monkeypatch.setenv(device.THREADS_ENV, "1")
        assert device.configure_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("busy, expected", [(0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (9.0, 1)])
def test_unset_threads_take_the_cores_other_tasks_leave(monkeypatch, busy: float, expected: int) -> None:
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(device.THREADS_ENV, raising=False)
    monkeypatch.setattr(device, "CORES", 4)
    monkeypatch.setattr(device, "busy_cores", lambda: busy)
    try:
        assert device.configure_threads() == expected and torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(threads)


def extra_busy_cores_while(load: ContextManager) -> float:
    """``busy_cores`` with ``load`` running, less ``busy_cores`` before it (both measured on /proc/loadavg)."""
    quiet = device.busy_cores(samples=10)
    with load:
        time.sleep(0.5)
        return device.busy_cores(samples=10) - quiet


@contextmanager
def spinning_process() -> Iterator[None]:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


@contextmanager
def computing_thread() -> Iterator[None]:
    stop = threading.Event()

    def compute() -> None:
        x = torch.randn(384, 384)
        while not stop.is_set():
            x @ x  # releases the GIL: this thread and torch's workers run while the caller samples

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


@pytest.mark.slow  # a spinning process for a second
def test_a_spinning_process_counts_as_a_busy_core() -> None:
    """A job holding a core is seen, and counted once.

    As below, another task of the machine may run for a moment while it measures (in CI it once did while the quiet
    baseline was read: 0.0 extra); it does not last three tries."""
    assert any(0.6 <= extra_busy_cores_while(spinning_process()) <= 1.4 for _ in range(3))


@pytest.mark.slow  # this process computes in a second thread for a second
def test_this_process_own_work_is_not_a_busy_core() -> None:
    """Threads of this process (a generation running beside the one that asks, torch's workers) hold no core from it.

    Another task of the machine may run for a moment while it measures (it did once in CI); it does not last three
    tries, whereas this process's threads, were they counted, would be there in each."""
    assert any(extra_busy_cores_while(computing_thread()) <= 0.4 for _ in range(3))


@pytest.mark.slow  # a fresh Python that imports the kit and torch, twice
@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise(given, expected) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (
        {"OMP_WAIT_POLICY": given} if given else {}
    )
    code = "import os, safer_instruct, torch; print(os.environ['OMP_WAIT_POLICY'])"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        == expected
    )


def _scored(name: str, step: int, harmless: float, over_refusal: float) -> Scored:
    return Scored(name, f"/ckpt/{name}", step, harmless, over_refusal, 10, 10)


def test_choose_keeps_the_most_harmless_candidate_within_the_bound() -> None:
    sweep = [
        _scored("sft", 0, 1.0, 0.6),
        _scored("step 4", 4, 0.9, 0.1),
        _scored("step 8", 8, 0.7, 0.1),
        _scored("step 12", 12, 0.9, 0.0),
        _scored("step 16", 16, 0.5, 0.0),
    ]
    selection = choose(sweep, 0.15)
    assert selection.chosen == "step 12" and selection.within_bound  # 90% harmless, and the lower over-refusal
    assert choose(sweep, 0.6).chosen == "sft"
    assert [s["name"] for s in selection.as_dict()["sweep"]] == [s.name for s in sweep]


def test_choose_falls_back_to_the_fewest_needless_refusals_and_says_so() -> None:
    selection = choose(
        [_scored("sft", 0, 1.0, 0.6), _scored("step 4", 4, 0.8, 0.3), _scored("step 8", 8, 0.6, 0.3)], 0.15
    )
    assert selection.chosen == "step 4" and not selection.within_bound


def _rows(kind: str, n: int) -> list[dict]:
    return [{"id": f"{kind}-{i}", "kind": kind} for i in range(n)]


def test_validation_split_is_held_out_per_kind_and_deterministic() -> None:
    rows = _rows("safety", 50) + _rows("helpfulness", 60)
    splits = split_rows(rows, 0.0, seed=0, validation_fraction=0.2)
    assert not splits["test"]
    assert sorted(r["kind"] for r in splits["validation"]).count("safety") == 10
    assert sorted(r["kind"] for r in splits["validation"]).count("helpfulness") == 12
    assert not {r["id"] for r in splits["validation"]} & {r["id"] for r in splits["train"]}
    assert splits == split_rows(rows, 0.0, seed=0, validation_fraction=0.2)
    both = split_rows(rows, 0.1, seed=0, validation_fraction=0.2)
    assert len(both["test"]) == 11 and len(both["validation"]) == 22 and len(both["train"]) == 77
    tiny = split_rows(_rows("safety", 2), 0.5, seed=0, validation_fraction=0.5)
    assert len(tiny["train"]) == 1  # training keeps a row


def test_held_out_fractions_must_leave_rows_to_train_on() -> None:
    with pytest.raises(ValueError, match="leave rows to train on"):
        AssembleConfig(test_fraction=0.5, validation_fraction=0.5)


def test_helpfulness_verdict_is_undetermined_when_the_judge_mostly_ties() -> None:
    assert helpfulness_verdict(ties=21, judged=40, win_rate=rate(20, 40)) == "undetermined"
    assert helpfulness_verdict(ties=0, judged=0, win_rate=rate(0, 0)) == "undetermined"
    assert helpfulness_verdict(ties=0, judged=40, win_rate=rate(35, 40)) == "better"
    assert helpfulness_verdict(ties=0, judged=40, win_rate=rate(5, 40)) == "worse"
    assert helpfulness_verdict(ties=20, judged=40, win_rate=rate(21, 40)) == "no clear difference"


def test_checkpoints_saved_in_the_same_second_never_share_cached_answers(tmp_path) -> None:
    from safer_instruct.llm.cache import model_fingerprint

    folders = []
    for name, weights in (("checkpoint-1", b"\x01" * 64), ("checkpoint-2", b"\x02" * 64)):
        folder = tmp_path / name
        folder.mkdir()
        for file, content in (("adapter_model.safetensors", weights), ("adapter_config.json", b"{}")):
            (folder / file).write_bytes(content)
            os.utime(folder / file, (1_700_000_000, 1_700_000_000))
        folders.append(folder)
    assert model_fingerprint(str(folders[0])) != model_fingerprint(str(folders[1]))
    assert model_fingerprint(str(folders[0])) == model_fingerprint(str(folders[0]))


def test_the_full_demo_chooses_also_on_the_probes_held_out_requests(monkeypatch) -> None:
    from safer_instruct import demo
    from safer_instruct.pipeline import assemble
    from safer_instruct.pipeline.judge_probe import in_test_part, load_requests

    split = [
        {"kind": "safety", "prompt": [{"role": "user", "content": "Insult my neighbour."}]},
        {"kind": "helpfulness", "prompt": [{"role": "user", "content": "How do I boil an egg?"}]},
    ]
    monkeypatch.setattr(assemble, "load_preferences", lambda run_dir: {"validation": split})
    prompts = demo.validation_prompts(demo.DemoOptions())
    assert prompts["safety"][0] == "Insult my neighbour." and prompts["helpfulness"][0] == "How do I boil an egg?"
    assert len(prompts["safety"]) > 60 and len(prompts["helpfulness"]) > 60  # where the split has a handful
    probe = demo.pipeline_config(demo.DemoOptions()).filter.probe
    fitted = {r.prompt for r in load_requests(probe) if not in_test_part(r.id)}
    assert not fitted & {*prompts["safety"], *prompts["helpfulness"]}  # never a request the probe was fitted on
    tiny = demo.DemoOptions(tiny=True)
    assert demo.validation_prompts(tiny) == {
        "safety": ["Insult my neighbour."],
        "helpfulness": ["How do I boil an egg?"],
    }


def test_a_run_folder_refuses_a_rerun_with_other_settings(tmp_path) -> None:
    """A new seed would rebuild the dataset but keep the finished models and figures: refused, nothing touched."""
    from safer_instruct import demo

    run_dir = tmp_path / "run"
    demo.claim_run_dir(demo.DemoOptions(run_dir=run_dir))
    demo.claim_run_dir(demo.DemoOptions(run_dir=run_dir))  # the same settings resume
    recorded = (run_dir / demo.RUN_OPTIONS_FILE).read_bytes()
    with pytest.raises(SaferInstructError, match=r"--seed 0 \(now --seed 1\), no --tiny \(now --tiny\)"):
        demo.claim_run_dir(demo.DemoOptions(run_dir=run_dir, seed=1, tiny=True))
    assert (run_dir / demo.RUN_OPTIONS_FILE).read_bytes() == recorded
    (run_dir / demo.RUN_OPTIONS_FILE).write_text("[1, 2]")
    with pytest.raises(SaferInstructError, match=r"demo\.json: not the options a demo run records"):
        demo.claim_run_dir(demo.DemoOptions(run_dir=run_dir))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"over_refusal_bound": 15.0}, r"--over-refusal-bound 15.0: expected a share from 0 to 1"),
        ({"seed": -1}, r"--seed -1"),
    ],
    ids=["bound-as-a-percentage", "negative-seed"],
)
def test_demo_options_that_would_mislead_are_refused_before_any_work(tmp_path, monkeypatch, options, message) -> None:
    """A bound of 15 (meant as 15%) would let every checkpoint through and keep the least cautious one."""
    from safer_instruct import demo

    def work_began() -> None:
        raise AssertionError("the demo began its work")

    monkeypatch.setattr(demo, "check_kit_files", work_began)
    with pytest.raises(SaferInstructError, match=message):
        demo.run_demo(demo.DemoOptions(run_dir=tmp_path / "run", **options))
    assert not (tmp_path / "run").exists()
