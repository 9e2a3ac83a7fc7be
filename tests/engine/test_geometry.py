"""Token-to-pixel geometry: known boxes per family, and an end-to-end check that the tokens
whose boxes cover a painted region are exactly the image tokens whose embeddings change."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from vlmnb.engine import families, invariants
from vlmnb.engine import spans as S
from vlmnb.engine import tiny
from vlmnb.engine.vlm import VLM

FAMILIES = list(tiny.MODELS)


@pytest.fixture(scope="module")
def prep(built):
    """Function ``(family, image, prompt)``: the prepared input of ``family``'s tiny model."""
    def prepare(family, image, prompt="describe the image"):
        model, processor = built(family)
        return S.prepare(model, processor, image, prompt)
    return prepare


# ----------------------------------------------------------------------------- known boxes


def test_llava_token0_is_top_left_patch_of_the_center_crop(prep, noise):
    # 64x40 -> shortest edge 32 -> 51x32 (int(32 * 64 / 40) = 51) -> center crop 32x32 at x = 9
    p = prep("llava", noise(64, 40))
    g = p.geometry
    sx, sy = 64 / 51, 40 / 32
    patch = 8
    assert np.allclose(g.boxes[0], [9 * sx, 0, (9 + patch) * sx, patch * sy])
    # last token: bottom-right patch of the crop
    assert np.allclose(g.boxes[-1], [(9 + 24) * sx, 24 * sy, (9 + 32) * sx, 32 * sy])
    assert g.views[0].rows == g.views[0].cols == 4
    # the cropped-away left and right strips belong to no token
    assert g.token_at(2, 20) == [] and g.token_at(63, 20) == []
    assert g.token_at(int(9 * sx) + 1, 1) == [0]


def test_llava_pads_before_crop_when_the_image_is_small(prep, noise):
    # 20x12: shortest edge 12 -> 32, long side int(32 * 20 / 12) = 53; crop at x = 10
    p = prep("llava", noise(20, 12))
    sx = 20 / 53
    assert np.allclose(p.geometry.boxes[0][[0, 2]], [10 * sx, 18 * sx])


def test_qwen_dynamic_grid_boxes(prep, noise):
    # 60x44: smart_resize to multiples of 8 -> 64x48 (round(7.5) = 8, round(5.5) = 6 columns/rows)
    for family in ("qwen2_vl", "qwen2_5_vl"):
        p = prep(family, noise(60, 44))
        assert p.image_grid_thw[0].tolist() == [1, 12, 16]
        g = p.geometry
        grid = g.view()
        assert (grid.rows, grid.cols) == (6, 8)
        # token at merged cell (r, c) covers 8x8 processed pixels
        r, c = 2, 5
        k = grid.tokens[r, c]
        sx, sy = 60 / 64, 44 / 48
        assert np.allclose(g.boxes[k], [c * 8 * sx, r * 8 * sy, (c + 1) * 8 * sx, (r + 1) * 8 * sy])
        # markers first and last
        assert np.isnan(g.boxes[0]).all() and np.isnan(g.boxes[-1]).all()


def test_llava_next_base_square_and_unpadded_highres_grid(prep, noise, built):
    # 56x40: base picture is a non-uniform 32x32 resize; best resolution 64x64 (2x2 tiles): the image
    # is resized to 64x46 and padded by 9 rows on top; the 8x8 token grid loses one row top and bottom
    p = prep("llava_next", noise(56, 40))
    g = p.geometry
    base, high = g.view("base"), g.view("highres")
    assert (base.rows, base.cols, high.rows, high.cols) == (4, 4, 6, 8)
    assert np.allclose(g.boxes[base.tokens[0, 0]], [0, 0, 14, 10])

    def to_y(v):
        return (v - 9) * 40 / 46

    assert np.allclose(g.boxes[high.tokens[0, 0]], [0, 0, 7, to_y(16)])
    assert np.allclose(g.boxes[high.tokens[2, 3]], [21, to_y(24), 28, to_y(32)])
    assert np.allclose(g.boxes[high.tokens[5, 7]], [49, to_y(48), 56, 40])
    # a newline token (no box) closes every row of the high-resolution grid
    ids = p.input_ids[0, p.spans.image].numpy()
    assert (ids == S.image_token_id(built("llava_next")[0].config)).all()
    for r in range(high.rows):
        last = high.tokens[r, -1]
        assert np.isnan(g.boxes[last + 1]).all()
    assert np.isnan(g.boxes).any(axis=1).sum() == high.rows


def test_llava_onevision_pooled_grid(prep, noise):
    # 96x96 picks a 3x3 tiling: 12x12 tokens, more than anyres_max_4 allows, pooled to 8x8
    p = prep("llava_onevision", noise(96, 96))
    g = p.geometry
    high = g.view("highres")
    assert (high.rows, high.cols) == (8, 8)
    assert np.allclose(g.boxes[high.tokens[3, 5]], [60, 36, 72, 48])
    assert np.allclose(g.boxes[g.view("base").tokens[1, 2]], [48, 24, 72, 48])


