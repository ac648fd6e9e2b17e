from pathlib import Path

import pytest

from core.errors import ConfigError
from edge.config import Config, config_from_dict, load_config


def test_defaults_without_file() -> None:
    assert load_config(None) == Config()


def test_values_are_converted(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[terminal]\nid = "t-01"\nstate_dir = "/tmp/x"\n[detector]\nmin_face = 60\n')
    cfg = load_config(path)
    assert cfg.terminal.id == "t-01"
    assert cfg.terminal.state_dir == Path("/tmp/x")
    assert cfg.detector.min_face == 60


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"detector": {"min_face": "big"}}, "detector.min_face"),
        ({"detector": {"min_fce": 3}}, "detector.min_fce"),
        ({"runtime": {"providers": "CPU"}}, "runtime.providers"),
        ({"runtime": {"providers": []}}, "runtime.providers"),
        ({"runtime": {"providers": ["CPUExecutionProvider", "CUDAExecutionProvider"]}},
         "runtime.providers: CPUExecutionProvider must be last"),
        ({"runtime": {"providers": ["CUDAExecutionProvider", "CUDAExecutionProvider"]}},
         "runtime.providers: .* names one twice"),
        ({"runtime": {"device_id": -1}}, "runtime.device_id"),
        ({"runtime": {"trt_fp16": "yes"}}, "runtime.trt_fp16"),
        ({"runtime": {"trt_engine_cache_dir": ""}}, "runtime.trt_engine_cache_dir"),
        ({"nosuch": {}}, "nosuch"),
        ({"terminal": 3}, "terminal"),
    ],
)
def test_errors_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        config_from_dict(doc)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[terminal\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
