"""Shared fixtures: the fake OpenAI-compatible server and a way to run the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai import FakeOpenAI  # noqa: E402

# Real public data (Alpaca and BELLE seeds, FastChat and LLaMA-Factory demos) that CI keeps beside the clone.
# Tests that read it carry the `anchors` marker or ask for the `anchors` fixture; a clone without it skips them.
ANCHORS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors"
ANCHORS_ABSENT = "../shared/anchors is absent (real public data that CI keeps beside the clone)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests asking for the `anchors` fixture are marked too; marked tests skip where the data is absent."""
    present = ANCHORS.is_dir()
    for item in items:
        if "anchors" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.anchors)
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.xdist_group("ray"))  # one cluster, in one worker
        if not present and item.get_closest_marker("anchors"):
            item.add_marker(pytest.mark.skip(reason=ANCHORS_ABSENT))


@pytest.fixture(scope="session")
def anchors() -> Path:
    """The directory of real public data files (the test is skipped where it is absent)."""
    return ANCHORS


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole suite, started by the first test that asks for it (about 2.5 s and
    1 GB): 2 CPUs, no dashboard, bound to loopback (without the address Ray picks the machine's external
    one). Yields its address, for a CLI run to join with --ray-address; in-process runs find it connected."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def fake_server():
    """A started fake endpoint; set `.script` / `.latency` in the test to shape its answers."""
    with FakeOpenAI() as server:
        yield server


def cli_env(server: FakeOpenAI | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for the CLI: no real endpoint leaks in from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DISTILLERY_"))}
    if server is not None:
        env["OPENAI_BASE_URL"] = server.base_url
        env["DISTILLERY_MODEL"] = "fake-model"
    env.update(extra)
    return env


def cli_exe() -> str:
    """The installed console script, as a user would call it."""
    return shutil.which("distillery") or str(Path(sys.executable).parent / "distillery")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([cli_exe(), *args], capture_output=True, text=True, env=env or cli_env(), timeout=timeout)


def reported(output: Path, tmp_path: Path):
    """`distillery report OUTPUT` on a command's output must read OUTPUT's summary and rejects (exit 0);
    returns what the report read of them (its stages, and example rejections by reason)."""
    from distillery.report import ReportOptions, collect

    page = tmp_path / f"{output.name}.report.html"
    done = run_cli("report", str(output), "-o", str(page), "--lang-sample", "0")
    assert done.returncode == 0, done.stderr
    return collect(ReportOptions([output], output=page, lang_sample=0))[0].rejections