def test_internvl_tiles_and_thumbnail(prep, noise):
    # 56x40 -> 3 columns x 2 rows of 32px tiles on a 96x64 canvas, then a 32x32 thumbnail
    p = prep("internvl", noise(56, 40))
    g = p.geometry
    assert [v.name for v in g.views] == ["tile_0_0", "tile_0_1", "tile_0_2", "tile_1_0", "tile_1_1", "tile_1_2",
                                         "thumbnail"]
    sx, sy = 56 / 96, 40 / 64
    tile = g.view("tile_1_2")
    assert np.allclose(tile.region, [64 * sx, 32 * sy, 96 * sx, 64 * sy])
    assert np.allclose(g.boxes[tile.tokens[0, 0]], [64 * sx, 32 * sy, 72 * sx, 40 * sy])
    # every token of a tile lies inside that tile's region; thumbnail tokens cover the whole image
    for v in g.views:
        b = g.boxes[v.token_indices]
        assert (b[:, 0] >= v.region[0] - 1e-9).all() and (b[:, 3] <= v.region[3] + 1e-9).all()
    thumb = g.view("thumbnail")
    assert g.view() is thumb
    assert np.allclose(thumb.region, [0, 0, 56, 40])
    assert np.allclose(g.boxes[thumb.tokens[0, 0]], [0, 0, 14, 10])
    # a pixel is seen by one tile token and one thumbnail token
    hits = g.token_at(50, 30)
    assert len(hits) == 2 and hits[0] in tile.token_indices and hits[1] in thumb.token_indices
    # <img> and </img> close the span
    assert np.isnan(g.boxes[0]).all() and np.isnan(g.boxes[-1]).all()


@pytest.mark.parametrize("family", ["internvl2", "internvl2-qwen2"])
def test_internvl2_two_by_two_tiles_and_thumbnail(family, prep, noise, built):
    # 96x96 ties 1x1 and 2x2 in aspect ratio; a picture of more than half the 2x2 canvas takes 2x2
    p = prep(family, noise(96, 96))
    g = p.geometry
    assert [v.name for v in g.views] == ["tile_0_0", "tile_0_1", "tile_1_0", "tile_1_1", "thumbnail"]
    assert p.pixel_values.shape[0] == 5 and all((v.rows, v.cols) == (4, 4) for v in g.views)
    # tiles are 48 px of the picture, their tokens 12 px (2 x 2 patches of 4 px on 32 px tiles)
    tile = g.view("tile_1_0")
    assert np.allclose(tile.region, [0, 48, 48, 96])
    assert np.allclose(g.boxes[tile.tokens[2, 3]], [36, 72, 48, 84])
    thumb = g.view("thumbnail")
    assert g.view() is thumb and np.allclose(g.boxes[thumb.tokens[1, 2]], [48, 24, 72, 48])
    # the model fills the image tokens tile by tile (row-major), then the thumbnail
    starts = [v.tokens[0, 0] for v in g.views]
    assert starts == sorted(starts) and np.all(np.diff(g.view("tile_0_1").tokens.reshape(-1)) == 1)
    assert np.isnan(g.boxes[0]).all() and np.isnan(g.boxes[-1]).all()  # <img> ... </img>
    # a picture smaller than half the 2x2 canvas stays one tile, without a thumbnail
    small = prep(family, noise(40, 40)).geometry
    assert [v.name for v in small.views] == ["image"]


@pytest.mark.filterwarnings("ignore:In ps_version 'v1'")  # the checkpoints' code warns of exactly this
def test_internvl2_pixel_shuffle_v1_order(built):
    """Checkpoints with ``ps_version='v1'`` leave each tile's merged grid transposed: the geometry
    lists its tokens column by column, and the painted square still finds exactly its tokens."""
    model, processor = built("internvl2")
    local = invariants.local_vision_copy(model)
    local.config.ps_version = local.ps_version = "v1"
    vlm = VLM(local, processor)
    invariants.painted_square(vlm, (96, 96), (60, 8, 92, 40))
    invariants.painted_square(vlm, (56, 40), (4, 4, 40, 16))
    local.config.ps_version = "v2"  # the row-major geometry does not fit a v1 model
    with pytest.raises(invariants.InvariantBroken):
        invariants.painted_square(vlm, (96, 96), (60, 8, 92, 40))


