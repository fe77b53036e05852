"""Export: every user encoder in every format with parity, the ONNX manifest and graphs,
TorchScript files without twotower, int8.

Tiny models (the ``synthetic`` dataset, one epoch) are fitted once per encoder
and each bundle is exported once for the module; everything runs for real
(torch.onnx, onnxruntime, hnswlib), nothing is mocked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import error_line, run, run_script

from twotower import artifacts, plugins
from twotower.api import load
from twotower.artifacts import BUNDLE_FORMAT_VERSION
from twotower.cli import main
from twotower.data.padding import pad_left
from twotower.errors import TwoTowerError
from twotower.export import parity as parity_module
from twotower.export.bundle import export_bundle
from twotower.export.onnx import OPSET
from twotower.export.parity import MAX_ABS_DIFF, MIN_TOP10_AGREEMENT
from twotower.export.towers import ITEM_INPUTS, ITEM_OUTPUTS, USER_INPUTS, USER_OUTPUTS
from twotower.serving import load_bundle

ENCODERS = plugins.user_encoders().names()
FORMATS = plugins.formats().names()
ONNX_ENCODER = "transformer" if "transformer" in ENCODERS else ENCODERS[0]
FAST_ENCODER = "mean" if "mean" in ENCODERS else ENCODERS[0]
MAX_LEN = 8  # synthetic users have ~18 positives, so many histories are longer
PARITY_KEYS = {
    "histories_checked",
    "history_lengths",
    "max_abs_diff",
    "top10_agreement",
    "top10_overlap",
    "cold_user_finite",
    "test_recall@10",
}
BUNDLE_FILES = {
    artifacts.ITEM_EMBEDDINGS,
    artifacts.MAPPINGS,
    artifacts.ITEMS,
    artifacts.USER_HISTORIES,
    artifacts.CONFIG,
    "hnsw_index.bin",
    "hnsw_index.json",
}


def fit_argv(data_dir: Path, encoder: str) -> list[str]:
    return [
        "fit",
        "--dataset",
        "synthetic",
        "--set",
        "synthetic_num_users=60",
        "--set",
        "synthetic_num_items=40",
        "--epochs",
        "1",
        "--max-history-len",
        str(MAX_LEN),
        "--user-encoder",
        encoder,
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "--json",
    ]


class Workspace:
    """Artifacts per encoder and fp32 bundles per (encoder, format), each made at most once."""

    def __init__(self, root: Path):
        self.root = root
        self._artifacts: dict[str, Path] = {}
        self._recommenders: dict[str, object] = {}
        self._bundles: dict[tuple[str, str], tuple[Path, dict]] = {}

    def artifacts(self, encoder: str) -> Path:
        if encoder not in self._artifacts:
            data_dir = self.root / f"data-{encoder}"
            assert main(fit_argv(data_dir, encoder)) == 0
            self._artifacts[encoder] = data_dir / "artifacts"
        return self._artifacts[encoder]

    def recommender(self, encoder: str):
        if encoder not in self._recommenders:
            self._recommenders[encoder] = load(self.artifacts(encoder))
        return self._recommenders[encoder]

    def bundle(self, encoder: str, format: str) -> tuple[Path, dict]:
        key = (encoder, format)
        if key not in self._bundles:
            out = self.root / f"bundle-{encoder}-{format}"
            self._bundles[key] = export_bundle(self.artifacts(encoder), out, format=format)
        return self._bundles[key]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("export"))


def eager_users(model, users, history) -> np.ndarray:
    with torch.no_grad():
        return model.encode_users(
            torch.as_tensor(users), torch.as_tensor(history), torch.as_tensor(history != 0)
        ).numpy()


# --- every encoder x every format ------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_export_passes_parity(workspace, encoder, format):
    folder, manifest = workspace.bundle(encoder, format)
    assert manifest == json.loads((folder / artifacts.MANIFEST).read_text())
    assert manifest["format_version"] == BUNDLE_FORMAT_VERSION
    assert (manifest["kind"], manifest["format"], manifest["quantization"]) == (
        "twotower-bundle",
        format,
        None,
    )
    parity = manifest["parity"]
    assert set(parity) == PARITY_KEYS
    assert max(parity["max_abs_diff"].values()) <= MAX_ABS_DIFF
    assert parity["top10_overlap"] >= parity["top10_agreement"] >= MIN_TOP10_AGREEMENT
    assert parity["cold_user_finite"] is True
    # each user's full history, its first item and a prefix, plus the cold user
    assert parity["histories_checked"] == 3 * manifest["num_users"] + 1
    assert parity["history_lengths"] == [1, MAX_LEN]
    recall = parity["test_recall@10"]
    assert recall["delta"] == pytest.approx(recall["bundle"] - recall["torch"])

    # every file is listed with its sha256; the format's files and the serving files are there
    on_disk = {p.name for p in folder.iterdir() if p.is_file()} - {artifacts.MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert set(plugins.formats().get(format).files) | BUNDLE_FILES <= on_disk
    for name, digest in manifest["files"].items():
        assert artifacts.sha256_of(folder / name) == digest, name

    # the item vectors are the exported item tower's, equal to PyTorch's within the bound
    model = workspace.recommender(encoder).towers.model
    vectors = np.load(folder / artifacts.ITEM_EMBEDDINGS, allow_pickle=False)
    assert vectors.shape == (model.num_items, manifest["embedding_dim"])
    np.testing.assert_allclose(vectors, model.catalog_vectors().numpy(), atol=MAX_ABS_DIFF)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_exported_towers_on_edge_histories(workspace, encoder, format):
    """The format's own runtime on all-padding, length-1 and over-long histories."""
    folder, manifest = workspace.bundle(encoder, format)
    towers = plugins.formats().get(format)().load(folder)
    model = workspace.recommender(encoder).towers.model
    fixed = getattr(towers, "fixed_length", None)  # formats that pad to one history length
    rng = np.random.default_rng(1)

    def check(users: list[int], history: np.ndarray) -> np.ndarray:
        users = np.array(users, dtype=np.int64)
        history = np.asarray(history, dtype=np.int64)
        got = towers.encode_users(users, history, history != 0)
        assert got.shape == (len(users), manifest["embedding_dim"])
        assert np.isfinite(got).all()
        seen = history[:, -fixed:] if fixed is not None else history
        np.testing.assert_allclose(got, eager_users(model, users, seen), atol=MAX_ABS_DIFF)
        return got

    # the cold user: user 0 with nothing but padding, at several widths
    cold = [check([0], np.zeros((1, width))) for width in (1, 2, MAX_LEN)]
    for vector in cold[1:]:
        np.testing.assert_allclose(vector, cold[0], atol=MAX_ABS_DIFF)
    # an all-padding row beside real ones must not disturb them, nor they it
    mixed = rng.integers(1, model.num_items + 1, (3, 5))
    mixed[0] = 0
    mixed[1, :3] = 0
    np.testing.assert_allclose(check([0, 1, 2], mixed)[0], cold[0][0], atol=MAX_ABS_DIFF)
    # one item, for known users and the cold user
    check([1, 2, 0], rng.integers(1, model.num_items + 1, (3, 1)))
    # longer than max_history_len
    check([1, 2, 0], rng.integers(1, model.num_items + 1, (3, MAX_LEN + 5)))
    # item tower: any number of items
    for count in (1, 3, model.num_items):
        ids = np.arange(1, count + 1)
        expected = model.encode_items(torch.as_tensor(ids)).detach().numpy()
        np.testing.assert_allclose(towers.encode_items(ids), expected, atol=MAX_ABS_DIFF)


