"""The CLI shell: help is instant and complete, errors are rendered without tracebacks."""
import json
import subprocess
import sys
import time

import pytest

from AutoSegLib import cli
from AutoSegLib.progress import ProgressTracker, console_renderer, json_lines_renderer


def test_help_lists_every_subcommand_quickly():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "AutoSegLib", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - start
    for name in cli.COMMANDS:
        assert name in out.stdout
    # a cold interpreter start is ~0.05 s; heavy imports (torch, SimpleITK) would take seconds
    assert elapsed < 3.0, f"--help took {elapsed:.2f} s"


def test_help_and_api_import_do_not_import_heavy_modules():
    code = ("import sys; from AutoSegLib import cli, api; cli.build_parser();"
            "print(','.join(m for m in ('torch', 'SimpleITK', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_module_exists_and_has_help(name):
    out = subprocess.run([sys.executable, "-m", "AutoSegLib", name, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--progress-json" in out.stdout


def test_user_error_has_no_traceback(tmp_path):
    missing = tmp_path / "nope"
    out = subprocess.run([sys.executable, "-m", "AutoSegLib", "verify", str(missing)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert str(missing) in out.stderr + out.stdout


def test_json_progress_lines_parse_and_tracker_counts():
    import io
    buf = io.StringIO()
    tracker = ProgressTracker(json_lines_renderer(buf), "stage-x", 4)
    for i in range(4):
        tracker.step(f"case {i}")
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["current"] for e in events] == [1, 2, 3, 4]
    assert all(e["event"] == "progress" and e["total"] == 4 for e in events)
    assert events[-1]["eta_s"] == 0.0


def test_console_renderer_draws_bar_and_lines():
    import io
    buf = io.StringIO()
    render = console_renderer(buf)
    render({"event": "stage", "stage": "plan", "message": "go"})
    render({"event": "progress", "stage": "plan", "current": 1, "total": 2, "eta_s": 61})
    render({"event": "log", "level": "warning", "message": "careful"})
    text = buf.getvalue()
    assert "== plan: go" in text and "1/2" in text and "ETA 01:01" in text and "WARNING: careful" in text
