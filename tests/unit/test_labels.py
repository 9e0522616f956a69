"""Unit tests of trigrecon.core.labels (Neuronpedia explanation exports)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from sae_lens import StandardSAE, StandardSAEConfig

from trigrecon.core.errors import ConfigError, IncompatibleSAEError, WeightsNotFoundError
from trigrecon.core.labels import LatentLabels, load_labels, save_labels

MODEL = "llama3.1-8b"


def entry(index: int, text: str, layer: str = "8-llamascope-res-131k", model: str = MODEL) -> dict:
    return {
        "id": f"x{index}",
        "modelId": model,
        "layer": layer,
        "index": str(index),
        "description": text,
        "typeName": "oai_token-act-pair",
        "explanationModelName": "gpt-4o-mini",
    }


def layer_file(layer: int, n: int = 3) -> list[dict]:
    return [entry(i, f"L{layer} latent {i}", f"{layer}-llamascope-res-131k") for i in range(n)]


def sae_for(np_id: str | None, d_sae: int = 16) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=d_sae))
    sae.cfg.metadata.neuronpedia_id = np_id
    return sae


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_single_file(tmp_path):
    rows = [entry(3, "fruit words"), entry(7, "dates"), entry(3, "second opinion")]
    labels = load_labels(
        write(tmp_path / "l8.json", rows), sae_for("llama3.1-8b/8-llamascope-res-131k")
    )
    assert labels.get(3) == "fruit words"  # first description of a latent wins
    assert labels.get(7) == "dates"
    assert labels.get(5) == ""  # unlabelled latent
    assert labels.source == "8-llamascope-res-131k" and labels.model_id == MODEL
    assert labels.top([7, 5]) == [(7, "dates"), (5, "")]
    assert len(labels) == 2 and 3 in labels and 5 not in labels


def test_single_file_without_sae(tmp_path):
    labels = load_labels(write(tmp_path / "a.json", layer_file(2)))
    assert (
        labels.get(1) == "L2 latent 1" and labels.neuronpedia_id == f"{MODEL}/2-llamascope-res-131k"
    )


def test_folder_picks_the_saes_layer(tmp_path):
    for layer in (8, 18):  # "8-..." must not match "18-..."
        write(tmp_path / f"{MODEL}_{layer}-llamascope-res-131k.json", layer_file(layer))
    labels = load_labels(tmp_path, sae_for(f"{MODEL}/8-llamascope-res-131k"))
    assert labels.get(0) == "L8 latent 0"
    assert (
        load_labels(tmp_path, sae_for(f"{MODEL}/18-llamascope-res-131k")).get(2) == "L18 latent 2"
    )


def test_folder_with_uninformative_names_filters_by_layer_field(tmp_path):
    write(tmp_path / "part-a.json", layer_file(8))
    write(tmp_path / "part-b.json", layer_file(9))
    assert load_labels(tmp_path, sae_for(f"{MODEL}/9-llamascope-res-131k")).get(1) == "L9 latent 1"
    with pytest.raises(ConfigError, match="several SAEs"):
        load_labels(tmp_path)  # two layers and no SAE to choose


def test_zip_of_per_layer_files(tmp_path):
    zpath = tmp_path / "llamascope.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for layer in (7, 8, 9):
            zf.writestr(f"export/{layer}-llamascope-res-131k.json", json.dumps(layer_file(layer)))
    labels = load_labels(zpath, sae_for(f"{MODEL}/8-llamascope-res-131k"))
    assert labels.get(2) == "L8 latent 2" and labels.source == "8-llamascope-res-131k"


def test_wrong_sae_label_file(tmp_path):
    path = write(tmp_path / "l8.json", layer_file(8))
    with pytest.raises(IncompatibleSAEError, match=r"9-llamascope-res-131k.*8-llamascope"):
        load_labels(path, sae_for(f"{MODEL}/9-llamascope-res-131k"))
    with pytest.raises(IncompatibleSAEError, match="gemma-2-2b"):
        load_labels(path, sae_for("gemma-2-2b/8-llamascope-res-131k"))
    with pytest.raises(IncompatibleSAEError, match="no labels"):
        load_labels(tmp_path, sae_for(f"{MODEL}/9-llamascope-res-131k"))


def test_index_beyond_d_sae(tmp_path):
    path = write(tmp_path / "l.json", [entry(0, "a"), entry(40, "b")])
    with pytest.raises(IncompatibleSAEError, match=r"latent 40.*d_sae=16"):
        load_labels(path, sae_for(None, d_sae=16))  # no neuronpedia id: width is still checked
    assert load_labels(path, sae_for(None, d_sae=64)).get(40) == "b"


def test_bad_inputs(tmp_path):
    with pytest.raises(WeightsNotFoundError):
        load_labels(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_labels(tmp_path / "bad.json")
    bad_index = entry(0, "x") | {"index": "abc"}
    with pytest.raises(ConfigError, match="integer 'index'"):
        load_labels(write(tmp_path / "i.json", [bad_index]))


def test_save_load_round_trip(tmp_path):
    labels = LatentLabels(
        {2: "fruit: mango, kiwi", 0: "weather", 5: ""},
        "1-res-1024",
        "trigrecon-base",
        "trigrecon-autolabel",
        "top-activations",
    )
    save_labels(tmp_path / "labels.json", labels)
    rows = json.loads((tmp_path / "labels.json").read_text())
    assert [r["index"] for r in rows] == ["0", "2"]  # sorted, strings, empty labels dropped
    assert set(rows[0]) == {
        "id",
        "modelId",
        "layer",
        "index",
        "description",
        "typeName",
        "explanationModelName",
    }
    back = load_labels(tmp_path / "labels.json", sae_for("trigrecon-base/1-res-1024", d_sae=8))
    assert back.descriptions == {0: "weather", 2: "fruit: mango, kiwi"}
    assert (back.source, back.model_id, back.explanation_model) == (
        "1-res-1024",
        "trigrecon-base",
        "trigrecon-autolabel",
    )


def test_folder_skips_json_objects_such_as_an_sae_config(tmp_path):
    write(tmp_path / "labels.json", layer_file(1))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 16}))
    assert load_labels(tmp_path, sae_for(f"{MODEL}/1-llamascope-res-131k")).get(2) == "L1 latent 2"
    with pytest.raises(ConfigError, match="JSON array"):
        load_labels(tmp_path / "cfg.json")  # named explicitly: not a label file


def test_json_lines_and_gzip(tmp_path):
    import gzip

    text = "\n".join(json.dumps(r) for r in layer_file(3))
    (tmp_path / "l3.jsonl").write_text(text)
    assert load_labels(tmp_path / "l3.jsonl").get(1) == "L3 latent 1"
    (tmp_path / "l3.json.gz").write_bytes(gzip.compress(json.dumps(layer_file(3)).encode()))
    assert load_labels(tmp_path / "l3.json.gz").get(2) == "L3 latent 2"
