"""Manifest data: `data.train` / `validation` / `test` as a CSV, Parquet or JSONL table of paths and labels (local,
`file://` or `s3://`), paths relative to the table's folder, classes the sorted labels (recorded in model.json).
Bad rows are each named in one error before anything is written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc, smallcnn_weights, write_png

from graft import storage
from graft.api.models import StageState, TransferJob
from graft.ledger import Ledger, job_root
from graft_trainer import data as data_mod
from graft_trainer.driver import Driver, StageFailed
from graft_trainer.errors import InputError
from graft_trainer.executors import LocalExecutor

LABELS = {"cat": 40, "dog": 130, "owl": 220}


def _images(root: Path, per_class: int = 6) -> list[tuple[str, str]]:
    """PNG files under `root/img/` (flat: the label is not in the path); (relative path, label) rows."""
    rows = []
    for label, value in LABELS.items():
        for i in range(per_class):
            name = f"img/{label[0]}{i:02d}.png"
            write_png(root / name, value + i)
            rows.append((name, label))
    return rows


def _csv(rows, path="path", label="label") -> bytes:
    return (f"{path},{label}\n" + "".join(f"{p},{lab}\n" for p, lab in rows)).encode()


def _spec(train: str, weights: str, **data) -> dict:
    return {"model": {"backbone": "smallcnn", "numClasses": 3, "weights": weights},
            "data": {"train": train, "imageSize": 8, **data},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 5},
                       {"type": "FullFineTune", "epochs": 1, "batchSize": 8}],
            "checks": SMOKE_CHECKS, "serving": NO_SERVING}


def test_csv_on_s3_with_images_on_s3_runs_end_to_end(tmp_path, s3_bucket):
    local = tmp_path / "data"
    rows = _images(local)
    for rel, _ in rows:
        storage.write_bytes(f"{s3_bucket}/set/{rel}", (local / rel).read_bytes())
    storage.write_bytes(f"{s3_bucket}/set/train.csv", _csv(rows))
    weights = str(smallcnn_weights(tmp_path / "w.pt"))
    job = TransferJob.model_validate(job_doc("manifest", _spec(f"{s3_bucket}/set/train.csv", weights)))
    ledger = Driver(job, f"{s3_bucket}/runs", executor=LocalExecutor()).run()
    assert [s.state for s in ledger.stages] == [StageState.SUCCEEDED] * 3, [s.message for s in ledger.stages]
    meta = json.loads(storage.read_bytes(f"{ledger.model_uri}/model.json"))
    assert meta["labels"] == ["cat", "dog", "owl"]
    features = ledger.stage("FrozenFeatures").metrics
    assert features["train_images"] + features["val_images"] == 18


def test_parquet_and_jsonl_with_configured_columns_and_a_validation_table(tmp_path):
    rows = _images(tmp_path)
    train, val = rows[0::2], rows[1::2]
    buf = io.BytesIO()
    pq.write_table(pa.table({"file": [p for p, _ in train], "species": [lab for _, lab in train]}), buf)
    (tmp_path / "train.parquet").write_bytes(buf.getvalue())
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"file": p, "species": lab}) + "\n" for p, lab in val[:4]))
    columns = ("file", "species")
    src = data_mod.open_source(str(tmp_path / "train.parquet"), columns)
    assert src.classes == ["cat", "dog", "owl"] and len(src) == 9
    assert src.files[0] == str(tmp_path / "img" / "c00.png") and list(src.labels[:3]) == [0, 0, 0]
    # A validation table with only some of the labels keeps the training set's classes.
    got = data_mod.open_source(str(tmp_path / "val.jsonl"), columns, src.classes)
    assert got.classes == src.classes and list(got.labels) == [0, 0, 0, 1]

    weights = str(smallcnn_weights(tmp_path / "w.pt"))
    spec = _spec(f"file://{tmp_path}/train.parquet", weights, validation=str(tmp_path / "val.jsonl"),
                 pathColumn="file", labelColumn="species")
    spec["workers"] = {"memory": "4Ki"}  # streamed from storage batch by batch, as an ImageFolder would be
    ledger = Driver(TransferJob.model_validate(job_doc("pq", spec)), str(tmp_path / "runs"),
                    executor=LocalExecutor()).run()
    assert [s.state for s in ledger.stages] == [StageState.SUCCEEDED] * 3, [s.message for s in ledger.stages]
    assert ledger.stage("FrozenFeatures").metrics["val_images"] == 4


def test_bad_rows_each_get_one_line_capped_and_nothing_is_written(tmp_path):
    rows = _images(tmp_path, per_class=2)
    bad = [*rows, ("img/missing.png", "cat"), ("img/c00.png", ""), ("", "dog")]
    bad += [(f"img/gone{i}.png", "owl") for i in range(12)]
    (tmp_path / "train.csv").write_bytes(_csv(bad))
    weights = str(smallcnn_weights(tmp_path / "w.pt"))
    store = str(tmp_path / "store")
    job = TransferJob.model_validate(job_doc("bad", _spec(str(tmp_path / "train.csv"), weights), uid="bad-rows"))
    with pytest.raises(StageFailed) as err:
        Driver(job, store, executor=LocalExecutor()).run()
    csv = tmp_path / "train.csv"
    assert str(err.value) == (
        f"stage FrozenFeatures failed: {csv}: 15 of 21 rows are bad:\n"
        f"  row 7: img/missing.png: file not found ({tmp_path}/img/missing.png)\n"
        "  row 8: img/c00.png: empty label\n"
        "  row 9: empty path\n"
        + "".join(f"  row {10 + i}: img/gone{i}.png: file not found ({tmp_path}/img/gone{i}.png)\n" for i in range(7))
        + "  ... and 5 more")
    root = job_root(store, "bad-rows")
    ledger = Ledger.load(root)
    first = ledger.stage("FrozenFeatures")
    assert first.state == StageState.FAILED and first.start_time is None
    # ... its previous version (graft/ledger.py) and the job's lease (graft/lease.py), taken before the ledger's
    # first write and released.
    assert sorted(p.name for p in Path(root).iterdir()) == ["lease.json", "ledger.json", "ledger.json.prev"], \
        "nothing but the ledger (and its previous version) and the lease is written"


def test_unknown_label_in_a_validation_table_and_a_missing_column(tmp_path):
    rows = _images(tmp_path, per_class=2)
    (tmp_path / "train.csv").write_bytes(_csv(rows))
    (tmp_path / "val.csv").write_bytes(_csv([("img/c00.png", "cat"), ("img/d00.png", "wolf")]))
    train = data_mod.open_source(str(tmp_path / "train.csv"))
    with pytest.raises(InputError) as err:
        data_mod.open_source(str(tmp_path / "val.csv"), classes=train.classes)
    assert str(err.value) == (f"{tmp_path}/val.csv: 1 of 2 rows are bad:\n"
                              "  row 2: img/d00.png: unknown label 'wolf' (the training labels: cat, dog, owl)")
    with pytest.raises(InputError) as err:
        data_mod.open_source(str(tmp_path / "train.csv"), ("file", "label"))
    assert str(err.value) == (f"{tmp_path}/train.csv: has no column 'file' (its columns: path, label); set "
                              "spec.data.pathColumn")
    with pytest.raises(InputError, match="manifest not found"):
        data_mod.open_source(str(tmp_path / "nope.csv"))


def test_graft_evaluate_reads_a_table_whose_labels_are_some_of_the_models(tmp_path):
    from support.trainer_data import export_constant_model

    from graft_trainer.evaluate import evaluate

    rows = _images(tmp_path, per_class=2)
    (tmp_path / "test.csv").write_bytes(_csv([r for r in rows if r[1] != "owl"]))
    model = export_constant_model(tmp_path / "run", ["cat", "dog", "owl"], "dog")
    result = evaluate(model, str(tmp_path / "test.csv"))
    assert len(result.y_true) == 4 and int((result.y_true == result.y_pred).sum()) == 2  # the dogs
    (tmp_path / "bad.csv").write_bytes(_csv([("img/c00.png", "wolf")]))
    with pytest.raises(InputError, match=r"row 1: img/c00.png: unknown label 'wolf' \(the training labels: cat, dog"):
        evaluate(model, str(tmp_path / "bad.csv"))
