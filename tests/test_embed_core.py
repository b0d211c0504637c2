"""Embedders and the per-part core on real pixels: OSNet on MOT17 crops, the colour descriptor, weights loading."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from embed_fixtures import (
    TINY_INPUT,
    ingest_table,
    mot17_crops,
    register_backbone,
    synthetic_people,
    tiny_backbone_folder,
)

from cion_dist.embed.config import EmbedConfig
from cion_dist.embed.embedders import HandcraftedEmbedder, OnnxEmbedder, TorchEmbedder, build_embedder
from cion_dist.embed.handcrafted import stripe_histograms
from cion_dist.embed.parts import embed_batches, embeddings_matrix
from cion_dist.embed.preprocess import to_imagenet_nchw
from cion_dist.errors import ConfigError, DataError
from cion_dist.images import decode_image, encode_jpeg
from cion_dist.models.backbone_io import fetch, load_backbone
from cion_dist.storage.fs import Storage
from cion_dist.vectors import l2_normalise

OSNET = "models/osnet_x0_25_msmt17.onnx"


def pair_stats(feats: np.ndarray, labels) -> tuple[float, float, float]:
    """Mean same-identity cosine, mean different-identity cosine, rank-1 of leave-one-out nearest neighbour."""
    labels = np.asarray(labels)
    sim = feats @ feats.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    np.fill_diagonal(sim, -np.inf)
    r1 = float(np.mean(labels[sim.argmax(1)] == labels))
    np.fill_diagonal(sim, 1.0)
    return float(sim[same & off].mean()), float(sim[~same].mean()), r1


@pytest.fixture(scope="module")
def mot_crops(shared_data):
    crops = mot17_crops(shared_data, ids_per_seq=3, frames_per_id=3)
    assert len({c["pid"] for c in crops}) >= 15, "MOT17 mini should give at least 15 pedestrians"
    return crops


@pytest.fixture(scope="module")
def osnet(shared_data):
    return OnnxEmbedder(str(shared_data / OSNET), batch_size=16, threads=2)


def test_osnet_separates_mot17_identities(mot_crops, osnet):
    feats = osnet([c["rgb"] for c in mot_crops])
    assert feats.shape == (len(mot_crops), 512) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    same, diff, r1 = pair_stats(feats, [c["pid"] for c in mot_crops])
    assert same > 0.85, same
    assert diff < 0.6, diff
    assert same - diff > 0.3, (same, diff)
    assert r1 >= 0.9, r1


def test_osnet_batching_and_jpeg_roundtrip_do_not_change_features(mot_crops, osnet, shared_data):
    rgb = [c["rgb"] for c in mot_crops[:10]]
    whole = osnet(rgb)
    single = OnnxEmbedder(str(shared_data / OSNET), batch_size=1, threads=1)(rgb)
    np.testing.assert_allclose(whole, single, atol=1e-4)
    # JPEG at quality 95 changes pixels a little and features barely
    again = osnet([decode_image(encode_jpeg(im, 95)) for im in rgb])
    assert float(np.min(np.sum(whole * again, axis=1))) > 0.97


def test_handcrafted_separates_colour_identities():
    crops, labels = synthetic_people(n_ids=10, per_id=6, seed=3)
    emb = HandcraftedEmbedder()
    feats = emb(crops)
    assert feats.shape == (60, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    same, diff, r1 = pair_stats(feats, labels)
    assert same - diff > 0.3, (same, diff)
    assert r1 >= 0.95, r1
    # accepts a uint8 batch as well as a list, with the same result
    np.testing.assert_allclose(emb(np.stack(crops[:4])), feats[:4], atol=1e-6)


def synth_benchmark_crops(seed: int = 0, people: int = 12, cameras: int = 3):
    """Crops of the synthetic corpus's held-out benchmark: (RGB crops, person ids, camera ids)."""
    market = pytest.importorskip("cion_dist.synth.market")
    from cion_dist.synth.appearance import sample_appearances, sample_cameras
    from cion_dist.synth.render import camera_background, lit_background

    rng = np.random.default_rng(seed)
    apps, cams = sample_appearances(people, rng), sample_cameras(cameras, rng)
    bgs = [
        lit_background(c, camera_background(c, 640, 360, np.random.default_rng(seed * 10 + i)))
        for i, c in enumerate(cams)
    ]
    files = market.benchmark_files(apps, cams, bgs, 4, np.random.default_rng(seed + 5))
    ims, pids, cam_ids = [], [], []
    for name, data in sorted(files.items()):
        pid, cam, *_ = market.parse_market_filename(name)
        if pid > 0:  # leave out distractors (0) and junk (-1)
            ims.append(decode_image(data))
            pids.append(pid)
            cam_ids.append(cam)
    return ims, np.array(pids), np.array(cam_ids)