# --- the ONNX bundle -------------------------------------------------------------------


def test_onnx_manifest(workspace):
    folder, manifest = workspace.bundle(ONNX_ENCODER, "onnx")
    assert manifest["format_version"] == BUNDLE_FORMAT_VERSION == 1
    assert manifest["opset"] == OPSET
    datetime.fromisoformat(manifest["created"])
    versions = manifest["versions"]
    assert versions["onnxruntime"] == ort.__version__
    assert versions["onnx"] == onnx.__version__
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__
    assert {"python", "twotower", "hnswlib"} <= set(versions)

    mappings = json.loads((folder / artifacts.MAPPINGS).read_text())
    assert manifest["num_users"] == len(mappings["users"])
    assert manifest["num_items"] == len(mappings["items"])
    assert manifest["max_history_len"] == MAX_LEN
    dim = manifest["embedding_dim"]

    user, item = manifest["graphs"]["user_tower"], manifest["graphs"]["item_tower"]
    assert [i["name"] for i in user["inputs"]] == list(USER_INPUTS)
    assert [i["name"] for i in user["inputs"]] == ["user_ids", "history", "history_mask"]
    assert [i["dtype"] for i in user["inputs"]] == [
        "tensor(int64)",
        "tensor(int64)",
        "tensor(bool)",
    ]
    assert [o["name"] for o in user["outputs"]] == list(USER_OUTPUTS)
    assert [o["dtype"] for o in user["outputs"]] == ["tensor(float)"]
    batch, length = user["inputs"][1]["shape"]
    assert isinstance(batch, str) and isinstance(length, str) and batch != length  # symbolic
    assert user["inputs"][0]["shape"] == [batch]
    assert user["inputs"][2]["shape"] == [batch, length]
    assert user["outputs"][0]["shape"] == [batch, dim]

    assert [i["name"] for i in item["inputs"]] == list(ITEM_INPUTS) == ["item_ids"]
    assert [i["dtype"] for i in item["inputs"]] == ["tensor(int64)"]
    (items,) = item["inputs"][0]["shape"]
    assert isinstance(items, str)
    assert [o["name"] for o in item["outputs"]] == list(ITEM_OUTPUTS)
    expected = {"name": "item_vectors", "dtype": "tensor(float)", "shape": [items, dim]}
    assert item["outputs"][0] == expected

    parity = manifest["parity"]
    assert set(parity) == PARITY_KEYS
    assert set(parity["max_abs_diff"]) == {"user_tower", "item_tower"}
    assert set(parity["test_recall@10"]) == {"torch", "bundle", "delta"}
    for name, digest in manifest["files"].items():
        assert artifacts.sha256_of(folder / name) == digest, name


