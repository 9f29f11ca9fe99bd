"""Config: every kind of mistake is an error naming the file, the key path and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from facesortd.cli import main
from facesortd.config import Config, load_config, parse_config
from facesortd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path / "facesortd.yaml")
    assert str(tmp_path / "facesortd.yaml") in str(info.value)
    return info.value.problems


def test_example_config_is_valid_and_resolves_relative_paths():
    config = load_config(REPO / "config" / "facesortd.yaml")
    assert config.state_dir == REPO / "state"
    assert config.library == REPO / "library"
    assert [i.path for i in config.inboxes] == [REPO / "inbox"]
    assert config.embedder.batch_size == 64
    assert config.clustering.eps == "auto"


def test_defaults_match_the_design(tmp_path):
    config = parse_config("{}", tmp_path / "c.yaml")
    assert config.state_dir == tmp_path / "state"
    assert config.library == tmp_path / "library"
    assert config.inboxes[0].path == tmp_path / "inbox"
    assert config.inboxes[0].mode == "detect"
    assert config.watch.settle_ms == 1000 and config.watch.rescan_interval_s == 300
    assert config.embedder.name == "auto" and config.embedder.max_wait_ms == 200
    assert config.detector.min_probability == 0.95 and config.detector.min_face_px == 40
    assert config.placement.layout == "{identity}/{name}{ext}"
    assert config.placement.on_conflict == "rename_new"
    assert config.web.host == "127.0.0.1" and config.web.port == 8765


def test_config_is_frozen(tmp_path):
    config = parse_config("{}", tmp_path / "c.yaml")
    with pytest.raises(pydantic.ValidationError):
        config.embedder.batch_size = 3  # type: ignore[misc]


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    [msg] = problems("watch:\n  settle_msec: 10\n", tmp_path)
    assert msg.startswith("watch.settle_msec:")
    assert "unknown key" in msg and "settle_ms" in msg


def test_unknown_top_level_key(tmp_path):
    [msg] = problems("libary: ./lib\n", tmp_path)
    assert msg.startswith("libary:") and "library" in msg


def test_wrong_type(tmp_path):
    [msg] = problems("embedder:\n  batch_size: lots\n", tmp_path)
    assert msg.startswith("embedder.batch_size:") and "integer" in msg


def test_negative_batch_size(tmp_path):
    [msg] = problems("embedder:\n  batch_size: -3\n", tmp_path)
    assert msg.startswith("embedder.batch_size:") and "greater than or equal to 1" in msg


def test_bad_enum_lists_allowed_values(tmp_path):
    [msg] = problems("inboxes:\n  - path: in\n    mode: faces\n", tmp_path)
    assert msg.startswith("inboxes[0].mode:") and "'detect'" in msg and "'aligned'" in msg


def test_bad_eps(tmp_path):
    [msg] = problems("clustering:\n  eps: wide\n", tmp_path)
    assert msg.startswith("clustering.eps:") and "auto" in msg


def test_bad_device(tmp_path):
    [msg] = problems("embedder:\n  device: gpu\n", tmp_path)
    assert msg.startswith("embedder.device:") and "cuda:N" in msg


def test_probability_out_of_range(tmp_path):
    [msg] = problems("detector:\n  min_probability: 1.5\n", tmp_path)
    assert msg.startswith("detector.min_probability:")


def test_layout_unknown_field(tmp_path):
    [msg] = problems('placement:\n  layout: "{person}/{name}{ext}"\n', tmp_path)
    assert msg.startswith("placement.layout:") and "{person}" in msg and "{identity}" in msg


def test_inbox_inside_library(tmp_path):
    msgs = problems("library: ./lib\ninboxes:\n  - path: ./lib/in\n", tmp_path)
    assert any(m.startswith("inboxes[0].path:") and "library" in m for m in msgs)


def test_same_inbox_twice(tmp_path):
    msgs = problems("inboxes:\n  - path: ./in\n  - path: in/\n", tmp_path)
    assert any(m.startswith("inboxes[1].path:") and "twice" in m for m in msgs)


def test_nested_inboxes(tmp_path):
    msgs = problems("inboxes:\n  - path: ./in\n  - path: ./in/sub\n", tmp_path)
    assert any(m.startswith("inboxes[1].path:") and "overlaps" in m for m in msgs)


def test_state_inside_library(tmp_path):
    msgs = problems("library: ./lib\nstate_dir: ./lib/state\n", tmp_path)
    assert any(m.startswith("state_dir:") for m in msgs)


def test_public_web_needs_token(tmp_path):
    [msg] = problems("web:\n  host: 0.0.0.0\n", tmp_path)
    assert msg.startswith("web.token:") and "127.0.0.1" in msg
    config = parse_config("web:\n  host: 0.0.0.0\n  token: s3cret-token\n", tmp_path / "c.yaml")
    assert config.web.token == "s3cret-token"


def test_no_inboxes(tmp_path):
    [msg] = problems("inboxes: []\n", tmp_path)
    assert msg.startswith("inboxes:") and "at least one" in msg


def test_invalid_yaml_names_the_line(tmp_path):
    [msg] = problems("watch:\n  settle_ms: [1, 2\n", tmp_path)
    assert "line" in msg and "YAML" in msg


def test_not_a_mapping(tmp_path):
    [msg] = problems("- a\n- b\n", tmp_path)
    assert "mapping" in msg


def test_all_problems_reported_at_once(tmp_path):
    msgs = problems("embedder:\n  batch_size: 0\n  max_wait_ms: -1\nlog_level: loud\n", tmp_path)
    keys = {m.split(":")[0] for m in msgs}
    assert keys == {"embedder.batch_size", "embedder.max_wait_ms", "log_level"}


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "--config" in str(info.value) and "FACESORTD_CONFIG" in str(info.value)


def test_config_path_defaults_to_env_then_cwd(tmp_path, monkeypatch, capsys):
    (tmp_path / "facesortd.yaml").write_text("log_level: debug\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACESORTD_CONFIG", raising=False)
    assert main(["check-config"]) == 0
    assert "log_level: debug" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    other.write_text("log_level: error\n")
    monkeypatch.setenv("FACESORTD_CONFIG", str(other))
    assert main(["check-config"]) == 0
    assert "log_level: error" in capsys.readouterr().out


def test_check_config_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("embedder:\n  batch_size: -1\nwatch:\n  bogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "facesortd", "check-config", "--config", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "embedder.batch_size" in proc.stderr and "watch.bogus" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text("embedder:\n  name: dlib\n")
    proc = subprocess.run([sys.executable, "-m", "facesortd", "check-config", "--config", str(good)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"state_dir: {tmp_path / 'state'}" in proc.stdout
    assert isinstance(Config.model_validate({}), Config)


def test_companions_and_other_files_keys(tmp_path):
    config = parse_config("{}", tmp_path / "c.yaml")
    assert config.watch.other_files == "move" and config.placement.other_dir == "_other"
    assert {".xmp", ".aae", ".mov", ".json", ".thm", ".cr3", ".nef", ".dng"} <= set(config.watch.companions)
    assert {".heic", ".heif"} <= set(config.watch.extensions)
    ok = parse_config("watch:\n  companions: [XMP, .Mp4]\n  other_files: leave\n", tmp_path / "c.yaml")
    assert ok.watch.companions == (".xmp", ".mp4") and ok.watch.other_files == "leave"
    [both] = problems("watch:\n  extensions: [.jpg, .cr2]\n", tmp_path)
    assert both.startswith("watch:") and ".cr2 in both" in both
    [mode] = problems("watch:\n  other_files: delete\n", tmp_path)
    assert mode.startswith("watch.other_files:") and "'move' or 'leave'" in mode
    [folder] = problems("placement:\n  other_dir: a/b\n", tmp_path)
    assert folder.startswith("placement.other_dir:")
    [pattern] = problems("watch:\n  companions: ['*.xmp']\n", tmp_path)
    assert pattern.startswith("watch.companions:")
