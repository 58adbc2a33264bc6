"""Settings precedence: flag, then RNNSERVE_* environment, then the --config file, then default."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from rnnserve.server.main import parse_settings
from rnnserve.server.settings import load_settings


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path, monkeypatch):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"port": 9, "max_sessions": 5, "session_ttl_s": 7}))
    monkeypatch.setenv("RNNSERVE_PORT", "77")
    monkeypatch.setenv("RNNSERVE_MAX_SESSIONS", "6")
    s = load_settings({"max_sessions": 3, "max_batch_size": None}, config)
    assert (s.port, s.max_sessions, s.session_ttl_s, s.max_batch_size) == (77, 3, 7.0, 64)


def test_toml_file_and_flags_through_the_serve_parser(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNSERVE_PORT", raising=False)
    config = tmp_path / "settings.toml"
    config.write_text('port = 6000\nlog_format = "json"\n')
    s = parse_settings(["--config", str(config), "--max-batch-size", "1"])
    assert (s.port, s.log_format, s.max_batch_size) == (6000, "json", 1)


def test_unknown_or_invalid_settings_are_refused(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"no_such_setting": 1}))
    with pytest.raises(ValidationError):
        load_settings({}, config)
    with pytest.raises(ValidationError):
        load_settings({"max_batch_size": 0})
