"""Each option below changes what lathe builds: the option at its default against another value.

No training runs: each test builds the object the option feeds (the tokenized data, the loss of
a batch, the PPO runner's rollout, the profiler's trace, the tracker callback, the engine
arguments of vLLM / SGLang, the GPTQ calibration set, the export's model placement) and
compares. vLLM, SGLang and GPTQ's packages are absent here (they need CUDA): their stand-ins
record the arguments lathe hands them.
"""

from __future__ import annotations

import json
import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from lathe.config import build_config, load_config
from tests.conftest import DATA

# --------------------------------------------------------------------------- data


def pt_blocks(sft_config, **overrides) -> list[list[int]]:
    from lathe.data.loader import get_dataset
    from lathe.data.templates import resolve_template
    from lathe.model.load import load_tokenizer

    cfg = load_config(sft_config(stage="pt", dataset="lathe_docs", template=None, cutoff_len=64, **overrides))
    tokenizer = load_tokenizer(cfg.model)
    return get_dataset(cfg, tokenizer, resolve_template(None, tokenizer)).train["input_ids"], tokenizer


def test_preprocessing_batch_size_decides_where_pt_packs_blocks(sft_config):
    """pt packs the documents of each tokenization batch into cutoff_len blocks, the last one short;
    the second config differs in `preprocessing_batch_size` only, so it must not hit the first's cache."""
    default, tokenizer = pt_blocks(sft_config)  # preprocessing_batch_size 1000: every document in one batch
    one, _ = pt_blocks(sft_config, preprocessing_batch_size=1)  # each document packed on its own
    texts = [x for x in (DATA / "lathe_docs.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    docs = [len(tokenizer(t)["input_ids"]) + 1 for t in texts]  # + eos
    assert len(default) == math.ceil(sum(docs) / 64)
    assert len(one) == sum(math.ceil(n / 64) for n in docs) > len(default)
    assert sum(map(len, one)) == sum(map(len, default)) == sum(docs)  # the same tokens, cut differently


# --------------------------------------------------------------------------- preference losses


def pair_batch(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[5, 9, 14, 20, 31, 7], [5, 9, 14, 44, 12, 3]])  # one prompt: chosen, rejected
    labels = ids.clone()
    labels[:, :3] = -100
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def bare_trainer(cls, cfg, ref=None):
    """The stage's Trainer with only what `compute_loss` reads (no Trainer set-up)."""
    trainer = cls.__new__(cls)
    trainer.finetuning, trainer.ref_model, trainer.bco_baseline = cfg.finetuning, ref, None
    trainer.store_metrics = lambda **metrics: None
    return trainer


def test_simpo_gamma_and_pref_ftx_in_the_dpo_loss(tiny_llama, sft_config):
    from lathe.train.dpo import DPOTrainer
    from lathe.train.losses.logps import sequence_logps

    model, batch = pair_batch(tiny_llama)
    with torch.no_grad():
        sums, counts = sequence_logps(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    chosen, rejected = (sums / counts).tolist()

    def loss(**options) -> float:
        cfg = load_config(sft_config(stage="dpo", pref_loss="simpo", **options))
        with torch.no_grad():
            return bare_trainer(DPOTrainer, cfg).compute_loss(model, batch).item()

    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    beta = 0.1  # pref_beta's default
    # SimPO: -log sigmoid(beta * (chosen - rejected) - simpo_gamma), on per-token average log-probs
    assert loss() == pytest.approx(softplus(-(beta * (chosen - rejected) - 0.5)), rel=1e-5)  # simpo_gamma 0.5
    assert loss(simpo_gamma=0.0) == pytest.approx(softplus(-beta * (chosen - rejected)), rel=1e-5)
    # pref_ftx adds that weight times the chosen answer's mean token NLL
    assert loss(pref_ftx=0.5) - loss() == pytest.approx(0.5 * -chosen, rel=1e-4)


def test_pref_ftx_in_the_kto_loss(tiny_llama, sft_config):
    from lathe.train.kto import KTOTrainer

    model, batch = pair_batch(tiny_llama)
    batch.update({"kl_input_ids": batch["input_ids"], "kl_attention_mask": batch["attention_mask"],
                  "kl_labels": batch["labels"], "kto_tags": torch.tensor([True, False])})
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, 2:-1], -1)
        chosen_nll = -logps.gather(-1, batch["input_ids"][0, 3:, None]).mean().item()

    def loss(**options) -> float:
        cfg = load_config(sft_config(stage="kto", **options))
        with torch.no_grad():
            return bare_trainer(KTOTrainer, cfg, ref=model).compute_loss(model, batch).item()

    assert loss(pref_ftx=0.25) - loss() == pytest.approx(0.25 * chosen_nll, rel=1e-4)


