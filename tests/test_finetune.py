"""Fine-tuning with masks kept exactly, iterative schedules, checkpoints and resume, on tiny random models."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prunelab.algorithms import get_algorithm
from prunelab.engine import prune_model
from prunelab.models import ModelAdapter
from prunelab.patterns import Pattern
from prunelab.train import FinetuneConfig, Masks, finetune, iterative, schedule_targets
from prunelab.train.checkpoint import work_dir_for
from prunelab.train.data import training_data
from prunelab.train.trainer import Phase, learning_rate, split_steps
from tiny_models import TEXT, random_ids, save_tiny_folder, tiny_model, tiny_tokenizer

pytest.importorskip("peft")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and on a shared machine two spinning threads can be 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def corpus(tmp_path):
    # Several documents (JSONL rows) so the train / held-out split is by document.
    path = tmp_path / "docs.jsonl"
    words = TEXT.split()
    rows = [" ".join(words[i:i + 60]) for i in range(0, len(words), 60)]
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return path


def tiny_ft(corpus, **kw) -> FinetuneConfig:
    base = dict(train=str(corpus), steps=6, batch=2, seqlen=16, lr=5e-3, heldout_windows=2, heldout_fraction=0.1,
                warmup=0.2)
    base.update(kw)
    return FinetuneConfig(**base)


def pruned_tiny(family="llama", sparsity=0.5, vocab=300):
    model = tiny_model(family, vocab=vocab)
    prune_model(model, get_algorithm("magnitude"), Pattern(sparsity), progress=False)
    return model


def weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- schedules -------------------------------------------------------------------------------------------------
def test_schedule_targets_are_exact():
    assert schedule_targets("linear", 0.5, 4) == [0.125, 0.25, 0.375, 0.5]
    assert schedule_targets("exponential", 0.5, 4) == pytest.approx([1 / 30, 3 / 30, 7 / 30, 0.5], abs=1e-15)
    # Zhu & Gupta: s_k = S (1 - (1 - k/K)^3)
    assert schedule_targets("cubic", 0.5, 4) == pytest.approx([0.5 * 37 / 64, 0.4375, 0.5 * 63 / 64, 0.5], abs=1e-15)
    # constant rate: the same fraction of the remaining weights each step, so density halves every 4 steps here
    assert schedule_targets("constant", 0.5, 4) == pytest.approx([1 - 0.5 ** (k / 4) for k in (1, 2, 3, 4)], abs=1e-15)
    # rate 0.2 of the remaining: 0.2, 0.36, 0.488, then capped at 0.5 (0.5904 would overshoot)
    assert schedule_targets("constant", 0.5, rate=0.2) == pytest.approx([0.2, 0.36, 0.488, 0.5], abs=1e-15)
    assert schedule_targets("constant", 0.75, rate=0.5) == [0.5, 0.75]  # lands exactly: no extra step
    for schedule in ("constant", "linear", "exponential", "cubic"):
        targets = schedule_targets(schedule, 0.7, 5)
        assert targets[-1] == 0.7 and all(a < b for a, b in zip(targets, targets[1:]))


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="reaches 0.5 in 4 steps"):
        schedule_targets("constant", 0.5, 3, rate=0.2)
    with pytest.raises(ValueError, match="constant schedule"):
        schedule_targets("cubic", 0.5, rate=0.2)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_targets("quadratic", 0.5, 3)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedule_targets("linear", 1.0, 3)


def test_steps_are_split_evenly_and_lr_follows_warmup_then_cosine():
    assert split_steps(10, 3) == [3, 3, 4] and split_steps(9, 3) == [3, 3, 3]
    # --final-share: round(F·total) after the last pruning step, the rest evenly (remainder last) before it
    assert split_steps(128, 8, 0.5) == [9, 9, 9, 9, 9, 9, 10, 64]
    assert split_steps(128, 8, 0.75) == [4, 4, 4, 5, 5, 5, 5, 96]
    assert split_steps(10, 1, 0.3) == [10]  # one phase takes the whole budget
    cfg = FinetuneConfig(steps=10, lr=1.0, warmup=0.2, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s, 10) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]  # ceil(0.2 * 10) = 2 warm-up steps
    assert lrs[2] == 1.0 and lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "alps"])
def test_each_iterative_step_only_adds_zeros_with_exact_counts(method):
    """Step k of any method reaches int(n·s_k) zeros per layer and keeps every earlier zero, even after the
    surviving weights moved (as fine-tuning moves them)."""
    model = tiny_model("llama")
    calib = random_ids(4, 16)
    algorithm = get_algorithm(method)
    scope = algorithm.default_scope
    masks = Masks.from_model(model)
    g = torch.Generator().manual_seed(0)
    for target in schedule_targets("cubic", 0.7, 3):
        before = {n: m.clone() for n, m in masks.masks.items()}
        prune_model(model, algorithm, Pattern(target, scope=scope), calib if algorithm.needs else None,
                    progress=False, prior_masks=masks.for_engine())
        masks.extend(model)  # raises if an earlier zero was revived
        for name, layer in masks.layers.items():
            w = ModelAdapter.get_weight(layer)
            rows, cols = w.shape
            expected = rows * int(cols * target) if scope == "row" else int(w.numel() * target)
            assert int((w == 0).sum()) == expected, name
            assert bool((w[before[name]] == 0).all())
        with torch.no_grad():  # move the kept weights, as a fine-tuning phase would
            for name, layer in masks.layers.items():
                noise = 0.05 * torch.randn(layer.weight.shape, generator=g)
                layer.weight.add_(noise.masked_fill(ModelAdapter.oriented(layer, masks.masks[name]), 0.0))


def test_sparsegpt_without_priors_would_revive_earlier_zeros():
    """Why the engine passes priors: SparseGPT's per-block quota can leave an earlier zero unselected, and its
    OBS update then writes a value into it. (The control for the test above.)"""
    model = tiny_model("llama")
    calib = random_ids(4, 16)
    # an uneven earlier mask: every weight of the last 8 input columns of each layer is zero, half of the last
    # 16-column block, more than its 30% quota; earlier blocks' OBS updates write into those columns
    with torch.no_grad():
        for _, layer in ModelAdapter(model).named_prunable_layers():
            ModelAdapter.get_weight(layer)[:, -8:] = 0.0
    masks = Masks.from_model(model)
    plain = tiny_model("llama")
    plain.load_state_dict(model.state_dict())
    algorithm = get_algorithm("sparsegpt", blocksize=16)
    prune_model(plain, algorithm, Pattern(0.3), calib, progress=False)
    with pytest.raises(RuntimeError, match="no longer zero"):
        Masks(dict(ModelAdapter(plain).named_prunable_layers()), {n: m.clone() for n, m in masks.masks.items()}).extend(plain)
    prune_model(model, algorithm, Pattern(0.3), calib, progress=False, prior_masks=masks.for_engine())
    masks.extend(model)


# -- masks through training ---------------------------------------------------------------------------------------
def _train(model, config, corpus, steps=None):
    data = training_data(tiny_tokenizer(), str(corpus), seqlen=config.seqlen, heldout_fraction=config.heldout_fraction,
                         heldout_windows=config.heldout_windows, seed=config.seed)
    masks = Masks.from_model(model)
    phase = Phase(model, masks, data, config, steps or config.total_steps, progress=False)
    phase.run(checkpoint_minutes=None)
    return phase, masks


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_full_finetuning_keeps_every_pruned_weight_and_its_optimizer_state_at_zero(family, corpus):
    model = pruned_tiny(family)
    before = {n: ModelAdapter.get_weight(l).clone() for n, l in ModelAdapter(model).named_prunable_layers()}
    phase, masks = _train(model, tiny_ft(corpus, debug_masks=True, weight_decay=0.1), corpus)
    tuned, log = phase.finish()
    assert masks.violations(phase.optimizer) == {"weights": 0, "optimizer_state": 0}
    for name, layer in ModelAdapter(tuned).named_prunable_layers():
        w = ModelAdapter.get_weight(layer)
        assert torch.equal(w == 0, before[name] == 0), name  # the same positions, to the weight
        assert not torch.equal(w, before[name])  # and the kept weights did train
    assert log["heldout"][-1]["loss"] < log["heldout"][0]["loss"]


def test_plain_adamw_would_fill_the_zeros(corpus):
    """Control: the same training without masks moves the pruned weights, so the test above can fail."""
    model = pruned_tiny()
    zeros_before = Masks.from_model(model).zeros
    data = training_data(tiny_tokenizer(), str(corpus), seqlen=16, heldout_fraction=0.1, heldout_windows=2)
    Phase(model, Masks({}, {}), data, tiny_ft(corpus), 3, progress=False).run(checkpoint_minutes=None)
    assert Masks.from_model(model).zeros < zeros_before // 10


def test_l1_penalty_keeps_the_mask_and_shrinks_weights(corpus):
    model_plain, model_l1 = pruned_tiny(), pruned_tiny()
    zeros = Masks.from_model(model_plain).zeros
    _train(model_plain, tiny_ft(corpus), corpus)
    phase, _ = _train(model_l1, tiny_ft(corpus, l1=1e-2, debug_masks=True), corpus)
    l1 = lambda m: sum(float(ModelAdapter.get_weight(l).abs().sum()) for _, l in ModelAdapter(m).named_prunable_layers())  # noqa: E731
    assert Masks.from_model(model_l1).zeros == zeros
    assert l1(model_l1) < l1(model_plain)
    assert all("l1" in entry for entry in phase.log["losses"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("merge", ["remask", "masked-delta"])
def test_lora_merge_keeps_the_mask(family, merge, corpus):
    model = pruned_tiny(family)
    zero_positions = {n: ModelAdapter.get_weight(l) == 0 for n, l in ModelAdapter(model).named_prunable_layers()}
    phase, masks = _train(model, tiny_ft(corpus, lora=4, lr=2e-2, lora_merge=merge), corpus)
    merged, log = phase.finish()
    assert "peft" not in type(merged).__module__  # the plain model back, adapters merged
    for name, layer in ModelAdapter(merged).named_prunable_layers():
        assert torch.equal(ModelAdapter.get_weight(layer) == 0, zero_positions[name]), name
    info = log["lora_merge"]
    assert info["plain_merge_sparsity"] < 0.01  # a plain peft merge fills (almost) every zero back in
    if merge == "masked-delta":
        # the trained model *is* the merged one: equal up to the rounding of W + Δ vs W·x + Δ·x (fp32)
        assert abs(info["merge_cost"]) < 1e-5
    else:
        assert info["merge_cost"] != 0.0


# -- distillation ---------------------------------------------------------------------------------------------------
def _reference_losses(student, teacher, ids):
    """Slow float64 reference: mean over predicted tokens of CE and of KL(q_teacher ‖ p_student), token by token."""
    with torch.no_grad():
        p = student(input_ids=ids).logits[:, :-1].double().log_softmax(-1)
        q = teacher(input_ids=ids).logits[:, :-1].double().log_softmax(-1)
    ce, kl, n = 0.0, 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            ce -= float(p[b, t, ids[b, t + 1]])
            kl += float((q[b, t].exp() * (q[b, t] - p[b, t])).sum())
            n += 1
    return ce / n, kl / n


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_distillation_loss_is_exact_against_a_slow_reference(alpha, corpus):
    student, teacher = pruned_tiny(), tiny_model("llama", vocab=300)
    with torch.no_grad():  # random models predict nearly uniformly; a sharper teacher makes the KL term sizeable
        teacher.get_output_embeddings().weight.mul_(20)
    data = training_data(tiny_tokenizer(), str(corpus), seqlen=16, heldout_fraction=0.1, heldout_windows=2)
    phase = Phase(student, Masks.from_model(student), data, tiny_ft(corpus, distill=alpha), 1, progress=False,
                  teacher=teacher)
    ids = data.batch(0, 2)
    loss, parts = phase._loss(ids)
    ce, kl = _reference_losses(student, teacher, ids)
    # fp32 log-softmax: each term is off by a few ulps of |log p| (< 100 here), far below 1e-5
    assert parts["ce"] == pytest.approx(ce, abs=1e-5) and parts["kl"] == pytest.approx(kl, abs=1e-5)
    assert kl > 0.01  # a different model: the distillation term is not trivially zero
    assert float(loss.detach()) == pytest.approx((1 - alpha) * ce + alpha * kl, abs=1e-5)
    # the student's own copy as teacher: nothing to distil
    same = Phase(student, Masks.from_model(student), data, tiny_ft(corpus, distill=1.0), 1, progress=False,
                 teacher=__import__("copy").deepcopy(student))
    assert abs(same._loss(ids)[1]["kl"]) < 1e-6


def test_distillation_moves_the_pruned_student_towards_the_dense_teacher(corpus):
    dense = tiny_model("llama", vocab=300)
    with torch.no_grad():  # sharper predictions than a random model's, so pruning moves them measurably
        dense.get_output_embeddings().weight.mul_(20)
    student = __import__("copy").deepcopy(dense)
    prune_model(student, get_algorithm("magnitude"), Pattern(0.5), progress=False)
    zeros = Masks.from_model(student).zeros
    data = training_data(tiny_tokenizer(), str(corpus), seqlen=16, heldout_fraction=0.1, heldout_windows=2)
    held = data.heldout
    before = _reference_losses(student, dense, held)[1]
    phase = Phase(student, Masks.from_model(student), data, tiny_ft(corpus, distill=1.0, lr=2e-4, debug_masks=True), 6,
                  progress=False, teacher=dense)
    phase.run(checkpoint_minutes=None)
    tuned, _ = phase.finish()
    assert Masks.from_model(tuned).zeros == zeros
    assert _reference_losses(tuned, dense, held)[1] < 0.8 * before
    assert all({"ce", "kl"} <= set(e) for e in phase.log["losses"])
    assert not any(p.requires_grad for p in dense.parameters())  # the teacher stays frozen


def test_distillation_needs_a_teacher_and_finetune_finds_it_in_the_record(pruned_folder, corpus, tmp_path):
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        tiny_ft(corpus, distill=1.5)
    data = training_data(tiny_tokenizer(), str(corpus), seqlen=16, heldout_fraction=0.1, heldout_windows=2)
    with pytest.raises(ValueError, match="teacher"):
        Phase(pruned_tiny(), Masks({}, {}), data, tiny_ft(corpus, distill=0.5), 1, progress=False)
    rec = finetune(str(pruned_folder), out=tmp_path / "kd", config=tiny_ft(corpus, distill=0.5), progress=False)
    origin = json.loads((pruned_folder / "prunelab.json").read_text())["config"]["model"]
    assert rec["finetune"]["teacher"]["model"] == origin and rec["finetune"]["mask_kept_exactly"]
    plain = save_tiny_folder("llama", tmp_path / "plain")  # no prunelab record: the teacher must be named
    with pytest.raises(ValueError, match="--teacher"):
        finetune(str(plain), out=tmp_path / "x", config=tiny_ft(corpus, distill=0.5), progress=False)
    assert "distill" not in tiny_ft(corpus).to_dict()  # runs without distillation keep their identities


# -- runs, checkpoints, resume ------------------------------------------------------------------------------------
@pytest.fixture()
def pruned_folder(tmp_path):
    from prunelab import prune

    src = save_tiny_folder("llama", tmp_path / "src")
    prune(method="magnitude", sparsity=0.5, model=str(src), out=tmp_path / "p50", progress=False)
    return tmp_path / "p50"


def test_finetune_record_and_determinism(pruned_folder, corpus, tmp_path):
    cfg = tiny_ft(corpus)
    rec = finetune(str(pruned_folder), out=tmp_path / "a", config=cfg, progress=False)
    finetune(str(pruned_folder), out=tmp_path / "b", config=cfg, progress=False)
    finetune(str(pruned_folder), out=tmp_path / "c", config=tiny_ft(corpus, seed=1), progress=False)
    assert weights_equal(tmp_path / "a", tmp_path / "b")
    assert not weights_equal(tmp_path / "a", tmp_path / "c")
    ft = rec["finetune"]
    assert ft["mask_kept_exactly"] and ft["zeros_before"] == ft["zeros_after"] > 0
    assert ft["sparsity_before"] == ft["sparsity_after"] == rec["summary"]["sparsity"] == 0.5
    assert rec["config"]["method"] == "magnitude"  # the pruning record is kept, extended
    split = ft["data"]["split_rule"]
    assert split["by"] == "document" and split["heldout_documents"] and len(ft["losses"]) == 6
    assert {h["when"] for h in ft["heldout"]} == {"start", "end"}
    assert not work_dir_for(tmp_path / "a").exists()
    # rerunning the finished command does nothing; another config may not overwrite without --force
    assert finetune(str(pruned_folder), out=tmp_path / "a", config=cfg, progress=False)["run_id"] == rec["run_id"]
    with pytest.raises(FileExistsError):
        finetune(str(pruned_folder), out=tmp_path / "a", config=tiny_ft(corpus, lr=1e-3), progress=False)


def test_heldout_documents_never_reach_training(corpus):
    tok = tiny_tokenizer()
    data = training_data(tok, str(corpus), seqlen=16, heldout_fraction=0.2, heldout_windows=None)
    rows = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    held = set(data.identity["split_rule"]["heldout_documents"])
    assert len(held) == round(len(rows) * 0.2)
    assert data.heldout.numel() > 0
    assert torch.equal(data.batch(3, 2), data.batch(3, 2))  # a pure function of the step
    again = training_data(tok, str(corpus), seqlen=16, heldout_fraction=0.2, heldout_windows=None)
    assert torch.equal(again.train, data.train) and again.identity == data.identity
    # the training windows are exactly the non-held-out documents, tokenized and joined by EOS, in order
    stream = []
    for i, row in enumerate(rows):
        if i not in held:
            stream += tok(row).input_ids + [tok.eos_token_id]
    assert data.train.flatten().tolist() == stream[:data.train.numel()]


@pytest.mark.parametrize("lora", [0, 4])
def test_finetune_resumes_after_a_kill_with_identical_weights(pruned_folder, corpus, tmp_path, lora):
    cfg = tiny_ft(corpus, steps=8, lora=lora)
    finetune(str(pruned_folder), out=tmp_path / "whole", config=cfg, progress=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(str(pruned_folder), out=tmp_path / "cut", config=cfg, progress=False, checkpoint_every=2,
                 stop_after=5)
    assert not (tmp_path / "cut").exists() and (work_dir_for(tmp_path / "cut") / "state.pt").is_file()
    rec = finetune(str(pruned_folder), out=tmp_path / "cut", config=cfg, progress=False, checkpoint_every=2)
    assert json.loads(json.dumps(rec["finetune"]["resumed_at"])) == [[1, [4]]]  # checkpoint at 4, step 5 redone
    assert weights_equal(tmp_path / "whole", tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):  # a different run may not continue it
        finetune(str(pruned_folder), out=tmp_path / "other", config=cfg, progress=False, checkpoint_every=1,
                 stop_after=2)
    with pytest.raises(FileExistsError, match="different run"):
        finetune(str(pruned_folder), out=tmp_path / "other", config=tiny_ft(corpus, steps=9), progress=False)


@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_iterative_resumes_mid_schedule_with_identical_weights(corpus, tmp_path, distill):
    src = save_tiny_folder("llama", tmp_path / "src")
    kw = dict(method="sparsegpt", target=0.6, schedule="linear", steps=3,
              finetune=tiny_ft(corpus, steps=9, lora=4, distill=distill), progress=False,
              calibration=__import__("prunelab").CalibrationConfig(str(corpus), "train", 4, 16, 0))
    whole = iterative(str(src), out=tmp_path / "whole", **kw)
    with pytest.raises(KeyboardInterrupt):
        iterative(str(src), out=tmp_path / "cut", checkpoint_every=1, stop_after=5, **kw)  # inside phase 2
    rec = iterative(str(src), out=tmp_path / "cut", checkpoint_every=1, **kw)
    assert weights_equal(tmp_path / "whole", tmp_path / "cut")
    steps = rec["iterative"]["steps_record"]
    assert [round(s["target"], 6) for s in steps] == [0.2, 0.4, 0.6]
    assert [s["sparsity"] for s in steps] == [s["sparsity"] for s in whole["iterative"]["steps_record"]]
    assert all(s["sparsity_after_finetune"] == s["sparsity"] for s in steps)
    assert rec["summary"]["sparsity"] == steps[-1]["sparsity"] > 0.59


def test_a_real_kill_9_mid_training_resumes_to_the_same_weights(pruned_folder, corpus, tmp_path):
    """The CLI killed with SIGKILL right after its first checkpoint; the same run resumed (here through the API,
    which must build the same run identity from the same settings) ends with the uninterrupted run's bytes."""
    steps, every = 200, 5
    cfg = tiny_ft(corpus, steps=steps, lr=1e-3, warmup=0.1)
    finetune(str(pruned_folder), out=tmp_path / "whole", config=cfg, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "prunelab.cli", "finetune", str(pruned_folder), "--train", str(corpus),
           "--steps", str(steps), "--batch", "2", "--seqlen", "16", "--heldout-windows", "2", "--heldout-fraction",
           "0.1", "--lr", "1e-3", "--warmup", "0.1", "--checkpoint-every", str(every), "--out", str(tmp_path / "cut"),
           "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = work_dir_for(tmp_path / "cut") / "state.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed_mid_run = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "training finished before it could be killed"
    assert not (tmp_path / "cut").exists()
    rec = finetune(str(pruned_folder), out=tmp_path / "cut", config=cfg, progress=False, checkpoint_every=every)
    assert weights_equal(tmp_path / "whole", tmp_path / "cut")
    assert rec["finetune"]["resumed_at"][0][1][0] % every == 0 < rec["finetune"]["resumed_at"][0][1][0] < steps


def test_cli_finetune_and_iterative(pruned_folder, corpus, tmp_path, capsys):
    from prunelab.cli import main

    assert main(["finetune", str(pruned_folder), "--train", str(corpus), "--tokens", "200", "--batch", "2",
                 "--seqlen", "16", "--heldout-windows", "2", "--lora", "2", "--lora-targets", "q_proj,v_proj",
                 "--out", str(tmp_path / "ft"), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optimizer_steps"] == 6 and out["tokens"] == 192 and out["sparsity"] == 0.5
    rec = json.loads((tmp_path / "ft" / "prunelab.json").read_text())
    assert rec["finetune"]["config"]["lora_targets"] == ["q_proj", "v_proj"]
    assert main(["iterative", "--model", str(pruned_folder.parent / "src"), "--method", "magnitude", "--target", "0.5",
                 "--threshold", "0.01", "--steps", "2", "--train", str(corpus), "--train-steps", "4", "--batch", "2",
                 "--seqlen", "16", "--heldout-windows", "2", "--out", str(tmp_path / "it"), "--quiet"]) == 0
    rec = json.loads((tmp_path / "it" / "prunelab.json").read_text())
    steps = rec["iterative"]["steps_record"]
    assert rec["iterative"]["mode"] == "threshold" and all(s["scope"] == "global" for s in steps)
    assert 0 < steps[0]["sparsity"] <= steps[1]["sparsity"] <= 0.5
    assert main(["iterative", "--model", str(pruned_folder.parent / "src"), "--method", "magnitude", "--target", "0.5",
                 "--schedule", "cubic", "--steps", "3", "--final-share", "0.6", "--train", str(corpus), "--train-steps",
                 "10", "--batch", "2", "--seqlen", "16", "--heldout-windows", "2", "--out", str(tmp_path / "fs"),
                 "--quiet"]) == 0
    rec = json.loads((tmp_path / "fs" / "prunelab.json").read_text())
    assert rec["iterative"]["final_share"] == 0.6 and rec["iterative"]["phase_steps"] == [2, 2, 6]
    assert [s["finetune"]["steps"] for s in rec["iterative"]["steps_record"]] == [2, 2, 6]
    assert rec["summary"]["sparsity"] == 0.5
    capsys.readouterr()
    for bad in ("1.0", "0"):
        assert main(["iterative", "--method", "magnitude", "--target", "0.5", "--steps", "2", "--final-share", bad,
                     "--train-steps", "4", "--out", str(tmp_path / "y")]) == 2
        assert "--final-share" in capsys.readouterr().err
    assert main(["iterative", "--method", "wanda", "--target", "0.5", "--threshold", "0.1", "--steps", "2",
                 "--train-steps", "2", "--out", str(tmp_path / "x")]) == 2  # threshold needs magnitude
    assert "threshold mode" in capsys.readouterr().err


# -- sweeps and reports -------------------------------------------------------------------------------------------
def test_sweep_runs_recovery_methods_and_reports_seed003_tables(corpus, tmp_path):
    from prunelab import CalibrationConfig
    from prunelab.bench import EvalProtocol, ResultsStore, SweepConfig, run_sweep
    from prunelab.bench.report import write_report

    src = save_tiny_folder("llama", tmp_path / "model")

    def sweep(methods, store):
        config = SweepConfig(methods=methods, levels=(0.1, 0.5), models=(str(src),),
                             calibrations=(CalibrationConfig(str(corpus), "train", 4, 16, 0),),
                             evaluation=EvalProtocol(perplexity=(str(corpus),), seqlen=16,
                                                     tasks=("lambada", "hellaswag", "boolq"), task_limit=4),
                             device="cpu", finetune={"steps": 4, "batch": 2, "seqlen": 16, "heldout_windows": 2,
                                                     "heldout_fraction": 0.1, "lr": 5e-3, "lora": 2, "iter_steps": 2,
                                                     "train": str(corpus)})
        s = ResultsStore(store)
        counts = run_sweep(config, s, log=lambda *_: None)
        rows = {(r["method"], r["level"]): r for r in s.rows("done")}
        s.close()
        return counts, rows

    counts, rows = sweep(("magnitude", "magnitude+iter-linear", "magnitude+lora"), tmp_path / "s.db")
    assert counts["done"] == 7 and counts["failed"] == 0
    _, plain = sweep(("magnitude",), tmp_path / "plain.db")
    ppl = lambda r: next(iter(r["metrics"]["perplexity"].values()))["ppl"]  # noqa: E731
    # the magnitude run at 0.5 came after full fine-tuning runs: restored to the very same starting weights
    assert ppl(rows[("magnitude", 0.5)]) == ppl(plain[("magnitude", 0.5)])
    for level in (0.1, 0.5):
        base = rows[("magnitude", level)]["metrics"]["size"]
        for method in ("magnitude+iter-linear", "magnitude+lora"):
            run = rows[(method, level)]
            assert run["metrics"]["size"]["prunable_zeros"] == base["prunable_zeros"]  # the same sparsity, exactly
            assert ppl(run) != ppl(rows[("magnitude", level)])
    steps = rows[("magnitude+iter-linear", 0.5)]["record"]["recovery"]["steps"]
    assert [round(s["target"], 6) for s in steps] == [0.25, 0.5]
    assert not (tmp_path / "s.db.work").exists() or not any((tmp_path / "s.db.work").iterdir())
    write_report(tmp_path / "s.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Completion tasks by pruning rate" in md and "LAMBADA ppl" in md and "HellaSwag acc" in md
    assert "## QA tasks by pruning rate" in md and "BoolQ" in md
    assert "## Recovery fine-tuning and iterative runs" in md and "iterative (linear) with full fine-tuning" in md


def test_sweep_recovery_specs_and_settings_are_checked():
    from prunelab.bench.recovery import Recovery, split_recovery
    from prunelab.bench.sweep import sweep_config_from_dict

    assert split_recovery("wanda+dsnot+iter-linear+lora") == ("wanda+dsnot", Recovery("lora", "linear"))
    assert split_recovery("sparsegpt+ft") == ("sparsegpt", Recovery("full", None))
    assert split_recovery("magnitude+iter") == ("magnitude", Recovery("full", "cubic"))
    assert split_recovery("magnitude") == ("magnitude", None)
    with pytest.raises(ValueError, match="unknown schedule"):
        split_recovery("magnitude+iter-quadratic")
    with pytest.raises(ValueError, match="fine-tuning budget"):
        sweep_config_from_dict({"methods": ["magnitude+ft"], "levels": [0.5]})
    with pytest.raises(ValueError, match="unknown finetune setting"):
        sweep_config_from_dict({"methods": ["magnitude+ft"], "levels": [0.5], "finetune": {"tokens": 10**5, "lrr": 1}})
    config = sweep_config_from_dict({"methods": ["magnitude+lora"], "levels": [0.5],
                                     "finetune": {"tokens": 10**5, "lora": 8}})
    assert config.runs()[0].recovery == Recovery("lora", None)
    # iter_final_share joins an iterative run's identity only when given (earlier runs keep theirs)
    from prunelab.bench.recovery import identity
    even = identity({"tokens": 10**5}, Recovery("full", "cubic"))
    final = identity({"tokens": 10**5, "iter_final_share": "0.5"}, Recovery("full", "cubic"))
    assert "iter_final_share" not in even and final["iter_final_share"] == 0.5
    assert {k: v for k, v in final.items() if k != "iter_final_share"} == even
