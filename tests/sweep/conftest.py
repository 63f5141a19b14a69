"""Sweeps on a tiny random Llama (tests/model/conftest.py) and a local Ray of 2 CPUs: one Ray for a
whole test module (starting it and warming its workers is most of the time these tests take)."""

import pytest



@pytest.fixture
def write_sweep(tmp_path, tiny_model_dir, text_file):
    """write_sweep(body) -> path of a sweep file whose base recipe is the tiny model, briefly scored."""

    def write(body: str, base: bool = True, name: str = "sweep.yaml"):
        head = (f"base:\n  model: {tiny_model_dir}\n  calibration: {{text: {text_file}, samples: 4, seq_len: 64}}\n"
                f"  evaluation: {{text: {text_file}, seq_len: 64, max_windows: 2}}\n") if base else ""
        path = tmp_path / name
        path.write_text(head + body)
        return path

    return write


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
