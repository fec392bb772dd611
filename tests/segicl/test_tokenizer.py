from segicl.tokenizer import build_tokenizer, load_tokenizer

TEXTS = ["Segment the left hippocampus in this T1-weighted MRI slice.", "Outline the white matter in the CT scan."]


def test_a_locally_trained_tokenizer_round_trips_its_instructions(tmp_path):
    tokenizer = build_tokenizer(TEXTS, vocab_size=300)
    ids = tokenizer(TEXTS[0]).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == TEXTS[0]
    assert len(tokenizer) <= 300 and tokenizer.pad_token == "<pad>"
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    again = load_tokenizer(tmp_path / "tokenizer")
    assert again(TEXTS[1]).input_ids == tokenizer(TEXTS[1]).input_ids