def test_the_bundle_files_are_as_exports_readme_lists_them(workspace):
    folder, manifest = workspace.bundle(ONNX_ENCODER, "onnx")
    readme = (Path(__file__).parents[1] / "exports" / "README.md").read_text()
    rows = {
        name: what
        for files, what in re.findall(r"^\| (`.*?`) \| (.*) \|$", readme, flags=re.MULTILINE)
        for name in re.findall(r"`([\w.]+)`", files)
    }
    assert set(manifest["files"]) <= set(rows)
    keys = set(re.findall(r'"(\w+)"', rows["hnsw_index.json"].split("`:")[0]))
    assert keys == set(json.loads((folder / "hnsw_index.json").read_text()))


def test_onnx_graphs_check_and_take_positional_tensors(workspace):
    folder, manifest = workspace.bundle(ONNX_ENCODER, "onnx")
    int64, boolean = onnx.TensorProto.INT64, onnx.TensorProto.BOOL
    symbols = {}
    for file, names, dtypes in (
        ("user_tower.onnx", USER_INPUTS, [int64, int64, boolean]),
        ("item_tower.onnx", ITEM_INPUTS, [int64]),
    ):
        path = folder / file
        onnx.checker.check_model(str(path), full_check=True)
        graph_model = onnx.load(str(path))
        opsets = {o.domain: o.version for o in graph_model.opset_import}
        assert opsets[""] == manifest["opset"]
        stored = {i.name for i in graph_model.graph.initializer}
        inputs = [i for i in graph_model.graph.input if i.name not in stored]
        assert [i.name for i in inputs] == list(names)  # positional tensors, no dicts
        assert [i.type.tensor_type.elem_type for i in inputs] == dtypes
        for tensor in inputs:
            dims = tensor.type.tensor_type.shape.dim
            assert all(d.dim_param and not d.dim_value for d in dims), tensor.name
            symbols[tensor.name] = [d.dim_param for d in dims]
        # weights live inside the file
        assert not [i.name for i in graph_model.graph.initializer if i.data_location == 1]
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith(file)) == [file]
    # the Transformer's attention as onnxruntime runs it (constants folded): one standard
    # Attention node per block and no head reshuffling
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folder.parent / "user_tower.folded.onnx")
    ort.InferenceSession(str(folder / "user_tower.onnx"), options)
    operators = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    layers = workspace.recommender(ONNX_ENCODER).config.num_layers
    assert operators.count("Attention") == layers
    assert "Transpose" not in operators
    # history items are rows of one table: no per-item gather of genres and product
    assert "GatherND" not in operators
    batch, length = symbols["history"]
    assert symbols["user_ids"] == [batch]
    assert symbols["history_mask"] == [batch, length]

    # onnxruntime, fed positionally, at batch sizes and history lengths the example never had
    model = workspace.recommender(ONNX_ENCODER).towers.model
    user = ort.InferenceSession(str(folder / "user_tower.onnx"), providers=["CPUExecutionProvider"])
    item = ort.InferenceSession(str(folder / "item_tower.onnx"), providers=["CPUExecutionProvider"])
    assert len(user.get_inputs()) == 3 and len(item.get_inputs()) == 1
    rng = np.random.default_rng(2)
    # the history axis is dynamic up to max_history_len, which the graph records
    assert user.get_modelmeta().custom_metadata_map["max_history_len"] == str(MAX_LEN)
    for rows, width in ((1, 1), (2, 3), (7, MAX_LEN), (3, MAX_LEN + 4)):
        lengths = rng.integers(0, width + 1, rows)
        lengths[0] = width
        sequences = [rng.integers(1, model.num_items + 1, n) for n in lengths]
        history, mask = pad_left(sequences, width)
        users = rng.integers(0, model.num_users + 1, rows)
        names = [i.name for i in user.get_inputs()]
        feed = dict(zip(names, (users, history, mask), strict=True))
        if width > MAX_LEN:  # too long for the graph: an error, never a silent wrong answer
            with pytest.raises(Exception, match="out of data bounds"):  # a position past the table
                user.run(None, feed)
            continue
        (vectors,) = user.run(None, feed)
        assert vectors.shape == (rows, manifest["embedding_dim"])
        np.testing.assert_allclose(vectors, eager_users(model, users, history), atol=MAX_ABS_DIFF)
    for count in (1, 5, model.num_items):
        (vectors,) = item.run(None, {item.get_inputs()[0].name: np.arange(1, count + 1)})
        assert vectors.shape == (count, manifest["embedding_dim"])


