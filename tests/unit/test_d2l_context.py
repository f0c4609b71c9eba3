"""D2L context preparation: chat template, affixes, chunking, batching — exact ids of both golden fixtures."""
import json
import math
import pathlib

import numpy as np
import pytest

from hyperlora_jax.d2l.context import (Affixes, ContextError, chunk_ids, load_tokenizer, pad_chunks,
                                       padded_chunk_len, prepare_documents, template_affixes, tokenize_document)

DATA = pathlib.Path(__file__).parent.parent / "data" / "d2l"
KINDS = ["per_layer_activations", "early_exit"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(DATA / "tiny_gemma2"))


@pytest.fixture(scope="module", params=KINDS)
def fixture(request):
    return (json.loads((DATA / f"{request.param}.json").read_text()), np.load(DATA / f"{request.param}.npz"))


def test_affixes_from_chat_template(tok, fixture):
    meta, _ = fixture
    aff = template_affixes(tok)
    assert aff.to_dict() == meta["ctx_affixes"]
    assert tok.convert_ids_to_tokens(list(aff.prefix)) == meta["ctx_affixes_tokens"]["prefix"]
    assert len(aff) == 15


def test_templated_ids_and_chunks_match_fixture(tok, fixture):
    meta, z = fixture
    aff = template_affixes(tok)
    for d, doc in enumerate(meta["documents"]):
        full = tokenize_document(tok, doc)
        assert full == z[f"doc{d}/ctx_ids_full"].tolist()
        assert tokenize_document(tok, "\n  " + doc + " \n") == full  # the document is stripped
        chunks = chunk_ids(full, meta["max_ctx_chunk_len"], aff)
        assert len(chunks) == meta["n_ctx_chunks"][d]
        for c, ids in enumerate(chunks):
            assert ids == z[f"doc{d}/chunk{c}/ctx_ids"].tolist()
        # chunks of a multi-chunk document are complete user turns: prefix ... suffix
        if len(chunks) > 1:
            assert chunks[0][:len(aff.prefix)] == list(aff.prefix) and chunks[0][-len(aff.suffix):] == list(aff.suffix)
            assert all(c[:len(aff.prefix)] == list(aff.prefix) for c in chunks[1:])
            assert chunks[-1][-len(aff.suffix):] == list(aff.suffix)  # the template's own generation prompt


def test_batch_matches_fixture(tok, fixture):
    meta, z = fixture
    batch = prepare_documents(tok, meta["documents"], meta["max_ctx_chunk_len"], pad_to_chunk_len=False)
    np.testing.assert_array_equal(batch.ctx_ids, z["ctx_ids"])
    np.testing.assert_array_equal(batch.ctx_attn_mask, z["ctx_attn_mask"])
    np.testing.assert_array_equal(batch.n_ctx_chunks, z["n_ctx_chunks"])
    padded = prepare_documents(tok, meta["documents"], meta["max_ctx_chunk_len"])
    assert padded.ctx_ids.shape == (4, padded_chunk_len(80, template_affixes(tok))) == (4, 95)
    np.testing.assert_array_equal(padded.ctx_ids[:, :90], z["ctx_ids"])
    assert not padded.ctx_attn_mask[:, 90:].any()


def test_chunk_lengths_are_bounded_by_chunk_len_plus_affixes():
    aff = Affixes([1, 2, 3], [4, 5])
    for n_ids in (1, 7, 8, 9, 50, 101, 997):
        for c in (6, 8, 13, 64):
            ids = list(range(100, 100 + n_ids))
            chunks = chunk_ids(ids, c, aff)
            assert 1 <= len(chunks) <= max(1, math.ceil(n_ids / c))
            assert max(len(x) for x in chunks) <= padded_chunk_len(c, aff)
            # stripping the re-added affixes gives back the ids, in order
            body = [x[(3 if i else 0):len(x) - (2 if i < len(chunks) - 1 else 0)] for i, x in enumerate(chunks)]
            assert sum(body, []) == ids


def test_pad_chunks_layout():
    b = pad_chunks([[[1, 2, 3]], [[4], [5, 6]]], length=4)
    np.testing.assert_array_equal(b.ctx_ids, [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 0, 0]])
    np.testing.assert_array_equal(b.ctx_attn_mask.sum(1), [3, 1, 2])
    assert b.n_ctx_chunks.tolist() == [1, 2] and b.max_chunks == 2


# ------------------------------------------------------------------------------------------------ bad input
def test_empty_document_refused(tok):
    for doc in ("", "   \n\t "):
        with pytest.raises(ContextError, match="empty"):
            tokenize_document(tok, doc)
    with pytest.raises(ContextError, match="document 1: the document is empty"):
        prepare_documents(tok, ["fine", " "], 80)


def test_document_that_tokenizes_to_nothing_refused(tmp_path):
    """A tokenizer whose normaliser deletes zero-width spaces: such a document has text but no tokens."""
    import shutil

    from tokenizers import Tokenizer, normalizers

    d = tmp_path / "tok"
    shutil.copytree(DATA / "tiny_gemma2", d)
    t = Tokenizer.from_file(str(d / "tokenizer.json"))
    drop = normalizers.Replace("\u200b", "")
    t.normalizer = drop if t.normalizer is None else normalizers.Sequence([drop, t.normalizer])
    t.save(str(d / "tokenizer.json"))
    tok2 = load_tokenizer(str(d))
    assert tokenize_document(tok2, "ok") == tokenize_document(load_tokenizer(str(DATA / "tiny_gemma2")), "ok")
    with pytest.raises(ContextError, match="tokenizes to no tokens"):
        tokenize_document(tok2, "\u200b\u200b\u200b")


def test_chunk_length_not_larger_than_affixes_refused(tok):
    aff = template_affixes(tok)
    for c in (0, 5, len(aff)):
        with pytest.raises(ContextError, match="not larger than the chat-template affixes"):
            prepare_documents(tok, ["some text"], c)
    assert len(prepare_documents(tok, ["some text"], len(aff) + 1).n_ctx_chunks) == 1


def test_tokenizer_without_chat_template_refused(tok):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ContextError, match="no chat template"):
        template_affixes(NoTemplate())