# --------------------------------------------------------------------------- PPO


@pytest.fixture
def ppo_setup(sft_config):
    """One loaded policy shared by runners built from configs that differ in their ppo_* options."""
    from lathe.train.base import setup_run

    base = {"stage": "ppo", "reward_model": "http://127.0.0.1:9/score", "reward_model_type": "api",
            "per_device_train_batch_size": 2, "max_new_tokens": 4, "ppo_epochs": 1, "max_steps": 3}
    run = setup_run(load_config(sft_config(**base)))
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def runner(**options):
        from lathe.train.ppo import PPORunner

        cfg = load_config(sft_config(**base, **options))
        return PPORunner(cfg, run, None, lambda ids, attn, prompts, responses: scores[: len(prompts)])

    return runner


def test_ppo_buffer_size_collects_more_rollouts_per_optimisation_phase(ppo_setup):
    one, two = ppo_setup(), ppo_setup(ppo_buffer_size=2)
    assert (one.rollout_batch, two.rollout_batch) == (2, 4)  # per_device_train_batch_size x buffer
    steps = []
    for runner in (one, two):
        data = runner.rollout(runner.prompts[: runner.rollout_batch])
        calls = []
        real = runner.optimizer.step
        runner.optimizer.step = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
        runner.update(data)
        steps.append(len(calls))
    assert steps == [1, 2]  # one optimizer step per mini-batch of the buffer (ppo_epochs 1)


def test_ppo_target_steers_the_kl_coefficient(ppo_setup):
    default, low = ppo_setup(), ppo_setup(ppo_target=1.0)
    for runner in (default, low):
        runner.kl_ctl.update(3.0, 100)  # observed KL 3: below the default target 6, above 1
    # value 0.2 x (1 + clip(kl / target - 1, -0.2, 0.2) x n / 10000)
    assert default.kl_ctl.value == pytest.approx(0.2 * (1 - 0.2 * 100 / 10_000))
    assert low.kl_ctl.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10_000))


def spy_rollout(runner, monkeypatch, times: int = 1) -> dict:
    """Run one rollout of 4 prompts, recording the scores and per-token rewards the advantages are computed from."""
    import lathe.train.ppo as ppo
    from lathe.train.losses.ppo import gae_advantages as real_gae
    from lathe.train.losses.ppo import kl_penalty_rewards as real_rewards

    seen: dict = {}

    def rewards(scores, *args):
        seen["scores"] = scores.clone()
        return real_rewards(scores, *args)

    def gae(rewards, values, mask, *args):
        seen["rewards"], seen["mask"] = rewards.clone(), mask
        return real_gae(rewards, values, mask, *args)

    monkeypatch.setattr(ppo, "kl_penalty_rewards", rewards)
    monkeypatch.setattr(ppo, "gae_advantages", gae)
    torch.manual_seed(0)
    for _ in range(times):
        runner.rollout(runner.prompts[:4])
    return seen


