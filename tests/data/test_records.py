import numpy as np
import pytest
from PIL import Image

from chaiderm.data.records import attach_groups, check_nested, load_table, read_folder, read_groups, read_isic2017
from chaiderm.errors import DataError
from tests.conftest import SHARED


def _img(path, side=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)


def _isic(root, split="Training", rows=(("ISIC_0000001", 1, 0), ("ISIC_0000002", 0, 1), ("ISIC_0000003", 0, 0))):
    (root / f"ISIC-2017_{split}_Data").mkdir(parents=True)
    lines = ["image_id,melanoma,seborrheic_keratosis"]
    for iid, m, s in rows:
        _img(root / f"ISIC-2017_{split}_Data" / f"{iid}.jpg")
        lines.append(f"{iid},{m}.0,{s}.0")
    (root / f"ISIC-2017_{split}_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def test_isic_layout_autodetected_with_masks(tmp_path):
    root = _isic(tmp_path / "isic")
    _img(root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000001_segmentation.png")
    t = load_table(root)
    assert t.diagnoses == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert t.mask_paths[0] is not None and t.mask_paths[1] is None


def test_isic_missing_image_named(tmp_path):
    root = _isic(tmp_path / "isic")
    (root / "ISIC-2017_Training_Data" / "ISIC_0000002.jpg").unlink()
    with pytest.raises(DataError, match="ISIC_0000002"):
        read_isic2017(root, "train")


def test_isic_missing_column(tmp_path):
    root = _isic(tmp_path / "isic")
    gt = root / "ISIC-2017_Training_Part3_GroundTruth.csv"
    gt.write_text("image_id,melanoma\nISIC_0000001,1.0\n")
    with pytest.raises(DataError) as e:
        read_isic2017(root, "train")
    assert "seborrheic_keratosis" in str(e.value) and str(gt) in str(e.value)


def test_generic_layout_groups_and_positive(tmp_path):
    for i in range(3):
        _img(tmp_path / "images" / f"x{i}.png")
    (tmp_path / "labels.csv").write_text("image_id,diagnosis,group\nx0,melanoma,g1\nx1,bcc,\nx2,melanoma,g1\n")
    t = read_folder(tmp_path)
    assert t.groups == ["g1", None, "g1"]
    assert t.is_positive("bcc").tolist() == [False, True, False]


def test_generic_missing_labels(tmp_path):
    with pytest.raises(DataError, match="labels.csv"):
        read_folder(tmp_path)


def test_groups_join_and_disease_check(tmp_path):
    for i in range(2):
        _img(tmp_path / "images" / f"x{i}.png")
    (tmp_path / "labels.csv").write_text("image_id,diagnosis\nx0,melanoma\nx1,nevus\n")
    g = tmp_path / "groups.csv"
    g.write_text("image_id,group,disease\nx0,dark,melanoma\n")
    t = attach_groups(read_folder(tmp_path), g)
    assert t.groups == ["dark", None]
    g.write_text("image_id,group,disease\nx1,dark,melanoma\n")
    with pytest.raises(DataError, match="disagrees"):
        attach_groups(read_folder(tmp_path), g)
    g.write_text("image_id,grp\nx1,dark\n")
    with pytest.raises(DataError, match="missing column"):
        read_groups(g)


def test_group_under_two_diseases_refused(tmp_path):
    for i in range(2):
        _img(tmp_path / "images" / f"x{i}.png")
    (tmp_path / "labels.csv").write_text("image_id,diagnosis,group\nx0,melanoma,big\nx1,nevus,big\n")
    with pytest.raises(DataError, match="'big' under"):
        check_nested(read_folder(tmp_path))


@pytest.mark.skipif(not (SHARED / "isic2017").exists(), reason="ISIC 2017 data not present")
def test_real_isic2017_counts():
    t = read_isic2017(SHARED / "isic2017", "train")
    assert len(t) == 2000
    assert t.diagnoses.count("melanoma") == 374 and t.diagnoses.count("seborrheic_keratosis") == 254
    assert len(read_isic2017(SHARED / "isic2017", "test")) == 600


@pytest.mark.skipif(not (SHARED / "ham10000_dev").exists(), reason="HAM10000 dev data not present")
def test_real_ham10000_layout():
    t = read_folder(SHARED / "ham10000_dev")
    assert len(t) == 1108 and t.has_masks


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("melanoma", "melanoma"),
        ("MEL", "melanoma"),
        ("mel", "melanoma"),
        ("Malignant Melanoma", "melanoma"),
        ("nv", "nevus"),
        ("NV", "nevus"),
        ("Melanocytic nevus", "nevus"),
        ("naevus", "nevus"),
        ("bcc", "basal_cell_carcinoma"),
        ("Basal-Cell_Carcinoma", "basal_cell_carcinoma"),
        ("akiec", "actinic_keratosis"),
        ("AK", "actinic_keratosis"),
        ("bkl", "benign_keratosis"),
        ("seborrheic_keratosis", "seborrheic_keratosis"),
        ("df", "dermatofibroma"),
        ("VASC", "vascular_lesion"),
        ("scc", "squamous_cell_carcinoma"),
        ("unk", "unknown"),
        ("Blue Nevus", "blue_nevus"),
    ],
)
def test_diagnosis_vocabulary(raw, name):
    from chaiderm.data.diagnoses import canonical

    assert canonical(raw) == name


