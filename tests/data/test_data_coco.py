"""COCO resolver and downloader against a real HTTP server on 127.0.0.1 and annotation
files written in the official format (images / annotations / categories)."""
import functools
import json
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlmnb import data
from vlmnb.data import CocoResolver, coco_samples, download_coco, match_category
from vlmnb.cli.data import cli_data

ID_A, ID_B = 480122, 256941   # listed in the 2017 file (ID_A also in the 2014 one)
ID_2014 = 5477                # listed only in the 2014 file
H, W = 40, 48
RECT = [10, 5, 30, 5, 30, 25, 10, 25]      # x0,y0, x1,y0, x1,y1, x0,y1
TRIANGLE = [4, 4, 40, 4, 4, 36]
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
              {"id": 18, "name": "dog", "supercategory": "animal"}]


def rle_uncompressed(mask):
    """COCO's uncompressed RLE: run lengths over the column-major flattening, starting with 0s."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def crowd_mask():
    m = np.zeros((H, W), bool)
    m[30:38, 2:20] = True
    m[33:36, 25:45] = True
    return m


def image_entry(iid, split):
    name = f"{iid:012d}.jpg" if split.endswith("2017") else f"COCO_{split}_{iid:012d}.jpg"
    return {"id": iid, "file_name": name, "width": W, "height": H, "license": 1,
            "coco_url": f"http://images.cocodataset.org/{split}/{name}",
            "flickr_url": "", "date_captured": "2013-11-14 16:28:13"}


@pytest.fixture
def coco_env(tmp_path):
    """Annotation folder (as unzipped: DIR/annotations/*.json), served JPEGs, request counter."""
    ann_dir = tmp_path / "ann"
    (ann_dir / "annotations").mkdir(parents=True)
    val2017 = {
        "info": {}, "licenses": [],
        "images": [image_entry(ID_A, "val2017"), image_entry(ID_B, "val2017"), image_entry(999, "val2017")],
        "annotations": [
            {"id": 1, "image_id": ID_A, "category_id": 1, "segmentation": [RECT],
             "area": 400.0, "bbox": [10, 5, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": ID_A, "category_id": 1, "segmentation": [TRIANGLE],
             "area": 648.0, "bbox": [4, 4, 36, 32], "iscrowd": 0},
            {"id": 3, "image_id": ID_A, "category_id": 2, "segmentation": rle_uncompressed(crowd_mask()),
             "area": float(crowd_mask().sum()), "bbox": [2, 30, 43, 8], "iscrowd": 1},
            {"id": 4, "image_id": ID_B, "category_id": 18, "segmentation": [RECT],
             "area": 400.0, "bbox": [10, 5, 20, 20], "iscrowd": 0},
            {"id": 5, "image_id": 999, "category_id": 18, "segmentation": [RECT],
             "area": 400.0, "bbox": [10, 5, 20, 20], "iscrowd": 0},
        ],
        "categories": CATEGORIES,
    }
    val2014 = {
        "info": {}, "licenses": [],
        "images": [image_entry(ID_2014, "val2014"), image_entry(ID_A, "val2014")],
        "annotations": [{"id": 6, "image_id": ID_2014, "category_id": 18, "segmentation": [TRIANGLE],
                         "area": 648.0, "bbox": [4, 4, 36, 32], "iscrowd": 0}],
        "categories": CATEGORIES,
    }
    (ann_dir / "annotations" / "instances_val2017.json").write_text(json.dumps(val2017))
    (ann_dir / "annotations" / "instances_val2014.json").write_text(json.dumps(val2014))

    served = tmp_path / "www"
    for entry, split, color in [(image_entry(ID_A, "val2017"), "val2017", (200, 30, 30)),
                                (image_entry(ID_B, "val2017"), "val2017", (30, 200, 30)),
                                (image_entry(ID_2014, "val2014"), "val2014", (30, 30, 200))]:
        (served / split).mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (W, H), color)
        ImageDraw.Draw(im).rectangle([10, 5, 29, 24], fill=(255, 255, 255))
        im.save(served / split / entry["file_name"], quality=90)

    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield {"ann": ann_dir, "cache": tmp_path / "cache", "served": served, "requests": requests,
           "base_url": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    server.server_close()


def test_resolver_finds_2017_and_2014_only_ids(coco_env):
    resolver = CocoResolver(coco_env["ann"], ids=[ID_A, ID_B, ID_2014])
    found = resolver.resolve()
    # 2017 files come first: ID_A (in both) resolves to its 2017 entry
    assert found[ID_A].file_name == f"{ID_A:012d}.jpg"
    assert found[ID_A].coco_url.endswith(f"/val2017/{ID_A:012d}.jpg")
    assert found[ID_2014].source == "instances_val2014.json"
    assert found[ID_2014].coco_url.endswith(f"/val2014/COCO_val2014_{ID_2014:012d}.jpg")
    assert resolver.objects(ID_A) == ["bicycle", "person"]
    # only the wanted ids are kept: the subset is small and in the official format
    subset = resolver.subset()
    assert sorted(i["id"] for i in subset["images"]) == sorted([ID_A, ID_B, ID_2014])
    assert sorted(a["id"] for a in subset["annotations"]) == [1, 2, 3, 4, 6]
    assert {c["name"] for c in subset["categories"]} == {"person", "bicycle", "dog"}
    with pytest.raises(LookupError, match="123456"):
        resolver.resolve([123456])


def test_resolver_stops_when_all_found(coco_env):
    resolver = CocoResolver(coco_env["ann"], ids=[ID_A])
    resolver.resolve()
    assert [p.name for p in resolver.scanned] == ["instances_val2017.json"]


def test_masks_from_pycocotools_equal_the_drawn_shapes(coco_env):
    resolver = CocoResolver(coco_env["ann"], ids=[ID_A])
    masks = resolver.masks(ID_A)
    assert set(masks) == {"person", "bicycle"}
    rect, tri = masks["person"]
    expected_rect = np.zeros((H, W), bool)
    expected_rect[5:25, 10:30] = True
    assert rect.dtype == bool and rect.shape == (H, W)
    assert np.array_equal(rect, expected_rect)
    im = Image.new("1", (W, H))
    ImageDraw.Draw(im).polygon(list(zip(TRIANGLE[::2], TRIANGLE[1::2])), fill=1)
    drawn = np.array(im)
    iou = (tri & drawn).sum() / (tri | drawn).sum()
    assert iou > 0.85  # rasterisers differ only along the slanted edge
    assert np.array_equal(masks["bicycle"][0], crowd_mask())  # RLE decodes exactly


def test_download_once_then_from_cache(coco_env):
    ids = [ID_A, ID_B, ID_2014]
    paths = download_coco(ids, coco_env["cache"], coco_env["ann"], base_url=coco_env["base_url"], progress=False)
    assert sorted(coco_env["requests"]) == sorted([f"/val2017/{ID_A:012d}.jpg", f"/val2017/{ID_B:012d}.jpg",
                                                   f"/val2014/COCO_val2014_{ID_2014:012d}.jpg"])
    for i, p in paths.items():
        assert p.read_bytes() == (coco_env["served"] / ("val2014" if i == ID_2014 else "val2017") / p.name).read_bytes()
    manifest = json.loads((coco_env["cache"] / "manifest.json").read_text())
    assert set(manifest["images"]) == {str(i) for i in ids}
    assert all(len(e["sha256"]) == 64 for e in manifest["images"].values())
    assert not list(coco_env["cache"].rglob(".*.part"))

    # second run: no request at all, and the big annotation files are no longer needed
    for f in (coco_env["ann"] / "annotations").iterdir():
        f.unlink()
    again = download_coco(ids, coco_env["cache"], coco_env["ann"], base_url=coco_env["base_url"], progress=False)
    assert again == paths
    assert len(coco_env["requests"]) == 3


def test_checksum_mismatch_triggers_redownload(coco_env):
    ids = [ID_A, ID_B]
    paths = download_coco(ids, coco_env["cache"], coco_env["ann"], base_url=coco_env["base_url"], progress=False)
    original = paths[ID_B].read_bytes()
    paths[ID_B].write_bytes(original[:-50] + b"\0" * 50)  # corrupted in place
    download_coco(ids, coco_env["cache"], coco_env["ann"], base_url=coco_env["base_url"], progress=False)
    assert coco_env["requests"][2:] == [f"/val2017/{ID_B:012d}.jpg"]
    assert paths[ID_B].read_bytes() == original
    paths[ID_A].unlink()  # a deleted file is fetched again too
    download_coco(ids, coco_env["cache"], coco_env["ann"], base_url=coco_env["base_url"], progress=False)
    assert coco_env["requests"][3:] == [f"/val2017/{ID_A:012d}.jpg"]


def test_missing_annotations_error_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        download_coco([ID_A], tmp_path / "cache", tmp_path / "no-annotations", progress=False)
    msg = str(err.value)
    assert "annotations_trainval2017.zip" in msg and "python -m vlmnb data coco --annotations" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="instances_"):
        CocoResolver(tmp_path / "empty")


def test_offline_error_names_the_command(coco_env):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like offline
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConnectionError) as err:
        download_coco([ID_A, ID_B], coco_env["cache"], coco_env["ann"], base_url=dead, progress=False, timeout=5)
    msg = str(err.value)
    assert str(ID_A) in msg and "python -m vlmnb data coco" in msg and "2 of 2" in msg
    assert not list((coco_env["cache"] / "images").iterdir())  # nothing half-written


def test_not_an_image_is_refused(coco_env):
    (coco_env["served"] / "val2017" / f"{ID_B:012d}.jpg").write_text("<html>rate limited</html>")
    with pytest.raises(ConnectionError, match="not an image"):
        download_coco([ID_B], coco_env["cache"], coco_env["ann"], base_url=coco_env["base_url"], progress=False)


def test_coco_samples(coco_env):
    samples = coco_samples(ids=[ID_A, ID_2014], cache_dir=coco_env["cache"], annotations_dir=coco_env["ann"],
                           base_url=coco_env["base_url"], progress=False)
    a, b = samples
    assert a.image_id == str(ID_A) and a.objects == ["bicycle", "person"]
    assert a.meta["instances"] == {"person": 2, "bicycle": 1}
    assert a.image.mode == "RGB" and a.image.size == (W, H)
    assert a.image.getpixel((20, 15))[0] > 240 and a.image.getpixel((2, 2))[1] < 80
    assert [m.sum() for m in a.masks["person"]][0] == 400
    assert b.meta["annotation_file"] == "instances_val2014.json" and list(b.masks) == ["dog"]
    # the generic entry point with n
    first = data.images("coco", n=1, ids=[ID_B, ID_A], cache_dir=coco_env["cache"],
                        annotations_dir=coco_env["ann"], base_url=coco_env["base_url"], progress=False)
    assert [s.image_id for s in first] == [str(ID_B)]


def test_cli_coco(coco_env, capsys):
    rc = cli_data(["coco", "--annotations", str(coco_env["ann"]), "--cache", str(coco_env["cache"]),
                        "--base-url", coco_env["base_url"], "--n", "1"])
    assert rc == 0 and "1 COCO images" in capsys.readouterr().out
    rc = cli_data(["coco", "--annotations", str(coco_env["ann"] / "nope"), "--cache", str(coco_env["cache"])])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "annotations_trainval2017.zip" in err


@pytest.mark.parametrize("word,category", [
    ("man", "person"), ("men", "person"), ("a young girl", "person"), ("bike", "bicycle"),
    ("bikes", "bicycle"), ("red double-decker bus", "bus"), ("teddy bears", "teddy bear"),
    ("bear", "bear"), ("Hot-dogs", "hot dog"), ("tables", "dining table"), ("knives", "knife"),
    ("cell phones", "cell phone"), ("sofa", "couch"), ("skis", "skis"), ("orange shirt", None),
    ("puppies", "dog"), ("sandwiches", "sandwich"), ("children", "person"), ("persons", "person"),
    ("wine glasses", "wine glass"), ("mice", "mouse"),
    ("sky", None),
])
def test_match_category(word, category):
    assert match_category(word) == category


def test_match_category_restricted_and_synonyms():
    assert match_category("puppy", categories=["dog", "cat"]) == "dog"
    assert match_category("puppy", categories=["cat"]) is None
    assert {"bike", "bicycle"} <= data.category_synonyms("bicycle")
    with pytest.raises(ValueError, match="not a COCO category"):
        data.category_synonyms("sky")


def test_paper_ids_ship_with_the_package():
    ids = data.coco_ids()
    assert len(ids) == 81 == len(set(ids))
    assert ids[0] == 480122 and ids[-1] == 96549
