"""Start-up that matches the command: what needs no model (the help, scoring results) imports no torch.

Each case runs in a fresh interpreter (this one has torch loaded by other tests) and reports the heavy modules it
ended with in ``sys.modules``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from propagate.datasets.synthetic_davis import make_synthetic_davis
from propagate.labels import read_mask, write_mask

HEAVY = ("torch", "diffusers", "transformers", "ray", "gradio")


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; the heavy modules it imported, and what the code stored in ``result``."""
    probe = (f"import json, sys\nresult = None\n{code}\n"
             f"print(json.dumps({{'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules), 'result': result}}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch():
    found = _modules_after(
        "from propagate.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    result = exc.code\n")
    assert found == {"heavy": [], "result": 0}
    for command in (["run", "--help"], ["score", "davis", "--help"], ["serve", "--help"]):
        found = _modules_after(f"from propagate.cli import main\ntry:\n    main({command!r})\n"
                               "except SystemExit as exc:\n    result = exc.code\n")
        assert found == {"heavy": [], "result": 0}, command


def test_package_facade_imports_on_first_use():
    found = _modules_after("import propagate\nresult = [propagate.__version__, 'Session' in dir(propagate)]")
    assert found == {"heavy": [], "result": ["0.1.0", True]}
    found = _modules_after("from propagate import Session\nresult = Session.__module__")
    assert found["result"] == "propagate.session" and "torch" in found["heavy"]


def test_scoring_imports_no_torch(tmp_path):
    """``propagate score davis`` on results that are the ground truth itself (void as background, as scored): J&F
    1, and no torch imported."""
    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=2, num_frames=5, size=(64, 48), seed=0)
    results = tmp_path / "results"
    for truth in sorted((root / "Annotations" / "480p").glob("*/*.png")):
        mask = read_mask(truth)
        write_mask(results / truth.parent.name / truth.name, np.where(mask == 255, 0, mask).astype(np.uint8))
    found = _modules_after(
        "from propagate.cli import main\n"
        f"status = main(['score', 'davis', '--root', {str(root)!r}, '--results', {str(results)!r}])\n"
        f"result = [status, open({str(results / 'global_results-val.csv')!r}).read().splitlines()[1]]")
    assert found["heavy"] == [] and found["result"][0] == 0
    assert found["result"][1].split(",")[:3] == ["1.000", "1.000", "1.000"]
    assert Path(results / "per-sequence_results-val.csv").is_file()
