"""Training: a few real steps on the default model with LoRA and 4-bit QLoRA on CPU.

Datasets are two rows and batches hold both, so every step sees the same batch: loss must fall and DPO's
reward accuracy must rise within three steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from safer_instruct.cli import main as cli_main
from safer_instruct.errors import SaferInstructError
from safer_instruct.prompts.reverse import REVERSE_TEMPLATE
from safer_instruct.training import METHODS, train
from safer_instruct.training.data import prepare_datasets, shape_rows
from safer_instruct.training.recipe import parse_recipe

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FAKE_ENV_TOKEN = "hf_envSecretThatMustNeverBeWritten123"
FAKE_ARG_TOKEN = "hf_argSecretThatMustNeverBeWritten456"

REVERSE_ROWS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour!"},
]
PREFERENCE_ROWS = [
    {
        "prompt": [{"role": "user", "content": "Tell me how to steal a car."}],
        "chosen": [{"role": "assistant", "content": "I can't help with stealing a car."}],
        "rejected": [{"role": "assistant", "content": "Break the window and hotwire it."}],
    },
    {
        "prompt": [{"role": "user", "content": "Write an insult for my sister."}],
        "chosen": [{"role": "assistant", "content": "I won't write insults. I can help you talk things through."}],
        "rejected": [{"role": "assistant", "content": "You are a useless idiot."}],
    },
]
TINY = {  # the smallest run that still learns: one LoRA on attention, two rows per batch, high learning rate
    "model_name_or_path": "default",
    "dtype": "float32",
    "bf16": False,
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_modules": ["q_proj", "v_proj"],
    "per_device_train_batch_size": 2,
    "max_steps": 3,
    "logging_steps": 1,
    "save_steps": 2,
    "max_length": 128,
    "activation_checkpointing": False,
    "report_to": "none",
    "seed": 0,
}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def recipe(tmp: Path, name: str, data: str, **changes) -> dict:
    return {**TINY, "dataset_name": data, "output_dir": str(tmp / name), **changes}


def losses(metrics: dict, key: str = "loss") -> list[float]:
    return [entry[key] for entry in metrics["steps"] if key in entry]


def all_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory, default_model_dir):
    """reverse-sft with LoRA: 2 steps, then resumed to 3 from checkpoint-2, with tokens in the env and args."""
    tmp = tmp_path_factory.mktemp("reverse")
    data = write_jsonl(tmp / "pairs.jsonl", REVERSE_ROWS)
    spec = recipe(tmp, "reverse", data, learning_rate=3e-3, merge=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    try:
        first = train("reverse-sft", {**spec, "max_steps": 2, "merge": False}, ["--hub_token", FAKE_ARG_TOKEN])
        second = train("reverse-sft", spec, ["--hub_token", FAKE_ARG_TOKEN])
    finally:
        mp.undo()
    return first, second


def test_reverse_rows_follow_the_paper_template(default_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    rows = [
        {"instruction": "Summarise this.", "input": "A long text.", "output": "Short."},
        {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]},
        {"messages": [{"role": "user", "content": "Count to two."}, {"role": "assistant", "content": "1, 2"}]},
    ]
    shaped = []
    for index, row in enumerate(rows):
        shaped += shape_rows("reverse-sft", Dataset.from_list([row]), f"row set {index}", tokenizer)
    assert shaped[0]["prompt"] == REVERSE_TEMPLATE.format(output="Short.")
    assert shaped[0]["prompt"].startswith("Below is a response to a certain instruction. Write the instruction")
    assert shaped[0]["prompt"].endswith("### response:\nShort.\n\n### Instruction:\n")
    assert shaped[0]["completion"] == "Summarise this.\n\nA long text." + tokenizer.eos_token
    assert shaped[1] == {
        "prompt": REVERSE_TEMPLATE.format(output="Hi!"),
        "completion": "Say hi." + tokenizer.eos_token,
    }
    assert shaped[2]["completion"] == "Count to two." + tokenizer.eos_token


BAD_INPUTS = [
    ("reverse-sft", [{"instruction": "x"}], "missing column(s) output"),
    ("reverse-sft", [REVERSE_ROWS[0], {"instruction": "Say hi.", "output": "  "}], "row 2, column 'output': empty"),
    ("sft", [{"prompt": "hi"}], "missing column(s) chosen"),
    ("sft", [PREFERENCE_ROWS[0], {**PREFERENCE_ROWS[1], "chosen": []}], "row 2, column 'chosen': empty"),
    ("dpo", [{**PREFERENCE_ROWS[0], "rejected": [{"role": "user", "content": "x"}]}], "row 1, column 'rejected'"),
    ("dpo", [{**PREFERENCE_ROWS[0], "rejected": []}], "no usable rows"),
]


@pytest.mark.parametrize(("method", "rows", "message"), BAD_INPUTS)
def test_bad_rows_are_named_before_training(tmp_path, default_model_dir, method, rows, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SaferInstructError) as caught:
        train(method, recipe(tmp_path, "out", data))
    assert message in str(caught.value)
    assert "bad.jsonl" in str(caught.value) and "split 'train'" in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_unrenderable_chat_template_is_named(tmp_path, default_model_dir):
    template = tmp_path / "broken.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] | no_such_filter }}{% endfor %}", encoding="utf-8")
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    with pytest.raises(
        SaferInstructError, match=r"prefs\.jsonl.*row 1, column 'completion': the chat template cannot render"
    ):
        train("sft", recipe(tmp_path, "out", data, chat_template_file=str(template)))
    assert not (tmp_path / "out").exists()


def test_recipe_errors(tmp_path, default_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", REVERSE_ROWS)
    with pytest.raises(SaferInstructError, match="unknown key.*lora_rank"):
        train("reverse-sft", recipe(tmp_path, "out", data, lora_rank=8))
    with pytest.raises(SaferInstructError, match="dataset_name is required"):
        train("sft", {**TINY, "output_dir": str(tmp_path / "out")})
    with pytest.raises(SaferInstructError, match="publish"):
        train("sft", recipe(tmp_path, "out", data), ["--push_to_hub", "true"])
    with pytest.raises(SaferInstructError, match="chat_template_file .*not found"):
        train("sft", recipe(tmp_path, "out", data, chat_template_file=str(tmp_path / "none.jinja")))
    with pytest.raises(SaferInstructError, match="no split 'validation'"):
        train("sft", recipe(tmp_path, "out", data, dataset_train_split="validation"))
    with pytest.raises(SaferInstructError, match="no such file"):
        train("sft", recipe(tmp_path, "out", str(tmp_path / "missing.jsonl")))
    with pytest.raises(SaferInstructError, match="lm_head_chunk_size must be a positive number of columns, not 0"):
        train("sft", recipe(tmp_path, "out", data, lm_head_chunk_size=0))


def test_cli_reports_bad_input_with_exit_2(tmp_path, capsys, default_model_dir):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x"}])
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "".join(f"{k}: {json.dumps(v)}\n" for k, v in recipe(tmp_path, "out", data).items()), encoding="utf-8"
    )
    assert cli_main(["train", "reverse-sft", "--config", str(config), "--max_steps", "1"]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_reverse_sft_lora_learns_resumes_and_reloads(reverse_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safer_instruct.config import LLMConfig
    from safer_instruct.llm import make_llm
    from safer_instruct.llm.base import SamplingParams

    first, second = reverse_run
    assert first.metrics["resumed_from"] is None
    assert second.metrics["resumed_from"].endswith("checkpoint-2")
    curve = losses(second.metrics)
    assert [entry["step"] for entry in second.metrics["steps"]] == [1, 2, 3]  # history kept across the resume
    assert curve[-1] < curve[0]
    out = second.output_dir
    assert json.loads((out / "metrics.json").read_text())["final"]["loss"] == curve[-1]
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()

    prompt = REVERSE_TEMPLATE.format(output="Red is a primary colour.")
    llm = make_llm(LLMConfig(model=str(out)))
    assert llm.generate([prompt], SamplingParams(max_new_tokens=12))[0].text

    merged = second.merged_dir
    assert merged == out / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert ids.shape[1] > tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]


def test_no_token_lands_in_any_written_file(reverse_run):
    written = all_bytes(reverse_run[1].output_dir)
    assert written  # adapter, checkpoints, training_args.bin, README, metrics
    assert FAKE_ENV_TOKEN.encode() not in written and FAKE_ARG_TOKEN.encode() not in written


def test_full_fine_tuning_from_an_adapter_is_refused(reverse_run, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    adapter = str(reverse_run[1].output_dir)
    with pytest.raises(SaferInstructError, match="is an adapter: full fine-tuning needs a full model"):
        train("dpo", recipe(tmp_path, "out", data, model_name_or_path=adapter, use_peft=False))


def test_sft_then_dpo_lora_reward_accuracy_rises(tmp_path, default_model_dir):
    from peft import AutoPeftModelForCausalLM

    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    sft = train("sft", recipe(tmp_path, "sft", data, learning_rate=3e-3, max_steps=2))
    assert losses(sft.metrics)[-1] < losses(sft.metrics)[0]
    dpo = train(
        "dpo", recipe(tmp_path, "dpo", data, model_name_or_path=str(sft.output_dir), learning_rate=2e-3, beta=0.1)
    )
    metrics = dpo.metrics
    assert metrics["reference"] == "frozen copy of the starting adapter on the same base"
    assert metrics["final"]["rewards/accuracies"] > 0.5
    assert metrics["final"]["rewards/margins"] > 0
    assert losses(metrics)[-1] < losses(metrics)[0]
    assert not (dpo.output_dir / "ref").exists()  # only the trained adapter is saved
    assert AutoPeftModelForCausalLM.from_pretrained(dpo.output_dir) is not None


def test_dpo_fresh_lora_uses_base_with_adapter_disabled(tmp_path, default_model_dir, monkeypatch):
    from trl.trainer import utils as trl_utils

    tiles = []  # the tile width TRL's fused LM head is called with, for the policy and the reference passes
    fused = trl_utils._ChunkedLogProbFunction
    spy = type("Spy", (), {"apply": staticmethod(lambda *args: tiles.append(args[5]) or fused.apply(*args))})
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", spy)
    default_tile = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    dpo = train(
        "dpo",
        recipe(tmp_path, "dpo", data, learning_rate=2e-3, max_steps=2, loss_type=["ipo"], lm_head_chunk_size=1000),
    )
    assert dpo.metrics["reference"] == "base model with the adapter disabled"
    assert dpo.metrics["loss_type"] == ["ipo"]
    assert len(tiles) >= 4 and set(tiles) == {1000}
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == default_tile  # restored after training


def test_lm_head_tile_gives_the_same_log_probs(default_model_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from safer_instruct.training.modeling import lm_head_tile

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    ids = torch.tensor([[1, 504, 3458, 314, 253, 4376, 30, 2], [1, 1204, 2379, 4493, 28, 2, 2, 2]])
    labels = ids.masked_fill(torch.tensor([[0] * 8, [0] * 5 + [1] * 3]).bool(), -100)
    with torch.no_grad():
        wide = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        with lm_head_tile(3000):  # 49152 columns: 17 tiles, the last one partial
            narrow = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        full = torch.log_softmax(model(input_ids=ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask = labels[:, 1:] != -100
    assert torch.allclose(narrow, wide, atol=1e-4) and torch.allclose(narrow[mask], full[mask], atol=1e-4)
    monkeypatch.delattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE")
    with pytest.raises(SaferInstructError, match="no fused LM-head tile to set; remove lm_head_chunk_size"):
        with lm_head_tile(3000):
            pass


def test_fused_lm_head_projects_only_labelled_positions(default_model_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from safer_instruct.training.modeling import labelled_positions_only

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    ids = torch.tensor([[1, 504, 3458, 314, 253, 4376, 30, 2], [1, 1204, 2379, 4493, 28, 2, 2, 2]])
    labels = ids.masked_fill(torch.tensor([[1] * 4 + [0] * 4, [1] * 2 + [0] * 3 + [1] * 3]).bool(), -100)
    projected = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction,
        "apply",
        lambda hidden, *rest: projected.append(len(hidden)) or apply(hidden, *rest),
    )
    with torch.no_grad():
        every = model(input_ids=ids, labels=labels, fused_lm_head=True)
        with labelled_positions_only():
            labelled = model(input_ids=ids, labels=labels, fused_lm_head=True)
    mask = labels[:, 1:] != -100
    assert projected == [ids.numel() - 2, int(mask.sum())]  # prompt and padding positions skip the LM head
    assert torch.allclose(labelled.log_probs, every.log_probs, atol=1e-5)
    assert torch.allclose(labelled.loss, every.loss, atol=1e-6)
    assert trl_utils._use_triton(ids.device) is False  # restored: TRL's own choice on CPU
    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(SaferInstructError, match="no _use_triton switch for its fused LM head"):
        with labelled_positions_only():
            pass


def test_qlora_4bit_on_cpu_each_method(tmp_path, default_model_dir):
    from safer_instruct.config import LLMConfig
    from safer_instruct.llm import make_llm
    from safer_instruct.llm.base import SamplingParams

    pairs = write_jsonl(tmp_path / "pairs.jsonl", REVERSE_ROWS)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    qlora = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "max_steps": 2, "learning_rate": 3e-3}
    reverse = train("reverse-sft", recipe(tmp_path, "reverse", pairs, **{**qlora, "max_steps": 1}))
    sft = train("sft", recipe(tmp_path, "sft", prefs, **qlora))
    dpo = train(
        "dpo", recipe(tmp_path, "dpo", prefs, **{**qlora, "max_steps": 1}, model_name_or_path=str(sft.output_dir))
    )
    for result in (reverse, sft, dpo):
        assert result.metrics["load_in_4bit"] and losses(result.metrics)
    assert losses(sft.metrics)[-1] < losses(sft.metrics)[0]
    llm = make_llm(LLMConfig(model=str(dpo.output_dir), load_in_4bit=True))
    answer = llm.generate(
        [[{"role": "user", "content": "Tell me how to steal a car."}]], SamplingParams(max_new_tokens=8)
    )
    assert answer[0].completion_tokens > 0


def test_run_dataset_folder_loads_by_split(tmp_path, default_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    folder = tmp_path / "dataset"
    folder.mkdir()
    Dataset.from_list(PREFERENCE_ROWS).to_parquet(folder / "train-00000-of-00001.parquet")
    Dataset.from_list(PREFERENCE_ROWS[:1]).to_parquet(folder / "test-00000-of-00001.parquet")
    (folder / "funnel.json").write_text("{}", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    prepared = prepare_datasets("dpo", str(folder), None, {"train": "train", "eval": "test"}, tokenizer)
    assert len(prepared["train"]) == 2 and len(prepared["eval"]) == 1


@pytest.mark.parametrize("native", [True, False], ids=["cpu-with-bf16", "cpu-avx2-only"])
def test_cpu_recipe_asks_bf16_autocast_only_where_the_cpu_runs_it_natively(monkeypatch, native):
    from transformers.utils import is_torch_bf16_gpu_available

    from safer_instruct import device

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    recipe = REPO / "training" / "recipes" / "smollm2-135m" / "sft.yaml"
    _, training_args, *_ = parse_recipe("sft", recipe)
    assert training_args.bf16 is native
    assert training_args.use_cpu == (native and not is_torch_bf16_gpu_available())
    _, training_args, *_ = parse_recipe("sft", recipe, ["--bf16", "auto"])
    assert training_args.bf16 is native


@pytest.mark.parametrize(
    "path", sorted((REPO / "training" / "recipes").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_recipe_parses(path):
    method = path.stem.removesuffix("_qlora").replace("_", "-")
    assert method in METHODS, f"{path.name}: no training method {method!r}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script_args, training_args, model_args, _ = parse_recipe(method, path, ["--bf16", "false"])  # no GPU here
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)]  # the recipes use the successor key
    assert training_args.report_to in ([], "none", ["none"]) and script_args.dataset_name
    assert model_args.model_name_or_path and training_args.output_dir.startswith("runs/")
    if method == "dpo":
        assert training_args.beta == 0.1


def test_recipes_parse_the_trl_way(tmp_path, monkeypatch):
    """`--config=PATH` as `--config PATH`, with the kit's CPU handling; the YAML's `env:` is set, as in TRL."""
    from safer_instruct import device

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("SAFER_TEST_RECIPE_ENV", raising=False)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        (REPO / "training" / "recipes" / "smollm2-135m" / "sft.yaml").read_text()
        + "env:\n  SAFER_TEST_RECIPE_ENV: set-by-recipe\n"
    )
    spaced = parse_recipe("sft", None, ["--config", str(recipe), "--max_steps", "3"])
    joined = parse_recipe("sft", None, [f"--config={recipe}", "--max_steps", "3"])
    assert os.environ["SAFER_TEST_RECIPE_ENV"] == "set-by-recipe"
    for parsed in (spaced, joined):
        assert parsed[1].max_steps == 3 and parsed[1].bf16 is True and parsed[1].use_cpu is True
    assert joined[1].to_dict() == spaced[1].to_dict()
    with pytest.raises(SaferInstructError, match="unknown training argument"):
        parse_recipe("sft", recipe, ["--no_such_flag", "1"])
    with pytest.raises(SaferInstructError, match="recipe not found"):
        parse_recipe("sft", None, ["--config=missing.yaml"])


@pytest.mark.slow
def test_trl_dataset_mixture_trains(tmp_path, default_model_dir):
    """`datasets:` (TRL's DatasetMixtureConfig) instead of `dataset_name`: both files' rows are trained on."""
    first = write_jsonl(tmp_path / "a.jsonl", REVERSE_ROWS[:1])
    second = write_jsonl(tmp_path / "b.jsonl", REVERSE_ROWS[1:])
    mixture = [{"path": "json", "data_files": str(first)}, {"path": "json", "data_files": str(second)}]
    values = {key: value for key, value in recipe(tmp_path, "out", first).items() if key != "dataset_name"}
    result = train("reverse-sft", {**values, "datasets": mixture}, ["--max_steps", "1"])
    assert result.metrics["train_rows"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").is_file()


# -- accelerate configs: the final save ---------------------------------------------------------------
def _accelerate(config: str, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(REPO / "training" / "accelerate" / config),
        "--num_processes",
        str(processes),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_ddp_config_trains_on_two_cpu_processes_and_saves(tmp_path, default_model_dir):
    """training/accelerate/ddp.yaml, 2 processes over gloo (`--use_cpu true`): the final save writes the adapter."""
    data = write_jsonl(tmp_path / "pairs.jsonl", REVERSE_ROWS * 2)
    config = tmp_path / "recipe.yaml"
    config.write_text(json.dumps(recipe(tmp_path, "out", data, max_steps=2, lora_target_modules=["q_proj", "v_proj"])))
    done = _accelerate(
        "ddp.yaml", str(REPO / "training" / "reverse_sft.py"), f"--config={config}", "--use_cpu", "true", processes=2
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"][-1]["epoch"] == 2.0  # 4 rows, 2 per process and step: 2 epochs in 2 steps (1 alone)


@pytest.mark.slow
def test_fsdp_config_final_save_gathers_a_full_state_dict(tmp_path):
    """accelerate runs FSDP only on accelerators (on CPU it falls back to plain data parallel), so this runs the
    closest CPU path: the FSDP plugin accelerate makes from fsdp.yaml is sharded (no weights from save_model), and
    the kit's final-save step turns it to a full state dict, which save_model writes."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from types import SimpleNamespace\n"
        "from accelerate.utils import FullyShardedDataParallelPlugin\n"
        "from safer_instruct.training.run import _full_state_dict_for_saving\n"
        "plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment, as Accelerator makes it\n"
        "before = str(plugin.state_dict_type)\n"
        "trainer = SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))\n"
        "_full_state_dict_for_saving(trainer)\n"
        "print('PLUGIN', before, plugin.state_dict_type, plugin.fsdp_version)\n"
    )
    done = _accelerate("fsdp.yaml", str(probe))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PLUGIN StateDictType.SHARDED_STATE_DICT StateDictType.FULL_STATE_DICT 2" in done.stdout


def test_deepspeed_config_gathers_weights_for_the_final_save():
    """Under ZeRO-3, save_model writes weights only when they are gathered in 16 bit (DeepSpeed is not installed
    here, and accelerate runs DeepSpeed only on accelerators)."""
    import yaml

    config = yaml.safe_load((REPO / "training" / "accelerate" / "deepspeed_zero3.yaml").read_text())
    assert (
        config["deepspeed_config"]["zero_stage"] == 3 and config["deepspeed_config"]["zero3_save_16bit_model"] is True
    )
