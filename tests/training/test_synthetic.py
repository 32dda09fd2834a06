import dataclasses
import json

import numpy as np
import pytest
import torch

from shared.face.morphable import load_procedural_model
from shared.training.errors import DataError
from shared.training.synthetic import (
    PairDataset,
    SyntheticConfig,
    build_scene,
    collate,
    generate_dataset,
    make_pair,
    sample_identity,
)

SMALL = SyntheticConfig(image_size=64, supersample=1)


def test_pairs_are_deterministic_and_seed_dependent() -> None:
    model = load_procedural_model()
    a = make_pair(model, SMALL, 7, "train", 3, 1)
    b = make_pair(model, SMALL, 7, "train", 3, 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = make_pair(model, SMALL, 8, "train", 3, 1)
    assert not np.array_equal(a["source_image"], c["source_image"])


def test_pair_contents_are_consistent() -> None:
    model = load_procedural_model()
    pair = make_pair(model, SMALL, 0, "train", 0, 0)
    assert pair["source_image"].shape == (3, 64, 64) and pair["source_image"].dtype == np.uint8
    assert pair["source_camera"].shape == (25,) and pair["alpha"].shape == (model.num_identity,)
    # Black background in the corners, a lit head in the middle.
    assert pair["target_image"][:, 0, 0].tolist() == [0, 0, 0]
    assert pair["target_image"][:, 24:40, 24:40].mean() > 20
    # Keep-mask removes some pixels (eyes/brows/mouth) but keeps most of the image.
    keep = pair["source_keep"]
    assert 0.8 < keep.mean() < 1.0
    # M_neu covers face pixels only, where I_neu is not black.
    mask = pair["neutral_mask"][0].astype(bool)
    assert mask.any() and (pair["neutral_image"][:, mask].max(axis=0) > 0).all()
    # Projected landmarks land inside the image.
    lms = pair["target_landmarks"]
    assert lms.shape == (68, 2) and (lms > 0).all() and (lms < 64).all()


def test_train_and_holdout_identities_differ() -> None:
    model = load_procedural_model()
    train = sample_identity(model, SMALL, 0, "train", 0)
    hold = sample_identity(model, SMALL, 0, "holdout", 0)
    assert not np.allclose(train.alpha, hold.alpha)
    with pytest.raises(DataError) as err:
        sample_identity(model, SMALL, 0, "test", 0)
    assert err.value.code == "data.bad_split"


def test_dataset_round_trip_and_shard_reuse(tmp_path) -> None:
    meta = generate_dataset(
        tmp_path, split="train", num_identities=2, pairs_per_identity=1, shard_size=1, config=SMALL
    )
    assert meta["num_pairs"] == 2 and len(meta["shards"]) == 2
    again = generate_dataset(
        tmp_path, split="train", num_identities=2, pairs_per_identity=1, shard_size=1, config=SMALL
    )
    assert again["sha256"] == meta["sha256"]
    dataset = PairDataset(tmp_path, "train", max_cached_shards=1)
    assert len(dataset) == 2 and dataset.image_size == 64
    item = dataset[1]
    assert item["source_image"].dtype == torch.float32
    assert -1.0 <= float(item["source_image"].min()) and float(item["source_image"].max()) <= 1.0
    assert int(item["identity"]) == 1
    assert json.loads((tmp_path / "train.json").read_text())["format"] == "goha-synthetic-pairs/2"
    for key in ("source_alpha", "target_alpha"):
        assert item[key].shape == (1, 64, 64) and item[key].dtype == torch.float32
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) == 1.0
    batch = collate([dataset[0], dataset[1]])
    assert batch["target_alpha"].shape == (2, 1, 64, 64)
    with pytest.raises(DataError) as err:
        PairDataset(tmp_path, "holdout")
    assert err.value.code == "data.missing"


def test_alpha_is_the_coverage_of_everything_but_the_background() -> None:
    model = load_procedural_model()
    config = SyntheticConfig(image_size=64, supersample=2)
    # An identity with hair and an accessory, so coverage beyond the bare head is exercised.
    index = next(
        i for i in range(50)
        if (lambda ident: ident.has_hair and (ident.hat or ident.glasses))(sample_identity(model, config, 0, "train", i))
    )  # fmt: skip
    pair = make_pair(model, config, 0, "train", index, 0)
    for side in ("source", "target"):
        alpha, image = pair[f"{side}_alpha"], pair[f"{side}_image"]
        assert alpha.shape == (1, 64, 64) and alpha.dtype == np.uint8
        lit = image.max(axis=0) > 0
        # Every non-black pixel is covered, black corners are background, the head's inside is solid.
        assert (alpha[0][lit] > 0).all()
        assert alpha[0, 0, 0] == 0 and alpha[0, -1, -1] == 0
        assert (alpha[0, 26:38, 26:38] == 255).all()
        # Supersampled edges give partial coverage (the rasteriser's 2x2 average: multiples of 64).
        partial = alpha[0][(alpha[0] > 0) & (alpha[0] < 255)]
        assert partial.size > 0 and set(np.unique(partial).tolist()) <= {64, 128, 191}


def test_old_datasets_are_refused_with_a_clear_error(tmp_path) -> None:
    generate_dataset(tmp_path, split="train", num_identities=1, pairs_per_identity=1, config=SMALL)
    meta_path = tmp_path / "train.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = "goha-synthetic-pairs/1"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as err:
        PairDataset(tmp_path, "train")
    assert err.value.code == "data.old_format"
    assert "generate-data" in str(err.value) and "target_alpha" in str(err.value)
    # An old shard without the alpha arrays is re-rendered, not reused.
    shard = tmp_path / meta["shards"][0]["file"]
    with np.load(shard) as data:
        arrays = {k: data[k] for k in data.files if not k.endswith("_alpha")}
    np.savez(shard, **arrays)
    generate_dataset(tmp_path, split="train", num_identities=1, pairs_per_identity=1, config=SMALL)
    assert "target_alpha" in PairDataset(tmp_path, "train")[0]


def test_painted_texture_widens_the_skin_colours() -> None:
    """Texture blobs change the skin's colour where they sit (and only the skin of those identities),
    so the lifted colour seen in training is not limited to six skin tones."""
    model = load_procedural_model()
    config = SyntheticConfig()
    textured = next(
        identity
        for identity in (sample_identity(model, config, 0, "train", i) for i in range(20))
        if identity.texture is not None
    )
    plain = dataclasses.replace(textured, texture=None)
    beta = np.zeros(model.num_expression, np.float32)
    with_texture = build_scene(model, textured, beta).colours.numpy()
    without = build_scene(model, plain, beta).colours.numpy()
    changed = np.abs(with_texture - without).max(axis=1) > 0.05
    assert 0 < changed.mean() < 0.9
    no_texture = dataclasses.replace(config, texture_prob=0.0)
    assert all(sample_identity(model, no_texture, 0, "train", i).texture is None for i in range(10))