# --- TorchScript without twotower -------------------------------------------------------

JIT_SCRIPT = """
import json, sys
import torch

request = json.loads(sys.stdin.read())
results = {}
for folder in request["folders"]:
    user = torch.jit.load(folder + "/user_tower.pt").eval()
    item = torch.jit.load(folder + "/item_tower.pt").eval()
    history = torch.tensor(request["history"])
    with torch.no_grad():
        users = user(torch.tensor(request["users"]), history, history != 0)
        items = item(torch.tensor(request["items"]))
    results[folder] = {"users": users.tolist(), "items": items.tolist()}
print(json.dumps({"twotower_imported": "twotower" in sys.modules, "results": results}))
"""


@pytest.mark.skipif("torchscript" not in FORMATS, reason="no torchscript format registered")
def test_torchscript_loads_with_plain_torch(workspace, tmp_path):
    folders = {str(workspace.bundle(e, "torchscript")[0]): e for e in ENCODERS}
    history = [[0, 0, 0, 0], [0, 0, 3, 5], [1, 2, 3, 4]]
    request = {"folders": list(folders), "users": [0, 1, 2], "history": history, "items": [1, 2]}
    answer = run_script(JIT_SCRIPT, request, tmp_path)
    assert answer["twotower_imported"] is False
    for folder, encoder in folders.items():
        model = workspace.recommender(encoder).towers.model
        expected = eager_users(model, np.array([0, 1, 2]), np.array(history))
        np.testing.assert_allclose(answer["results"][folder]["users"], expected, atol=1e-6)
        items = model.encode_items(torch.tensor([1, 2])).detach().numpy()
        np.testing.assert_allclose(answer["results"][folder]["items"], items, atol=1e-6)


WITHOUT_ONNXRUNTIME = """
import contextlib, io, json, sys
sys.modules["onnxruntime"] = None  # as where it is not installed: importing it fails
from twotower.cli import main
request, answers = json.load(sys.stdin), []
for format, out in request["exports"]:
    said = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
        code = main(["export", "--artifacts-dir", request["artifacts"], "--out", out,
                     "--format", format, "--json"])
    answers.append([code, said.getvalue()])
print(json.dumps(answers))
"""