def test_internvl2_tiling_rule_equals_transformers_copy_of_it():
    """LFM2-VL's image processor in transformers carries InternVL's tiling rule (closest aspect
    ratio, the larger grid on a tie when the picture fills more than half of it): both agree."""
    from transformers.models.lfm2_vl.image_processing_lfm2_vl import find_closest_aspect_ratio

    from vlmnb.engine.internvl2_processing import closest_grid

    rng = np.random.default_rng(0)
    sizes = [(w, h) for w in (32, 64, 96, 128) for h in (32, 64, 96, 128)]
    sizes += [(int(w), int(h)) for w, h in rng.integers(8, 2000, (200, 2))]
    for max_tiles in (1, 6, 12):
        ratios = sorted({(i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if i * j <= max_tiles}, key=lambda g: g[0] * g[1])
        for w, h in sizes:
            assert closest_grid(w, h, 32, 1, max_tiles) == find_closest_aspect_ratio(w / h, ratios, w, h, 32), (w, h)


def test_internvl2_tiling_and_tokens_at_the_reference_sizes(built):
    from vlmnb.engine.internvl2_processing import closest_grid

    model, processor = built("internvl2")
    config, proc = families.get("internvl2").reference_sizes(model.config, processor)
    assert (proc.image_size, proc.tokens_per_tile, proc.max_tiles) == (448, 256, 6)
    assert closest_grid(640, 480, 448, 1, 6) == (3, 2) and closest_grid(640, 480, 448, 1, 12) == (4, 3)
    assert closest_grid(480, 640, 448, 1, 6) == (2, 3) and closest_grid(300, 300, 448, 1, 6) == (1, 1)
    p = S.prepare(config, proc, Image.new("RGB", (640, 480)), "describe the image")
    assert p.pixel_values.shape == (7, 3, 448, 448)
    assert len(p.spans.image) == 7 * 256 + 2 and int(p.geometry.has_box.sum()) == 7 * 256


@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_idefics3_crops_and_global(family, prep, noise, built):
    # 56x40 -> 64x46 (longest edge 64, even height) -> 64x64 (multiples of 32) -> 2x2 crops + global
    p = prep(family, noise(56, 40))
    g = p.geometry
    assert [v.name for v in g.views] == ["crop_0_0", "crop_0_1", "crop_1_0", "crop_1_1", "global"]
    sx, sy = 56 / 64, 40 / 64
    crop = g.view("crop_1_0")
    assert np.allclose(crop.region, [0, 32 * sy, 32 * sx, 40])
    assert np.allclose(g.boxes[crop.tokens[0, 0]], [0, 32 * sy, 8 * sx, 40 * sy])
    assert np.allclose(g.boxes[g.view("global").tokens[3, 3]], [42, 30, 56, 40])
    # the structure tokens (fake-token markers, row/col tags, newlines, <global-img>) have no box
    model, processor = built(family)
    ids = p.input_ids[0, p.spans.image].numpy()
    tok = processor.tokenizer
    for name in ("<fake_token_around_image>", "<row_1_col_1>", "<row_2_col_2>", "<global-img>"):
        where = np.flatnonzero(ids == tok.convert_tokens_to_ids(name))
        assert len(where) and np.isnan(g.boxes[where]).all()
    assert ids[0] == ids[-1] == tok.convert_tokens_to_ids("<fake_token_around_image>")


def test_gemma3_square_resize_and_pooled_tokens(prep, noise, built):
    p = prep("gemma3", noise(56, 40))
    g = p.geometry
    assert np.allclose(g.boxes[1 + 5], [14, 10, 28, 20])  # token (1, 1) after <start_of_image>
    model, processor = built("gemma3")
    ids = p.input_ids[0, p.spans.image].numpy()
    # the config's image token, not the processor's (which is the begin-of-image token)
    assert processor.image_token_id == model.config.boi_token_index != S.image_token_id(model.config)
    assert ids[0] == model.config.boi_token_index and ids[-1] == model.config.eoi_token_index
    assert (ids == S.image_token_id(model.config)).sum() == model.config.mm_tokens_per_image


def test_idefics2_learned_queries_carry_their_pictures_box(prep, noise):
    # 57x41, split at x = 28, y = 20: quarter 1_1 is 29x21, raised to 32x32 (shortest edge), all
    # seen; the whole image stays 57x41 and the 4 px patches see 56x40 of it
    p = prep("idefics2", noise(57, 41))
    g = p.geometry
    assert [v.name for v in g.views] == ["crop_0_0", "crop_0_1", "crop_1_0", "crop_1_1", "global"]
    assert all(v.whole_view and v.rows * v.cols == 16 for v in g.views)
    quarter, whole = g.view("crop_1_1"), g.view()
    assert whole.name == "global" and np.allclose(whole.region, (0, 0, 56, 40))
    assert np.allclose(quarter.region, (28, 20, 57, 41)) and np.allclose(g.boxes[quarter.token_indices], quarter.region)
    # a pixel is seen by every query of each picture holding it; the last column by no global query
    assert g.token_at(30, 25) == sorted(quarter.token_indices.tolist() + whole.token_indices.tolist())
    assert g.token_at(56, 10) == g.view("crop_0_1").token_indices.tolist()
    # painted, a whole-view view shows the mean of its tokens over its region
    values = np.arange(len(g.boxes), dtype=float)
    painted = g.paint(values, view="crop_1_1")
    assert np.isnan(painted[:20]).all() and np.isnan(painted[:, :28]).all()
    assert np.allclose(painted[20:, 28:], values[quarter.token_indices].mean())


# ----------------------------------------------------------------------------- generic properties


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(56, 40), (30, 70)])
def test_boxes_inside_image_and_views_consistent(family, size, prep, noise):
    p = prep(family, noise(*size))
    g = p.geometry
    W, H = size
    ok = g.has_box
    assert ok.sum() > 0
    b = g.boxes[ok]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= W + 1e-9).all() and (b[:, 3] <= H + 1e-9).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # every token with a box is in exactly one view; views' tokens have boxes
    counted = np.concatenate([v.token_indices for v in g.views])
    assert sorted(counted) == sorted(np.flatnonzero(ok))
    # each view's grid is laid out left-to-right, top-to-bottom in its region; a whole-view
    # view's tokens (learned queries pooling the whole picture) all carry its region
    for v in g.views:
        if v.whole_view:
            assert np.allclose(g.boxes[v.token_indices], v.region)
            continue
        centers = g.centers()
        grid_x = g.to_grid(centers[:, 0], view=v.name)
        grid_y = g.to_grid(centers[:, 1], view=v.name)
        with np.errstate(invalid="ignore"):
            assert np.all(np.nan_to_num(np.diff(grid_x, axis=1), nan=1) > 0)
            assert np.all(np.nan_to_num(np.diff(grid_y, axis=0), nan=1) > 0)
        x0, y0, x1, y1 = v.region
        vb = g.boxes[v.token_indices]
        assert (vb[:, 0] >= x0 - 1e-9).all() and (vb[:, 2] <= x1 + 1e-9).all()
        assert (vb[:, 1] >= y0 - 1e-9).all() and (vb[:, 3] <= y1 + 1e-9).all()
    # every pixel is seen by at least one token of the overview, but where a center crop (LLaVA-1.5's)
    # cuts the sides away
    overview = g.view()
    corners = [(0, 0), (W - 1, H - 1)] if not families.get(tiny.family_of(family)).crops else []
    for x, y in corners + [(W // 2, H // 3)]:
        hits = g.token_at(x, y)
        assert set(hits) & set(overview.token_indices), (x, y)


def test_geometry_helpers(prep, noise):
    p = prep("llava", noise(32, 32))
    g = p.geometry
    values = np.arange(len(g.boxes), dtype=float)
    grid = g.to_grid(values)
    assert grid.shape == (4, 4) and grid[0, 1] == 1 and grid[3, 3] == 15
    painted = g.paint(values)
    assert painted.shape == (32, 32) and painted[0, 9] == 1 and painted[31, 31] == 15
    assert np.allclose(g.centers()[0], [4, 4])
    with pytest.raises(ValueError, match="outside"):
        g.token_at(32, 0)
    with pytest.raises(ValueError, match="one per image-span token"):
        g.to_grid(values[:-1])
    with pytest.raises(ValueError, match="no view"):
        g.view("thumbnail")


# ----------------------------------------------------------------------------- PIL backends
# (the painted-square check of every family is in test_invariants.py)


@pytest.mark.slow
@pytest.mark.parametrize("family", [m for m in FAMILIES if families.get(tiny.family_of(m)).load_remote is None])
def test_pil_backend_processors_share_the_geometry(family, built):
    # (InternVL2's processor is vlmnb's own, which resizes with PIL)
    """The PIL-backend image processors (``...ImageProcessorPil``) resize and crop like the
    torchvision ones, so the same geometry holds for them."""
    import transformers
    from transformers.image_processing_backends import TorchvisionBackend

    model, processor = built(family)
    processor = copy.deepcopy(processor)
    ip = processor.image_processor
    pil_class = getattr(transformers, type(ip).__name__ + "Pil", None)
    if not isinstance(ip, TorchvisionBackend) or pil_class is None:
        pytest.skip(f"{type(ip).__name__} has one backend only, which the painted-region tests already use")
    settings = {k: v for k, v in ip.to_dict().items()
                if not k.startswith("_") and k not in ("image_processor_type", "processor_class", "backend")}
    processor.image_processor = pil_class(**settings)
    local = VLM(invariants.local_vision_copy(model), processor)
    covering, distant = invariants.painted_square(local, (56, 40), (4, 4, 40, 16))  # raises if the paint strays
    assert covering > 0 and distant > 0