def test_a_missing_positive_class_is_refused_with_what_there_is():
    from chaiderm.data.diagnoses import require_class

    assert require_class("MEL", ["melanoma", "nevus"], "x") == "melanoma"
    with pytest.raises(DataError, match=r"'melanoma'.*nevus \(2\), bcc") as e:
        require_class("melanoma", ["nevus", "nevus", "bcc"], "labels.csv")
    assert str(e.value).startswith("labels.csv:")


def test_isic_csv_columns():
    from chaiderm.evaluation.isic_csv import row

    r = row({"seborrheic_keratosis": 0.3, "benign_keratosis": 0.2, "melanoma": 0.5}, "isic2019")
    assert r["BKL"] == 0.5 and r["MEL"] == 0.5 and sum(r.values()) == 1.0 and list(r)[-1] == "UNK"
    assert row({"blue_nevus": 1.0}, "isic2019")["UNK"] == 1.0
    assert row({"actinic_keratosis": 1.0}, "isic2018")["AKIEC"] == 1.0
    with pytest.raises(DataError, match="no column in the isic2018 layout"):
        row({"squamous_cell_carcinoma": 1.0}, "isic2018")


def test_metadata_from_extra_label_columns(tmp_path):
    (tmp_path / "images").mkdir()
    for i in ("a", "b"):
        Image.new("RGB", (32, 32)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "labels.csv").write_text(
        "image_id,diagnosis,age_approx,sex,anatom_site_general,lesion_id,attribution,copyright_license,notes\n"
        "a,mel,55,female,back,HAM_1,Clinic A,CC-BY-NC,x\n"
        "b,nv,unknown,,lower extremity,HAM_2,,CC-0,y\n"
    )
    t = read_folder(tmp_path)
    assert t.metadata[0] == {
        "age": "55",
        "sex": "female",
        "site": "back",
        "lesion_id": "HAM_1",
        "attribution": "Clinic A",
        "license": "CC-BY-NC",
    }
    assert t.metadata[1] == {"site": "lower extremity", "lesion_id": "HAM_2", "license": "CC-0"}
    assert t.subset([1]).metadata == [t.metadata[1]]


@pytest.mark.skipif(not (SHARED / "isic2017").exists(), reason="ISIC 2017 data not present")
def test_isic2017_metadata_age_and_sex():
    t = read_isic2017(SHARED / "isic2017", "train")
    assert t.metadata[t.image_ids.index("ISIC_0000000")] == {"age": "55", "sex": "female"}
    assert sum(bool(m) for m in t.metadata) > 1700  # 2000 images; some have neither age nor sex


def _isic_cli_folder(root, rows):
    root.mkdir()
    header = (
        "isic_id,attribution,copyright_license,age_approx,anatom_site_general,"
        "diagnosis_1,diagnosis_2,diagnosis_3,lesion_id,patient_id,sex"
    )
    lines = [header]
    for r in rows:
        Image.new("RGB", (40, 30), (120, 80, 60)).save(root / f"{r[0]}.jpg")
        lines.append(",".join(r))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "attribution.txt").write_text("Clinic A\n\nAnonymous")
    return root


def test_isic_cli_download_folder(tmp_path):
    root = _isic_cli_folder(
        tmp_path / "isic",
        [
            (
                "ISIC_0000001",
                "Clinic A",
                "CC-BY",
                "55",
                "posterior torso",
                "Malignant",
                "Malignant melanocytic proliferations (Melanoma)",
                "Melanoma Invasive",
                "IL_1",
                "IP_1",
                "female",
            ),
            (
                "ISIC_0000002",
                "Anonymous",
                "CC-0",
                "",
                "",
                "Benign",
                "Benign melanocytic proliferations",
                "Nevus",
                "IL_2",
                "IP_1",
                "male",
            ),
        ],
    )
    t = load_table(root)
    assert t.source.startswith("isic-cli:") and t.diagnoses == ["melanoma", "nevus"]
    assert t.metadata[0] == {
        "attribution": "Clinic A",
        "license": "CC-BY",
        "age": "55",
        "site": "posterior torso",
        "lesion_id": "IL_1",
        "patient_id": "IP_1",
        "sex": "female",
    }
    assert "age" not in t.metadata[1] and t.metadata[1]["patient_id"] == "IP_1"
    bad = _isic_cli_folder(tmp_path / "bad", [("ISIC_0000003", "A", "CC-0", "", "", "", "", "", "", "", "")])
    with pytest.raises(DataError, match=r"metadata.csv: 1 image\(s\) have no diagnosis \(ISIC_0000003\)"):
        load_table(bad)


def test_concat_tables_joins_sources_and_refuses_a_case_twice(tmp_path):
    from chaiderm.data.records import ImageTable, concat_tables

    a = ImageTable(["a1", "a2"], ["/x/a1.jpg", "/x/a2.jpg"], ["melanoma", "nevus"], source="isic")
    b = ImageTable(["b1"], ["/y/b1.jpg"], ["basal_cell_carcinoma"], metadata=[{"age": "50"}], source="ham")
    t = concat_tables(a, b)
    assert t.image_ids == ["a1", "a2", "b1"] and t.diagnoses[-1] == "basal_cell_carcinoma"
    assert t.metadata[-1] == {"age": "50"} and t.source == "isic + ham" and len(t.groups) == 3
    with pytest.raises(DataError, match=r"ham: image a2 is also in isic"):
        concat_tables(a, ImageTable(["a2"], ["/y/a2.jpg"], ["nevus"], source="ham"))
