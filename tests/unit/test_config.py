"""The configuration loader: defaults, the file, the environment, errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from switchd.config import SECTIONS, ConfigError, load, render_rst_keys, render_sample

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "switchd.ini"
    path.write_text(text)
    return str(path)


def test_embedded_defaults():
    config = load(None, environ={})
    assert config.switchd.state_dir == "switchd-state"
    assert config.api.listen == ("tcp:8080:interface=127.0.0.1",)
    assert config.database.pool_size == 8
    assert config.database_url == "sqlite:///" + os.path.join(os.path.abspath("switchd-state"), "switchd.sqlite3")


def test_file_values_are_parsed(tmp_path):
    path = write(
        tmp_path,
        "[switchd]\nstate_dir = /var/lib/switchd\n"
        "[database]\nurl = postgresql://u@h/db\npool_size = 3\nauto_migrate = yes\n"
        "[api]\nlisten = tcp:1:interface=::1  unix:/run/s.sock\nauth_cache_seconds = 0.5\n",
    )
    config = load(path, environ={})
    assert config.state_dir == "/var/lib/switchd"
    assert config.database_url == "postgresql://u@h/db"
    assert config.database.pool_size == 3
    assert config.database.auto_migrate is True
    assert config.api.listen == ("tcp:1:interface=::1", "unix:/run/s.sock")
    assert config.api.auth_cache_seconds == 0.5
    assert config.source == path


def test_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path, "[api]\nlisten = tcp:1\n[database]\npool_size = 3\n")
    config = load(
        path,
        environ={
            "SWITCHD_API_LISTEN": "tcp:18080:interface=127.0.0.1",
            "SWITCHD_SWITCHD_STATE_DIR": "/tmp/x",
            "SWITCHD_DATABASE_POOL_SIZE": "5",
            "HOME": "/root",
        },
    )
    assert config.api.listen == ("tcp:18080:interface=127.0.0.1",)
    assert config.switchd.state_dir == "/tmp/x"
    assert config.database.pool_size == 5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[smtp]\nlisten = tcp:25\n", r"\[smtp\]: unknown section; known sections: switchd, database, api, sip"),
        ("[api]\nport = 8080\n", r"\[api\] port: unknown key; known keys: listen,"),
        ("[database]\npool_size = many\n", r"\[database\] pool_size: expected an integer, got 'many'"),
        ("[database]\npool_size = 0\n", r"\[database\] pool_size: must be at least 1, got 0"),
        ("[database]\nauto_migrate = perhaps\n", r"\[database\] auto_migrate: expected yes or no, got 'perhaps'"),
        ("[database]\nurl = mysql://x\n", r"\[database\] url: expected an sqlite:/// or postgresql:// URL"),
        ("[switchd]\ncpu_affinity = 3-1\n", r"\[switchd\] cpu_affinity: '3-1': the range ends before it starts"),
        ("[switchd]\ncpu_affinity = first\n", r"\[switchd\] cpu_affinity: 'first' is not a CPU number or range"),
        ("listen = 1\n", r"not a valid INI file: File contains no section headers"),
        ("[api]\nlisten = a\nlisten = b\n", r"not a valid INI file: While reading from"),
    ],
)
def test_bad_files_name_file_section_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load(path, environ={})
    assert str(info.value).startswith(path + ": ")
    assert "\n" not in str(info.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load(None, environ={"SWITCHD_API_PAGE_SIZE": "0"})
    assert str(info.value) == (
        "environment variable SWITCHD_API_PAGE_SIZE: [api] page_size: must be at least 1, got 0"
    )


def test_unknown_environment_variables_are_errors():
    with pytest.raises(ConfigError, match=r"SWITCHD_API_PROT: \[api\] prot: unknown key"):
        load(None, environ={"SWITCHD_API_PROT": "1"})
    with pytest.raises(ConfigError, match=r"SWITCHD_NOPE_X: names no section"):
        load(None, environ={"SWITCHD_NOPE_X": "1"})


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.ini: cannot read the file: No such file"):
        load(str(tmp_path / "nope.ini"), environ={})
    binary = tmp_path / "bin.ini"
    binary.write_bytes(b"[api]\nlisten = \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"the file is not UTF-8 text"):
        load(str(binary), environ={})


def test_sample_file_documents_every_key_with_its_default():
    sample = (ROOT / "etc" / "switchd.ini").read_text()
    assert sample == render_sample(), "regenerate etc/switchd.ini from switchd.config.render_sample()"
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in sample
        for f in dataclasses.fields(cls):
            raw = f.metadata["raw_default"]
            assert (f"#{f.name} = {raw}" if raw else f"#{f.name} =") in sample


def test_sample_file_loads_to_the_embedded_defaults():
    assert dataclasses.replace(load(str(ROOT / "etc" / "switchd.ini"), environ={}), source="x") == \
        dataclasses.replace(load(None, environ={}), source="x")


def test_configuration_docs_cover_every_key():
    docs = (ROOT / "docs" / "configuration.rst").read_text()
    assert render_rst_keys() in docs, "run: python -m switchd.config --rst docs/configuration.rst"
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in docs
        for f in dataclasses.fields(cls):
            assert f"``{f.name}``" in docs, f"docs/configuration.rst lacks [{section}] {f.name}"


def test_cpu_affinity_takes_numbers_and_ranges(tmp_path):
    config = load(write(tmp_path, "[switchd]\ncpu_affinity = 2-3, 0 3\n"), environ={})
    assert config.switchd.cpu_affinity == (0, 2, 3)
    assert load(write(tmp_path, ""), environ={}).switchd.cpu_affinity == ()
