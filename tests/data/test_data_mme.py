"""MME loader on parquet shards written in the hub's schema (image as {"bytes", "path"})."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmnb import data
from vlmnb.data import MME_PERCEPTION, load_mme
from vlmnb.cli.data import cli_data

# what `datasets` records for lmms-lab/MME's features
HF_FEATURES = {"info": {"features": {
    "question_id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
    "question": {"dtype": "string", "_type": "Value"}, "answer": {"dtype": "string", "_type": "Value"},
    "category": {"dtype": "string", "_type": "Value"}}}}


def png_bytes(color):
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def shard(rows):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("question_id", pa.string()), ("image", image_type), ("question", pa.string()),
                        ("answer", pa.string()), ("category", pa.string())],
                       metadata={b"huggingface": json.dumps(HF_FEATURES).encode()})
    return pa.Table.from_pylist(rows, schema=schema)


def pair(category, name, color):
    img = {"bytes": png_bytes(color), "path": name.split("/")[-1]}
    return [
        {"question_id": name, "image": img, "question": f"Is this {category}? Please answer yes or no.",
         "answer": "Yes", "category": category},
        {"question_id": name, "image": img, "question": f"Is this not {category}? Please answer yes or no.",
         "answer": "No", "category": category},
    ]


@pytest.fixture
def mme_dir(tmp_path):
    root = tmp_path / "MME"
    (root / "data").mkdir(parents=True)
    pq.write_table(shard(pair("existence", "existence/000000006040.jpg", (255, 0, 0))
                         + pair("OCR", "OCR/0001.jpg", (0, 255, 0))),
                   root / "data" / "test-00000-of-00002-aaaa.parquet")
    pq.write_table(shard(pair("count", "count/000000027620.jpg", (0, 0, 255))
                         + pair("code_reasoning", "code_reasoning/0020.png", (9, 9, 9))),
                   root / "data" / "test-00001-of-00002-bbbb.parquet")
    # the hub client's bookkeeping folder must be ignored
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "stale.parquet").write_bytes(b"not parquet")
    return root


def test_load_all_shards(mme_dir):
    df = load_mme(mme_dir)
    assert list(df.columns) == ["question_id", "image_id", "question", "answer", "category", "image"]
    assert len(df) == 8
    assert df.groupby("image_id").size().tolist() == [2, 2, 2, 2]
    assert set(df["category"]) == {"existence", "OCR", "count", "code_reasoning"}
    first = df.iloc[0]
    img = first["image"].open()
    assert img.mode == "RGB" and img.size == (12, 8) and img.getpixel((0, 0)) == (255, 0, 0)
    assert "kB" in repr(first["image"])
    # a single shard file works too
    assert len(load_mme(mme_dir / "data" / "test-00001-of-00002-bbbb.parquet")) == 4


def test_category_filter(mme_dir):
    df = load_mme(mme_dir, categories=["count", "OCR"])
    assert sorted(set(df["category"])) == ["OCR", "count"] and len(df) == 4
    perception = load_mme(mme_dir, categories="perception")
    assert set(perception["category"]) <= set(MME_PERCEPTION)
    assert "code_reasoning" not in set(perception["category"]) and len(perception) == 6
    with pytest.raises(ValueError, match="unknown MME categories.*Existence"):
        load_mme(mme_dir, categories=["Existence"])
    with pytest.raises(ValueError, match="none of the categories"):
        load_mme(mme_dir, categories=["landmark"])


def test_perception_category_strings():
    assert len(MME_PERCEPTION) == 10
    assert {"existence", "count", "position", "color", "OCR", "posters",
            "celebrity", "artwork", "scene", "landmark"} == set(MME_PERCEPTION)


def test_missing_files_error_names_hub_and_command(tmp_path):
    for where in (tmp_path / "nothing", tmp_path):
        with pytest.raises(FileNotFoundError) as err:
            load_mme(where)
        msg = str(err.value)
        assert "lmms-lab/MME" in msg and "download" in msg and "--repo-type dataset" in msg


def test_wrong_schema_is_named(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "answer": ["Yes"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"lacks MME column\(s\).*question_id"):
        load_mme(tmp_path)


def test_samples_and_images_entry_point(mme_dir):
    samples = data.images("mme", path=mme_dir, categories="perception")
    assert [s.image_id for s in samples] == ["existence/000000006040.jpg", "OCR/0001.jpg",
                                             "count/000000027620.jpg"]
    s = samples[2]
    assert s.meta["answers"] == ["Yes", "No"] and len(s.meta["questions"]) == 2
    assert s.image.getpixel((3, 3)) == (0, 0, 255)
    assert len(data.images("mme", n=1, path=mme_dir)) == 1


def test_cli_mme(mme_dir, tmp_path, capsys):
    rc = cli_data(["mme", "--dir", str(mme_dir)])
    out = capsys.readouterr()
    assert "8 questions on 4 images" in out.out
    assert rc == 1 and "perception categories missing" in out.err  # the fixture is not all of MME
    assert cli_data(["mme", "--dir", str(tmp_path / "none")]) == 2
    assert "lmms-lab/MME" in capsys.readouterr().err
