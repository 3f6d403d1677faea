"""Labels mean what the user meant: the training split names the classes (its class folders, sorted, or
data.labelNames in the order given), every split is mapped to those classes by name, and the names travel with
the model into the saved adapter. Unit tests on the data functions, one on a method's saved files, and one
`peftjob run` of a tiny ViT whose eval folder lacks a class.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from peftjob_trainer import data
from peftjob_trainer.api import load_object
from peftjob_trainer.errors import DataError
from tests.trainer.local_job import finish, launch

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "purple": (140, 30, 160)}


def make_job(task: str = "sequence-classification", num_labels: int = 2, **data_spec: Any):
    spec = {"model": {"source": "m", "task": task, "numLabels": num_labels}, "method": {"lora": {}},
            "data": {"train": {"source": "train.jsonl"}, **data_spec}}
    return load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "labels"},
                        "spec": spec})


def image_job(num_labels: int = 3, **data_spec: Any):
    splits = {"train": {"source": "images-train"}, "eval": {"source": "images-eval"}}
    return make_job("image-classification", num_labels, **splits, **data_spec)


def colour_folder(root: Path, colours: list[str], per_class: int, seed: int = 0) -> Path:
    """root/<colour>/<n>.png: noisy squares of one colour each."""
    from PIL import Image

    rng = random.Random(seed)
    for name in colours:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = [tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in COLOURS[name]) for _ in range(24 * 24)]
            image = Image.new("RGB", (24, 24))
            image.putdata(pixels)
            image.save(root / name / f"{index}.png")
    return root


def labels_of(job, split: str) -> list[int]:
    """The class indices `encode` gives the split's records (pixels stubbed: only the labels matter here)."""
    records = data.read_records(getattr(job.spec.data, split), Path)
    train = data.read_records(job.spec.data.train, Path)
    return [example["labels"] for example in data.encode(records, job.spec, None, fake_processor, train)]


def fake_processor(images, return_tensors):
    return {"pixel_values": [images]}


def train_classes(job) -> list[str] | None:
    return data.class_names(job.spec, data.read_records(job.spec.data.train, Path))


# ----------------------------------------------------------------------------------------- image folders


def test_an_eval_folder_without_a_class_keeps_the_training_splits_indices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colour_folder(tmp_path / "images-train", ["blue", "green", "red"], 1)
    colour_folder(tmp_path / "images-eval", ["green", "red"], 1)
    job = image_job()
    assert train_classes(job) == ["blue", "green", "red"]
    assert labels_of(job, "eval") == [1, 2]


def test_an_eval_class_unknown_to_training_is_a_data_error_naming_it_and_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colour_folder(tmp_path / "images-train", ["blue", "green", "red"], 1)
    colour_folder(tmp_path / "images-eval", ["green", "purple"], 1)
    job = image_job()
    with pytest.raises(DataError) as error:
        labels_of(job, "eval")
    assert str(error.value) == ("images-eval/purple: class folder 'purple' is not a class of the training split "
                                "images-train (blue, green, red)")


def test_label_names_fix_the_order_of_the_class_folders_in_every_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colour_folder(tmp_path / "images-train", ["blue", "green", "red"], 1)
    colour_folder(tmp_path / "images-eval", ["blue", "red"], 1)
    job = image_job(labelNames=["red", "green", "blue"])
    assert train_classes(job) == ["red", "green", "blue"]
    assert labels_of(job, "train") == [2, 1, 0]
    assert labels_of(job, "eval") == [2, 0]


def test_a_training_class_folder_missing_from_label_names_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colour_folder(tmp_path / "images-train", ["blue", "green", "red"], 1)
    job = image_job(labelNames=["red", "grey", "blue"])
    with pytest.raises(DataError, match=r"^images-train/green: class folder 'green' is not in data\.labelNames "
                                        r"\(red, grey, blue\)$"):
        train_classes(job)


def test_class_folders_must_match_num_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    colour_folder(tmp_path / "images-train", ["blue", "red"], 1)
    with pytest.raises(DataError, match=r"^images-train: 2 class folders \(blue, red\) but model\.numLabels is 3: "
                                        r"name every class, in label order, in data\.labelNames$"):
        train_classes(image_job(num_labels=3))


# ----------------------------------------------------------------------------------------- tabular labels


def test_text_labels_map_to_their_index_in_label_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n'
                                   '{"text": "c", "label": 1}\n')
    job = make_job(labelNames=["neg", "pos"])
    assert train_classes(job) == ["neg", "pos"]
    encoded = data.encode(data.read_records(job.spec.data.train, Path), job.spec, WordTokenizer(), None)
    assert [example["labels"] for example in encoded] == [1, 0, 1]


