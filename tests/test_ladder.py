"""A ladder of rates in one bundle (issue #21): the manifest lists each rate's files and
figures, hashed like the rest; an envelope names its rate and the receiver decodes with
that rate's tables; auto's bound and the latency model weigh every rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest

from splitdnn import wire
from splitdnn.bundle import MANIFEST, TaskAccuracy, load_bundle, record_rate_accuracy
from splitdnn.errors import BundleError, UnknownRateError, WireError
from splitdnn.latency import LatencyModel, Priors, split_option

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toy_ladder import build_toy_ladder

    directory = tmp_path_factory.mktemp("ladder") / "bundle"
    build_toy_ladder(directory)
    return directory


def _figures(offload: float, split: float) -> TaskAccuracy:
    top1 = {"offload": offload, "local": offload - 1.0, "split_entropy": split}
    return TaskAccuracy(images=50, data="held-out toy images", top1=top1)


def test_a_one_rate_bundle_has_no_ladder_keys(toy_bundle_dir: Path) -> None:
    raw = json.loads((toy_bundle_dir / MANIFEST).read_text())
    assert "rates" not in raw and "default_rate" not in raw
    bundle = load_bundle(toy_bundle_dir)
    assert bundle.rates == () and bundle.rate(None) is None
    with pytest.raises(UnknownRateError, match="one rate only"):
        bundle.rate("r1")


def test_the_ladder_lists_each_rates_files_hashed_and_shares_identical_parts(ladder_dir):
    bundle = load_bundle(ladder_dir)
    m = bundle.manifest
    assert bundle.rates == ("r1", "r2", "r3") and m.default_rate == "r2"
    default = m.rates["r2"]
    assert (default.device, default.server, default.coding) == (
        m.models.device, m.models.server, m.coding,
    )  # fmt: skip
    # r1 has r2's weights: its device and server parts are the same files, its tables not
    assert (m.rates["r1"].device, m.rates["r1"].server) == (default.device, default.server)
    assert m.rates["r1"].coding != default.coding
    assert m.rates["r3"].device not in (default.device,)
    for spec in m.rates.values():
        assert {spec.device, spec.server, spec.coding} <= set(m.files)
    assert bundle.rate_coding_tables("r1").channels == bundle.coding_tables().channels


def test_a_tampered_rate_file_is_refused(ladder_dir, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(ladder_dir, copy)
    coding = load_bundle(copy).manifest.rates["r3"].coding
    (copy / coding).write_text((copy / coding).read_text().replace("0.0", "1.0", 1))
    with pytest.raises(BundleError, match=coding.replace(".", r"\.")):
        load_bundle(copy)


def test_an_unknown_rate_names_the_rates_there_are(ladder_dir) -> None:
    with pytest.raises(UnknownRateError, match=r"\['r1', 'r2', 'r3'\]"):
        load_bundle(ladder_dir).rate("r9")


def test_recorded_rate_figures_keep_the_bundle_id(ladder_dir, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(ladder_dir, copy)
    before = load_bundle(copy).id
    record_rate_accuracy(copy, "r1", "imagenet", _figures(80.0, 75.0), 1234.5)
    record_rate_accuracy(copy, "r2", "imagenet", _figures(80.0, 79.0), 2345.0)
    bundle = load_bundle(copy)
    assert bundle.id == before
    assert bundle.manifest.rates["r1"].median_bytes == {"imagenet": 1234.5}
    assert bundle.manifest.rates["r1"].drop("imagenet") == pytest.approx(5.0)
    assert bundle.manifest.accuracy["imagenet"].top1["split_entropy"] == 79.0  # the default's
    assert bundle.rate_bytes("imagenet") == {"r1": 1234.5, "r2": 2345.0}


def test_the_bound_excludes_unmeasured_rates_and_rates_that_lose_too_much(ladder_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(ladder_dir, copy)
    record_rate_accuracy(copy, "r1", "imagenet", _figures(80.0, 75.0), 1000)
    record_rate_accuracy(copy, "r2", "imagenet", _figures(80.0, 79.0), 3000)
    bound = load_bundle(copy).accuracy_bound("imagenet", ("local", "split", "offload"), 2.0)
    assert bound.allowed == ("local", "offload", "split@r2")
    assert bound.excluded == {"split@r1": pytest.approx(5.0)}
    assert bound.unmeasured_rates == ("split@r3",)
    assert bound.to_dict()["unmeasured_rates"] == ["split@r3"]
    wide = load_bundle(copy).accuracy_bound("imagenet", ("split", "offload"), 6.0)
    assert wide.allowed == ("offload", "split@r1", "split@r2")


# --- the envelope names its rate -------------------------------------------------------------


def _latent(bundle, rate: str) -> np.ndarray:
    shape = bundle.rate_spec(rate).bottleneck.shape
    return np.random.default_rng(0).normal(0.0, 0.4, (1, *shape)).astype(np.float32)


def _receiver(bundle) -> dict:
    return {
        r: (bundle.rate_coding_tables(r), tuple(bundle.rate_spec(r).bottleneck.shape))
        for r in bundle.rates
    }


def test_an_envelope_decodes_with_the_tables_of_the_rate_it_names(ladder_dir) -> None:
    bundle = load_bundle(ladder_dir)
    latent = _latent(bundle, "r1")
    tables = bundle.rate_coding_tables("r1")
    data = wire.encode_entropy(latent, bundle_id=bundle.id, tables=tables, rate="r1")
    envelope = wire.decode(
        data, tables=bundle.coding_tables(), bundle_id=bundle.id, rates=_receiver(bundle)
    )
    assert envelope.rate == "r1"
    np.testing.assert_array_equal(envelope.to_array(), tables.latent(tables.symbols(latent)))
    # the peaked tables of r1 code the same latent in fewer bytes than r2's flat ones
    flat = wire.encode_entropy(
        latent, bundle_id=bundle.id, tables=bundle.rate_coding_tables("r2"), rate="r2"
    )
    assert len(data) < len(flat)


def test_an_envelope_without_a_rate_is_what_it_was(ladder_dir) -> None:
    bundle = load_bundle(ladder_dir)
    data = wire.encode_entropy(
        _latent(bundle, "r2"), bundle_id=bundle.id, tables=bundle.coding_tables()
    )
    assert list(msgpack.unpackb(data)) == ["v", "bundle", "shape", "coder", "lanes", "streams"]
    assert wire.decode(data, tables=bundle.coding_tables()).rate is None


def test_an_unknown_or_hostile_rate_in_an_envelope_is_refused(ladder_dir) -> None:
    bundle = load_bundle(ladder_dir)
    tables = bundle.coding_tables()
    data = wire.encode_entropy(_latent(bundle, "r2"), bundle_id=bundle.id, tables=tables, rate="r2")
    fields = msgpack.unpackb(data)
    with pytest.raises(UnknownRateError, match=r"\['r1', 'r2', 'r3'\]"):
        wire.decode(msgpack.packb({**fields, "rate": "r9"}), tables=tables, rates=_receiver(bundle))
    with pytest.raises(UnknownRateError, match="no ladder"):
        wire.decode(data, tables=tables)  # a one-rate receiver
    for hostile in (7, "", "x" * 33, None, ["r1"]):
        with pytest.raises(WireError, match="'rate'"):
            wire.decode(
                msgpack.packb({**fields, "rate": hostile}), tables=tables, rates=_receiver(bundle)
            )


# --- the latency model weighs every rate ------------------------------------------------------


def _model(rates: dict[str, float], **priors) -> LatencyModel:
    return LatencyModel(Priors(rate_bytes=rates, **priors), explore_every=0)


def test_each_rate_is_predicted_with_its_own_bytes() -> None:
    model = _model({"r1": 1000, "r3": 8000}, rate_bytes_per_s=1e5)
    predicted = model.predict(30_000)
    assert predicted[split_option("r1")].bytes == 1000
    assert predicted[split_option("r3")].bytes == 8000
    assert predicted["split@r1"].transfer_ms < predicted["split@r3"].transfer_ms
    assert predicted["split@r1"].to_dict()["rate"] == "r1"
    model.observe_transfer(1500, 0.015, envelope=True, rate="r1")  # measured replaces the prior
    assert model.predict(30_000)["split@r1"].bytes == 1500


def test_on_a_slow_link_auto_picks_the_small_rate_the_bound_allows() -> None:
    model = _model({"r1": 1000, "r2": 3000, "r3": 8000}, rate_bytes_per_s=25_000, local_ms=200)
    allowed = ("local", "offload", "split@r1", "split@r2", "split@r3")
    assert model.choose(30_000, allowed=allowed)[0] == "split@r1"
    # the bound ruled r1 out: the next smallest
    assert model.choose(30_000, allowed=("local", "offload", "split@r2"))[0] == "split@r2"


def test_offload_is_predicted_with_what_the_device_really_sends_and_does() -> None:
    """Re-encoding costs device time: on a fast link it does not pay, so the prediction is
    the plain upload; on a slow one the smaller payload wins, with the re-encode counted."""
    model = _model({}, head_offload_ms=0.5, head_reencode_ms=30.0, rate_bytes_per_s=2.5e6)
    fast = model.predict(36_000, reencoded_bytes=30_000)["offload"]
    assert not fast.reencode and fast.bytes == 36_000 and fast.head_ms == 0.5
    slow_model = _model({}, head_offload_ms=0.5, head_reencode_ms=30.0, rate_bytes_per_s=1.25e5)
    slow = slow_model.predict(36_000, reencoded_bytes=10_000)["offload"]
    assert slow.reencode and slow.bytes == 10_000 and slow.head_ms == 30.0
    assert slow.to_dict()["reencode"] is True
    # plain offloads never lower the re-encode's estimate (separate stages)
    slow_model.observe_stage("head_offload", 0.0001)
    assert slow_model.stage_ms("head_reencode") == 30.0


# --- the export command and per-rate figures ---------------------------------------------------


def _toy_images(root: Path) -> None:
    """Six photos in two of the toy bundle's caltech101 classes, with a list file."""
    from PIL import Image, ImageOps
    from skimage import data

    photo = Image.fromarray(data.chelsea())
    lines = []
    for c, image in enumerate([photo, ImageOps.mirror(photo)]):
        (root / "images" / f"caltech-class-{c}").mkdir(parents=True)
        for i, crop in enumerate([(0, 0, 451, 300), (40, 10, 420, 290), (80, 0, 380, 300)]):
            name = f"caltech-class-{c}/image_{i:04d}.jpg"
            image.crop(crop).save(root / "images" / name, quality=90)
            lines.append(name)
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def test_export_ladder_puts_exported_rates_together(ladder_dir, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    sources = [f"{r}={ladder_dir.parent / f'{ladder_dir.name}-source-{r}'}" for r in ("r1", "r3")]
    out = tmp_path / "two"
    args = ["export", "ladder", "--rate", sources[0], "--rate", sources[1], "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--default", "r3"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.rates == ("r1", "r3") and bundle.manifest.default_rate == "r3"
    assert bundle.id in result.output
    again = CliRunner().invoke(app, [*args, "--default", "r3"])
    assert again.exit_code == 2 and "not an empty folder" in again.output
    unknown = [*args[:-1], str(tmp_path / "three"), "--default", "r9"]
    refused = CliRunner().invoke(app, unknown)
    assert refused.exit_code == 2 and "r9" in refused.output


def test_evaluate_record_fills_every_rates_figures(ladder_dir, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app
    from splitdnn.evaluate import evaluate_bundle

    copy, data = tmp_path / "bundle", tmp_path / "data"
    shutil.copytree(ladder_dir, copy)
    _toy_images(data)
    report = evaluate_bundle(copy, data, "train.txt", task="caltech101")
    assert set(report["rates"]) == {"r1", "r2", "r3"}
    assert report["split_entropy_top1"] == report["rates"]["r2"]["top1"]  # the default rate
    args = ["evaluate", str(copy), "--data", str(data), "--list", "train.txt"]
    result = CliRunner().invoke(app, [*args, "--task", "caltech101", "--record", "--json"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(copy)
    for rate, scores in report["rates"].items():
        spec = bundle.manifest.rates[rate]
        assert spec.accuracy["caltech101"].top1["split_entropy"] == round(scores["top1"], 2)
        # fp32/uint8 split were scored with the default rate's device part only
        assert not {"split_fp32", "split_uint8"} & set(spec.accuracy["caltech101"].top1)
        assert spec.accuracy["caltech101"].images == 6
        assert spec.median_bytes["caltech101"] == scores["median_bytes"]
    # the bundle's own figures keep them (the default rate's device part), beside its rate's
    top = bundle.manifest.accuracy["caltech101"].top1
    assert top["split_uint8"] == round(report["split_uint8_top1"], 2)
    assert top["split_entropy"] == round(report["rates"]["r2"]["top1"], 2)
    assert bundle.id == load_bundle(ladder_dir).id


def test_bundle_info_shows_the_rates(ladder_dir) -> None:
    from splitdnn.bundle import describe

    described = describe(load_bundle(ladder_dir), ["imagenet"])
    assert described["default_rate"] == "r2" and list(described["rates"]) == ["r1", "r2", "r3"]
    assert "rates" not in describe(load_bundle(ladder_dir.parent / "bundle-source-r1"), [])


# --- a ladder kept as assets: rebuilt with its figures -------------------------------------


def _ladder_assets(ladder_dir: Path, root: Path) -> Path:
    """An assets folder for the toy ladder: one folder per rate (here the rate's one-rate
    bundle, a source ``export_ladder`` takes as it takes a run's assets)."""
    root.mkdir()
    for rate in ("r1", "r2", "r3"):
        shutil.copytree(ladder_dir.parent / f"{ladder_dir.name}-source-{rate}", root / rate)
    return root


def test_kept_figures_come_back_when_the_ladder_is_rebuilt_from_its_assets(
    ladder_dir, tmp_path: Path
) -> None:
    from splitdnn.bundle import read_ladder_assets
    from splitdnn.export import export_ladder_assets, keep_ladder_figures

    recorded = tmp_path / "recorded"
    shutil.copytree(ladder_dir, recorded)
    record_rate_accuracy(recorded, "r1", "imagenet", _figures(80.0, 75.0), 1000)
    record_rate_accuracy(recorded, "r2", "imagenet", _figures(80.0, 79.0), 3000)
    assets = _ladder_assets(ladder_dir, tmp_path / "assets")
    keep_ladder_figures(recorded, assets)
    kept = read_ladder_assets(assets)
    assert kept.rates == ["r1", "r2", "r3"] and kept.default_rate == "r2"
    assert kept.measured_on == load_bundle(recorded).id and set(kept.figures) == {"r1", "r2"}

    rebuilt = export_ladder_assets(assets, tmp_path / "rebuilt")
    assert rebuilt.bundle_id == load_bundle(recorded).id
    bundle = load_bundle(tmp_path / "rebuilt")
    assert bundle.rate_bytes("imagenet") == {"r1": 1000.0, "r2": 3000.0}
    assert bundle.manifest.rates["r1"].drop("imagenet") == pytest.approx(5.0)
    assert bundle.manifest.accuracy["imagenet"].top1["split_entropy"] == 79.0


def test_figures_measured_on_another_ladder_are_not_recorded(ladder_dir, tmp_path: Path) -> None:
    from splitdnn.bundle import LadderAssets, RateFigures, write_ladder_assets
    from splitdnn.export import export_ladder_assets

    assets = _ladder_assets(ladder_dir, tmp_path / "assets")
    figures = RateFigures(accuracy={"imagenet": _figures(80.0, 79.0)}, median_bytes={"imagenet": 9})
    other = LadderAssets(
        rates=["r1", "r2", "r3"], default_rate="r2", measured_on="0" * 16, figures={"r2": figures}
    )
    write_ladder_assets(assets, other)
    with pytest.warns(UserWarning, match="not recorded"):
        export_ladder_assets(assets, tmp_path / "rebuilt")
    assert all(not s.accuracy for s in load_bundle(tmp_path / "rebuilt").manifest.rates.values())


def test_a_ladder_file_that_contradicts_itself_is_refused(tmp_path: Path) -> None:
    from splitdnn.bundle import read_ladder_assets

    (tmp_path / "ladder.json").write_text(json.dumps({"rates": ["a", "b"], "default_rate": "c"}))
    with pytest.raises(BundleError, match="default_rate 'c' is not one of"):
        read_ladder_assets(tmp_path)
    (tmp_path / "ladder.json").write_text(json.dumps({"rates": ["a", "a"], "default_rate": "a"}))
    with pytest.raises(BundleError, match="distinct"):
        read_ladder_assets(tmp_path)
    with pytest.raises(BundleError, match="cannot read"):
        read_ladder_assets(tmp_path / "nowhere")


def test_export_ladder_takes_rates_or_assets_not_both(ladder_dir, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    out = ["--out", str(tmp_path / "out")]
    neither = CliRunner().invoke(app, ["export", "ladder", *out])
    assert neither.exit_code == 2 and "either --rate" in neither.output
    both = ["--rate", f"r1={ladder_dir}", "--assets", str(tmp_path)]
    refused = CliRunner().invoke(app, ["export", "ladder", *both, *out])
    assert refused.exit_code == 2 and "either --rate" in refused.output
