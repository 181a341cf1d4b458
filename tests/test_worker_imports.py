"""What a sending worker loads: the web app's, the migrations' and the bounce parser's
libraries stay out of it (each costs resident memory in every worker process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Packages only the web app, the migrations or the bounce reader need.
NOT_IN_WORKER = {"flask", "werkzeug", "click", "blinker", "alembic", "mako", "pygments", "flufl"}


def loaded_packages(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running `statement`."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in json.loads(result.stdout)}


def test_the_worker_jobs_load_no_web_migration_or_bounce_libraries() -> None:
    assert loaded_packages("import worker.jobs, worker.__main__") & NOT_IN_WORKER == set()


def test_the_web_app_factory_still_loads_flask() -> None:
    assert {"flask", "werkzeug"} <= loaded_packages("from app import create_app; create_app()")