def test_a_machine_without_onnxruntime_keeps_the_other_formats(workspace, tmp_path, capfd):
    exports = [["torchscript", str(tmp_path / "scripted")], ["onnx", str(tmp_path / "graphs")]]
    request = {"artifacts": str(workspace.artifacts("mean")), "exports": exports}
    (scripted, warned), (failed, refused) = run_script(WITHOUT_ONNXRUNTIME, request, tmp_path)
    assert (scripted, warned) == (0, "")
    assert failed == 1
    assert refused.splitlines() == [
        "error: format 'onnx' could not load the towers it exported (ModuleNotFoundError: "
        "import of onnxruntime halted; None in sys.modules)"
    ]
    assert load_bundle(tmp_path / "scripted").recommend("1", k=3)
    assert not (tmp_path / "graphs").exists()


@pytest.mark.skipif("torch-export" not in FORMATS, reason="no torch-export format registered")
def test_a_truncated_graph_is_one_error_line_and_nothing_else(workspace, tmp_path):
    """Nothing the runtime logs while it fails reaches the user: torch.export warned before
    its error (a fresh process, as only there its logging reaches stderr; the other formats'
    damaged graphs are test_serving's)."""
    format = "torch-export"
    source, manifest = workspace.bundle(ONNX_ENCODER, format)
    folder = Path(shutil.copytree(source, tmp_path / "bundle"))
    graph = folder / plugins.formats().get(format).files[0]
    graph.write_bytes(graph.read_bytes()[:5000])
    manifest["files"][graph.name] = artifacts.sha256_of(graph)
    (folder / artifacts.MANIFEST).write_text(json.dumps(manifest))
    user = json.loads((folder / artifacts.MAPPINGS).read_text())["users"][0]
    argv = ["recommend", "--bundle", str(folder), "--user-id", user]
    done = subprocess.run(
        [sys.executable, "-m", "twotower", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: bundle ") and str(folder) in done.stderr, done.stderr
    assert "cannot be loaded" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- int8 and bad export requests --------------------------------------------------------


# what each scheme's graphs must and must not hold: dynamic int8 computes each activation's
# scale in the graph (DynamicQuantizeLinear, or fused into the integer matrix product), or
# reads an int8 table back through DequantizeLinear where a tower has no matrix product;
# static int8 quantizes activations with fixed scales (QuantizeLinear) and computes none
SCHEME_OPS = {
    "int8": (
        {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear"},
        set(),
    ),
    "int8-static": ({"QuantizeLinear"}, {"DynamicQuantizeLinear", "DynamicQuantizeMatMul"}),
}


@pytest.mark.parametrize("scheme", SCHEME_OPS)
def test_int8_records_parity_instead_of_enforcing_it(
    workspace, tmp_path, capsys, monkeypatch, scheme
):
    artifacts_dir = workspace.artifacts(FAST_ENCODER)
    fp32 = workspace.bundle(FAST_ENCODER, "onnx")[1]
    capsys.readouterr()  # the fit's own output, where this test fitted the model
    # bounds no graph can meet: an fp32 export fails them (next test), int8 must not care
    monkeypatch.setattr(parity_module, "MAX_ABS_DIFF", -1.0)
    monkeypatch.setattr(parity_module, "MIN_TOP10_AGREEMENT", 2.0)
    out = tmp_path / scheme
    code, stdout, err = run(
        capsys,
        "export",
        "--artifacts-dir",
        artifacts_dir,
        "--format",
        "onnx",
        "--quantize",
        scheme,
        "--out",
        out,
        "--json",
    )
    assert code == 0, err
    printed = json.loads(stdout)
    manifest = json.loads((out / artifacts.MANIFEST).read_text())
    described = {"bundle": str(out), "format": "onnx", "quantization": scheme}
    assert printed == {**described, "parity": manifest["parity"]}
    assert manifest["quantization"] == scheme
    assert manifest["format"] == "onnx" and manifest["opset"] == OPSET
    parity = manifest["parity"]
    assert set(parity) == PARITY_KEYS
    assert parity["cold_user_finite"] is True
    assert 0.0 <= parity["top10_agreement"] <= parity["top10_overlap"] <= 1.0
    recall = parity["test_recall@10"]
    assert set(recall) == {"torch", "bundle", "delta"}
    assert 0.0 <= recall["torch"] <= 1.0 and 0.0 <= recall["bundle"] <= 1.0
    assert recall["delta"] == pytest.approx(recall["bundle"] - recall["torch"])

    # the graphs are really quantized as the scheme says and keep the fp32 signature
    wanted, unwanted = SCHEME_OPS[scheme]
    for file in ("user_tower.onnx", "item_tower.onnx"):
        onnx.checker.check_model(str(out / file))
        ops = {node.op_type for node in onnx.load(str(out / file)).graph.node}
        assert ops & wanted and not ops & unwanted, ops
    for tower in ("user_tower", "item_tower"):
        assert manifest["graphs"][tower]["inputs"] == fp32["graphs"][tower]["inputs"]
    for name, digest in manifest["files"].items():
        assert artifacts.sha256_of(out / name) == digest, name
    bundle = load_bundle(out)
    user = next(iter(bundle.user_ids))
    assert len(bundle.recommend(user, k=5)) == 5


def test_static_int8_gives_a_user_the_same_vector_in_any_batch(workspace, tmp_path):
    # dynamic int8 scales activations over the whole batch, so a user's vector moves
    # with the other rows; static int8 fixed its scales at export, from calibration
    folder, _ = export_bundle(
        workspace.artifacts(ONNX_ENCODER), tmp_path / "b", quantize="int8-static"
    )
    bundle = load_bundle(folder)
    users, histories, _ = bundle.test_queries()
    together = bundle.encode(users, histories)
    alone = np.concatenate(
        [bundle.encode(users[i : i + 1], histories[i : i + 1]) for i in range(len(users))]
    )
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-6)


def test_fp32_parity_is_enforced(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(parity_module, "MAX_ABS_DIFF", -1.0)
    target = tmp_path / "bundle"
    with pytest.raises(TwoTowerError, match="export failed parity: max abs diff"):
        export_bundle(workspace.artifacts(FAST_ENCODER), target, format=FORMATS[0])
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its staging folder


@pytest.mark.parametrize("format", [f for f in FORMATS if f != "onnx"])
def test_int8_needs_onnx(workspace, tmp_path, capsys, format):
    out = tmp_path / "bundle"
    code, stdout, err = run(
        capsys,
        "export",
        "--artifacts-dir",
        workspace.artifacts(FAST_ENCODER),
        "--format",
        format,
        "--quantize",
        "int8",
        "--out",
        out,
    )
    assert error_line(code, err) == "error: --quantize int8 applies to the onnx format only"
    assert stdout == ""
    assert not out.exists()


def test_unknown_quantization(workspace, tmp_path):
    with pytest.raises(
        TwoTowerError, match="unknown quantization 'int4'; available: int8, int8-static"
    ):
        export_bundle(workspace.artifacts(FAST_ENCODER), tmp_path / "b", quantize="int4")


def test_unknown_format_is_refused_by_the_cli(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--artifacts-dir", str(tmp_path), "--format", "tflite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tflite'" in err
    assert all(name in err for name in FORMATS)


def test_export_without_artifacts(tmp_path, capsys):
    missing = tmp_path / "absent"
    code, _, err = run(capsys, "export", "--artifacts-dir", missing, "--out", tmp_path / "b")
    assert error_line(code, err).startswith(f"error: no artifacts folder at {missing}")
    assert not (tmp_path / "b").exists()


def test_export_default_folder_and_table(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    format = "torchscript" if "torchscript" in FORMATS else FORMATS[0]
    code, stdout, err = run(
        capsys, "export", "--artifacts-dir", workspace.artifacts(FAST_ENCODER), "--format", format
    )
    assert code == 0, err
    folder = Path("exports") / f"synthetic-{FAST_ENCODER}-{format}"
    assert (folder / artifacts.MANIFEST).is_file()
    assert (
        "top-10 lists the same, in order" in stdout
        and "overlap@10" in stdout
        and str(folder) in stdout
    )
    # exporting again replaces the bundle in place
    assert (
        run(
            capsys,
            "export",
            "--artifacts-dir",
            workspace.artifacts(FAST_ENCODER),
            "--format",
            format,
        )[0]
        == 0
    )
    assert sorted(p.name for p in Path("exports").iterdir()) == [folder.name]
