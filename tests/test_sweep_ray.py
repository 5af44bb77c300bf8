"""Sweeps on a local Ray instance: the same rows and numbers as the local executor; a worker killed mid-run
leaves that run to the next sweep, nothing lost or recorded twice."""
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

import prunelab
from prunelab.algorithms.base import register
from prunelab.algorithms.magnitude import Magnitude
from prunelab.bench import EvalProtocol, ResultsStore, SweepConfig, run_sweep
from prunelab.bench.executors import RayExecutor
from prunelab.cli import main
from tiny_models import TEXT, save_tiny_folder


@register
@dataclass
class KillsItsWorkerOnce(Magnitude):
    """Test-only: the first time it runs (no marker file yet) it kills its own process, like kill -9 on a worker."""
    name = "test-kills-worker"
    marker: str = ""

    def prune(self, weight, stats, pattern):
        if self.marker and not Path(self.marker).exists():
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().prune(weight, stats, pattern)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("raysweep")
    save_tiny_folder("llama", root / "model")
    (root / "corpus.txt").write_text(TEXT)
    return root


@pytest.fixture(scope="module")
def local_ray():
    # workers import this test module (to know the test algorithm) and prunelab from the same places as here
    here = [str(Path(__file__).parent), str(Path(prunelab.__file__).parents[1])]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(here + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def config(workdir, methods, marker="", patterns=("unstructured",)):
    return SweepConfig(methods=methods, levels=(0.5,), patterns=patterns,
                       models=(str(workdir / "model"),),
                       calibrations=(prunelab.CalibrationConfig(str(workdir / "corpus.txt"), "train", 4, 32, 0),),
                       method_options={"test-kills-worker": {"marker": marker}},
                       evaluation=EvalProtocol(perplexity=(str(workdir / "corpus.txt"),), seqlen=32), device="cpu")


def rows(store) -> dict:
    return {r["key"]: r for r in store.rows()}


def test_ray_sweep_gives_the_local_executors_rows_and_numbers(workdir, tmp_path, local_ray):
    cfg = config(workdir, ("wanda", "sparsegpt"), patterns=("unstructured", "2:4"))
    local, remote = ResultsStore(tmp_path / "local.db"), ResultsStore(tmp_path / "ray.db")
    assert run_sweep(cfg, local, log=lambda *_: None)["done"] == 5
    lines = []
    counts = run_sweep(cfg, remote, log=lines.append, executor=RayExecutor(cpus_per_run=1))
    assert counts["done"] == 5 and len(lines) == 5
    a, b = rows(local), rows(remote)
    assert set(a) == set(b)  # same keys: the identity does not depend on the executor
    for key in a:
        assert a[key]["status"] == b[key]["status"] == "done"
        assert a[key]["metrics"] == b[key]["metrics"], a[key]["method"]  # every number, exactly
        assert a[key]["layers"] == b[key]["layers"] or _same_layers(a[key]["layers"], b[key]["layers"])
        assert b[key]["record"]["host"]["torch_threads"] == 1  # each Ray task ran with its one CPU
    # a second Ray sweep finds everything done
    assert run_sweep(cfg, remote, log=lambda *_: None, executor=RayExecutor(cpus_per_run=1))["skipped"] == 5


def _same_layers(x, y):
    """Layer reports agree in everything but the solve seconds."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    return strip(x) == strip(y)


def test_a_killed_worker_leaves_its_run_to_the_next_sweep(workdir, tmp_path, local_ray):
    marker = tmp_path / "killed-once"
    cfg = config(workdir, ("magnitude", "test-kills-worker"), marker=str(marker))
    store = ResultsStore(tmp_path / "s.db")
    first = run_sweep(cfg, store, log=lambda *_: None, executor=RayExecutor(cpus_per_run=1))
    assert marker.exists() and first["interrupted"] == 1 and first["done"] == 2
    interrupted = [r for r in store.rows() if r["status"] == "interrupted"]
    assert len(interrupted) == 1 and "worker" in interrupted[0]["reason"].lower()
    second = run_sweep(cfg, store, log=lambda *_: None, executor=RayExecutor(cpus_per_run=1))
    assert (second["done"], second["skipped"]) == (1, 2)
    assert {r["status"] for r in store.rows()} == {"done"} and len(store.rows()) == 3
    redone = store.get(interrupted[0]["key"])
    assert redone["attempts"] == 2
    # the redone run's numbers are those of a sweep that was never interrupted
    reference = ResultsStore(tmp_path / "ref.db")
    run_sweep(cfg, reference, log=lambda *_: None)
    assert reference.get(redone["key"])["metrics"] == redone["metrics"]


def test_without_ray_the_executor_names_the_install_command(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = main(["sweep", "--methods", "magnitude", "--models", str(workdir / "model"), "--levels", "0.5",
                 "--calib", str(workdir / "corpus.txt"), "--calib-samples", "2", "--calib-seqlen", "32",
                 "--eval", str(workdir / "corpus.txt"), "--eval-seqlen", "32", "--device", "cpu",
                 "--store", str(tmp_path / "s.db"), "--executor", "ray", "--quiet"])
    assert code == 2
    assert 'pip install "prunelab[ray]"' in capsys.readouterr().err
