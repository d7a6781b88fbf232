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


def test_cluster_examples_are_valid_and_scaled_out() -> None:
    """deploy/cluster: a receive-only node with its own name and address for workers, a
    worker host that fetches what it cannot read in place; the compose file (not run
    here) mounts those very files."""
    import yaml

    cluster = EXAMPLE.parent / "cluster"
    receiver = load_config(cluster / "receiver.toml")
    worker = load_config(cluster / "worker.toml")
    for cfg in (receiver, worker):
        assert cfg.distributed and cfg.database_url.startswith("postgresql")
    assert receiver.jobs.workers == 0 and receiver.node_name == "site-east"
    assert receiver.node_url == "http://lge-east.example.org:8044"
    assert receiver.http.tokens[0].role == "operator"
    assert worker.cluster.fetch == "auto" and worker.cluster.token
    compose = yaml.safe_load((cluster / "compose.yaml").read_text())
    mounted = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert {"./receiver.toml", "./worker.toml"} <= mounted
    assert (cluster / compose["x-node"]["build"]["dockerfile"].split("/")[-1]).is_file()


def test_node_url_defaults_to_what_the_console_is_bound_to(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[http]\nbind_address = "10.1.2.3"\nport = 8100\n')
    assert load_config(path).node_url == "http://10.1.2.3:8100"
    path.write_text('[http]\nport = 8100\npublic_url = "https://node.example/"\n')
    assert load_config(path).node_url == "https://node.example"
    path.write_text("[http]\nenabled = false\n")
    assert load_config(path).node_url == ""


REGISTRY = """
[pipeline]
default_model = "magnitude"
[pipeline.models.psir]
model_dir = "/models/psir"
[pipeline.models.magnitude]
model_dir = "/models/magnitude"
[pipeline.models.demo]
[[pipeline.model_rules]]
model = "demo"
calling_ae = ["TEST_SCANNER"]
[[pipeline.model_rules]]
model = "psir"
reconstruction = "psir"
[[pipeline.model_rules]]
model = "psir"
series_description = "phase[ _-]?sens"
"""


def test_model_registry_picks_by_rule_then_default(tmp_path: Path) -> None:
    from node.workflow.registry import Choice, choose
    from node.workflow.selector import SeriesFacts

    path = tmp_path / "node.toml"
    path.write_text(REGISTRY)
    cfg = load_config(path).pipeline
    assert sorted(cfg.registry()) == ["demo", "magnitude", "psir"]
    assert cfg.registry()["demo"].model_dir is None  # no paths: the bundled models

    def facts(description: str, image_type: str = "ORIGINAL\\PRIMARY\\M") -> SeriesFacts:
        return SeriesFacts("1.2", "MR", description, image_type=image_type)

    assert choose(cfg, facts("LGE PSIR", "ORIGINAL\\PRIMARY\\PSIR"), "SCANNER").model == "psir"
    assert choose(cfg, facts("LGE magnitude"), "SCANNER") == Choice("magnitude", "default")
    assert choose(cfg, facts("lge phase-sens"), "SCANNER").reason == "model rule 2"
    # First rule that holds wins: the test scanner always gets the demo model.
    assert choose(cfg, facts("LGE PSIR", "ORIGINAL\\PRIMARY\\PSIR"), "TEST_SCANNER").model == "demo"

    # Without a registry: one model, "default", from the single-model keys.
    path.write_text('[pipeline]\nmodel_dir = "/models/site"\n')
    single = load_config(path).pipeline
    assert list(single.registry()) == ["default"]
    assert single.registry()["default"].model_dir == Path("/models/site")
    assert choose(single, facts("LGE"), "X").model == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (REGISTRY.replace('default_model = "magnitude"', ""), "default_model: name the model"),
        (REGISTRY.replace('model = "psir"\nreconstruction', 'model = "psi"\nreconstruction'),
         "model(s) psi not in [pipeline.models]"),
        (REGISTRY.replace('"magnitude"\n', '"magnitude"\nmodel_dir = "/x"\n', 1),
         "model_dir and [pipeline.models] together"),
        (REGISTRY.replace("[pipeline.models.demo]", "[pipeline.models.\"a name with spaces\"]"),
         "models.a name with spaces"),
        (REGISTRY.replace('"phase[ _-]?sens"', '"phase[ "'), "not a regular expression"),
        ('[pipeline]\ndefault_model = "x"\n', "default_model 'x': no [pipeline.models]"),
    ],
)  # fmt: skip
def test_model_registry_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