def test_handcrafted_matches_synthetic_people_across_cameras():
    ims, pids, cams = synth_benchmark_crops()
    feats = HandcraftedEmbedder()(ims)
    sim = feats @ feats.T
    same, cross = pids[:, None] == pids[None], cams[:, None] != cams[None]
    margin = sim[same & cross].mean() - sim[~same].mean()
    sim[~cross] = -np.inf  # a query must find its person under another camera (other lighting, background)
    r1 = float(np.mean(pids[sim.argmax(1)] == pids))
    assert margin > 0.12 and r1 >= 0.7, (margin, r1)


def test_handcrafted_on_real_crops_beats_chance(mot_crops):
    feats = HandcraftedEmbedder()([c["rgb"] for c in mot_crops])
    same, diff, r1 = pair_stats(feats, [c["pid"] for c in mot_crops])
    assert same > diff + 0.2 and r1 > 0.5, (same, diff, r1)


def test_handcrafted_ignores_horizontal_position_more_than_colour():
    crops, _ = synthetic_people(n_ids=2, per_id=1, seed=1)
    a = crops[0]
    shifted = np.roll(a, 3, axis=1)  # a person a few pixels off centre
    recoloured = crops[1]
    f = stripe_histograms([a, shifted, recoloured])
    assert f[0] @ f[1] > f[0] @ f[2] + 0.3


def test_handcrafted_grey_world_cancels_a_camera_colour_cast():
    """The same crop under another camera's colour cast stays close; without balancing it moves."""
    crops, _ = synthetic_people(n_ids=2, per_id=1, seed=2)
    a, other = crops[0], crops[1]
    cast = np.clip(a.astype(np.float32) * np.array([1.12, 0.95, 0.82]), 0, 255).astype(np.uint8)
    f = stripe_histograms([a, cast, other])
    raw = stripe_histograms([a, cast, other], balance=False)
    assert 1 - f[0] @ f[1] < 0.25 * (1 - raw[0] @ raw[1])
    assert f[0] @ f[1] > f[0] @ f[2] + 0.5


