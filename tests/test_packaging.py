"""Installing without make, the API's entry points, configs usable from an installed package."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_licence_urls_classifiers_and_configs():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["license"] == "MIT"  # an SPDX string: no setuptools licence warning
    assert not any(c.startswith("License ::") for c in meta["classifiers"])  # PEP 639 forbids both
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(meta["urls"])
    tool = project["tool"]["setuptools"]
    assert tool["package-dir"]["flowdec_cli.configs"] == "configs"
    assert "flowdec_cli.configs" in tool["packages"]


def test_readme_links_are_absolute():
    import re

    for target in re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text()):
        assert target.startswith(("https://", "#")), target


def test_readme_documents_pip_and_pipx_routes():
    text = (ROOT / "README.md").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "pipx install --preinstall torch" in text
    assert "_FLOWDEC_COMPLETE=bash_source flowdec" in text


def test_init_config_writes_the_shipped_examples(tmp_path, monkeypatch):
    from flowdec_cli.cli import main
    from flowdec_cli.training.config import load_config

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "init-config"])
    assert {"ndac-tiny", "postfilter-tiny", "flowdec-75m"} <= set(r.stdout.split())
    r = CliRunner().invoke(main, ["train", "init-config", "ndac-tiny"])
    assert r.exit_code == 0, r.output
    written = tmp_path / "configs" / "ndac-tiny.toml"
    assert written.read_text() == (ROOT / "configs" / "ndac-tiny.toml").read_text()
    assert load_config(written, "ndac").model.n_codebooks == 4
    r = CliRunner().invoke(main, ["train", "init-config", "ndac-tiny"])
    assert r.exit_code == 1 and r.stderr.startswith("flowdec: error:") and "exists" in r.stderr
    r = CliRunner().invoke(main, ["train", "init-config", "nope"])
    assert r.exit_code == 2 and "choose from" in r.stderr  # a usage error, as -m naming no model


def test_lazy_top_level_names_are_declared_for_type_checkers():
    import flowdec_cli
    from flowdec_cli.models import load_ndac
    from flowdec_cli.pipeline import Codec, from_pretrained

    assert flowdec_cli.load_ndac is load_ndac and flowdec_cli.Codec is Codec
    assert flowdec_cli.from_pretrained is from_pretrained
    tree = ast.parse((ROOT / "src" / "flowdec_cli" / "__init__.py").read_text())
    declared = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            declared |= {a.name for imp in node.body for a in getattr(imp, "names", [])}
    assert set(flowdec_cli.__all__) - {"__version__"} <= declared


def test_every_error_the_readme_names_is_a_top_level_flowdec_error():
    import flowdec_cli

    for name in ("FlowdecError", "CodecError", "FdcError", "ModelError", "AudioError", "InvalidValue",
                 "OutputExistsError"):
        assert name in flowdec_cli.__all__ and issubclass(getattr(flowdec_cli, name), flowdec_cli.FlowdecError)
    assert issubclass(flowdec_cli.InvalidValue, ValueError)


def test_from_pretrained_by_name_path_and_hub_id(tiny_codec_dir):
    import flowdec_cli
    from flowdec_cli.models import ModelError, pretrained_ref

    codec = flowdec_cli.from_pretrained(str(tiny_codec_dir), device="cpu")
    assert codec.model.name == "tiny-75" and codec.postfilter is None
    assert flowdec_cli.Codec.from_pretrained("flowdec-small", "cpu").model.name == "flowdec-small"
    assert pretrained_ref("someone/some-codec@v1") == "hf://someone/some-codec@v1"
    assert pretrained_ref("flowdec-small") == "flowdec-small"
    with pytest.raises(ModelError, match="someone/some-codec"):  # offline in tests: the hub is asked
        flowdec_cli.load_postfilter("someone/some-codec")
