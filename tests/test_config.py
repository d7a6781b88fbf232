"""Configuration: TOML file, environment overrides, and validation messages an
administrator can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "node.example.toml"


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.dicom.ae_title == "LGE_NODE"
    assert cfg.destinations and cfg.destinations[0].name == "pacs"
    assert cfg.database_url.startswith("sqlite:///")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[dicom]\nport = 4000\nae_title = "FROM_FILE"\n')
    monkeypatch.setenv("LGE_NODE_DICOM__PORT", "4001")
    cfg = load_config(path)
    assert cfg.dicom.port == 4001
    assert cfg.dicom.ae_title == "FROM_FILE"


def test_every_problem_is_listed_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[dicom]\nport = 70000\nae_titel = "X"\n'
        "[storage]\nstable_age_s = -1\n"
        '[[destinations]]\nname = "pacs"\nae_title = "WAY_TOO_LONG_AE_TITLE"\n'
        'host = "h"\nport = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "4 problem(s)" in msg
    assert "dicom.port: Input should be less than or equal to 65535 (got 70000)" in msg
    assert "dicom.ae_titel: unknown key" in msg
    assert "storage.stable_age_s" in msg
    assert "destinations.0.ae_title" in msg and "1-16 printable characters" in msg


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_tls_needs_certificate_and_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[tls]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"tls\.certificate and tls\.private_key"):
        load_config(path)


def test_selection_patterns_and_destination_names_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[selection]\ninclude = ["lge(", "psir"]\nprefer = "psir"\n'
        '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nport = 104\n'
        '[[destinations]]\nname = "pacs"\nae_title = "B"\nhost = "h"\nport = 105\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "selection.include: 'lge(' is not a valid regex" in text
    assert "destinations: name 'pacs' is used twice" in text


def test_destinations_map_calling_ae_titles(tmp_path: Path) -> None:
    from node.dimse.dispatch import deliveries_for

    path = tmp_path / "node.toml"
    path.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
        '[[destinations]]\nname = "research"\nae_title = "XNAT"\nhost = "x"\nport = 8104\n'
        'sources = ["SCANNER_MR*"]\n'
    )
    cfg = load_config(path)
    assert [d.name for d in deliveries_for(cfg, "ORTHANC")] == ["pacs"]
    assert [d.name for d in deliveries_for(cfg, "SCANNER_MR2")] == ["pacs", "research"]
