import numpy as np
import pytest

from segicl.pipeline import SegICLPipeline

from .conftest import example


def test_2d_query_keeps_its_shape(pipeline):
    image = np.random.default_rng(1).random((80, 72)).astype(np.float32) * 300
    out = pipeline(image, "Segment the brain", [example()], num_samples=2, num_steps=2)
    assert out.probabilities.shape == out.mask.shape == out.uncertainty.shape == (80, 72)
    assert out.mask.dtype == np.uint8 and set(np.unique(out.mask)) <= {0, 1}
    assert 0 <= out.probabilities.min() and out.probabilities.max() <= 1 and out.uncertainty.min() >= 0
    np.testing.assert_array_equal(out.mask, (out.probabilities > 0.5).astype(np.uint8))


@pytest.mark.parametrize("k", [0, 3])
def test_volume_cache_gives_the_same_answer(pipeline, k):
    volume = np.random.default_rng(2).random((5, 64, 64)).astype(np.float32)
    examples = [example((64, 64), s) for s in range(k)]
    cached = pipeline(volume, "Segment the brain", examples, num_samples=2, num_steps=2, batch_size=2)
    uncached = pipeline(volume, "Segment the brain", examples, num_samples=2, num_steps=2, batch_size=2,
                        use_cache=False)
    assert cached.probabilities.shape == (5, 64, 64)
    np.testing.assert_allclose(cached.probabilities, uncached.probabilities, atol=1e-4)
    assert set(cached.timings) == {"vision_s", "llm_s", "decoder_s", "slices"} and cached.timings["slices"] == 5


def test_same_seed_same_answer_after_reload(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "p")
    reloaded = SegICLPipeline.from_pretrained(tmp_path / "p")
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    first = pipeline(image, "Segment the brain", [example((64, 64))], num_samples=3, num_steps=2, seed=7)
    second = reloaded(image, "Segment the brain", [example((64, 64))], num_samples=3, num_steps=2, seed=7)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)


def bad(kind):
    image, mask = example()
    if kind == "shape":
        return np.zeros((64, 64)), [(image, mask[:50])], "mask shape \\(50, 60\\) does not match image shape \\(70, 60\\)"
    if kind == "non-binary":
        three_values = mask.copy()
        three_values[0, 0] = 0.5
        return np.zeros((64, 64)), [(image, three_values)], "example 0: mask must be binary \\(0 and one other value\\)"
    if kind == "empty":
        return np.zeros((64, 64)), [(image, np.zeros_like(mask))], "mask is empty"
    if kind == "4d":
        return np.zeros((2, 3, 64, 64)), [], "2-D \\[H, W\\] or 3-D \\[S, H, W\\], got 4-D"
    if kind == "nan":
        query = np.zeros((64, 64))
        query[3, 3] = np.nan
        return query, [], "query image contains 1 NaN"
    if kind == "too-many":
        return np.zeros((64, 64)), [example()] * 4, "at most 3 examples, got 4"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["shape", "non-binary", "empty", "4d", "nan", "too-many"])
def test_bad_inputs_refused(pipeline, kind):
    query, examples, message = bad(kind)
    with pytest.raises(ValueError, match=message):
        pipeline(query, "Segment the brain", examples, num_samples=1, num_steps=1)


def test_a_0_255_mask_reads_as_its_0_1_mask(pipeline):
    """A PNG-style mask (0/255) is the same example as its 0/1 form, as on the command line."""
    image, mask = example()
    query = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    as_png = pipeline(query, "Segment the brain", [(image, mask * 255)], num_samples=2, num_steps=2, seed=1)
    as_binary = pipeline(query, "Segment the brain", [(image, mask)], num_samples=2, num_steps=2, seed=1)
    np.testing.assert_array_equal(as_png.probabilities, as_binary.probabilities)
    with pytest.raises(ValueError, match="example 0: mask must be binary"):
        pipeline(query, "Segment the brain", [(image, -mask)], num_samples=1, num_steps=1)


def test_empty_instruction_refused(pipeline):
    with pytest.raises(ValueError, match="instruction text is empty"):
        pipeline(np.zeros((64, 64)), "  ", [], num_samples=1, num_steps=1)


def test_callback_reports_every_batch_of_both_passes_and_an_exception_it_raises_stops_the_call(pipeline):
    volume = np.random.default_rng(3).random((5, 64, 64)).astype(np.float32)
    calls = []
    out = pipeline(volume, "Segment the brain", [example((64, 64))], num_samples=1, num_steps=1, batch_size=2,
                   callback=lambda *call: calls.append(call))
    assert calls == [("condition", 1, 3), ("condition", 2, 3), ("condition", 3, 3),
                     ("decode", 1, 3), ("decode", 2, 3), ("decode", 3, 3)]
    plain = pipeline(volume, "Segment the brain", [example((64, 64))], num_samples=1, num_steps=1, batch_size=2)
    np.testing.assert_array_equal(out.probabilities, plain.probabilities)  # watching does not change the answer

    def stop(stage, done, total):
        if stage == "decode":
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        pipeline(volume, "Segment the brain", num_samples=1, num_steps=1, batch_size=2, callback=stop)


def test_a_second_call_with_the_same_prompt_reuses_its_encoded_context(pipeline, monkeypatch):
    volume = np.random.default_rng(6).random((2, 64, 64)).astype(np.float32)
    examples = [example((64, 64), 1), example((64, 64), 2)]
    encoded = []
    encode = pipeline.model.encode_context
    monkeypatch.setattr(pipeline.model, "encode_context", lambda *args: encoded.append(1) or encode(*args))
    pipeline._contexts.clear()
    first = pipeline(volume, "Segment the brain", examples, num_samples=2, num_steps=1)
    pipeline(volume[::-1].copy(), "Segment the brain", examples, num_samples=2, num_steps=1)
    assert len(encoded) == 1  # the second volume reused the prefix
    pipeline(volume, "Segment the thalamus", examples, num_samples=2, num_steps=1)
    pipeline(volume, "Segment the brain", examples[:1], num_samples=2, num_steps=1)
    assert len(encoded) == 3 and len(pipeline._contexts) == 3
    fresh = SegICLPipeline(pipeline.model)(volume, "Segment the brain", examples, num_samples=2, num_steps=1)
    np.testing.assert_array_equal(first.probabilities, fresh.probabilities)
