"""scripts/mutate.py's own logic, without running cosmic-ray: mutant ids that survive edits elsewhere
in a file, the regression check against the baseline, and the one target list's consistency."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("mutate_script", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
sys.modules["mutate_script"] = mutate  # dataclasses look their module up
spec.loader.exec_module(mutate)


def m(mutant_id: str) -> "mutate.Mutant":
    return mutate.Mutant(mutant_id, "core/X", 1, "survived")


def test_a_survivor_killed_in_the_baseline_is_a_regression_and_an_unknown_one_is_reported():
    baseline = {"killed": ["a", "b"], "equivalent": {"c": "why"}}
    regressions, unexplained = mutate.compare([m("a"), m("c"), m("d")], baseline)
    assert [x.id for x in regressions] == ["a"]
    assert [x.id for x in unexplained] == ["d"]
    assert mutate.compare([m("c")], baseline) == ([], [])


def test_functions_and_constants_are_named_by_their_code_not_their_line():
    source = "X = 1\nA, B = 2, 3\n\nclass C:\n    def f(self):\n        return 1\n\ndef g():\n    pass\n"
    spans = mutate._qualnames(source)
    assert mutate._enclosing(spans, 1) == "X" and mutate._enclosing(spans, 2) == "A,B"
    assert mutate._enclosing(spans, 6) == "C.f" and mutate._enclosing(spans, 9) == "g"
    assert mutate._enclosing(spans, 3) == "<module>"
    moved = mutate._qualnames("\n\n" + source)
    assert mutate._enclosing(moved, 8) == "C.f"


def test_the_target_list_names_real_code_and_the_baseline_names_its_targets():
    names = {t.name for t in mutate.TARGETS}
    assert len(names) == len(mutate.TARGETS)
    for t in mutate.TARGETS:
        source = (ROOT / t.module).read_text()
        known = {name for _, _, name in mutate._qualnames(source)}
        for g in t.groups:
            assert g.functions == ("*",) or set(g.functions) <= known, (t.name, set(g.functions) - known)
            assert g.tests and all((ROOT / a).exists() for a in g.tests if a.startswith("tests/"))
    assert any(t.ci for t in mutate.TARGETS)
    baseline = json.loads(mutate.BASELINE.read_text())
    for mutant_id in [*baseline["killed"], *baseline["equivalent"]]:
        assert mutant_id.split(":", 1)[0] in names, mutant_id
    assert set(baseline["killed"]).isdisjoint(baseline["equivalent"])
