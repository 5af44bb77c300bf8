"""benchmarks/zoo.py --carry: cells of an earlier rendering fill the cells a (new) store lacks, and say so."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zoo import carried_cells, fmt  # noqa: E402


def _rendering(tmp_path, date="2026-12-02 09:33", carried=None):
    done = {"status": "done", "reason": None, "ppl": 73.03, "prune_seconds": 620.5, "peak_rss_mib": 4720.0,
            "sparsity": 0.5, "mean_acc": 33.1}
    if carried:
        done["carried"] = carried
    data = {"meta": {"date": date},
            "table4": [{"method": "fisher", "cells": {"0.50": done, "0.60": {"status": "not run"}}},
                       {"method": "random-nm", "cells": {"2:4": {"status": "done", "ppl": 900.0},
                                                         "0.60": {"status": "NA", "reason": "no N:M pattern"}}},
                       {"method": "bias", "cells": {"0.70": {"status": "failed", "reason": "NotApplicable: no bias"}}}],
            "comparisons": {"owl_vs_uniform_70": {"wanda": {"uniform": 1280.76, "owl": 879.08},
                                                  "sparsegpt": {"uniform": None, "owl": 360.84}},
                            "search_vs_owl_70": {"wanda": {"owl": 879.08, "search": 398.5,
                                                           "search_record": {"forward_passes": 400}}},
                            "gradient_criteria_vs_wanda": {"wanda": {"0.50": 70.39, "0.70": 1280.76}}}}
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps(data))
    return path


def test_carries_measured_and_failed_cells_never_not_run_or_fixed_na(tmp_path):
    cells = carried_cells(_rendering(tmp_path))
    assert cells[("fisher", "0.50")]["ppl"] == 73.03 and cells[("fisher", "0.50")]["carried"] == "2026-12-02 09:33"
    assert ("fisher", "0.60") not in cells                         # "not run" is not a result
    assert cells[("random", "2:4")]["ppl"] == 900.0                # random-nm is the 2:4 run of random
    assert ("random", "0.60") not in cells                         # a fixed NA is recomputed, not carried
    assert cells[("bias", "0.70")]["reason"] == "NotApplicable: no bias"
    assert cells[("wanda", "0.70")]["ppl"] == 1280.76 and cells[("wanda+owl", "0.70")]["ppl"] == 879.08
    assert ("sparsegpt", "0.70") not in cells and cells[("sparsegpt+owl", "0.70")]["ppl"] == 360.84
    assert cells[("wanda+search", "0.70")]["allocation"] == {"search": {"forward_passes": 400}}
    assert cells[("wanda", "0.50")]["ppl"] == 70.39


def test_a_carried_cell_keeps_the_date_it_was_measured_and_is_marked(tmp_path):
    cells = carried_cells(_rendering(tmp_path, date="2026-12-03 10:00", carried="2026-12-02 09:33"))
    assert cells[("fisher", "0.50")]["carried"] == "2026-12-02 09:33"
    assert cells[("wanda", "0.70")]["carried"] == "2026-12-03 10:00"
    assert fmt(cells[("fisher", "0.50")]) == "73.03 †"
    assert fmt({"status": "done", "ppl": 73.03}) == "73.03"


def test_a_rerender_keeps_the_dates_its_comparisons_were_carried_with(tmp_path):
    """The comparisons of zoo.json hold bare numbers: their carried dates come from its meta."""
    path = _rendering(tmp_path, date="2026-12-03 10:00")
    data = json.loads(path.read_text())
    data["meta"]["carried"] = {"from": "old.json", "cells": {"wanda@0.70": "2026-12-02 09:33"}}
    path.write_text(json.dumps(data))
    cells = carried_cells(path)
    assert cells[("wanda", "0.70")]["carried"] == "2026-12-02 09:33"
    assert cells[("wanda+owl", "0.70")]["carried"] == "2026-12-03 10:00"


def test_check_algorithm_bench_uses_the_zoo_protocol_to_the_flag():
    """A bench into the zoo's store must share its dense run and compare like with like (the evaluation batch is
    part of a run's identity)."""
    from prunelab.commands.check_algorithm import BENCH_PROTOCOL
    from zoo import PROTOCOL

    assert BENCH_PROTOCOL == PROTOCOL