def test_preprocess_layout_and_zero_row():
    batch = np.full((2, 4, 2, 3), 255, np.uint8)
    x = to_imagenet_nchw(batch)
    assert x.shape == (2, 3, 4, 2)
    np.testing.assert_allclose(
        x[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5
    )
    z = l2_normalise(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert np.all(np.isfinite(z)) and z[1].tolist() == pytest.approx([0.6, 0.8])


def test_embed_batches_bad_jpeg_fail_names_image_and_skip_records_it(mot_crops):
    crops = [dict(c) for c in mot_crops[:4]]
    crops[2]["jpeg"] = b"\xff\xd8 definitely not a jpeg"
    table = ingest_table(crops, "vid-x")
    bad_id = table.column("image_id")[2].as_py()
    emb = HandcraftedEmbedder()
    with pytest.raises(DataError, match=bad_id):
        embed_batches(table.to_batches(max_chunksize=2), emb, "part-x.parquet", on_bad_image="fail")
    part = embed_batches(table.to_batches(max_chunksize=2), emb, "part-x.parquet", on_bad_image="skip")
    assert part.table.num_rows == 3 and part.bad.column("image_id").to_pylist() == [bad_id]
    assert bad_id not in part.table.column("image_id").to_pylist()
    feats = embeddings_matrix(part.table)
    ok = [decode_image(b) for i, b in enumerate(table.column("jpeg").to_pylist()) if i != 2]
    np.testing.assert_allclose(feats, emb(ok), atol=1e-6)
    assert part.table.column("tracklet_id").to_pylist() == [c["pid"] for i, c in enumerate(crops) if i != 2]


def test_embed_batches_missing_column_is_a_data_error():
    tbl = pa.table({"image_id": ["a"], "jpeg": [b"x"]})
    with pytest.raises(DataError, match="tracklet_id"):
        embed_batches(tbl.to_batches(), HandcraftedEmbedder(), "part-y.parquet")


def test_build_embedder_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="embed.model"):
        build_embedder(EmbedConfig(backbone="onnx"))
    with pytest.raises(DataError, match="does not exist"):
        build_embedder(EmbedConfig(backbone="onnx", model=str(tmp_path / "missing.onnx")))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(DataError, match="not a loadable ONNX"):
        build_embedder(EmbedConfig(backbone="onnx", model=str(bad)))
    with pytest.raises(ConfigError, match="embed.model"):
        build_embedder(EmbedConfig(backbone="torch"))


def _reference(model, images):
    import torch

    from cion_dist.embed.preprocess import resize_batch

    with torch.no_grad():
        y = model(torch.from_numpy(to_imagenet_nchw(resize_batch(images, *TINY_INPUT)))).numpy()
    return l2_normalise(y)


def test_torch_embedder_loads_weights_from_folder_and_s3(tmp_path, s3_bucket):
    model = tiny_backbone_folder(tmp_path / "model")
    crops, _ = synthetic_people(n_ids=2, per_id=2, seed=5)
    expected = _reference(model, crops)

    local = build_embedder(EmbedConfig(backbone="torch", weights=str(tmp_path / "model"), batch_size=3))
    assert isinstance(local, TorchEmbedder) and local.dim == model.embed_dim
    np.testing.assert_allclose(local(crops), expected, atol=1e-5)

    st = Storage()
    fs, path = st.fs(s3_bucket)
    fs.put(str(tmp_path / "model" / "backbone.safetensors"), f"{path}/w/backbone.safetensors")
    fs.put(str(tmp_path / "model" / "backbone.json"), f"{path}/w/backbone.json")
    from_s3 = build_embedder(EmbedConfig(backbone="torch", weights=f"{s3_bucket}/w", batch_size=4), st)
    np.testing.assert_allclose(from_s3(crops), expected, atol=1e-5)
    # a bare file plus an explicit architecture: no backbone.json beside a lone downloaded file, so the default
    # resnet_tiny widths are built, and these weights do not fit them
    local = fetch(f"{s3_bucket}/w/backbone.safetensors", st).path
    assert local.endswith("backbone.safetensors")
    with pytest.raises(DataError, match="missing|shapes"):
        load_backbone(f"{s3_bucket}/w/backbone.safetensors", architecture="resnet_tiny", storage=st)


def test_torch_weights_from_mlflow_registry_alias(tmp_path):
    model = tiny_backbone_folder(tmp_path / "model")
    uri = register_backbone(tmp_path, "cion-backbone", "champion")
    loaded = load_backbone("models:/cion-backbone@champion", tracking_uri=uri)
    assert loaded.architecture == "resnet_tiny" and loaded.uri == "models:/cion-backbone/1"
    assert loaded.name == "cion-backbone" and loaded.version == "1" and loaded.preprocess.input_size == TINY_INPUT
    crops, _ = synthetic_people(n_ids=2, per_id=1, seed=6)
    emb = build_embedder(EmbedConfig(backbone="torch", weights="models:/cion-backbone@champion"), tracking_uri=uri)
    np.testing.assert_allclose(emb(crops), _reference(model, crops), atol=1e-5)
    with pytest.raises(DataError, match="cannot download"):
        fetch("models:/cion-backbone@nobody", tracking_uri=uri)


def test_model_batch_follows_the_device_unless_set():
    from cion_dist.embed.config import CPU_BATCH, GPU_BATCH

    assert EmbedConfig().batch_size == CPU_BATCH == 32
    assert EmbedConfig(num_gpus=1).batch_size == GPU_BATCH == 512
    assert EmbedConfig(num_gpus=0.5, batch_size=100).batch_size == 100
    assert EmbedConfig(batch_size=7).batch_size == 7


def test_parts_read_ahead_give_the_same_batches_in_order(mot_crops, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from cion_dist.embed.parts import read_group_batches
    from cion_dist.storage.fs import write_bytes_atomic
    from cion_dist.storage.stage_io import table_to_parquet_bytes

    uris = []
    for k in range(7):  # parts of 1..7 crops, cut into batches of 4 across part boundaries
        uri = str(tmp_path / f"part-{k}.parquet")
        write_bytes_atomic(uri, table_to_parquet_bytes(ingest_table(mot_crops[: k + 1], f"vid-{k}")))
        uris.append(uri)
    serial = [b.column("image_id").to_pylist() for b in read_group_batches(uris, Storage(), 4)]
    with ThreadPoolExecutor(3) as pool:
        ahead = [b.column("image_id").to_pylist() for b in read_group_batches(uris, Storage(), 4, pool, ahead=3)]
        assert ahead == serial and [len(b) for b in serial] == [4] * 7 and sum(map(len, serial)) == 28
        with pytest.raises(DataError, match="missing.parquet"):
            list(read_group_batches(uris[:2] + [str(tmp_path / "missing.parquet")] + uris[2:], Storage(), 4, pool, 3))
