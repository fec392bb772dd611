"""The tiny preset's tokenizer: a byte-level BPE trained locally (nothing to download).

Its corpus is the instruction templates filled with the TRAINING structure names and modalities,
plus general anatomical words; held-out names still tokenize (byte-level), as sub-words.
The full preset uses the local LLM directory's own tokenizer instead.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
GENERAL_WORDS = (
    "left right both sides bilateral anterior posterior superior inferior medial lateral middle "
    "brain tissue matter lobe gyrus cortex nucleus area region tract ventricle hemisphere cerebellum "
    "segment delineate outline mask label every pixel image slice scan where is the of in on this a an "
    "MRI CT T1-weighted T2-weighted fundus X-ray ultrasound organ liver kidney spleen lung heart tumour lesion"
)


def build_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (deterministic for the same texts)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts) + [GENERAL_WORDS], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")


def corpus_from_dataset(dataset) -> list[str]:
    """Instruction templates filled with every training structure name and modality of a dataset."""
    from segicl_data.episodes import INSTRUCTION_TEMPLATES

    names = sorted({(row["name"], row["modality"]) for row in dataset.rows if row["split"] == "train"})
    return [template.format(name=name, modality=modality) for name, modality in names
            for template in INSTRUCTION_TEMPLATES]


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    """A tokenizer saved with `save_pretrained`, from a local folder only."""
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