def test_ppo_score_norm_normalises_with_the_running_score_statistics(ppo_setup, monkeypatch):
    """As TRL's use_score_norm (LLaMA-Factory's meaning): the mean and std of every score so far."""
    assert spy_rollout(ppo_setup(), monkeypatch)["scores"].tolist() == [1.0, 0.0, 1.0, 0.0]
    runner = ppo_setup(ppo_score_norm=True)
    z = 0.5 / math.sqrt(4 * 0.25 / 3)  # first batch: (1 - mean 0.5) / unbiased std of 1, 0, 1, 0
    assert spy_rollout(runner, monkeypatch)["scores"].tolist() == pytest.approx([z, -z, z, -z], rel=1e-5)
    z = 0.5 / math.sqrt(8 * 0.25 / 7)  # second batch: the same scores, with the statistics of all 8
    assert spy_rollout(runner, monkeypatch)["scores"].tolist() == pytest.approx([z, -z, z, -z], rel=1e-5)


def test_running_moments_merge_batches():
    from lathe.train.losses.ppo import RunningMoments

    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.count == 5 and moments.mean == pytest.approx(3.0) and moments.std == pytest.approx(math.sqrt(2.5))
    assert moments.normalize(torch.tensor([3.0 + math.sqrt(2.5)])).item() == pytest.approx(1.0)


def test_ppo_whiten_rewards_scales_the_token_rewards_to_unit_variance(ppo_setup, monkeypatch):
    from lathe.train.losses.ppo import masked_mean, masked_var

    plain = spy_rollout(ppo_setup(), monkeypatch)
    whitened = spy_rollout(ppo_setup(ppo_whiten_rewards=True), monkeypatch)
    # unwhitened: two scores of 1 among 4 to 16 response tokens (KL 0: the LoRA policy starts as its reference)
    assert 0.1 < masked_var(plain["rewards"], plain["mask"]).item() < 0.34
    assert masked_var(whitened["rewards"], whitened["mask"]).item() == pytest.approx(1.0, rel=1e-3)
    mean = masked_mean(plain["rewards"], plain["mask"]).item()  # whitening rewards keeps their mean
    assert masked_mean(whitened["rewards"], whitened["mask"]).item() == pytest.approx(mean, rel=1e-4)


# --------------------------------------------------------------------------- final metrics


class RecordingTrainer:
    """What `train_and_save` asks of a Trainer: 300 non-padding tokens seen in 4 seconds."""

    def __init__(self):
        self.state = SimpleNamespace(num_input_tokens_seen=300)
        self.callback_handler = SimpleNamespace(callbacks=[])
        self.saved: dict = {}

    def train(self, resume_from_checkpoint=None):
        return SimpleNamespace(metrics={"train_runtime": 4.0, "train_loss": 1.0})

    def save_model(self):
        pass

    def log_metrics(self, split, metrics):
        pass

    def save_metrics(self, split, metrics):
        self.saved[split] = dict(metrics)

    def save_state(self):
        pass


def test_include_effective_tokens_per_second(sft_config):
    from lathe.train.base import train_and_save

    for enabled in (False, True):
        cfg = load_config(sft_config(finetuning_type="full", include_effective_tokens_per_second=enabled))
        trainer = RecordingTrainer()
        metrics = train_and_save(trainer, cfg, None)
        if enabled:
            assert metrics["effective_tokens_per_sec"] == trainer.saved["train"]["effective_tokens_per_sec"] == 75.0
        else:
            assert "effective_tokens_per_sec" not in metrics


# --------------------------------------------------------------------------- profiler and trackers