def test_an_unknown_text_label_names_file_line_value_and_the_known_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train.csv").write_text("text,label\na,pos\nb,meh\n")
    job = make_job(train={"source": "train.csv"}, labelNames=["neg", "pos"])
    with pytest.raises(DataError) as error:
        data.encode(data.read_records(job.spec.data.train, Path), job.spec, WordTokenizer(), None)
    assert str(error.value) == "train.csv:3: label 'meh' is not in data.labelNames (neg, pos)"


def test_text_labels_without_label_names_say_to_set_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train.csv").write_text("text,label\na,1\nb,pos\n")
    job = make_job(train={"source": "train.csv"})
    with pytest.raises(DataError) as error:
        data.encode(data.read_records(job.spec.data.train, Path), job.spec, WordTokenizer(), None)
    assert str(error.value) == ("train.csv:3: field 'label' must be an integer class, got 'pos': to use text labels, "
                                "name the classes in label order in data.labelNames")
    assert train_classes(job) is None


class WordTokenizer:
    """Just enough tokenizer for encode(): one id per word."""

    def __call__(self, text, pair=None, truncation=False, max_length=None):
        return {"input_ids": [2 + len(word) for word in text.split()]}


# ---------------------------------------------------------------------------------------- saved adapters


def test_a_saved_classifier_records_its_class_names_and_loading_restores_them(tmp_path):
    from tests.methods.tiny_models import tiny_model

    from peftjob_trainer.api.spec import MethodSpec
    from peftjob_trainer.methods import build_method

    method = build_method(MethodSpec.model_validate({"lora": {"r": 2}}), "sequence-classification")
    model = method.attach(tiny_model("bert", "sequence-classification"))
    model.config.id2label = {0: "neg", 1: "neutral", 2: "pos"}
    method.save(model, tmp_path)
    assert json.loads((tmp_path / "peftjob_method.json").read_text())["labels"] == ["neg", "neutral", "pos"]
    assert "labels" not in json.loads((tmp_path / "adapter_config.json").read_text())  # peft would warn
    fresh = method.attach(tiny_model("bert", "sequence-classification"))
    method.load(fresh, tmp_path)
    assert fresh.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert fresh.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}


# ---------------------------------------------------------------------------------------------- end to end


def vit(directory: Path, num_labels: int) -> Path:
    """A tiny random ViT (16 px images) and its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=num_labels, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_a_vit_job_whose_eval_split_lacks_a_class_scores_by_name_and_its_adapter_names_the_classes(tmp_path):
    vit(tmp_path / "vit", 3)
    colour_folder(tmp_path / "images-train", ["blue", "green", "red"], 16, seed=1)
    colour_folder(tmp_path / "images-eval", ["green", "red"], 6, seed=2)
    spec = {
        "model": {"source": "vit", "task": "image-classification", "numLabels": 3},
        "method": {"vpt": {"numTokens": 4, "depth": "deep"}},
        "data": {"train": {"source": "images-train"}, "eval": {"source": "images-eval"}},
        "training": {"maxSteps": 30, "microBatchSize": 4, "learningRate": 0.02, "warmupSteps": 2,
                     "logInterval": 10, "evalInterval": 0, "checkpointInterval": 0, "seed": 5},
        "workers": {"replicas": 1, "processesPerWorker": 1},
        "output": {"uri": "out"},
    }
    code, output = finish(launch(tmp_path, "colours", spec, {}))
    assert code == 0, output[-4000:]
    outcome = json.loads((tmp_path / ".peftjob" / "colours" / "result.json").read_text())
    assert outcome["metrics"]["eval_accuracy"] >= 0.9, (outcome["initialMetrics"], outcome["metrics"])
    adapter = tmp_path / "out" / "colours" / "adapter"
    assert json.loads((adapter / "peftjob_method.json").read_text())["labels"] == ["blue", "green", "red"]
    assert predicted_class(tmp_path / "vit", adapter, spec, tmp_path / "images-eval" / "red" / "0.png") == "red"


def predicted_class(backbone: Path, adapter: Path, spec: dict[str, Any], image_path: Path) -> str:
    """The class name a user reads when loading the adapter with peftjob onto a fresh backbone."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from peftjob_trainer.methods import build_method

    job = load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "x"}, "spec": spec})
    method = build_method(job.spec.method, job.spec.model.task)
    model = method.attach(AutoModelForImageClassification.from_pretrained(backbone))
    method.load(model, adapter)
    with Image.open(image_path) as image:
        pixels = AutoImageProcessor.from_pretrained(backbone)(images=image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(pixel_values=pixels["pixel_values"]).logits
    return model.config.id2label[int(logits.argmax(-1))]