def test_profiler_record_shapes_and_profile_memory_reach_the_trace(sft_config, tmp_path):
    from lathe.train.profiler import TorchProfilerCallback

    def trace(name: str, **options) -> list[dict]:
        cfg = load_config(sft_config(enable_torch_profiler=True, profiler_output_dir=str(tmp_path / name),
                                     profiler_wait_steps=0, profiler_warmup_steps=0, profiler_active_steps=1,
                                     profiler_repeat=1, profiler_with_stack=False, **options))
        callback = TorchProfilerCallback(cfg, model=None)
        callback.on_train_begin(None, SimpleNamespace(global_step=0), None)
        torch.randn(16, 16) @ torch.randn(16, 16)
        callback.on_step_end(None, None, None)
        callback.on_train_end(None, None, None)
        (path,) = (tmp_path / name / "rank_0").glob("*.pt.trace.json")
        return json.loads(path.read_text())["traceEvents"]

    both = trace("default")  # profiler_record_shapes and profiler_profile_memory default to true
    neither = trace("off", profiler_record_shapes=False, profiler_profile_memory=False)

    def shapes(events):
        return any("Input Dims" in e.get("args", {}) for e in events if e.get("name") == "aten::mm")

    def memory(events):
        return any(e.get("name") == "[memory]" for e in events)

    assert shapes(both) and memory(both)
    assert not shapes(neither) and not memory(neither)


def test_swanlab_workspace_and_run_name_reach_swanlab(sft_config, monkeypatch):
    pytest.importorskip("swanlab")
    import swanlab.integration.transformers as integration

    from lathe.train.tracking import swanlab_callbacks

    class Recorder:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setattr(integration, "SwanLabCallback", Recorder)
    base = {"use_swanlab": True, "swanlab_mode": "offline", "run_name": "the-run"}
    (default,) = swanlab_callbacks(load_config(sft_config(**base)))
    (named,) = swanlab_callbacks(load_config(sft_config(**base, swanlab_workspace="my-team", swanlab_run_name="exp-7")))
    assert "workspace" not in default.kwargs and default.kwargs["experiment_name"] == "the-run"
    assert named.kwargs["workspace"] == "my-team" and named.kwargs["experiment_name"] == "exp-7"


# --------------------------------------------------------------------------- inference engines


def infer_cfg(model, **extra):
    return build_config({"model_name_or_path": str(model), "template": "chatml", "do_sample": False,
                         "max_new_tokens": 4, **extra}, purpose="infer")


def pretend_installed(monkeypatch, *packages: str) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a, **k: object() if name in packages else real(name, *a, **k))


def test_length_penalty_reaches_beam_search(tiny_llama):
    from lathe.infer.engine import create_engine

    scores, passed = [], []
    for penalty in (1.0, 2.0):  # length_penalty's default, then another
        engine = create_engine(infer_cfg(tiny_llama, num_beams=2, length_penalty=penalty))
        real = engine.model.generate

        def generate(real=real, **kwargs):
            passed.append(kwargs["length_penalty"])
            out = real(**kwargs, return_dict_in_generate=True, output_scores=True)
            scores.append(out.sequences_scores[0].item())  # sum of log-probs / length ** length_penalty
            return out.sequences

        engine.model.generate = generate
        engine.chat([{"role": "user", "content": "Who are you?"}])
    assert passed == [1.0, 2.0]
    assert scores[0] != pytest.approx(scores[1])


@pytest.fixture
def vllm_args(monkeypatch):
    seen: dict = {}

    class EngineArgs:
        def __init__(self, **kwargs):
            seen.clear()
            seen.update(kwargs)

    class LLMEngine:
        @classmethod
        def from_engine_args(cls, args):
            return cls()

    vllm = types.ModuleType("vllm")
    vllm.EngineArgs, vllm.LLMEngine = EngineArgs, LLMEngine
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    pretend_installed(monkeypatch, "vllm")
    return seen


def test_vllm_engine_options(tiny_llama, vllm_args, tmp_path):
    from lathe.infer.engine import create_engine

    adapter = tmp_path / "adapter"
    adapter.mkdir()

    def passed():
        return vllm_args["gpu_memory_utilization"], vllm_args["enforce_eager"], vllm_args["max_lora_rank"]

    create_engine(infer_cfg(tiny_llama, infer_backend="vllm", adapter_name_or_path=str(adapter)))
    assert passed() == (0.7, False, 32)  # the defaults of vllm_gpu_util, vllm_enforce_eager, vllm_max_lora_rank
    create_engine(infer_cfg(tiny_llama, infer_backend="vllm", adapter_name_or_path=str(adapter),
                            vllm_gpu_util=0.5, vllm_enforce_eager=True, vllm_max_lora_rank=64))
    assert passed() == (0.5, True, 64)


def test_sglang_engine_options(tiny_llama, monkeypatch, tmp_path):
    from lathe.infer.engine import create_engine

    seen: dict = {}

    class Engine:
        def __init__(self, **kwargs):
            seen.clear()
            seen.update(kwargs)

    sglang = types.ModuleType("sglang")
    sglang.Engine = Engine
    monkeypatch.setitem(sys.modules, "sglang", sglang)
    pretend_installed(monkeypatch, "sglang")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = {"infer_backend": "sglang", "sglang_tp_size": 1, "adapter_name_or_path": str(adapter)}
    create_engine(infer_cfg(tiny_llama, **base))
    assert (seen["mem_fraction_static"], seen["lora_backend"]) == (0.7, "triton")
    assert "chunked_prefill_size" not in seen  # sglang_config adds nothing by default
    create_engine(infer_cfg(tiny_llama, **base, sglang_mem_fraction=0.4, sglang_lora_backend="csgmv",
                            sglang_config='{"chunked_prefill_size": 512}'))
    assert (seen["mem_fraction_static"], seen["lora_backend"], seen["chunked_prefill_size"]) == (0.4, "csgmv", 512)
    create_engine(infer_cfg(tiny_llama, **base, sglang_config={"mem_fraction_static": 0.3}))
    assert seen["mem_fraction_static"] == 0.3  # sglang_config's arguments win


# --------------------------------------------------------------------------- export


def test_export_device_auto_loads_with_a_device_map(tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lathe.export.merge import run_export

    loads: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        loads.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    for device in ("cpu", "auto"):
        out = tmp_path / device
        run_export(build_config({"model_name_or_path": str(tiny_llama), "template": "chatml", "export_dir": str(out),
                                 "export_device": device}, purpose="infer"))
        assert list(out.glob("*.safetensors"))
    assert "device_map" not in loads[0]  # export_device cpu (the default): a plain load on the CPU
    assert loads[1]["device_map"] == "auto"  # accelerate places it (the GPUs first, when there are any)


def test_gptq_export_calibrates_on_nsamples_lines_cut_to_maxlen_tokens(tiny_llama, tmp_path, monkeypatch):
    """optimum/gptqmodel are absent: the quantizing load is recorded, not run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lathe.export.merge import run_export

    lines = [f"calibration line {i} " + "tokens to quantize with " * (i + 3) for i in range(6)]
    dataset = tmp_path / "calib.txt"
    dataset.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    quantizing: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        if "quantization_config" in kwargs:
            quantizing.append(kwargs)
            return SimpleNamespace(save_pretrained=lambda *a, **k: None)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    pretend_installed(monkeypatch, "optimum", "gptqmodel")
    base = {"model_name_or_path": str(tiny_llama), "template": "chatml", "export_quantization_bit": 4,
            "export_quantization_dataset": str(dataset)}
    run_export(build_config({**base, "export_dir": str(tmp_path / "default")}, purpose="infer"))
    run_export(build_config({**base, "export_dir": str(tmp_path / "set"), "export_quantization_nsamples": 3,
                             "export_quantization_maxlen": 8}, purpose="infer"))
    default, small = (q["quantization_config"] for q in quantizing)
    full = [tokenizer(line)["input_ids"] for line in lines]
    # defaults: nsamples 128 (all 6 lines), maxlen 1024 (none is cut)
    assert [s["input_ids"][0] for s in default.dataset] == full and default.model_seqlen == 1024
    assert [s["input_ids"][0] for s in small.dataset] == [ids[:8] for ids in full[:3]] and small.model_seqlen == 8
    assert all(s["attention_mask"] == [[1] * len(s["input_ids"][0])] for s in small.dataset)
    assert max(map(len, full[:3])) > 8
